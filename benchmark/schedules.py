"""Schedules: consistency ramp-ups and learning-rate decay, as functions of the step."""
from __future__ import annotations

import math

from benchmark.config import TrainConfig


def sigmoid_rampup(current: float, length: float) -> float:
    """exp(-5 (1 - t)^2) with t = clip(current / length, 0, 1) (Laine & Aila; SSL4MIS `ramps.py`)."""
    if length == 0:
        return 1.0
    t = min(max(current, 0.0), length) / length
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def consistency_weight(step: int, weight: float, rampup: float, unit: int = 150) -> float:
    """SSL4MIS: weight * sigmoid_rampup(step // unit, rampup); with 150 and 200 it peaks at step 30 000."""
    return weight * sigmoid_rampup(step // unit, rampup)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the base lr at `step` (0-based): poly (1 - step/max)^p, constant, or x0.1 every step_size."""
    if cfg.lr_schedule == "poly":
        return (1.0 - step / cfg.iterations) ** cfg.poly_power
    if cfg.lr_schedule == "step":
        return 0.1 ** (step // cfg.step_size)
    return 1.0
