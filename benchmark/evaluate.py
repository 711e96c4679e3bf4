"""Inference protocols and per-case metric tables.

Inference (the card's `evaluation.inference`):
  slicewise       each slice of a volume goes through a 2D network at the patch size and back, and the slices
                  are stacked; `resize: nearest` = scipy zoom order 0 of image and argmax (SSL4MIS, SS-Net,
                  BCP, CML; PROTOCOLS.md §2.1), `resize: bilinear_logits` = bilinear image in, bilinear logits
                  out, then argmax (UniMatch; PROTOCOLS.md §5.5).
  sliding_window  3D patches placed every `stride` voxels, the last one flush with the border, the volume
                  zero-padded to at least the patch; softmax averaged over overlaps, then argmax
                  (SS-Net / BCP / CML `test_single_case`; LA: 112x112x80, stride 18/18/4).
Post-processing `largest_component` keeps each class's largest connected component (SS-Net `getLargestCC`).
Metrics are computed per class on the 3D label map (benchmark.metrics), in a process pool when
`workers > 0`, and streamed to a CSV as cases finish.
"""
from __future__ import annotations

import csv
import math
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from benchmark.config import EvaluationProtocol
from benchmark.data.augment import resize_nearest
from benchmark.data.formats import Volume
from benchmark.masks import largest_component_per_class
from benchmark.metrics import METRICS, case_metrics, dice_only

Predictor = Callable[[torch.Tensor], torch.Tensor]
CASE_COLUMNS = ["case", "class", "class_name", *METRICS]


# ------------------------------------------------------------------------------------------ inference
@torch.no_grad()
def predict_slicewise(predict: Predictor, image: np.ndarray, patch: int, device: torch.device,
                      resize: str = "nearest", chunk: int = 32) -> np.ndarray:
    """Label map (S, H, W) uint8 of a volume, predicted slice by slice at `patch` x `patch`."""
    s, h, w = image.shape
    out = np.empty((s, h, w), dtype=np.uint8)
    if resize == "nearest":
        small = np.stack([resize_nearest(image[i], (patch, patch)) for i in range(s)])[:, None]
        for i in range(0, s, chunk):
            labels = predict(torch.from_numpy(small[i:i + chunk]).to(device)).argmax(1).to(torch.uint8).cpu().numpy()
            for j, lab in enumerate(labels):
                out[i + j] = resize_nearest(lab, (h, w))
        return out
    if resize == "bilinear_logits":
        for i in range(0, s, chunk):
            x = torch.from_numpy(np.ascontiguousarray(image[i:i + chunk], dtype=np.float32))[:, None].to(device)
            x = F.interpolate(x, size=(patch, patch), mode="bilinear", align_corners=False)
            logits = F.interpolate(predict(x).float(), size=(h, w), mode="bilinear", align_corners=False)
            out[i:i + chunk] = logits.argmax(1).to(torch.uint8).cpu().numpy()
        return out
    raise ValueError(f"unknown resize {resize!r}; valid: nearest, bilinear_logits")


def window_starts(size: int, patch: int, stride: int) -> list[int]:
    """Window origins along one axis: every `stride`, the last one flush with the end (SS-Net placement)."""
    if not 0 < stride <= patch:
        raise ValueError(f"stride {stride} must be in 1..patch ({patch}), or voxels between windows go unseen")
    if size <= patch:
        return [0]
    return [min(i * stride, size - patch) for i in range(math.ceil((size - patch) / stride) + 1)]


@torch.no_grad()
def predict_sliding_window(predict: Predictor, image: np.ndarray, patch: Sequence[int], stride: Sequence[int],
                           device: torch.device, batch: int = 4) -> np.ndarray:
    """Label map of a 3D volume from overlapping patches with averaged softmax (see module docstring)."""
    pads = [max(p - s, 0) for p, s in zip(patch, image.shape)]
    padding = [(d // 2, d - d // 2) for d in pads]
    padded = np.pad(image.astype(np.float32), padding) if any(pads) else image.astype(np.float32)
    vol = torch.from_numpy(padded).to(device)
    starts = [window_starts(n, p, s) for n, p, s in zip(padded.shape, patch, stride)]
    corners = [(x, y, z) for x in starts[0] for y in starts[1] for z in starts[2]]
    score = count = None
    for i in range(0, len(corners), batch):
        group = corners[i:i + batch]
        x = torch.stack([vol[a:a + patch[0], b:b + patch[1], c:c + patch[2]] for a, b, c in group])[:, None]
        probs = predict(x).float().softmax(1)
        if score is None:
            score = torch.zeros((probs.shape[1], *padded.shape), device=device)
            count = torch.zeros(padded.shape, device=device)
        for (a, b, c), p in zip(group, probs):
            score[:, a:a + patch[0], b:b + patch[1], c:c + patch[2]] += p
            count[a:a + patch[0], b:b + patch[1], c:c + patch[2]] += 1
    labels = (score / count).argmax(0).to(torch.uint8).cpu().numpy()
    crop = tuple(slice(lo, n - hi) for (lo, hi), n in zip(padding, padded.shape))
    return labels[crop]


def predict_case(predict: Predictor, image: np.ndarray, protocol: EvaluationProtocol, patch: int,
                 device: torch.device, postprocess: bool = True) -> np.ndarray:
    """Inference (+ post-processing) of one case under `protocol` (`patch` = the training patch by default)."""
    if protocol.inference == "slicewise":
        labels = predict_slicewise(predict, image, int(protocol.patch[0]) if protocol.patch else patch, device,
                                   protocol.resize)
    else:
        labels = predict_sliding_window(predict, image, protocol.patch or (patch,) * 3, protocol.stride, device)
    if postprocess and protocol.postprocess == "largest_component":
        labels = largest_component_per_class(labels, protocol.classes)
    return labels


# ------------------------------------------------------------------------------------------- scoring
def score_case(name: str, pred: np.ndarray, ref: np.ndarray, classes: Sequence[int], class_names: Sequence[str],
               policy: str, spacing: Sequence[float] | None) -> list[dict]:
    """Rows (one per class) of one case; runs in a worker process when evaluation is parallel."""
    per_class = case_metrics(pred, ref, classes, spacing=spacing, policy=policy)
    return [{"case": name, "class": int(c), "class_name": class_names[c], **per_class[c]} for c in classes]


def evaluate_cases(predict: Predictor, volumes: Sequence[Volume], protocol: EvaluationProtocol,
                   class_names: Sequence[str], patch: int, device: torch.device, workers: int = 0,
                   csv_path: Path | None = None) -> pd.DataFrame:
    """Per-case, per-class metrics of `volumes`; rows are appended to `csv_path` as cases finish."""
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
                futures = [pool.submit(score_case, v.name, predict_case(predict, v.image, protocol, patch, device),
                                       v.label, *args) for v in volumes]
                for future in as_completed(futures):
                    collect(future.result())
        else:
            for v in volumes:
                collect(score_case(v.name, predict_case(predict, v.image, protocol, patch, device), v.label, *args))
    finally:
        if sink:
            sink.close()
    order = {v.name: i for i, v in enumerate(volumes)}
    frame = pd.DataFrame(rows, columns=CASE_COLUMNS)
    return frame.sort_values(["case", "class"], key=lambda s: s.map(order) if s.name == "case" else s,
                             kind="stable").reset_index(drop=True)


def validation_dice(predict: Predictor, volumes: Sequence[Volume], protocol: EvaluationProtocol, patch: int,
                    device: torch.device) -> float:
    """Mean Dice over volumes and classes, an empty prediction scoring 0, no post-processing
    (SSL4MIS `val_2D.py`, SS-Net `var_all_case_LA`): the checkpoint-selection signal."""
    scores = []
    for vol in volumes:
        pred = predict_case(predict, vol.image, protocol, patch, device, postprocess=False)
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
