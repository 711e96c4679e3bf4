"""Per-case metric tables under a card's evaluation protocol.

Inference is an `Inferer` (benchmark.inference: slicewise, sliding_window, whole_image) built once from the
protocol and the training patch by `make_inferer`, and shared by the Trainer's validation, the final test and
`bench eval`. Post-processing `largest_component` keeps each class's largest connected component (SS-Net
`getLargestCC`). Metrics are computed per class on the case's label map (benchmark.metrics), in a process
pool when `workers > 0`, and streamed to a CSV as cases finish.
"""
from __future__ import annotations

import csv
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from benchmark.config import EvaluationProtocol
from benchmark.data.formats import Case
from benchmark.inference import Inferer, Predictor, build_inferer
from benchmark.masks import largest_component_per_class
from benchmark.metrics import EMPTY_POLICIES, METRICS, case_metrics, diagonal, dice_only, empty_case_metrics

# pred_voxels / ref_voxels / diagonal let a saved table be re-scored under another empty-prediction policy
# (`rescore_cases`) without running inference again
CASE_COLUMNS = ["case", "class", "class_name", *METRICS, "pred_voxels", "ref_voxels", "diagonal"]


def make_inferer(protocol: EvaluationProtocol, train_patch: Sequence[int]) -> Inferer:
    """The protocol's inferer at its own patch, or the training patch when it names none."""
    patch = tuple(protocol.patch or train_patch)
    if protocol.inference == "sliding_window":
        return build_inferer("sliding_window", patch, protocol.stride)
    return build_inferer(protocol.inference, patch, resize=protocol.resize)


def predict_case(predict: Predictor, image: np.ndarray, protocol: EvaluationProtocol, inferer: Inferer,
                 device: torch.device, postprocess: bool = True) -> np.ndarray:
    """Inference (+ the protocol's post-processing) of one case's image (C, *spatial)."""
    labels = inferer(predict, image, device)
    if postprocess and protocol.postprocess == "largest_component":
        labels = largest_component_per_class(labels, protocol.classes)
    return labels


# ------------------------------------------------------------------------------------------- scoring
def score_case(name: str, pred: np.ndarray, ref: np.ndarray, classes: Sequence[int], class_names: Sequence[str],
               policy: str, spacing: Sequence[float] | None) -> list[dict]:
    """Rows (one per class) of one case; runs in a worker process when evaluation is parallel."""
    per_class = case_metrics(pred, ref, classes, spacing=spacing, policy=policy)
    worst = diagonal(pred.shape, spacing)
    return [{"case": name, "class": int(c), "class_name": class_names[c], **per_class[c],
             "pred_voxels": int((pred == c).sum()), "ref_voxels": int((ref == c).sum()), "diagonal": worst}
            for c in classes]


def rescore_cases(cases: pd.DataFrame, policy: str) -> pd.DataFrame:
    """Per-case rows (as `evaluate_cases` writes them) under another empty-prediction policy: the rows in which
    the prediction or the reference is empty get that policy's values; the others are unchanged. Exact: the
    same numbers as scoring the predictions under `policy` (tests/test_rules.py). Needs the voxel-count columns
    (rows written before they existed raise ValueError)."""
    missing = [c for c in ("pred_voxels", "ref_voxels", "diagonal") if c not in cases]
    if missing:
        raise ValueError(f"per-case rows lack {', '.join(missing)} (written before re-scoring existed): score the "
                         f"weights again with `bench eval --run RUN_ID --empty-prediction {policy}`")
    if policy not in EMPTY_POLICIES or policy == "error":
        raise ValueError(f"cannot re-score under {policy!r}; valid: {', '.join(p for p in EMPTY_POLICIES if p != 'error')}")
    out = cases.copy()
    metrics = [m for m in METRICS if m in out]
    empty = (out["pred_voxels"] == 0) | (out["ref_voxels"] == 0)
    for i in out.index[empty]:
        row = out.loc[i]
        values = empty_case_metrics(bool(row["pred_voxels"]), bool(row["ref_voxels"]), policy,
                                    float(row["diagonal"]), metrics)
        out.loc[i, metrics] = [values[m] for m in metrics]
    return out


def evaluate_cases(predict: Predictor, volumes: Sequence[Case], protocol: EvaluationProtocol,
                   class_names: Sequence[str], inferer: Inferer, device: torch.device, workers: int = 0,
                   csv_path: Path | None = None) -> pd.DataFrame:
    """Per-case, per-class metrics of the cases `volumes`; rows are appended to `csv_path` as cases finish."""
    spacing = protocol.spacing if protocol.hd_units == "mm" else None
    args = (protocol.classes, class_names, protocol.empty_prediction, spacing)
    rows: list[dict] = []
    sink = open(csv_path, "w", newline="") if csv_path else None
    writer = csv.DictWriter(sink, CASE_COLUMNS) if sink else None
    if writer:
        writer.writeheader()

    def collect(case_rows: list[dict]) -> None:
        rows.extend(case_rows)
        if writer:
            writer.writerows(case_rows)
            sink.flush()

    try:
        if workers > 0:
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                futures = [pool.submit(score_case, v.name, predict_case(predict, v.image, protocol, inferer, device),
                                       v.label, *args) for v in volumes]
                for future in as_completed(futures):
                    collect(future.result())
        else:
            for v in volumes:
                collect(score_case(v.name, predict_case(predict, v.image, protocol, inferer, device), v.label, *args))
    finally:
        if sink:
            sink.close()
    order = {v.name: i for i, v in enumerate(volumes)}
    frame = pd.DataFrame(rows, columns=CASE_COLUMNS)
    return frame.sort_values(["case", "class"], key=lambda s: s.map(order) if s.name == "case" else s,
                             kind="stable").reset_index(drop=True)


def validation_dice(predict: Predictor, volumes: Sequence[Case], protocol: EvaluationProtocol, inferer: Inferer,
                    device: torch.device) -> float:
    """Mean Dice over volumes and classes, an empty prediction scoring 0, no post-processing
    (SSL4MIS `val_2D.py`, SS-Net `var_all_case_LA`): the checkpoint-selection signal."""
    scores = []
    for vol in volumes:
        pred = predict_case(predict, vol.image, protocol, inferer, device, postprocess=False)
        scores.extend(dice_only(pred == c, vol.label == c) for c in protocol.classes)
    return float(np.mean(scores))


def summarize(cases: pd.DataFrame) -> dict[str, float]:
    """Means over cases: per class (`dice/RV`) and over classes (`dice`), NaN-aware, plus NaN counts."""
    out: dict[str, float] = {}
    metric_cols = [m for m in METRICS if m in cases]
    per_class = cases.groupby("class_name", sort=False)[metric_cols].mean()
    for m in metric_cols:
        out[m] = float(per_class[m].mean())
        for name, value in per_class[m].items():
            out[f"{m}/{name}"] = float(value)
        nans = int(cases[m].isna().sum())
        if nans:
            out[f"{m}/nan_count"] = float(nans)
    return out
