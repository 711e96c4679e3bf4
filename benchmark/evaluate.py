"""Inference protocols and per-case metric tables.

`slice2d` (ACDC, PROTOCOLS.md §2.1): each slice of a volume is zoomed (order 0) to the patch, the network's
argmax is zoomed back (order 0), the slices are stacked, and metrics are computed per class on the 3D volume.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from benchmark.config import EvaluationProtocol
from benchmark.data.augment import resize_nearest
from benchmark.data.formats import Volume
from benchmark.metrics import METRICS, case_metrics, dice_only

Predictor = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def predict_volume(predict: Predictor, image: np.ndarray, patch: int, device: torch.device,
                   chunk: int = 32) -> np.ndarray:
    """Label map (S, H, W) uint8 of a volume, predicted slice by slice at `patch` x `patch`."""
    s, h, w = image.shape
    small = np.stack([resize_nearest(image[i], (patch, patch)) for i in range(s)])[:, None]
    out = np.empty((s, patch, patch), dtype=np.uint8)
    for i in range(0, s, chunk):
        x = torch.from_numpy(small[i:i + chunk]).to(device)
        out[i:i + chunk] = predict(x).argmax(1).to(torch.uint8).cpu().numpy()
    return np.stack([resize_nearest(out[i], (h, w)) for i in range(s)])


def evaluate_cases(predict: Predictor, volumes: Sequence[Volume], protocol: EvaluationProtocol,
                   class_names: Sequence[str], patch: int, device: torch.device,
                   metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """One row per (case, class): case, class, class_name, and each metric."""
    rows = []
    for vol in volumes:
        pred = predict_volume(predict, vol.image, patch, device)
        for c in protocol.classes:
            values = case_metrics(pred == c, vol.label == c, protocol.empty_prediction, protocol.spacing
                                  if protocol.hd_units == "mm" else None, metrics)
            rows.append({"case": vol.name, "class": int(c), "class_name": class_names[c], **values})
    return pd.DataFrame(rows)


def validation_dice(predict: Predictor, volumes: Sequence[Volume], classes: Sequence[int], patch: int,
                    device: torch.device) -> float:
    """Mean Dice over val volumes and classes, an empty prediction scoring 0 (SSL4MIS `val_2D.py`)."""
    scores = []
    for vol in volumes:
        pred = predict_volume(predict, vol.image, patch, device)
        scores.extend(dice_only(pred == c, vol.label == c) for c in classes)
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
