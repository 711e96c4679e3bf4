"""Schedules: consistency ramp-ups and learning-rate decay, as functions of the step."""
from __future__ import annotations

import math
from dataclasses import dataclass

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


def lr_factor(step: int, cfg: TrainConfig, total: int | None = None) -> float:
    """Multiplier of the base lr at `step` (0-based) of `total` (default cfg.iterations): poly
    (1 - step/total)^p, constant, or x0.1 every step_size."""
    if cfg.lr_schedule == "poly":
        return (1.0 - step / (total or cfg.iterations)) ** cfg.poly_power
    if cfg.lr_schedule == "step":
        return 0.1 ** (step // cfg.step_size)
    return 1.0


@dataclass
class RampedConsistency:
    """Config mixin for the SSL4MIS consistency weight: `consistency` * sigmoid ramp-up over
    step // `rampup_unit`, full after `consistency_rampup` units (0.1, 200, 150: full at step 30 000)."""

    consistency: float = 0.1
    consistency_rampup: float = 200.0   # in units of `rampup_unit` steps
    rampup_unit: int = 150

    def consistency_weight(self, step: int) -> float:
        return consistency_weight(step, self.consistency, self.consistency_rampup, self.rampup_unit)
