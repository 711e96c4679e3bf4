"""Entropy minimisation (Vu et al., CVPR 2019, ADVENT's direct EM) as SSL4MIS `train_entropy_minimization_2D.py`.

One network, one forward on the whole batch (labeled + unlabeled). Facts checked in the SSL4MIS 2D script
and `utils/losses.py::entropy_loss` (PROTOCOLS.md §3.1):

- Unsupervised term: `entropy_loss(softmax, C=4)` = mean over batch and pixels of
  -sum_c p log(p + 1e-6) / ln C, on the softmax of the WHOLE batch (labeled slices included).
  SSL4MIS hard-codes C=4 (ACDC); here C is the task's number of classes, identical on ACDC.
- Weight 0.1 * sigmoid_rampup(step // 150, 200), no zero period.
- Supervised 0.5 * (CE + Dice) on the labeled part.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from benchmark.losses import dice_ce_loss, entropy_map
from benchmark.schedules import RampedConsistency
from methods.base import METHODS, Labeled, Method, MethodContext


@dataclass
class EntropyMinConfig(RampedConsistency):
    """Only the SSL4MIS consistency weight: 0.1, ramped over step // 150 for 200 units."""


@METHODS.register("entropy-min", "normalised softmax entropy of the whole batch, weight ramped to 0.1 (SSL4MIS)")
class EntropyMin(Method):
    Config = EntropyMinConfig

    def __init__(self, cfg: EntropyMinConfig, ctx: MethodContext) -> None:
        super().__init__(cfg, ctx)
        self.model = ctx.build_network()
        self.optimizer = ctx.make_optimizer(self.model.parameters())

    def train_step(self, labeled: Labeled, unlabeled: torch.Tensor | None, step: int) -> dict[str, torch.Tensor]:
        n = labeled.image.shape[0]
        images = labeled.image if unlabeled is None else torch.cat([labeled.image, unlabeled])
        logits = self.model(images)
        sup = dice_ce_loss(logits[:n], labeled.label)
        ent = entropy_map(logits.float().softmax(1), normalise=True).mean()
        return self.consistency_update(sup, ent, step, self.optimizer, name="loss_ent")

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
