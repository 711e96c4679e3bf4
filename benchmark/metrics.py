"""Per-case segmentation metrics with medpy's definitions and an explicit empty-mask policy.

dice, jaccard (medpy `dc`, `jc`), hd95 (symmetric 95th-percentile Hausdorff) and asd (medpy's *asymmetric*
average surface distance of the prediction to the reference, which SSL4MIS-derived papers report as "ASD").
No spacing -> voxel units, as every reference script (PROTOCOLS.md §5.4).

Empty-mask policies (the card's `evaluation.empty_prediction`):
  zero  - an empty prediction scores 0 on all four metrics (SS-Net / BCP / CML `test_ACDC.py`).
  nan   - an empty prediction scores Dice = Jaccard = 0 and HD95 = ASD = NaN (left out of means, counted).
  error - raise, as SSL4MIS `test_2D_fully.py` (medpy) does.
An empty reference with a non-empty prediction gives Dice = Jaccard = 0, HD95 = ASD = NaN (or raises under
`error`); both empty gives NaN on all four under `nan`, 0 under `zero`.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

METRICS = ("dice", "jaccard", "hd95", "asd")
HIGHER_IS_BETTER = {"dice": True, "jaccard": True, "hd95": False, "asd": False}


class EmptyMaskError(ValueError):
    """Raised under the `error` policy when a prediction or reference mask is empty."""


def case_metrics(pred: np.ndarray, ref: np.ndarray, policy: str = "zero", spacing: Sequence[float] | None = None,
                 which: Sequence[str] = METRICS) -> dict[str, float]:
    """Metrics of one binary mask pair (any dimensionality)."""
    from medpy.metric import binary  # the reference implementation (a later issue replaces it by a faster one)

    pred, ref = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    p_any, r_any = bool(pred.any()), bool(ref.any())
    if not (p_any and r_any):
        if policy == "error":
            raise EmptyMaskError(f"{'prediction' if not p_any else 'reference'} mask is empty")
        if policy == "zero" and not p_any:
            return {m: 0.0 for m in which}
        if not p_any and not r_any:
            return {m: math.nan for m in which}
        return {m: (0.0 if m in ("dice", "jaccard") else math.nan) for m in which}
    fns = {
        "dice": lambda: binary.dc(pred, ref),
        "jaccard": lambda: binary.jc(pred, ref),
        "hd95": lambda: binary.hd95(pred, ref, voxelspacing=spacing),
        "asd": lambda: binary.asd(pred, ref, voxelspacing=spacing),
    }
    return {m: float(fns[m]()) for m in which}


def dice_only(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice with an empty prediction scored 0 (the validation rule of SSL4MIS `val_2D.py`)."""
    p, r = np.asarray(pred, bool), np.asarray(ref, bool)
    denom = p.sum() + r.sum()
    if not p.any() or denom == 0:
        return 0.0
    return float(2.0 * np.logical_and(p, r).sum() / denom)
