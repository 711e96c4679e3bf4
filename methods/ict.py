"""Interpolation Consistency Training (Verma et al., IJCAI 2019) as in SSL4MIS
`train_interpolation_consistency_training_2D.py` (PROTOCOLS.md §3.1, checked against HiLab-git/SSL4MIS @06df604).

What the reference does, and this module does too:
- Student plus an EMA teacher; the teacher is a second, independently initialised network (not a copy),
  updated after every step with `alpha = min(1 - 1/(step+1), 0.99)` (step 0 makes it a copy of the student),
  never given gradients, and left in train mode (dropout and batch statistics on).
- With k = labeled_bs // 2, the unlabeled part is split into u0 = u[:k] and u1 = u[k:]; one mixing factor
  PER SAMPLE, lam ~ Beta(ict_alpha, ict_alpha) with ict_alpha = 0.2, shape (k, 1, 1, 1);
  mixed = u0 * (1 - lam) + u1 * lam. Only these k mixed images are used (6 with batch 24 = 12 + 12).
- The student sees cat([labeled, mixed]) in one forward pass. The teacher sees u0 and u1 in two separate
  passes (so batch statistics are per half); target = softmax(T(u0)) * (1 - lam) + softmax(T(u1)) * lam.
- loss = 0.5 * (CE + Dice) on the labeled part + w * mean((softmax(student(mixed)) - target)^2),
  w = 0.1 * sigmoid_rampup(step // 150, 200). Inference uses the student.

Departures:
- Batch shapes: the reference takes u1 = u[k:], which only works when the unlabeled part has exactly
  labeled_bs images (its defaults, 12 + 12). Here u1 = u[k:2k], so k = labeled_bs // 2 mixed images for any
  batch with at least 2k unlabeled images (extra unlabeled images are unused); fewer raises ValueError.
- lam is drawn from torch's RNG (`torch.distributions.Beta`) instead of numpy's: same distribution, and it
  follows the Trainer's seeding and resume like everything else.
- lr: the reference sets `base * (1 - iter/max)^0.9` BEFORE incrementing its counter, so its step t >= 1
  runs at poly(t - 1). The Trainer's poly schedule (step t at poly(t)) is the convention here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from benchmark.ema import ema_update
from benchmark.losses import dice_ce_loss
from benchmark.schedules import RampedConsistency
from methods.base import METHODS, Labeled, Method, MethodContext


@dataclass
class ICTConfig(RampedConsistency):
    ict_alpha: float = 0.2
    ema_decay: float = 0.99


def mixup(a: torch.Tensor, b: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """a * (1 - lam) + b * lam (the reference's orientation: lam weighs the second operand)."""
    return a * (1.0 - lam) + b * lam


def unlabeled_halves(unlabeled: torch.Tensor, labeled_bs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The two halves that get mixed: u[:k] and u[k:2k] with k = labeled_bs // 2."""
    k = labeled_bs // 2
    if k < 1 or unlabeled.shape[0] < 2 * k:
        raise ValueError(f"ICT mixes labeled_bs // 2 = {k} pairs of unlabeled images: it needs k >= 1 and at "
                         f"least {2 * k} unlabeled images per batch, got {unlabeled.shape[0]}")
    return unlabeled[:k], unlabeled[k:2 * k]


@torch.no_grad()
def interpolation_target(teacher: nn.Module, u0: torch.Tensor, u1: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """The teacher's softmaxes of the two halves (two separate passes), mixed with the same lam."""
    return mixup(teacher(u0).float().softmax(1), teacher(u1).float().softmax(1), lam)


@METHODS.register("ict", "EMA teacher, Beta(0.2,0.2) mixup of unlabeled pairs, softmax-MSE to the mixed "
                         "target ramped to 0.1 (SSL4MIS)")
class ICT(Method):
    Config = ICTConfig

    def __init__(self, cfg: ICTConfig, ctx: MethodContext) -> None:
        super().__init__(cfg, ctx)
        self.model = ctx.build_network()
        self.teacher = ctx.build_network()  # its own initialisation, as the reference's create_model(ema=True)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.optimizer = ctx.make_optimizer(self.model.parameters())

    def sample_lambda(self, k: int, like: torch.Tensor) -> torch.Tensor:
        """k per-sample mixing factors ~ Beta(ict_alpha, ict_alpha), shaped (k, 1, 1, 1)."""
        alpha = torch.tensor(float(self.cfg.ict_alpha))
        lam = torch.distributions.Beta(alpha, alpha).sample((k,))
        return lam.view(k, 1, 1, 1).to(device=like.device, dtype=like.dtype)

    def train_step(self, labeled: Labeled, unlabeled: torch.Tensor | None, step: int) -> dict[str, torch.Tensor]:
        if unlabeled is None:
            raise ValueError("ICT needs unlabeled images in every batch (batch_size > labeled_batch_size)")
        cfg, n = self.cfg, labeled.image.shape[0]
        u0, u1 = unlabeled_halves(unlabeled, n)
        lam = self.sample_lambda(u0.shape[0], u0)
        mixed = mixup(u0, u1, lam)
        logits = self.model(torch.cat([labeled.image, mixed]))
        target = interpolation_target(self.teacher, u0, u1, lam)
        sup = dice_ce_loss(logits[:n], labeled.label)
        cons = torch.mean((logits[n:].float().softmax(1) - target) ** 2)
        out = self.consistency_update(sup, cons, step, self.optimizer)
        ema_update(self.teacher, self.model, cfg.ema_decay, step)
        return out

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
