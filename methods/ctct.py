"""Cross Teaching between CNN and Transformer (CTCT; Luo et al., MIDL 2022) as in SSL4MIS
`train_cross_teaching_between_cnn_transformer_2D.py` (PROTOCOLS.md §3.1, HiLab-git/SSL4MIS @06df604).

What the reference does, and this module does too (line numbers: that script at @06df604):
- Two nets: the SSL4MIS UNet (CNN, `net_factory("unet")`, L163) and a Swin-UNet "lite"
  (`benchmark/nets/swin_unet.py`) at the 224 training patch, grayscale repeated to 3 channels (L171).
- The Swin-UNet STARTS FROM ImageNet Swin-T: L173 calls `load_from`, whose config (the lite yaml,
  `PRETRAIN_CKPT: pretrained_ckpt/swin_tiny_patch4_window7_224.pth`) names the ImageNet checkpoint; it loads
  the encoder and the mirrored decoder stages (`benchmark/nets/swin_unet.py`). Ours: `pretrained` = imagenet
  | none | FILE (`benchmark/weights.py`); the Config default is none (a method built outside a suite needs no
  file), every ACDC suite sets `pretrained: imagenet`; `--pretrained none` trains from scratch, tagged so.
  Nothing is downloaded during a run (`bench weights fetch swin-tiny` once).
- One SGD optimiser per net, both lr 0.01 (`--base_lr`, L59), momentum 0.9, wd 1e-4 (L201-204), the same poly
  0.9 for both (L260-264: lr set after the step for the next one, i.e. base * (1 - k / max)^0.9 at 0-based
  step k, as our Trainer), batch 8 labeled + 8 unlabeled (L55, L94), 224 x 224 (L61); the suites'
  `method_train.ctct`.
- Per net: supervised 0.5 * (CE + Dice) on the labeled part (L230-233; Dice = SSL4MIS `DiceLoss` on the
  softmax: per class over the whole batch, 1 - (2 sum pt + 1e-5) / (sum p^2 + sum t + 1e-5), mean over the 4
  classes, background included), plus the cross-teaching term: Dice (only, no CE) of its softmax on the
  UNLABELED part against the OTHER net's argmax (no gradient through the pseudo-label; L235-243: the CNN
  learns from the Swin-UNet's argmax and vice versa), weighted by 0.1 * sigmoid_rampup(step // 150, 200)
  (L102-105, L143-145, L227-228; the 0-based step before its increment, as ours). The sum of both nets'
  losses is backpropagated once and both optimisers step (L245-256; each net's parameters only reach its own
  terms).

Open choice: which net predicts. The reference validates and saves both (`unet_best_model1.pth` = CNN,
`unet_best_model2.pth` = Swin-UNet); we predict with the CNN by default (`predict_with: cnn`), which the
paper's UNet-based comparison tables suggest, and `predict_with: transformer` scores the Swin-UNet. Both nets
are in every checkpoint.

`CNNTransformerPair` (the two nets, their optimisers, prediction) is shared with AdvMIM (`methods/advmim.py`),
as is `benchmark.losses.pseudo_targets` (the other net's argmax and certainty).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from benchmark.config import ConfigError
from benchmark.losses import dice_ce_loss, dice_loss, pseudo_targets
from benchmark.schedules import RampedConsistency
from benchmark.weights import normalise
from methods.base import METHODS, Labeled, Method, MethodContext

PREDICTORS = ("cnn", "transformer")


class CNNTransformerPair(Method):
    """Base of the CNN + Swin-UNet cross-teaching methods: `self.cnn` (SSL4MIS UNet) and `self.transformer`
    (Swin-UNet at the training patch size, started from `cfg.pretrained`: imagenet | none | FILE), one
    optimiser each.
    `transformer_options` are extra Swin-UNet constructor options (AdvMIM: mask tokens); `build_cnn=False`
    leaves the CNN out (AdvMIM's labeled-only ablation)."""
    networks = ("unet",)  # the CNN; the transformer is swin-unet
    also_builds = ("swin-unet",)

    def __init__(self, cfg: Any, ctx: MethodContext, build_cnn: bool = True, **transformer_options: Any) -> None:
        super().__init__(cfg, ctx)
        self.transformer = ctx.build_network("swin-unet", img_size=ctx.patch[0], pretrained=cfg.pretrained,
                                             **transformer_options)
        self.transformer_optimizer = ctx.make_optimizer(self.transformer.parameters())
        if build_cnn:
            self.cnn = ctx.build_network("unet")
            self.cnn_optimizer = ctx.make_optimizer(self.cnn.parameters())

    @property
    def prediction_net(self) -> nn.Module:
        return self.transformer

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.prediction_net(x)


def cross_teaching_dice(cnn_logits: torch.Tensor, transformer_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CTCT's cross terms: (Dice(CNN softmax, Swin argmax), Dice(Swin softmax, CNN argmax)); targets detached."""
    cnn_target, _ = pseudo_targets(transformer_logits)
    transformer_target, _ = pseudo_targets(cnn_logits)
    return (dice_loss(cnn_logits.float().softmax(1), cnn_target),
            dice_loss(transformer_logits.float().softmax(1), transformer_target))


@dataclass
class CTCTConfig(RampedConsistency):
    pretrained: str = "none"         # Swin-UNet start: imagenet (the reference) | none | FILE; suites: imagenet
    predict_with: str = "cnn"        # cnn | transformer (see the module docstring)

    def __post_init__(self) -> None:
        self.pretrained = normalise(self.pretrained)
        if self.predict_with not in PREDICTORS:
            raise ConfigError(f"ctct: predict_with must be one of {PREDICTORS} (got {self.predict_with!r})")


@METHODS.register("ctct", "cross teaching UNet <-> Swin-UNet: Dice on each other's argmax, ramped to 0.1 (SSL4MIS)")
class CTCT(CNNTransformerPair):
    Config = CTCTConfig

    @property
    def prediction_net(self) -> nn.Module:
        return self.cnn if self.cfg.predict_with == "cnn" else self.transformer

    def train_step(self, labeled: Labeled, unlabeled: torch.Tensor | None, step: int) -> dict[str, torch.Tensor]:
        if unlabeled is None:
            raise ValueError("CTCT needs unlabeled images in every batch (batch_size > labeled_batch_size)")
        n = labeled.image.shape[0]
        x = torch.cat([labeled.image, unlabeled])
        cnn_logits, swin_logits = self.cnn(x), self.transformer(x)
        sup_cnn = dice_ce_loss(cnn_logits[:n], labeled.label)
        sup_swin = dice_ce_loss(swin_logits[:n], labeled.label)
        cross_cnn, cross_swin = cross_teaching_dice(cnn_logits[n:], swin_logits[n:])
        weight = self.cfg.consistency_weight(step)
        loss_cnn, loss_swin = sup_cnn + weight * cross_cnn, sup_swin + weight * cross_swin
        loss = loss_cnn + loss_swin
        self.update(loss, self.cnn_optimizer, self.transformer_optimizer)
        return {"loss": loss.detach(), "loss_cnn": loss_cnn.detach(), "loss_transformer": loss_swin.detach(),
                "loss_sup_cnn": sup_cnn.detach(), "loss_sup_transformer": sup_swin.detach(),
                "loss_cross_cnn": cross_cnn.detach(), "loss_cross_transformer": cross_swin.detach(),
                "cons_weight": torch.tensor(weight)}
