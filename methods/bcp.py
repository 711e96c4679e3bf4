"""Bidirectional Copy-Paste (Bai, Chen, Li, Shen, Wang, CVPR 2023) as in DeepMed-Lab-ECNU/BCP
`code/ACDC_BCP_train.py` @7879f98 (PROTOCOLS.md §3.6; losses from `code/utils/losses.py::DiceLoss`), and in 3D
as `code/LA_BCP_train.py` (the "3D (LA)" section at the end lists what differs there).

Two stages, run by the Trainer (`stages()`):

1. **pretrain** (reference: 10 000 iterations): labeled data only. The labeled half-batches a = l[:k] and
   b = l[k:2k] (k = labeled_bs // 2) are mixed: b's content inside a box, a's outside; the loss supervises the
   outside with a's label and the box with b's label. The unlabeled half of the batch is not used.
2. **selftrain** (reference: 30 000 iterations), starting from pre-training's best-on-val weights. The EMA
   teacher is initialised from the same weights (`start_stage`). With labeled halves a, b and unlabeled
   halves ua, ub (p = min(labeled_bs, unlabeled_bs) // 2 each):
   - teacher pseudo-labels of ua and ub (two separate teacher passes, teacher in train mode): argmax, then
     per class the largest 2D connected component of each slice (`get_ACDC_2DLargestCC`, 8-connectivity;
     a class absent from a slice stays absent);
   - one box per step, shared by the whole batch and both mixes: a side of int(2/3 * H) x int(2/3 * W)
     (about 44% of the area) at a random position (`generate_mask`; `benchmark.mixing.sample_box`);
   - mix 1 "into unlabeled": ua outside, a inside the box; targets pseudo(ua) outside (weight u_weight =
     0.5), label(a) inside (weight 1);
   - mix 2 "into labeled": b outside, ub inside; targets label(b) outside (weight 1), pseudo(ub) inside
     (weight u_weight);
   - each mix's loss (`mix_loss`) = w_out * Dice(outside) + w_in * Dice(inside) and the same for CE, where
     Dice is the masked soft Dice over all classes (sums multiplied by the region mask, smooth 1e-10) and CE
     is the mean over the region's pixels; total = (Dice_1 + Dice_2 + CE_1 + CE_2) / 2 (two student passes);
   - one SGD step, then the teacher update teacher = 0.99 * teacher + 0.01 * student with no warm-up.
   Inference uses the student.

Reference training settings on ACDC (suites' `method_train`): SGD lr 0.01, momentum 0.9, weight decay 1e-4, **no lr
decay** in either stage, batch 24 (12 + 12), patch 256, the SSL4MIS "old" augmentation, best on val every 200
iterations in each stage. The reference computes a `consistency_weight` (5 * 0.1 * ramp-up) that it only
logs; it is not part of the loss, so it is absent here.

Budget: `pretrain_fraction` (default 1/3) sets the pre-training length to round(fraction * iterations), the
self-training stage runs `iterations` (the suite's budget). The reference's 10 000 / 30 000 is the default
at iterations = 30 000; `bench run --iterations 20` gives 7 + 20 steps.

The masked Dice before and after BCP's fix (DeepMed-Lab-ECNU/BCP commit a925e30, 2023-10-29, `code/utils/
losses.py`, "bug found by @CamillerFerros at github issue#25"): `DiceLoss.forward(..., mask)` turned the 0/1
region mask into per-class masks with `_one_hot_mask_encoder` (a925e30^ L92-98, L131): class i's mask is
(mask * i == i), which for i >= 1 is the region and for the background, i = 0, is ALL ONES; so each region's
background Dice term ran over the whole image, against that region's target map. The fix repeats the region
mask for every class (L124 after it). Both ACDC stages call it (`ACDC_BCP_train.py` `mix_loss` L175-176,
from pre-training L249 and self-training L376-377). The LA script's `mask_DiceLoss` (losses.py L8-77) is not
touched by the commit. Default `background_dice: masked` (the code since the fix); preset `paper-era`
(`background_dice: whole`) reproduces the earlier one, which the paper's numbers and the released checkpoints
predate (`models/` uploaded 2023-03-17, 26504d4; CVPR 2023). The leaderboards' `method: bcp` rows are
SemSim's Tables I-III ("BCP-Net [28]"): SemSim retrained every compared method under CTCT's settings (§IV-C,
"Following [7], we conduct all experiments under the same settings"; arXiv 2024-10, a year after the fix), and
BCP's paper has no 1-case, ISIC or PROMISE12 results, so those rows map to the fixed `bcp`, as the
leaderboards name it (that SemSim ran the code after the fix is an inference from the dates).

Departures (none changes the algorithm):
- Network: the reference's `UNet_2d` is the SSL4MIS UNet plus projection/prediction/selector heads that the
  ACDC script never calls; the plain `unet` is used (identical outputs; the unused heads only took weight
  decay).
- Stage hand-over: the reference restores the student's weights AND its SGD state from the best pre-training
  checkpoint. The Trainer's best_val checkpoint keeps weights only, so the momentum buffers carry over from
  the last pre-training step instead (they decay by 0.9 per step; the lr is constant, so nothing else
  differs); `fresh_optimizer: false`, the default (`true` is the LA script's new optimiser).
- EMA: the reference averages the whole state_dict (BN running statistics included); `ema_update` averages
  parameters only. The teacher always runs in train mode (batch statistics), so its running statistics are
  never read: no effect on training.
- Randomness: the box position comes from torch's RNG instead of numpy's (same distribution; follows the
  Trainer's seeding and resume). Half-batches of unequal size: the reference needs labeled_bs ==
  unlabeled_bs (and even); here p = min(...) // 2 pairs are mixed and extra images are unused.
- The reference's pseudo-label cleaning hard-codes ACDC's classes 1..3; here it is classes 1..C-1, with a
  switch `largest_component` (the reference's `nms` argument, on in self-training).

3D (LA): DeepMed-Lab-ECNU/BCP@7879f98:code/LA_BCP_train.py ("the LA script") with `code/utils/BCP_utils.py` and
`code/utils/losses.py::mask_DiceLoss`. The same two stages and the same algorithm; where the LA script differs
from the ACDC one:
- Network: `net_factory("VNet")` (LA script L119, L199) is the V-Net plus projection / prediction / selector
  heads (9,457,318 parameters); its forward returns (logits, max-pooled x5) and the script discards the second
  output (L158, L241-242, L252-253), so no head ever takes part: the plain `vnet` (9,448,866 at width 16) is
  built with the suite's `network_options` (identical outputs; the heads would only consume random numbers at
  initialisation).
- Box (`context_mask`, BCP_utils.py L18-28): int(2/3 * side) per axis, 74 x 74 x 53 on the 112 x 112 x 80
  patch, start drawn from [0, 112 - 74) x [0, 112 - 74) x [0, 80 - 53) (numpy randint, the far border
  excluded). The function hard-codes 112 / 80 for the start bounds only; `sample_box(patch, 2/3)` gives the same
  sizes and bounds on that patch and stays valid on any other.
- Dice (`mask_DiceLoss`, losses.py L8-77): per sample and class, (2 sum(m p t) + 1e-5) / (sum(m (p + t)) +
  1e-5), LINEAR denominator, mean over samples and both classes (ACDC: `DiceLoss`, sums over the batch, squared
  terms, 1e-10). `dice: per_sample` with `dice_smooth: 1e-5` (LA); defaults `ssl4mis` / 1e-10 (ACDC).
- Pre-training loss (L155-161): CE and Dice over the WHOLE mixed volume against the mixed label, (CE + Dice) / 2
  (ACDC: the two-region `mix_loss` with weights 1 and 1). `pretrain_loss: whole` (LA); default `regions`.
  The mix itself is the same: image a outside the box, image b inside.
- Self-training pastes (L248-255): mix 1 = labeled a outside, unlabeled a inside; mix 2 = unlabeled b outside,
  labeled b inside (ACDC: unlabeled a outside / labeled a inside, labeled b outside / unlabeled b inside).
  Both scripts thus make one labeled-background and one unlabeled-background mix from exchangeable half-batches
  with one shared box; the ACDC layout (`bidirectional_mix`) is used for both, which differs from the LA one only
  by which half-batch index fills which role (and the order of the two student passes).
- Loss (`mix_loss`, BCP_utils.py L58-69): per mix (Dice + CE) / 2 with weight 1 on the labeled-origin region and
  u_weight = 0.5 on the pseudo-labelled one; total = loss_l + loss_u (L257) = (Dice_1 + Dice_2 + CE_1 + CE_2) / 2,
  the ACDC total.
- Pseudo-labels (`get_cut_mask`, L57-63): teacher foreground softmax >= 0.5 (ACDC: argmax; the two differ only
  on exact ties), then the largest 3D connected component of each volume (`LargestCC_pancreas` L65-77,
  skimage's full 26-connectivity). Selected by the patch's dimensions (3D with 2 classes).
- EMA (`update_ema_variables`, BCP_utils.py L78-81): parameters only, alpha 0.99, no warm-up: exactly
  `ema_update(..., warmup=False)` (no departure in 3D).
- Stage hand-over (L218-222): the student and the teacher load the pre-training best weights (`load_net`,
  weights only) and the SGD optimiser is NEW: `fresh_optimizer: true` (LA) re-creates it in `start_stage`
  (default false: the ACDC hand-over, see the departures above).
- lr: constant 0.01 while pre-training (no update code in `pre_train`), x0.1 every 2500 iterations while
  self-training (L272-276): in 3D the pre-training stage carries `lr_schedule="constant"` and self-training
  follows the Trainer's (the suites' `step`, step_size 2500). The 2D stage plan is unchanged (ACDC runs a
  constant lr throughout, set by its suites).
- Not method settings (suite tables): batch 8 (4 + 4), 2000 + 15000 iterations (`pretrain_fraction` 2/15 of
  the 15000 budget); best on the TEST list every 200 iterations in both stages (L173-187, L278-292), and the
  self-training stage starts from that best-on-test pre-training checkpoint (Trainer: `init="best_val"` under
  the `best_test` checkpoint rule); `test_LA.py` nms 1 (largest component).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from benchmark.config import ConfigError
from benchmark.ema import ema_update, frozen_copy
from benchmark.losses import dice_loss, dice_loss_per_sample
from benchmark.masks import largest_component_per_sample
from benchmark.mixing import box_mask, paste, sample_box
from methods.base import METHODS, Labeled, Method, MethodContext, Stage


DICE_FORMS = ("ssl4mis", "per_sample")
PRETRAIN_LOSSES = ("regions", "whole")
BACKGROUND_DICE = ("masked", "whole")


@dataclass
class BCPConfig:
    pretrain_fraction: float = 1 / 3   # pre-train steps = round(fraction * iterations) (reference 10k / 30k)
    box_ratio: float = 2 / 3           # side of the pasted box as a fraction of the image side
    u_weight: float = 0.5              # weight of the regions supervised by pseudo-labels
    ema_decay: float = 0.99
    largest_component: bool = True     # clean pseudo-labels to each class's largest component (`nms=1`)
    dice_smooth: float = 1e-10         # the reference DiceLoss smoothing term (LA mask_DiceLoss: 1e-5)
    dice: str = "ssl4mis"              # ssl4mis: ACDC DiceLoss | per_sample: LA mask_DiceLoss
    pretrain_loss: str = "regions"     # regions: ACDC two-region mix_loss | whole: LA CE + Dice on the whole mix
    fresh_optimizer: bool = False      # a new SGD optimiser for self-training (LA load_net); False: keep it (ACDC)
    background_dice: str = "masked"    # masked: region masks for every class (since a925e30) | whole: before it

    def __post_init__(self) -> None:
        if not 0 < self.pretrain_fraction:
            raise ConfigError(f"bcp: pretrain_fraction must be > 0 (got {self.pretrain_fraction})")
        for name, valid in {"dice": DICE_FORMS, "pretrain_loss": PRETRAIN_LOSSES,
                            "background_dice": BACKGROUND_DICE}.items():
            if getattr(self, name) not in valid:
                raise ConfigError(f"bcp: {name} must be one of {', '.join(valid)} (got {getattr(self, name)!r})")
        if self.background_dice == "whole" and self.dice != "ssl4mis":
            raise ConfigError("bcp: background_dice 'whole' (preset paper-era) is the ACDC DiceLoss before commit "
                              "a925e30; dice 'per_sample' (LA mask_DiceLoss) never had it: use background_dice "
                              "'masked' (plain bcp) with it")


class Mix(NamedTuple):
    """One copy-paste input with its region targets: `outside` supervises outside the box, `inside` in it."""

    image: torch.Tensor
    outside: torch.Tensor
    inside: torch.Tensor
    w_outside: float
    w_inside: float

    def label(self, mask: torch.Tensor) -> torch.Tensor:
        """The mixed label map: `inside` where the (*spatial) mask is 1, `outside` elsewhere."""
        return paste(self.outside, self.inside, mask, spatial_dims=mask.dim())


def halves(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x[:k] and x[k:2k]."""
    return x[:k], x[k:2 * k]


def bidirectional_mix(labeled_a: Labeled, labeled_b: Labeled, unl_a: torch.Tensor, pseudo_a: torch.Tensor,
                      unl_b: torch.Tensor, pseudo_b: torch.Tensor, mask: torch.Tensor,
                      u_weight: float) -> tuple[Mix, Mix]:
    """BCP's two inputs: labeled a pasted into unlabeled a, and unlabeled b pasted into labeled b (the mask is
    (*spatial), 1 in the box)."""
    dims = mask.dim()
    into_unlabeled = Mix(paste(unl_a, labeled_a.image, mask, dims), pseudo_a, labeled_a.label, u_weight, 1.0)
    into_labeled = Mix(paste(labeled_b.image, unl_b, mask, dims), labeled_b.label, pseudo_b, 1.0, u_weight)
    return into_unlabeled, into_labeled


def region_dice(probs: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, smooth: float,
                dice: str = "ssl4mis", background_dice: str = "masked") -> torch.Tensor:
    """The Dice of `target` on the pixels where the (B, *spatial) `mask` is 1: ACDC `DiceLoss(..., mask)` or LA
    `mask_DiceLoss(..., mask)` (`dice: per_sample`). `background_dice="whole"`: the ACDC DiceLoss before
    a925e30, whose background (class 0) term ignores the mask and runs over every pixel."""
    if dice == "per_sample":
        return dice_loss_per_sample(probs, target, smooth, mask)
    if background_dice == "whole":
        per_class = mask.unsqueeze(1).repeat(1, probs.shape[1], *[1] * (mask.dim() - 1))
        per_class[:, 0] = 1
        mask = per_class
    return dice_loss(probs, target, smooth, mask=mask)


def mix_loss(logits: torch.Tensor, mix: Mix, mask: torch.Tensor, smooth: float = 1e-10,
             dice: str = "ssl4mis", background_dice: str = "masked") -> tuple[torch.Tensor, torch.Tensor]:
    """(Dice, CE) of one mixed input: each the weighted sum of its outside-the-box and inside-the-box terms
    (the mask is (*spatial), 1 in the box)."""
    logits = logits.float()
    probs = logits.softmax(1)
    inside = mask.to(logits.dtype).expand(logits.shape[0], *logits.shape[2:])
    outside = 1.0 - inside
    dice_value = (mix.w_outside * region_dice(probs, mix.outside, outside, smooth, dice, background_dice)
                  + mix.w_inside * region_dice(probs, mix.inside, inside, smooth, dice, background_dice))
    ce_out = F.cross_entropy(logits, mix.outside.long(), reduction="none")
    ce_in = F.cross_entropy(logits, mix.inside.long(), reduction="none")
    ce = (mix.w_outside * (ce_out * outside).sum() / (outside.sum() + 1e-16)
          + mix.w_inside * (ce_in * inside).sum() / (inside.sum() + 1e-16))
    return dice_value, ce


def whole_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5,
               dice: str = "per_sample") -> tuple[torch.Tensor, torch.Tensor]:
    """(Dice, CE) over the whole mixed input against the mixed label: BCP LA's pre-training loss (L159-160)."""
    logits = logits.float()
    probs = logits.softmax(1)
    value = dice_loss_per_sample(probs, target, smooth) if dice == "per_sample" else dice_loss(probs, target, smooth)
    return value, F.cross_entropy(logits, target.long())


@torch.no_grad()
def pseudo_labels(logits: torch.Tensor, largest_component: bool = True,
                  threshold: float | None = None) -> torch.Tensor:
    """argmax over classes, or with `threshold` (2 classes only) foreground softmax >= threshold (BCP LA
    `get_cut_mask`); optionally each foreground class cut to its largest connected component per image (2D
    slice or 3D volume, full connectivity)."""
    if threshold is not None and logits.shape[1] == 2:
        labels = (logits.float().softmax(1)[:, 1] >= threshold).long()
    else:
        labels = logits.argmax(1)
    if not largest_component:
        return labels
    return largest_component_per_sample(labels, logits.shape[1])


@METHODS.register("bcp", "bidirectional copy-paste: labeled copy-paste pre-training, then EMA-teacher self-training "
                         "on labeled<->unlabeled pastes (BCP, CVPR 2023)")
class BCP(Method):
    Config = BCPConfig
    dims = (2, 3)
    networks = ("unet", "vnet")   # the Trainer's network (BCP's own UNet_2d / VNet add only unused heads)
    pairs_per_half = True   # copy-paste / CutMix pair two images within each half-batch
    presets = {"paper-era": {"background_dice": "whole"}}   # the Dice of the published numbers (module docstring)

    def __init__(self, cfg: BCPConfig, ctx: MethodContext) -> None:
        super().__init__(cfg, ctx)
        self.model = ctx.build_network()
        self.teacher = frozen_copy(self.model)   # re-initialised from the pre-trained student in start_stage
        self.optimizer = ctx.make_optimizer(self.model.parameters())
        self.stage = "pretrain"

    @property
    def threshold(self) -> float | None:
        """LA's pseudo-label rule in 3D (foreground softmax >= 0.5); argmax in 2D (ACDC)."""
        return 0.5 if self.ctx.spatial_dims == 3 else None

    def stages(self) -> list[Stage]:
        pretrain = max(1, round(self.cfg.pretrain_fraction * self.ctx.iterations))
        schedule = "constant" if self.ctx.spatial_dims == 3 else None   # LA: no lr update while pre-training
        return [Stage("pretrain", pretrain, lr_schedule=schedule),
                Stage("selftrain", self.ctx.iterations, init="best_val")]

    def start_stage(self, stage: Stage, index: int) -> None:
        self.stage = stage.name
        if stage.name == "selftrain":   # the student holds pre-training's best weights now (init="best_val")
            self.teacher.load_state_dict(self.model.state_dict())
            if self.cfg.fresh_optimizer:   # LA `load_net` into a new model + a new SGD (L218-222)
                self.optimizer = self.ctx.make_optimizer(self.model.parameters())

    def _box(self, x: torch.Tensor) -> torch.Tensor:
        return box_mask(x.shape[2:], sample_box(x.shape[2:], self.cfg.box_ratio), x.device)

    def train_step(self, labeled: Labeled, unlabeled: torch.Tensor | None, step: int) -> dict[str, torch.Tensor]:
        if self.stage == "pretrain":
            return self._pretrain_step(labeled)
        return self._selftrain_step(labeled, unlabeled)

    def _pretrain_step(self, labeled: Labeled) -> dict[str, torch.Tensor]:
        k = labeled.image.shape[0] // 2
        if k < 1:
            raise ValueError("bcp pre-training pastes one labeled image into another: labeled_batch_size >= 2")
        (img_a, img_b), (lab_a, lab_b) = halves(labeled.image, k), halves(labeled.label, k)
        mask = self._box(img_a)
        mix = Mix(paste(img_a, img_b, mask, spatial_dims=mask.dim()), lab_a, lab_b, 1.0, 1.0)
        logits = self.model(mix.image)
        if self.cfg.pretrain_loss == "whole":   # LA: CE + Dice of the whole mixed volume
            dice, ce = whole_loss(logits, mix.label(mask), self.cfg.dice_smooth, self.cfg.dice)
        else:
            dice, ce = mix_loss(logits, mix, mask, self.cfg.dice_smooth, self.cfg.dice, self.cfg.background_dice)
        return self._update(dice, ce)

    def _selftrain_step(self, labeled: Labeled, unlabeled: torch.Tensor | None) -> dict[str, torch.Tensor]:
        p = min(labeled.image.shape[0], 0 if unlabeled is None else unlabeled.shape[0]) // 2
        if p < 1:
            raise ValueError("bcp self-training pairs labeled and unlabeled half-batches: it needs at least 2 "
                             "labeled and 2 unlabeled images per batch")
        (img_a, img_b), (lab_a, lab_b) = halves(labeled.image, p), halves(labeled.label, p)
        unl_a, unl_b = halves(unlabeled, p)
        with torch.no_grad():
            pseudo_a = pseudo_labels(self.teacher(unl_a), self.cfg.largest_component, self.threshold)
            pseudo_b = pseudo_labels(self.teacher(unl_b), self.cfg.largest_component, self.threshold)
        mask = self._box(img_a)
        mixes = bidirectional_mix(Labeled(img_a, lab_a), Labeled(img_b, lab_b), unl_a, pseudo_a, unl_b, pseudo_b,
                                  mask, self.cfg.u_weight)
        dice, ce = 0.0, 0.0
        for mix in mixes:
            d, c = mix_loss(self.model(mix.image), mix, mask, self.cfg.dice_smooth, self.cfg.dice,
                            self.cfg.background_dice)
            dice, ce = dice + d, ce + c
        out = self._update(dice, ce)
        ema_update(self.teacher, self.model, self.cfg.ema_decay, 0, warmup=False)
        return out

    def _update(self, dice: torch.Tensor, ce: torch.Tensor) -> dict[str, torch.Tensor]:
        loss = (dice + ce) / 2
        self.update(loss, self.optimizer)
        return {"loss": loss.detach(), "loss_dice": dice.detach(), "loss_ce": ce.detach()}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
