"""Cross-Consistency Training (Ouali et al., CVPR 2020) as SSL4MIS `train_cross_consistency_training_2D.py`.

Network `UNetCCT` (`benchmark/nets/unet_variants.py`, SSL4MIS `unet_cct`): one encoder, a main decoder and 3
auxiliary decoders fed perturbed encoder features (feature noise, dropout, feature dropout). Facts checked in
the SSL4MIS script (PROTOCOLS.md §3.1):

- One forward of the whole batch (labeled + unlabeled) gives (main, aux1, aux2, aux3).
- Supervised = (CE_main + CE_aux1..3 + Dice_main + Dice_aux1..3) / 8 on the labeled part, i.e. the mean over
  the 4 outputs of 0.5 * (CE + Dice).
- Consistency = mean over the 3 auxiliary decoders of mean((softmax(main) - softmax(aux_k))^2) on the
  unlabeled part. The main softmax is NOT detached: the gradient flows into both decoders.
- Weight 0.1 * sigmoid_rampup(step // 150, 200); no zero period at the start.
Inference uses the main decoder only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from benchmark.losses import dice_ce_loss, softmax_mse
from benchmark.schedules import RampedConsistency
from methods.base import METHODS, Labeled, Method, MethodContext


@dataclass
class CCTConfig(RampedConsistency):
    """Only the SSL4MIS consistency weight: 0.1, ramped over step // 150 for 200 units."""


def cct_consistency(main_logits: torch.Tensor, aux_logits: list[torch.Tensor]) -> torch.Tensor:
    """Mean over auxiliary outputs of the mean squared softmax difference to the (not detached) main output."""
    return torch.stack([softmax_mse(aux, main_logits) for aux in aux_logits]).mean()


@METHODS.register("cct", "shared encoder, 3 auxiliary decoders on perturbed features, softmax-MSE to the main decoder (SSL4MIS)")
class CCT(Method):
    Config = CCTConfig
    networks = ("unet",)  # builds its own UNet variant, unet-cct

    def __init__(self, cfg: CCTConfig, ctx: MethodContext) -> None:
        super().__init__(cfg, ctx)
        self.model = ctx.build_network("unet-cct")
        self.optimizer = ctx.make_optimizer(self.model.parameters())

    def train_step(self, labeled: Labeled, unlabeled: torch.Tensor | None, step: int) -> dict[str, torch.Tensor]:
        n = labeled.image.shape[0]
        outputs = self.model(torch.cat([labeled.image, unlabeled]))
        sup = torch.stack([dice_ce_loss(o[:n], labeled.label) for o in outputs]).mean()
        cons = cct_consistency(outputs[0][n:], [o[n:] for o in outputs[1:]])
        return self.consistency_update(sup, cons, step, self.optimizer)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_main(x)
