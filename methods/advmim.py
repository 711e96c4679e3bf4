"""AdvMIM: adversarial masked image modeling (Zhu et al., MICCAI 2025; ../shared/papers/advmim.md), paper
first, with the released code's loss pairing as `loss_variant: released` (zlheui/AdvMIM @1652af8 `train.py`,
`networks/swin_transformer_unet_skip_expand_decoder_sys.py`, `networks/unet.py`; PROTOCOLS.md §3.2 — that
code is a FLARE25 adaptation, the paper's ACDC code is not public).

Networks: a Swin-UNet S (lite, 224; predicts at test time) and the SSL4MIS UNet C (training only), cross
teaching each other (`CNNTransformerPair`, shared with CTCT); a `PatchDiscriminator` per network (the "five-
layer CNN": four 4x4/2 convs 64-128-256-512 with LeakyReLU 0.2, then a 4x4/2 conv to 1 channel, 7x7 map at 224).

Losses of S per step (labeled x^l, y^l; unlabeled x^u), paper variant (Eqs. 1-8):
- L_seg^l = CE + Dice on S(x^l) (weight 1 each, no 0.5 factor: Eq. 1 and the released code);
- L_seg^u = w CE(y^, S(x^u)) + Dice(y^, S(x^u)), y^ = argmax C(x^u), w = max softmax of C(x^u) per pixel,
  both detached; w multiplies the CE only (Eq. 2);
- L_mdl^l = CE + Dice on S(x^ml); L_mdl^u = w CE + Dice on S(x^mu) with the same y^, w from C's ORIGINAL
  (unmasked) prediction (Eqs. 3-4);
- lambda_adv * L_adv = 0.001 * mean((D_s(softmax S(x^mu)) - 1)^2) (Eq. 7);
- D_s minimises mean((D_s(softmax S(x^l)) - 1)^2) + mean(D_s(softmax S(x^mu))^2) (Eq. 6): real = labeled
  original prediction, fake = masked unlabeled prediction, both detached.
C has the same terms with the roles swapped (its pseudo-labels come from S) when `cnn_extension` is on (§2.4);
with it off, C only has L_seg^l + L_seg^u (Table 1, rows 2-4).

Masking (§2.2, released code): per sample, exactly ceil(mask_ratio * 49) of the 7 x 7 grid of 32-pixel
blocks of a 224 input (35 at 0.7), drawn anew on every step, independently for S and C. S: the masked patch
tokens are replaced right after the patch embedding by learnable mask tokens, one per token position (the
net has no absolute position embedding; a per-position token = the paper's shared token + learned position
embedding); C: the first conv block's output (16 channels, full resolution, also the first skip) is replaced
by one learnable 16-channel token at masked pixels.

`loss_variant: released` (PROTOCOLS.md §3.2): L_seg^u becomes 0.1 * Dice (no CE, no certainty weight);
L_mdl^u becomes the certainty-weighted CE only, normalised by sum(w); S's L_mdl^l is CE only (C's stays
CE + Dice); the discriminator loss is scaled by 0.1. Both variants clip the gradient norms of all four nets
at `grad_clip` = 5 (the released code's value): the paper does not mention clipping, but without it the paper
variant diverged on real ACDC (8 + 8 at 224, lr 0.05, seed 0: the CNN's discriminator gradient norm grew
from 3 to 2.7e4 by step 7, losses NaN at step 9); `grad_clip: 0` turns it off.

Choices the paper leaves open (what we do):
- the weighted CE's normalisation: mean(w * CE) for the paper (an expectation), sum(w CE)/sum(w) released;
- mask tokens' init: trunc-normal std 0.02 (released, for S; the same for C's token);
- optimiser of the discriminators: the segmenters' (SGD 0.05, momentum 0.9, wd 1e-4, poly), as released;
- update order: both segmenters step on the summed loss (the discriminators frozen), then each discriminator
  steps on this step's detached predictions;
- separate masked forward passes on the labeled + unlabeled batch (the released nets run the masked branch
  inside the same call, which is the same computation);
- no consistency ramp-up (Eq. 8 has none; the released code neither);
- Table 1's columns say which terms each row uses per network, but the text copy flattens the S/C marks;
  our presets read the rows as: labeled-only = S on L_seg^l alone (no C); cross-teaching = + L_seg^u for S and
  C; masked-domain = + L_mdl for S; adversarial = + L_adv for S; full = + L_mdl and L_adv for C (extension).
- ImageNet weights for S: the paper does not say; the released code starts S from ImageNet Swin-T
  (`train.py` L118-128 builds `MiMSwinUnet` and calls `load_from`; its lite yaml and `config.py` L50 name
  `pretrained_ckpt/swin_tiny_patch4_window7_224.pth`; `load_from` in `networks/vision_transformer.py` loads
  the encoder and the mirrored decoder stages, as SSL4MIS's; the mask tokens and C keep their init), and so
  does CTCT, which the paper follows. `pretrained` = imagenet | none | FILE (`benchmark/weights.py`): the
  Config default is none (no file needed outside a suite), the ACDC suites and advmim-ablation set imagenet;
  the golden-loss regression check and `--pretrained none` train from scratch, and the runs are tagged.
Logged terms: loss_{seg_l,seg_u,mdl_l,mdl_u,adv}_{s,c} (adv unweighted; the nets' totals loss_s, loss_c apply
lambda_adv), loss_d_{s,c} (as minimised) and loss = loss_s + loss_c. A preset without a term does not log it.
Checkpoint, evaluation set and augmentation are the Trainer's / suite's (paper: random crop 224, flip and
rotation; PROTOCOLS.md §3.2).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from timm.layers import trunc_normal_

from benchmark.config import ConfigError
from benchmark.losses import (dice_loss, lsgan_discriminator_loss, lsgan_generator_loss, pseudo_targets,
                              weighted_ce)
from benchmark.masks import random_block_masks, upsample_block_mask
from benchmark.nets.unet import CHANNELS
from benchmark.weights import normalise
from methods.base import METHODS, Labeled, MethodContext
from methods.ctct import CNNTransformerPair

VARIANTS = ("paper", "released")
RELEASED_UNLABELED_DICE = 0.1
RELEASED_D_SCALE = 0.1
RELEASED_GRAD_CLIP = 5.0


@dataclass
class AdvMIMConfig:
    mask_ratio: float = 0.7          # rho (Table 3)
    mask_block: int = 32             # pixels per mask block (7 x 7 blocks at 224)
    lambda_adv: float = 0.001        # Table 4
    loss_variant: str = "paper"      # paper | released (see the module docstring)
    cross_teaching: bool = True      # L_seg^u (needs the CNN)
    masked_learning: bool = True     # L_mdl^l + L_mdl^u for S
    adversarial: bool = True         # L_adv for S, with its discriminator
    cnn_extension: bool = True       # the masked and adversarial terms for C too (§2.4)
    pretrained: str = "none"         # S's start: imagenet (released code) | none | FILE; suites: imagenet
    grad_clip: float = RELEASED_GRAD_CLIP   # max gradient norm of all four nets (paper: silent); 0 = off

    def __post_init__(self) -> None:
        self.pretrained = normalise(self.pretrained)
        if self.loss_variant not in VARIANTS:
            raise ConfigError(f"advmim: loss_variant must be one of {VARIANTS} (got {self.loss_variant!r})")
        if not self.cross_teaching and (self.masked_learning or self.adversarial or self.cnn_extension):
            raise ConfigError("advmim: masked_learning, adversarial and cnn_extension need cross_teaching "
                              "(the unlabeled terms use the other network's pseudo-labels)")
        if self.grad_clip < 0:
            raise ConfigError(f"advmim: grad_clip must be >= 0, 0 = no clipping (got {self.grad_clip})")
        if not 0.0 < self.mask_ratio <= 1.0:
            raise ConfigError(f"advmim: mask_ratio must be in (0, 1] (got {self.mask_ratio})")


def supervised_loss(logits: torch.Tensor, target: torch.Tensor, dice: bool = True) -> torch.Tensor:
    """CE + Dice (Eqs. 1, 3); CE only where the released code drops the Dice (S's masked labeled term)."""
    ce = weighted_ce(logits, target)
    return ce + dice_loss(logits.float().softmax(1), target) if dice else ce


def unlabeled_loss(logits: torch.Tensor, target: torch.Tensor, certainty: torch.Tensor, masked: bool,
                   released: bool = False) -> torch.Tensor:
    """Eqs. 2 and 4: w CE + Dice against the other net's argmax. Released: 0.1 Dice on the original input,
    the sum-normalised w CE on the masked input."""
    probs = logits.float().softmax(1)
    if not released:
        return weighted_ce(logits, target, certainty) + dice_loss(probs, target)
    if masked:
        return weighted_ce(logits, target, certainty, normalise=True)
    return RELEASED_UNLABELED_DICE * dice_loss(probs, target)


class FeatureMaskToken(nn.Module):
    """One learnable C-channel token written into a feature map where a block mask is set (AdvMIM's CNN)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1, channels, 1, 1))
        trunc_normal_(self.token, std=0.02)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = upsample_block_mask(mask, features.shape[-2:]).unsqueeze(1).to(features.dtype)
        return features * (1 - m) + self.token.to(features.dtype) * m


@METHODS.register("advmim", "Swin-UNet + UNet cross teaching, masked domain learning, LSGAN masked-domain "
                            "adaptation (Zhu et al. 2025)")
class AdvMIM(CNNTransformerPair):
    Config = AdvMIMConfig
    presets = {   # AdvMIM Table 1 rows, and the released code's loss pairing
        "labeled-only": {"cross_teaching": False, "masked_learning": False, "adversarial": False,
                         "cnn_extension": False},
        "cross-teaching": {"masked_learning": False, "adversarial": False, "cnn_extension": False},
        "masked-domain": {"adversarial": False, "cnn_extension": False},
        "adversarial": {"cnn_extension": False},
        "full": {},
        "released": {"loss_variant": "released"},
    }
    search_space = {"mask_ratio": "uniform:0.1:0.9", "lambda_adv": "loguniform:1e-4:1"}
    search_grids = {"mask_ratio": [0.1, 0.3, 0.5, 0.7, 0.9],            # Table 3
                    "lambda_adv": [1e-4, 1e-3, 1e-2, 1e-1, 1.0]}        # Table 4

    def __init__(self, cfg: AdvMIMConfig, ctx: MethodContext) -> None:
        masks_s = cfg.masked_learning or cfg.adversarial
        super().__init__(cfg, ctx, build_cnn=cfg.cross_teaching, mask_tokens=masks_s)
        self.released = cfg.loss_variant == "released"
        self.masked_nets = (["s"] if masks_s else []) + (["c"] if cfg.cnn_extension and masks_s else [])
        if "c" in self.masked_nets:
            self.cnn_mask_token = FeatureMaskToken(CHANNELS[0])
            self.cnn_optimizer.add_param_group({"params": list(self.cnn_mask_token.parameters())})
        adv_nets = [k for k in self.masked_nets if cfg.adversarial]
        if "s" in adv_nets:
            self.discriminator_s = ctx.build_network("patch-discriminator")
            self.d_optimizer_s = ctx.make_optimizer(self.discriminator_s.parameters())
        if "c" in adv_nets:
            self.discriminator_c = ctx.build_network("patch-discriminator")
            self.d_optimizer_c = ctx.make_optimizer(self.discriminator_c.parameters())

    def masked_forward(self, net: str, x: torch.Tensor) -> torch.Tensor:
        grid = (x.shape[-2] // self.cfg.mask_block, x.shape[-1] // self.cfg.mask_block)
        mask = random_block_masks(x.shape[0], grid, self.cfg.mask_ratio, x.device)
        if net == "s":
            return self.transformer(x, mask)
        return self.cnn(x, after_first=lambda f: self.cnn_mask_token(f, mask))

    def discriminators(self) -> dict[str, tuple[nn.Module, torch.optim.Optimizer]]:
        return {k: (getattr(self, f"discriminator_{k}"), getattr(self, f"d_optimizer_{k}"))
                for k in ("s", "c") if hasattr(self, f"discriminator_{k}")}

    # -------------------------------------------------------------------------------------- the step
    def train_step(self, labeled: Labeled, unlabeled: torch.Tensor | None, step: int) -> dict[str, torch.Tensor]:
        cfg, n, y = self.cfg, labeled.image.shape[0], labeled.label
        if unlabeled is None and cfg.cross_teaching:
            raise ValueError("AdvMIM needs unlabeled images in every batch (batch_size > labeled_batch_size)")
        x = labeled.image if not cfg.cross_teaching else torch.cat([labeled.image, unlabeled])
        discs = self.discriminators()
        for d, _ in discs.values():
            d.requires_grad_(False)
        logits = {"s": self.transformer(x)}
        terms: dict[str, torch.Tensor] = {"seg_l_s": supervised_loss(logits["s"][:n], y)}
        targets = {}
        if cfg.cross_teaching:
            logits["c"] = self.cnn(x)
            terms["seg_l_c"] = supervised_loss(logits["c"][:n], y)
            targets = {"s": pseudo_targets(logits["c"][n:]), "c": pseudo_targets(logits["s"][n:])}
            for k in ("s", "c"):
                terms[f"seg_u_{k}"] = unlabeled_loss(logits[k][n:], *targets[k], masked=False, released=self.released)
        fakes = {}
        for k in self.masked_nets:
            masked = self.masked_forward(k, x)
            if cfg.masked_learning:
                terms[f"mdl_l_{k}"] = supervised_loss(masked[:n], y, dice=not (self.released and k == "s"))
                terms[f"mdl_u_{k}"] = unlabeled_loss(masked[n:], *targets[k], masked=True, released=self.released)
            if k in discs:
                fakes[k] = masked[n:].float().softmax(1)
                terms[f"adv_{k}"] = lsgan_generator_loss(discs[k][0](fakes[k]))
        totals = {k: sum(cfg.lambda_adv * v if name.startswith("adv_") else v
                         for name, v in terms.items() if name.endswith(f"_{k}")) for k in logits}
        loss = sum(totals.values())
        optimizers = [self.transformer_optimizer, *([self.cnn_optimizer] if "c" in logits else [])]
        self.update(loss, *optimizers, max_grad_norm=cfg.grad_clip)

        out = {"loss": loss.detach(), **{f"loss_{k}": v.detach() for k, v in totals.items()},
               **{f"loss_{name}": v.detach() for name, v in terms.items()}}
        for k, (d, opt) in discs.items():   # real = labeled original prediction, fake = masked unlabeled
            d.requires_grad_(True)
            real = logits[k][:n].detach().float().softmax(1)
            d_loss = lsgan_discriminator_loss(d(real), d(fakes[k].detach()))
            if self.released:
                d_loss = RELEASED_D_SCALE * d_loss
            self.update(d_loss, opt, max_grad_norm=cfg.grad_clip)
            out[f"loss_d_{k}"] = d_loss.detach()
        return out
