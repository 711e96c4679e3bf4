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


# ------------------------------------------------------------------------------------------------- 3D (LA)
SMOKE_3D = TrainConfig(iterations=3, batch_size=4, labeled_batch_size=2, patch_size=(32, 32, 32), network="vnet",
                       network_options={"width": 4}, augmentation="la-rotflip-crop", lr_schedule="step",
                       step_size=2500, eval_every=100, checkpoint_every=3, log_every=1, num_workers=0)


def method_ctx_3d(num_classes: int = 2, iterations: int = 100, lr: float = 0.1, width: int = 4,
                  patch: tuple[int, ...] = (32, 32, 32)) -> MethodContext:
    """1 input channel, `num_classes`, a narrow V-Net (`width`), SGD at `lr`, a 3D patch."""
    return MethodContext(1, num_classes, iterations, "vnet", lambda p: torch.optim.SGD(p, lr=lr), patch,
                         {"width": width})


def tiny_volumes(n: int = 2, m: int = 2, shape: tuple[int, ...] = (32, 32, 32), seed: int = 0
                 ) -> tuple[Labeled, torch.Tensor]:
    """`n` labeled and `m` unlabeled random volumes (B, 1, *shape), binary labels, seeded."""
    g = torch.Generator().manual_seed(seed)
    x, u = torch.rand(n, 1, *shape, generator=g), torch.rand(m, 1, *shape, generator=g)
    return Labeled(x, torch.randint(0, 2, (n, *shape), generator=g)), u


def smoke_run_3d(tmp_path, method: str, method_cfg=None, train: TrainConfig | None = None, **train_overrides
                 ) -> MetricRecorder:
    """3 Trainer steps of `method` (a registered name) on the synthetic-la volumes with the narrow V-Net at 32^3
    (`train_overrides` replace SMOKE_3D fields): every step logs finite train metrics; the test split (first
    case) is scored. The Trainer's result is kept as `recorder.result`."""
    import dataclasses

    from benchmark import catalog
    from benchmark.data.dataset import load_dataset

    card = catalog.get_card("synthetic-la")
    data = load_dataset(card)
    cls = catalog.method_class(method)
    cfg = method_cfg if method_cfg is not None else cls.Config()
    train = dataclasses.replace(train or SMOKE_3D, **train_overrides)
    rec = MetricRecorder()
    trainer = Trainer(data, cls, cfg, train, 3, 0, tmp_path, card.evaluation, card.classes, logger=rec,
                      device="cpu", progress=False, test_cases=1)
    rec.result = trainer.fit()
    assert sorted(rec.train) == list(range(1, trainer.total_iterations + 1))  # every step logged (1-based)
    assert all(math.isfinite(v) for m in rec.train.values() for k, v in m.items() if k.startswith("train/"))
    assert "dice" in rec.result.summary["last"]
    return rec
