"""Uncertainty-Rectified Pyramid Consistency (Luo et al., MICCAI 2021 / MedIA 2022) as SSL4MIS
`train_uncertainty_rectified_pyramid_consistency_2D.py`.

Network `UNetURPC` (`benchmark/nets/unet_variants.py`, SSL4MIS `unet_urpc`): 4 outputs (full, 1/2, 1/4, 1/8
decoder scales, all resized to the input size), the 3 side heads perturbed in training. Facts checked in the
SSL4MIS script (PROTOCOLS.md §3.1):

- Supervised = (4 CE + 4 Dice) / 8 on the labeled part = mean over the 4 outputs of 0.5 * (CE + Dice).
- With p_s = softmax of output s (s = 1..4) on the unlabeled part and the mean prediction
  P = (p_1 + p_2 + p_3 + p_4) / 4 (not detached):
      D_s   = sum_c P_c * (log P_c - log p_s,c)            (nn.KLDivLoss(reduction='none')(log p_s, P), summed
                                                            over classes, keepdim -> (B,1,H,W))
      L_s   = mean_{b,c,h,w}((P - p_s)^2 * exp(-D_s)) / (mean_{b,h,w}(exp(-D_s)) + 1e-8) + mean_{b,h,w}(D_s)
      L_con = (L_1 + L_2 + L_3 + L_4) / 4
  The numerator's mean runs over classes too while the denominator's does not (kept as in SSL4MIS).
  Nothing is detached: gradients reach every output through P, D_s and exp(-D_s).
- Weight 0.1 * sigmoid_rampup(step // 150, 200); no zero period at the start.
Inference uses the full-resolution output (SSL4MIS `test_single_volume_ds` takes output[0] in eval mode).
log p_s is computed as log_softmax (the same value as SSL4MIS's torch.log(softmax), without underflow to -inf).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchmark.losses import dice_ce_loss
from benchmark.schedules import RampedConsistency
from methods.base import METHODS, Labeled, Method, MethodContext


@dataclass
class URPCConfig(RampedConsistency):
    """Only the SSL4MIS consistency weight: 0.1, ramped over step // 150 for 200 units."""


def rectified_consistency(logits: list[torch.Tensor]) -> torch.Tensor:
    """URPC's uncertainty-rectified consistency over the pyramid `logits` (each (B,C,H,W)); see module doc."""
    log_probs = [lg.float().log_softmax(1) for lg in logits]
    probs = [lp.exp() for lp in log_probs]
    mean = torch.stack(probs).mean(0)
    terms = []
    for p, lp in zip(probs, log_probs):
        kl = F.kl_div(lp, mean, reduction="none").sum(1, keepdim=True)  # (B,1,H,W)
        w = torch.exp(-kl)
        terms.append(((mean - p) ** 2 * w).mean() / (w.mean() + 1e-8) + kl.mean())
    return torch.stack(terms).mean()


@METHODS.register("urpc", "deep supervision at 4 scales, KL-uncertainty-rectified consistency to the mean prediction (SSL4MIS)")
class URPC(Method):
    Config = URPCConfig
    networks = ("unet",)  # builds its own UNet variant, unet-urpc

    def __init__(self, cfg: URPCConfig, ctx: MethodContext) -> None:
        super().__init__(cfg, ctx)
        self.model = ctx.build_network("unet-urpc")
        self.optimizer = ctx.make_optimizer(self.model.parameters())

    def train_step(self, labeled: Labeled, unlabeled: torch.Tensor | None, step: int) -> dict[str, torch.Tensor]:
        n = labeled.image.shape[0]
        outputs = self.model(torch.cat([labeled.image, unlabeled]))
        sup = torch.stack([dice_ce_loss(o[:n], labeled.label) for o in outputs]).mean()
        cons = rectified_consistency([o[n:] for o in outputs])
        return self.consistency_update(sup, cons, step, self.optimizer)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[0]
