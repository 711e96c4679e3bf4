"""Helpers shared by the method tests: a tiny method context and batch, and a 3-step Trainer smoke run."""
from __future__ import annotations

import math

import torch

from benchmark.config import TrainConfig
from benchmark.train import Trainer
from methods.base import Labeled, MethodContext

SMOKE = TrainConfig(iterations=3, batch_size=4, labeled_batch_size=2, patch_size=32, eval_every=100,
                    checkpoint_every=3, log_every=1, num_workers=0)


def method_ctx(iterations: int = 100, lr: float = 0.1) -> MethodContext:
    """1 input channel, 4 classes, the plain UNet, SGD at `lr`."""
    return MethodContext(1, 4, iterations, "unet", lambda p: torch.optim.SGD(p, lr=lr))


def tiny_batch(n: int = 2, m: int = 2, size: int = 32, seed: int = 0) -> tuple[Labeled, torch.Tensor]:
    """`n` labeled and `m` unlabeled random images of `size` x `size`, seeded."""
    g = torch.Generator().manual_seed(seed)
    x, u = torch.rand(n, 1, size, size, generator=g), torch.rand(m, 1, size, size, generator=g)
    return Labeled(x, torch.randint(0, 4, (n, size, size), generator=g)), u


class MetricRecorder:
    """A Trainer logger that keeps every metric by step; `train` holds the steps that logged a loss."""

    def __init__(self) -> None:
        self.metrics: dict[int, dict[str, float]] = {}

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.metrics.setdefault(step, {}).update(metrics)

    @property
    def train(self) -> dict[int, dict[str, float]]:
        return {s: m for s, m in self.metrics.items() if "train/loss" in m}


def smoke_run(synthetic, tmp_path, method_cls, method_cfg=None) -> MetricRecorder:
    """3 Trainer steps on the synthetic data: every step logs finite train metrics; the test split is scored.
    The Trainer's result is kept as `recorder.result`."""
    card, data = synthetic
    rec = MetricRecorder()
    cfg = method_cfg if method_cfg is not None else method_cls.Config()
    rec.result = Trainer(data, method_cls, cfg, SMOKE, 24, 0, tmp_path, card.evaluation, card.classes, logger=rec,
                         device="cpu", progress=False).fit()
    assert sorted(rec.train) == [1, 2, 3]  # the Trainer logs 1-based steps
    assert all(math.isfinite(v) for m in rec.train.values() for k, v in m.items() if k.startswith("train/"))
    assert "dice" in rec.result.summary["last"]
    return rec
