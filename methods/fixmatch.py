"""FixMatch (Sohn et al., NeurIPS 2020) adapted to segmentation, and the weak/strong views SemSim reuses.

What the default ("paper") variant follows. Sohn's paper gives the algorithm (weak -> strong consistency on
confident pseudo-labels) for natural images (flip/shift weak view, RandAugment/CTAugment + Cutout strong view).
There is no medical FixMatch in UniMatch (`more-scenarios/medical/` holds only `unimatch.py` and
`supervised.py`), so the segmentation recipe is assembled from LiheYoung/UniMatch@0324f3d, cited per piece:
- weak view x^w = the loader's (already augmented) unlabeled image, nothing more: UniMatch's medical loader
  (`more-scenarios/medical/dataset/acdc.py` L44-50: 50 % rot90+flip, else 50 % rotation in [-20, 20), then
  zoom to the patch; the harness's `ssl4mis-2021` rule) has no further weak transform and `unimatch.py` adds
  none (`weak_flip` 0; SemSim's views keep their flip, `WeakStrongConfig.weak_flip` 0.5);
- strong view x^s = colour jitter 0.5 (brightness/contrast, + saturation on RGB input; p 0.8) + Gaussian blur
  (p 0.5) of x^w (acdc.py L59-61), then CutMix (p 0.5, box area 2-40 %, aspect 0.3-3.3; `dataset/transform.py`
  L32-50) with ANOTHER unlabeled image: its strong view fills the box (`unimatch.py` L136-139);
- pseudo-label = argmax of the weak prediction (no gradient) where max prob >= tau (0.95, the paper's and
  `configs/acdc.yaml`'s value); inside the CutMix box the label and confidence are those of the pasted image,
  from a SEPARATE no-grad pass in eval mode before the training pass (`unimatch.py` L129-134, L155-162;
  UniMatch's own FixMatch, root `fixmatch.py` L132-158, does the same);
- L = sup_weight * L_s + lambda_u * L_u with L_s = 0.5 (CE + Dice) (`unimatch.py` L164, the harness's
  supervised loss) and L_u = CE (Sohn) or thresholded Dice (`unsup_loss="dice"`, `unimatch.py` L166-170 and
  SemSim Eq. 1). Preset `unimatch`: Dice, (L_s + L_u) / 2, i.e. `unimatch.py` with one strong view and no
  feature perturbation, weighted as root `fixmatch.py` L166.
Departures: the pasted image is another image of the same unlabeled batch (a random derangement: never the
image itself) where UniMatch loads a separate unlabeled batch; the colour jitter has no hue (grey MRI: none
acts) and works on floats where UniMatch jitters 8-bit PIL images.

SSL4MIS variant (`variant="ssl4mis"`, preset `ssl4mis`), HiLab-git/SSL4MIS@06df604
`code/train_fixmatch_standard_augs.py` (PROTOCOLS.md §3.1), with its quirks reproduced on purpose:
- the weak view of every image, labeled (with its label) and unlabeled, is ALWAYS rot90 (k uniform in 0..3)
  then a flip of a random axis, after the zoom to the patch (`WeakStrongAugment`,
  `code/dataloaders/dataset.py` L180-187 with `random_rot_flip` L75-85; the script's only transform, L186-191),
  not the loader's 50/25/25 rule: the method draws it (`ssl4mis_rot_flip`), so its suites must set
  `augmentation: none` (the loader then only zooms to the patch) and a square patch; `check` says so;
- the strong view is ColorJitter(0.8, 0.8, 0.8, 0.2) of the weak view only (dataset.py L95-103, L187; no
  CutMix, no blur); both views are forwarded for the whole batch and the supervised loss is CE + Dice
  WITHOUT the 0.5 factor, on the weak labeled outputs;
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

from benchmark.config import ConfigError, TrainConfig
from benchmark.data.device_augment import colour_jitter, gaussian_blur, random_flip
from benchmark.losses import confidence_mask, dice_ce_loss, dice_loss, masked_ce_loss
from benchmark.mixing import cutmix_masks, paste
from benchmark.schedules import RampedConsistency
from methods.base import METHODS, Labeled, Method, MethodContext


@dataclass
class WeakStrongConfig:
    """The weak and strong views of FixMatch-style methods (UniMatch medical / SemSim values)."""

    weak_flip: float = 0.5       # probability of the weak view's left-right flip (SemSim; FixMatch: 0)
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
        return self.mix(target, target)

    def mix(self, own: torch.Tensor, pasted: torch.Tensor) -> torch.Tensor:
        """`own` outside the box, `pasted[partner]` inside it: targets whose box part comes from another pass
        over the (un-mixed) weak views (FixMatch: UniMatch's eval-mode pass)."""
        box = self.box
        if box.shape[-2:] != own.shape[-2:]:
            box = F.interpolate(box[:, None].float(), size=own.shape[-2:], mode="nearest")[:, 0].bool()
        return paste(own, pasted[self.partner], box, spatial_dims=box.dim() - 1)


def weak_view(x: torch.Tensor, cfg: WeakStrongConfig) -> torch.Tensor:
    return random_flip(x, cfg.weak_flip)[0]


def derangement(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniformly random permutation of 0..n-1 without fixed points (n >= 2): no image pairs with itself."""
    if n < 2:
        raise ValueError(f"derangement needs n >= 2 (got {n})")
    identity = torch.arange(n)
    while True:   # rejection: about e = 2.7 draws on average
        perm = torch.randperm(n, generator=generator)
        if not bool((perm == identity).any()):
            return perm


def strong_view(weak: torch.Tensor, cfg: WeakStrongConfig, cutmix: bool = True,
                generator: torch.Generator | None = None, partner: torch.Tensor | None = None) -> StrongView:
    """Colour jitter + blur of the weak view, then CutMix with `partner` (default: a random permutation of the
    batch, which may pair an image with itself; SemSim's views)."""
    x = colour_jitter(weak, cfg.brightness, cfg.contrast, cfg.colour_p, generator, saturation=cfg.saturation)
    x = gaussian_blur(x, cfg.blur_p, generator=generator)
    n = x.shape[0]
    partner = (torch.randperm(n, generator=generator) if partner is None else partner).to(x.device)
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


def ssl4mis_rot_flip(image: torch.Tensor, label: torch.Tensor | None = None,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SSL4MIS's `random_rot_flip` per sample of (B, C, H, W) square images (and the (b, H, W) labels of the
    first b of them):
    rot90 by k uniform in 0..3 (np.rot90's direction), then a flip of H or W (50/50): always a flip."""
    n = image.shape[0]
    ks = torch.randint(0, 4, (n,), generator=generator).tolist()
    axes = torch.randint(0, 2, (n,), generator=generator).tolist()

    def apply(x: torch.Tensor) -> torch.Tensor:   # (b <= B, ..., H, W): the labels are the first rows'
        return torch.stack([x[i].rot90(ks[i], (-2, -1)).flip(axes[i] - 2) for i in range(x.shape[0])])

    return apply(image), None if label is None else apply(label)


@dataclass
class FixMatchConfig(WeakStrongConfig, RampedConsistency):
    weak_flip: float = 0.0       # unimatch.py has no weak transform beyond the loader's (WeakStrongConfig: 0.5)
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


@METHODS.register("fixmatch", "weak view -> strong colour+CutMix, argmax pseudo-labels where max prob >= 0.95 (Sohn 2020)")
class FixMatch(Method):
    Config = FixMatchConfig
    presets = {
        "unimatch": {"unsup_loss": "dice", "sup_weight": 0.5, "lambda_u": 0.5},
        "ssl4mis": {"variant": "ssl4mis"},
    }

    @classmethod
    def check(cls, cfg: FixMatchConfig, train: TrainConfig, where: str) -> None:
        super().check(cfg, train, where)
        if cfg.variant == "ssl4mis":
            if train.augmentation != "none" or len(set(train.patch_size)) != 1:
                raise ConfigError(f"{where}: the ssl4mis variant draws SSL4MIS's weak view (rot90 + flip, always) "
                                  f"itself: set augmentation: none for it (method_train) and a square patch "
                                  f"(got augmentation {train.augmentation!r}, patch {list(train.patch_size)})")
        elif cfg.cutmix_p > 0 and train.batch_size - train.labeled_batch_size < 2:
            raise ConfigError(f"{where}: CutMix pastes another unlabeled image of the batch: batch_size - "
                              f"labeled_batch_size must be >= 2 (got {train.batch_size - train.labeled_batch_size}),"
                              f" or set cutmix_p: 0")

    def __init__(self, cfg: FixMatchConfig, ctx: MethodContext) -> None:
        super().__init__(cfg, ctx)
        self.model = ctx.build_network()
        self.optimizer = ctx.make_optimizer(self.model.parameters())

    @torch.no_grad()
    def eval_pseudo_labels(self, weak: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """argmax and confidence mask of a no-grad eval-mode pass (UniMatch's labels for the CutMix box)."""
        self.model.eval()
        try:
            return confidence_mask(self.model(weak).float().softmax(1), self.cfg.tau)
        finally:
            self.model.train()

    def train_step(self, labeled: Labeled, unlabeled: torch.Tensor | None, step: int) -> dict[str, torch.Tensor]:
        if unlabeled is None:
            raise ValueError("FixMatch needs unlabeled images in every batch (batch_size > labeled_batch_size)")
        if self.cfg.variant == "ssl4mis":
            return self._ssl4mis_step(labeled, unlabeled, step)
        cfg, n = self.cfg, labeled.image.shape[0]
        weak = weak_view(unlabeled, cfg)
        mixing = cfg.cutmix_p > 0
        if mixing:   # the pasted images' labels: eval mode, before the training pass (unimatch.py L129-134)
            pseudo_mix, mask_mix = self.eval_pseudo_labels(weak)
        logits = self.model(torch.cat([labeled.image, weak]))
        sup = dice_ce_loss(logits[:n], labeled.label)
        pseudo, mask = confidence_mask(logits[n:].detach().float().softmax(1), cfg.tau)
        if mixing:
            strong = strong_view(weak, cfg, partner=derangement(weak.shape[0]))
            pseudo_s, mask_s = strong.mix(pseudo, pseudo_mix), strong.mix(mask, mask_mix)
        else:
            strong = strong_view(weak, cfg, cutmix=False)
            pseudo_s, mask_s = pseudo, mask
        unsup = unsupervised_loss(cfg.unsup_loss, self.model(strong.image), pseudo_s, mask_s)
        loss = cfg.sup_weight * sup + cfg.lambda_u * unsup
        self.update(loss, self.optimizer)
        return {"loss": loss.detach(), "loss_sup": sup.detach(), "loss_u": unsup.detach(),
                "mask_ratio": mask_s.float().mean()}

    def _ssl4mis_step(self, labeled: Labeled, unlabeled: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        cfg, n = self.cfg, labeled.image.shape[0]
        # WeakStrongAugment: the zoomed image (loader, augmentation none), always rot90 + flip, labels alike
        weak, label = ssl4mis_rot_flip(torch.cat([labeled.image, unlabeled]), labeled.label)
        labeled = Labeled(weak[:n], label)
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
