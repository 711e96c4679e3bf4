"""Cross Pseudo Supervision (Chen et al., CVPR 2021) as in SSL4MIS `train_cross_pseudo_supervision_2D.py`
(PROTOCOLS.md §3.1, checked against HiLab-git/SSL4MIS @06df604).

What the reference does, and this module does too:
- Two UNets built by two separate factory calls, so each gets its own default PyTorch initialisation. The
  script defines kaiming/xavier init helpers; an older version applied them (kaiming to net1, xavier to
  net2), but commit 9a74d15 "fixed a bug for CPS" removed the calls, so at @06df604 they are unused.
- One SGD optimiser per net. Both nets see the whole batch (labeled + unlabeled) in one forward pass each.
- Supervised loss per net: 0.5 * (CE + Dice) on the labeled part.
- Cross pseudo supervision on the UNLABELED part only (`outputs[labeled_bs:]`): CE of net1's logits against
  the argmax of net2's (detached) softmax, and vice versa.
- model_i_loss = sup_i + w * cps_i with w = 0.1 * sigmoid_rampup(step // 150, 200); the total loss is
  model1_loss + model2_loss, backpropagated once, then both optimisers step. Since each net's parameters
  only reach its own terms (the pseudo-labels are detached), this equals stepping each net on its own loss.
- lr: the script sets `base * (1 - iter/max)^0.9` after incrementing the counter, so step t (0-based) runs
  at poly(t), step 0 at the base lr. The Trainer's poly schedule (lr at step t = poly(t), 0-based) is the
  same thing; it is the convention here.

Prediction: the reference validates both nets every 200 iterations and keeps `unet_best_model1.pth` and
`unet_best_model2.pth`; its `test_2D_fully.py` loads `unet_best_model.pth`, which this script never writes,
so the repo does not say which net is reported. We predict with net1 (`model1`); both nets are saved in
every checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchmark.losses import dice_ce_loss
from benchmark.schedules import RampedConsistency
from methods.base import METHODS, Labeled, Method, MethodContext


@dataclass
class CPSConfig(RampedConsistency):
    """Only the SSL4MIS consistency weight: 0.1, ramped over step // 150 for 200 units."""


def cross_pseudo_losses(logits1: torch.Tensor, logits2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(CE(logits1, argmax logits2), CE(logits2, argmax logits1)); the pseudo-labels carry no gradient."""
    pseudo1 = logits1.detach().argmax(1)
    pseudo2 = logits2.detach().argmax(1)
    return F.cross_entropy(logits1.float(), pseudo2), F.cross_entropy(logits2.float(), pseudo1)


@METHODS.register("cps", "two UNets, cross CE on each other's argmax, ramped to 0.1 (SSL4MIS)")
class CPS(Method):
    Config = CPSConfig

    def __init__(self, cfg: CPSConfig, ctx: MethodContext) -> None:
        super().__init__(cfg, ctx)
        self.model1 = ctx.build_network()
        self.model2 = ctx.build_network()
        self.optimizer1 = ctx.make_optimizer(self.model1.parameters())
        self.optimizer2 = ctx.make_optimizer(self.model2.parameters())

    def train_step(self, labeled: Labeled, unlabeled: torch.Tensor | None, step: int) -> dict[str, torch.Tensor]:
        if unlabeled is None:
            raise ValueError("CPS needs unlabeled images in every batch (batch_size > labeled_batch_size)")
        cfg, n = self.cfg, labeled.image.shape[0]
        x = torch.cat([labeled.image, unlabeled])
        logits1, logits2 = self.model1(x), self.model2(x)
        sup1 = dice_ce_loss(logits1[:n], labeled.label)
        sup2 = dice_ce_loss(logits2[:n], labeled.label)
        cps1, cps2 = cross_pseudo_losses(logits1[n:], logits2[n:])
        weight = cfg.consistency_weight(step)
        loss1, loss2 = sup1 + weight * cps1, sup2 + weight * cps2
        loss = loss1 + loss2
        self.update(loss, self.optimizer1, self.optimizer2)
        return {"loss": loss.detach(), "loss1": loss1.detach(), "loss2": loss2.detach(),
                "loss_sup1": sup1.detach(), "loss_sup2": sup2.detach(),
                "loss_cps1": cps1.detach(), "loss_cps2": cps2.detach(), "cons_weight": torch.tensor(weight)}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model1(x)
