"""Supervised baseline: the labeled samples only (SSL4MIS `train_fully_supervised_2D.py`; in 3D the same loss on
volumes, as UA-MT's LA baseline)."""
from __future__ import annotations

import torch

from benchmark.losses import dice_ce_loss
from methods.base import METHODS, Labeled, Method, MethodContext, NoConfig


@METHODS.register("supervised", "labeled slices only, loss 0.5*(CE+Dice); the lower bound of every table")
class Supervised(Method):
    uses_unlabeled = False
    dims = (2, 3)   # any registered segmentation net: UNet-2D on slices / images, V-Net on volumes

    def __init__(self, cfg: NoConfig, ctx: MethodContext) -> None:
        super().__init__(cfg, ctx)
        self.model = ctx.build_network()
        self.optimizer = ctx.make_optimizer(self.model.parameters())

    def train_step(self, labeled: Labeled, unlabeled: torch.Tensor | None, step: int) -> dict[str, torch.Tensor]:
        loss = dice_ce_loss(self.model(labeled.image), labeled.label)
        self.update(loss, self.optimizer)
        return {"loss": loss.detach()}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
