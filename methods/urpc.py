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

3D (LA). There is NO public LA URPC (PROTOCOLS-3D-DATASETS.md §A.2, §A.3: the LA URPC rows of SS-Net / CML
are re-implementations whose code is not released). The nearest reference is SSL4MIS's BraTS script
HiLab-git/SSL4MIS@06df604:code/train_uncertainty_rectified_pyramid_consistency_3D.py ("the 3D script"):
- Supervised = (4 CE + 4 Dice) / 8 on the labeled part (L139-158), SSL4MIS `DiceLoss` (all classes): the same
  as 2D, so the same `dice_ce_loss` mean.
- Consistency (L160-202): P = mean of the 4 softmax maps over the whole batch, sliced to the unlabeled part;
  D_s = sum_c KLDiv(log p_s, P) keepdim; L_s = mean((P - p_s)^2 exp(-D_s)) / (mean(exp(-D_s)) + 1e-8) + mean(D_s);
  mean over the 4 heads: exactly the 2D formula, so `rectified_consistency` is reused; it is n-D as written
  (sum over dim 1, means over everything).
- Weight 0.1 * sigmoid_rampup(iter // 150, 400) (L61-64, L179), iter before its increment.
- Network `unet_3D_dv_semi` (4 heads, 1x1x1 + trilinear up-sampling, decoder-path Dropout3d); inference with
  the full-resolution head dsv1 (PROTOCOLS-3D-DATASETS.md §A.3).
What this module does in 3D, and every adaptation:
- network `vnet-urpc` (`benchmark/nets/vnet_variants.py`): the LA V-Net trunk instead of the 3D UNet, dv_semi's
  head placement (1x1x1 convs on the decoder stage outputs at 1/8, 1/4, 1/2 + the V-Net's full-resolution
  head, trilinear up-sampling to the input size), the V-Net's own dropout kept and Dropout3d 0.5 / 0.3 / 0.2
  on the inputs of the three coarse heads only (dv_semi drops out the decoder path itself; see the network's
  docstring for why). Built with the suite's `network_options` (width, has_dropout). Inference: the
  full-resolution head, output[0].
- loss: as the 3D script (= 2D), with num_classes from the card (2 on LA; the 3D script hard-codes 3 for
  binary BraTS, L81).
- schedule, chosen for LA (suite tables, not Config defaults, which stay the 2D ones): weight 0.1 (the 3D and
  2D scripts' value) ramped over iter // 150 for 40 units (full at iteration 6000) instead of the 3D
  script's 400, which on its own 30k-iteration BraTS run never exceeds 0.1 * exp(-1.25) ~ 0.029; 40 is the
  ramp every LA reference uses (UA-MT, SASSNet, DTC, MC-Net, SS-Net). Batch 2+2, 15000 iterations, SGD 0.01
  x0.1 every 2500, as SS-Net's LA protocol, under which CML Table 1 says every competitor (URPC included) was
  run; the 3D script's lr 0.1 with poly decay and 96^3 patches are BraTS settings and are not used.
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
    """URPC's uncertainty-rectified consistency over the pyramid `logits` (each (B,C,*spatial)); see module doc."""
    log_probs = [lg.float().log_softmax(1) for lg in logits]
    probs = [lp.exp() for lp in log_probs]
    mean = torch.stack(probs).mean(0)
    terms = []
    for p, lp in zip(probs, log_probs):
        kl = F.kl_div(lp, mean, reduction="none").sum(1, keepdim=True)  # (B,1,*spatial)
        w = torch.exp(-kl)
        terms.append(((mean - p) ** 2 * w).mean() / (w.mean() + 1e-8) + kl.mean())
    return torch.stack(terms).mean()


@METHODS.register("urpc", "deep supervision at 4 scales, KL-uncertainty-rectified consistency to the mean prediction (SSL4MIS)")
class URPC(Method):
    Config = URPCConfig
    dims = (2, 3)
    networks = ("unet", "vnet")  # builds its own variant: unet-urpc (2D), vnet-urpc (3D)

    def __init__(self, cfg: URPCConfig, ctx: MethodContext) -> None:
        super().__init__(cfg, ctx)
        if ctx.spatial_dims == 3:
            self.model = ctx.build_network("vnet-urpc", **ctx.network_options)
        else:
            self.model = ctx.build_network("unet-urpc")
        self.optimizer = ctx.make_optimizer(self.model.parameters())

    def train_step(self, labeled: Labeled, unlabeled: torch.Tensor | None, step: int) -> dict[str, torch.Tensor]:
        n = labeled.image.shape[0]
        outputs = self.model(torch.cat([labeled.image, unlabeled]))
        sup = torch.stack([dice_ce_loss(o[:n], labeled.label) for o in outputs]).mean()
        cons = rectified_consistency([o[n:] for o in outputs])
        return self.consistency_update(sup, cons, step, self.optimizer)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        if self.ctx.spatial_dims == 3:
            return self.model.full_resolution(x)   # = output[0], without computing the side heads
        return self.model(x)[0]
