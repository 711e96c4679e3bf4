"""FixMatch (Sohn et al., NeurIPS 2020) adapted to segmentation, and the weak/strong views SemSim reuses.

Paper variant (default), per pixel instead of per image:
- weak view  x^w = random left-right flip of the loader's (already augmented) unlabeled image;
- strong view x^s = colour transform (brightness/contrast jitter, + saturation on RGB input, p 0.8) + Gaussian blur (p 0.5) of x^w, then
  CutMix (p 0.5, box area 2-40 %, aspect 0.3-3.3) with another unlabeled image of the batch;
- pseudo-label = argmax of the weak prediction (no gradient), mixed by the same CutMix box; the unsupervised
  loss counts only pixels whose weak max probability is >= tau (0.95, the paper's value);
- L = sup_weight * L_s + lambda_u * L_u with L_s = 0.5 (CE + Dice) (the harness's supervised loss) and
  L_u = CE (Sohn) or thresholded Dice (`unsup_loss="dice"`, UniMatch's medical FixMatch and SemSim Eq. 1).
  Preset `unimatch`: Dice, (L_s + L_u) / 2.
Sohn's strong augmentation is RandAugment/CTAugment + Cutout on natural images; for segmentation the
colour + CutMix recipe of UniMatch (LiheYoung/UniMatch `more-scenarios/medical/`, PROTOCOLS.md §3.8) and
SemSim §IV-B is used. Departures: CutMix pastes from another image of the same unlabeled batch (a random
permutation), not from a separately loaded batch as UniMatch does; the weak and strong passes are two forwards.

SSL4MIS variant (`variant="ssl4mis"`, preset `ssl4mis`), HiLab-git/SSL4MIS `code/train_fixmatch_standard_augs.py`
(PROTOCOLS.md §3.1), with its quirks reproduced on purpose:
- the strong view is ColorJitter(0.8, 0.8, 0.8, 0.2) of the weak view only (no CutMix, no blur); both views
  are forwarded for the whole batch and the supervised loss is CE + Dice WITHOUT the 0.5 factor, on the weak
  labeled outputs;
- the confidence test is on a "min-max normalised" softmax, (p - min_c p) / max_c p > 0.8, and
  low-confidence pixels are not ignored: their pseudo-label becomes argmax of a zero vector = background;
- a complementary negative-learning term: CE of (1 - p^s) against argmin of p^w over the whole batch, times
  an image-entropy weight (1 - H(p^s over pixels)/log(HW), batch mean) that multiplies it twice;
- L = L_s + w(t) (CE + Dice + comp) with w the 0.1 sigmoid ramp-up over step // 150; the script's EMA model is
  updated but never used, so it is left out here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from benchmark.config import ConfigError
from benchmark.data.device_augment import colour_jitter, gaussian_blur, random_flip
from benchmark.losses import confidence_mask, dice_ce_loss, dice_loss, masked_ce_loss
from benchmark.mixing import cutmix_masks, paste
from benchmark.schedules import RampedConsistency
from methods.base import METHODS, Labeled, Method, MethodContext


@dataclass
class WeakStrongConfig:
    """The weak and strong views of FixMatch-style methods (UniMatch medical / SemSim values)."""

    weak_flip: float = 0.5       # probability of the weak view's left-right flip
    colour_p: float = 0.8        # probability of the colour jitter
    brightness: float = 0.5
    contrast: float = 0.5
    saturation: float = 0.5      # RGB input only (UniMatch's ColorJitter 0.5); grey images have none
    blur_p: float = 0.5
    cutmix_p: float = 0.5
    cutmix_area_min: float = 0.02
    cutmix_area_max: float = 0.4


class StrongView(NamedTuple):
    image: torch.Tensor     # (B, C, H, W)
    box: torch.Tensor       # (B, H, W) bool: pixels pasted from `partner`
    partner: torch.Tensor   # (B,) index of the image each one pastes from

    def targets(self, target: torch.Tensor) -> torch.Tensor:
        """Mix a per-pixel target of the un-mixed views ((B,H,W) or (B,C,H,W)) the way the image was mixed."""
        box = self.box
        if box.shape[-2:] != target.shape[-2:]:
            box = F.interpolate(box[:, None].float(), size=target.shape[-2:], mode="nearest")[:, 0].bool()
        return paste(target, target[self.partner], box, spatial_dims=box.dim() - 1)


def weak_view(x: torch.Tensor, cfg: WeakStrongConfig) -> torch.Tensor:
    return random_flip(x, cfg.weak_flip)[0]


def strong_view(weak: torch.Tensor, cfg: WeakStrongConfig, cutmix: bool = True,
                generator: torch.Generator | None = None) -> StrongView:
    """Colour jitter + blur of the weak view, then CutMix with a random partner of the batch."""
    x = colour_jitter(weak, cfg.brightness, cfg.contrast, cfg.colour_p, generator, saturation=cfg.saturation)
    x = gaussian_blur(x, cfg.blur_p, generator=generator)
    n = x.shape[0]
    partner = torch.randperm(n, generator=generator).to(x.device)
    p = cfg.cutmix_p if cutmix else 0.0
    box = cutmix_masks(n, x.shape[2:], p, (cfg.cutmix_area_min, cfg.cutmix_area_max), generator=generator,
                       device=x.device)
    return StrongView(paste(x, x[partner], box, spatial_dims=box.dim() - 1), box, partner)


def unsupervised_loss(kind: str, logits_s: torch.Tensor, pseudo: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Thresholded consistency of the strong logits with the weak pseudo-labels: ce | dice | ce+dice."""
    if kind == "ce":
        return masked_ce_loss(logits_s, pseudo, mask)
    if kind == "dice":
        return dice_loss(logits_s.float().softmax(1), pseudo, mask=mask)
    if kind == "ce+dice":
        return masked_ce_loss(logits_s, pseudo, mask) + dice_loss(logits_s.float().softmax(1), pseudo, mask=mask)
    raise ValueError(f"unsup_loss must be ce, dice or ce+dice (got {kind!r})")


@dataclass
class FixMatchConfig(WeakStrongConfig, RampedConsistency):
    variant: str = "paper"       # paper | ssl4mis
    tau: float = 0.95
    unsup_loss: str = "ce"       # paper variant: ce (Sohn) | dice (UniMatch medical, SemSim Eq. 1) | ce+dice
    lambda_u: float = 1.0
    sup_weight: float = 1.0
    # consistency / consistency_rampup / rampup_unit (RampedConsistency): the ssl4mis variant's weight only
    ssl4mis_tau: float = 0.8
    ssl4mis_jitter: float = 0.8

    def __post_init__(self) -> None:
        if self.variant not in ("paper", "ssl4mis"):
            raise ConfigError(f"fixmatch: variant must be paper or ssl4mis (got {self.variant!r})")
        if self.unsup_loss not in ("ce", "dice", "ce+dice"):
            raise ConfigError(f"fixmatch: unsup_loss must be ce, dice or ce+dice (got {self.unsup_loss!r})")


def ssl4mis_pseudo_labels(probs_w: torch.Tensor, tau: float) -> torch.Tensor:
    """SSL4MIS's rule: (p - min_c p) / max_c p > tau per class; argmax of p times that mask (all-zero -> 0)."""
    lo, hi = probs_w.min(1, keepdim=True)[0], probs_w.max(1, keepdim=True)[0]
    return (probs_w * ((probs_w - lo) / hi > tau)).argmax(1)


def ssl4mis_complementary_loss(probs_w: torch.Tensor, probs_s: torch.Tensor) -> torch.Tensor:
    """as_weight * CE(1 - p^s, argmin p^w), as_weight = batch mean of 1 - H_pixels(p^s) / log(HW)."""
    b, c = probs_s.shape[:2]
    flat = probs_s.float().reshape(b, c, -1)
    ent = -(flat * torch.log(flat.clamp_min(1e-30))).sum(-1) / flat.sum(-1).clamp_min(1e-30)  # per (b, c)
    ent = ent + torch.log(flat.sum(-1).clamp_min(1e-30))   # entropy of the normalised pixel distribution
    as_weight = (1 - ent / math.log(flat.shape[-1])).mean()
    comp = F.cross_entropy(1 - probs_s.float(), probs_w.argmin(1))
    return as_weight * as_weight * comp


@METHODS.register("fixmatch", "weak flip -> strong colour+CutMix, argmax pseudo-labels where max prob >= 0.95 (Sohn 2020)")
class FixMatch(Method):
    Config = FixMatchConfig
    presets = {
        "unimatch": {"unsup_loss": "dice", "sup_weight": 0.5, "lambda_u": 0.5},
        "ssl4mis": {"variant": "ssl4mis"},
    }

    def __init__(self, cfg: FixMatchConfig, ctx: MethodContext) -> None:
        super().__init__(cfg, ctx)
        self.model = ctx.build_network()
        self.optimizer = ctx.make_optimizer(self.model.parameters())

    def train_step(self, labeled: Labeled, unlabeled: torch.Tensor | None, step: int) -> dict[str, torch.Tensor]:
        if unlabeled is None:
            raise ValueError("FixMatch needs unlabeled images in every batch (batch_size > labeled_batch_size)")
        if self.cfg.variant == "ssl4mis":
            return self._ssl4mis_step(labeled, unlabeled, step)
        cfg, n = self.cfg, labeled.image.shape[0]
        weak = weak_view(unlabeled, cfg)
        logits = self.model(torch.cat([labeled.image, weak]))
        sup = dice_ce_loss(logits[:n], labeled.label)
        pseudo, mask = confidence_mask(logits[n:].detach().float().softmax(1), cfg.tau)
        strong = strong_view(weak, cfg)
        pseudo_s, mask_s = strong.targets(pseudo), strong.targets(mask)
        unsup = unsupervised_loss(cfg.unsup_loss, self.model(strong.image), pseudo_s, mask_s)
        loss = cfg.sup_weight * sup + cfg.lambda_u * unsup
        self.update(loss, self.optimizer)
        return {"loss": loss.detach(), "loss_sup": sup.detach(), "loss_u": unsup.detach(),
                "mask_ratio": mask_s.float().mean()}

    def _ssl4mis_step(self, labeled: Labeled, unlabeled: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        cfg, n = self.cfg, labeled.image.shape[0]
        weak = torch.cat([labeled.image, unlabeled])   # the loader's rot90/flip view is SSL4MIS's weak view
        strong = colour_jitter(weak, cfg.ssl4mis_jitter, cfg.ssl4mis_jitter, 1.0)
        logits_w, logits_s = self.model(weak), self.model(strong)
        probs_w, probs_s = logits_w.float().softmax(1), logits_s.float().softmax(1)
        sup = F.cross_entropy(logits_w[:n].float(), labeled.label) + dice_loss(probs_w[:n], labeled.label)
        pseudo = ssl4mis_pseudo_labels(probs_w[n:].detach(), cfg.ssl4mis_tau)
        comp = ssl4mis_complementary_loss(probs_w.detach(), probs_s)
        unsup = F.cross_entropy(logits_s[n:].float(), pseudo) + dice_loss(probs_s[n:], pseudo) + comp
        weight = cfg.consistency_weight(step)
        loss = sup + weight * unsup
        self.update(loss, self.optimizer)
        return {"loss": loss.detach(), "loss_sup": sup.detach(), "loss_u": unsup.detach(), "loss_comp": comp.detach(),
                "cons_weight": torch.tensor(weight)}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
