"""MCF: Mutual Correction Framework (Wang, Xiao, Bi, Li, Gao, CVPR 2023), LA (3D) version, as released in
WYC-321/MCF@ad20659 `code/train_MCF.py` (cited below as L<n>), `code/utils/losses.py`, `code/utils/ramps.py`,
`code/dataloaders/la_heart.py`, `code/test_LA_MCF.py` and `code/test_util.py`. The paper itself is not in
shared/papers; its abstract names the two modules, contrastive difference review (CDR) and dynamic
competitive pseudo-label generation (DCPLG). Everything below is read in the code.

What the reference does, and this module does too:
- Two different nets (L103-114): the LA V-Net (`networks/vnet.py`, = `benchmark/nets/vnet.py`) and a
  ResNet-34-encoder / V-Net-decoder net (`networks/ResNet34.py`, = `benchmark/nets/mcf.py::ResNet34UNet`,
  registered "mcf-resnet34-unet"), both batchnorm, has_dropout=True, 2 classes. Both nets' `__init_weight`
  re-initialise every Conv3d / ConvTranspose3d weight with kaiming_normal_ and BN to 1 / 0; the harness
  V-Net keeps PyTorch's default init (as SS-Net's VNet.py, where no such pass exists), so `reference_init`
  (default True) applies MCF's pass to the V-Net here (the ResNet34UNet always has it).
- Two SGD optimisers, one per net, lr 0.01, momentum 0.9, weight decay 1e-4 (L132-133); the lr of both x0.1
  every 2500 iterations (L255-260); 6000 iterations (L25); batch 4 = 2 labeled + 2 unlabeled (L26-27).
- Both nets see the SAME batch: the dataset returns [ToTensor(s), ToTensor(s)] of one randomly cropped sample
  s (la_heart.py L33-38), so `volume_batch1` and `volume_batch2` (L155-156) are identical tensors. The only
  train transform is RandomCrop (L119-121): no rotation or flip (see departures).
- Supervised loss per net, on the labeled part: CE (mean) + Dice, where Dice is `losses.dice_loss` on the
  FOREGROUND softmax channel only: 1 - (2 sum(p1 y) + 1e-5) / (sum p1^2 + sum y^2 + 1e-5), summed over the
  whole labeled batch (L165-171, losses.py L5-13). No 0.5 factor, no background Dice.
- Contrastive difference review (CDR, L181-190): the difference mask D is where the two nets' argmax
  foreground maps disagree on the LABELED part, (argmax_v == 1) XOR (argmax_r == 1). Each net gets
  sum(D * (p1 - y)^2) / (sum D + 1e-16), p1 its foreground softmax, y the 0/1 label (`softmax_mse_loss` is
  a plain squared difference, losses.py L56-69), with weight 0.5, no ramp-up:
  sup = CE + Dice + 0.5 * CDR (L189-190). D carries no gradient (argmax).
- Dynamic competition (DCPLG, L173-225): the net with the LOWER Dice loss on this batch's labeled part is the
  "good student" (the V-Net when Dice_v < Dice_r strictly, else the ResNet; L173-176). Its softmax on the
  UNLABELED part, detached and sharpened over the classes, PL = p^(1/T) / sum_c p^(1/T), T = 0.1 (L192-204),
  is the pseudo-label of the OTHER net only, whose loss gains w * mean((p - PL)^2) over both channels and
  every voxel (L206-224); the good student's loss is its supervised loss alone. w = 0.1 *
  sigmoid_rampup(iter // 150, 40) with iter the 0-based iteration (L35-36, L62-64, L206).
- Both losses are backpropagated and both optimisers step every iteration (L229-234). The nets share no
  parameter and the pseudo-label and D are detached, so this equals one backward of loss_v + loss_r.
- Test (`test_LA_MCF.py`, `test_util.py` L45-111): the final weights (`*_iter_6000.pth`), both nets in eval
  mode, every 112x112x80 window (stride 18/18/4) scored by the MEAN of the two nets' softmax, accumulated and
  averaged over windows, argmax; no largest connected component. `predict` returns
  log((softmax(z_v) + softmax(z_r)) / 2) (computed as logsumexp of the two log-softmaxes minus log 2), so the
  harness's softmax of it is exactly that mean and its window averaging then matches the reference.

Departures and unclear points (defaults are the LA reference values):
- Labeled subset: the script hard-codes `labeled_idxs = list(range(16))`, `unlabeled_idxs = range(16, 80)`
  (L126-127, marked "todo set labeled num") over `train0.list` (= the common LA train list). As released it
  therefore runs the 20% (16-scan) setting only; the 4- and 8-scan rows (CML Table 1: 86.52 / 88.05 Dice)
  need that edit, presumably to range(4) / range(8). The harness takes the card's first-N labeled lists.
- Augmentation: RandomCrop only (no RandomRotFlip). The harness has no crop-only LA rule, so the suites run
  MCF with `la-rotflip-crop` unless such a rule is added (a suite setting, not a method one).
- LR steps: the reference decays AFTER iteration 2500 (0-based), so 2501 iterations run at 0.01; the
  Trainer's step schedule decays from step 2500 on. A one-iteration shift, common to the LA step-decay
  codebases.
- The good-student branch is a Python `if` on the two Dice values in the reference (a host sync per step);
  here both nets' competition terms are computed and gated by the 0/1 comparison, which gives the same losses
  and gradients without a sync (the gated-off term costs one extra MSE on the unlabeled softmax).
- `consistency_type` (L34) defaults to "mse", the only choice implemented here: "kl" would hand the
  (B, *spatial) foreground map and the integer label of the CDR term to `softmax_kl_loss` (losses.py L71-86),
  which takes log_softmax / softmax along axis 1 of them, a spatial axis; not a meaningful variant.
- `ema_decay` (L33) and `update_ema_variables` (L66-70) are defined but never called: no EMA teacher.
  `gateher_two_patch` (L75-88) is unused too.
- Binary only: the reference's Dice and CDR read channel 1 and `label == 1` (L167, L181-185); this module
  raises for num_classes != 2 rather than invent a multi-class form.
- Paper vs code: the paper text is not available here; nothing is offered as a paper variant. The CDR weight
  0.5 and the competition weight 0.1 / ramp 40 are the code's.
- Under the Trainer's bf16 autocast (CUDA) the losses are computed in float32 from the logits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchmark.losses import soft_dice_loss
from benchmark.nets.mcf import reference_init_
from benchmark.schedules import RampedConsistency
from methods.base import METHODS, Labeled, Method, MethodContext

RESNET_NET = "mcf-resnet34-unet"


@dataclass
class MCFConfig(RampedConsistency):
    """MCF's LA reference values (train_MCF.py L35-36, L59, L189-190)."""

    consistency: float = 0.1          # weight of the dynamic-competition MSE (L35)
    consistency_rampup: float = 40.0  # in units of `rampup_unit` iterations (L36, L206)
    rampup_unit: int = 150
    temperature: float = 0.1          # sharpening of the good student's softmax (L59, L194)
    cdr_weight: float = 0.5           # contrastive difference review term, no ramp-up (L189-190)
    reference_init: bool = True       # MCF's kaiming_normal_ init on the V-Net too (vnet.py __init_weight)
    resnet_width: int = 0             # ResNet34UNet width; 0: the V-Net's (network_options width, default 16)


def foreground_dice_loss(fg_probs: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """MCF `losses.dice_loss` on the foreground channel: 1 - (2 sum(p t) + s) / (sum p^2 + sum t^2 + s), sums
    over the whole batch; `fg_probs` (B, *spatial), `target` 0/1 or bool of the same shape."""
    return soft_dice_loss(fg_probs.unsqueeze(1), target.to(fg_probs.dtype).unsqueeze(1), smooth)


def difference_mask(probs_a: torch.Tensor, probs_b: torch.Tensor) -> torch.Tensor:
    """Voxels where exactly one of the two nets predicts foreground: (argmax_a == 1) XOR (argmax_b == 1),
    (B, *spatial) float 0/1, no gradient (train_MCF.py L181-183)."""
    fg_a, fg_b = probs_a.detach().argmax(1) == 1, probs_b.detach().argmax(1) == 1
    return (fg_a ^ fg_b).to(probs_a.dtype)


def cdr_loss(fg_probs: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, eps: float = 1e-16) -> torch.Tensor:
    """Contrastive difference review: squared error of the foreground probability to the 0/1 label, averaged
    over the difference mask, sum(m (p - y)^2) / (sum m + 1e-16) (L184-187); 0 where the nets agree."""
    err = (fg_probs - target.to(fg_probs.dtype)) ** 2
    return (mask * err).sum() / (mask.sum() + eps)


def sharpen_softmax(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """p^(1/T) / sum_c p^(1/T) over the class axis 1, detached (L192-199)."""
    powered = probs.detach() ** (1.0 / temperature)
    return powered / powered.sum(1, keepdim=True)


def competition_mse(probs: torch.Tensor, pseudo: torch.Tensor) -> torch.Tensor:
    """mean((p - PL)^2) over batch, classes and voxels (L208-210: sum / (b c w h d))."""
    return ((probs - pseudo) ** 2).mean()


def mean_softmax_logits(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """log((softmax a + softmax b) / 2), stably: softmax of the result is the mean of the two softmaxes."""
    stacked = torch.stack([logits_a.float().log_softmax(1), logits_b.float().log_softmax(1)])
    return torch.logsumexp(stacked, 0) - math.log(2.0)


@METHODS.register("mcf", "V-Net + ResNet34-UNet: difference review on disagreeing labeled voxels, the better "
                  "net's sharpened softmax teaches the other (LA)")
class MCF(Method):
    Config = MCFConfig
    dims = (3,)
    networks = ("vnet",)
    also_builds = (RESNET_NET,)

    def __init__(self, cfg: MCFConfig, ctx: MethodContext) -> None:
        super().__init__(cfg, ctx)
        if ctx.num_classes != 2:
            raise ValueError(f"MCF's losses are binary (foreground channel 1); got {ctx.num_classes} classes")
        self.vnet = ctx.build_network()
        if cfg.reference_init:
            reference_init_(self.vnet)
        options = dict(ctx.network_options)
        if cfg.resnet_width:
            options["width"] = cfg.resnet_width
        self.resnet = ctx.build_network(RESNET_NET, **options)
        self.vnet_optimizer = ctx.make_optimizer(self.vnet.parameters())
        self.resnet_optimizer = ctx.make_optimizer(self.resnet.parameters())

    def train_step(self, labeled: Labeled, unlabeled: torch.Tensor | None, step: int) -> dict[str, torch.Tensor]:
        if unlabeled is None:
            raise ValueError("MCF needs unlabeled images in every batch (batch_size > labeled_batch_size)")
        cfg, n, y = self.cfg, labeled.image.shape[0], labeled.label
        x = torch.cat([labeled.image, unlabeled])
        logits_v, logits_r = self.vnet(x).float(), self.resnet(x).float()
        probs_v, probs_r = logits_v.softmax(1), logits_r.softmax(1)
        fg = y == 1

        ce_v, ce_r = F.cross_entropy(logits_v[:n], y), F.cross_entropy(logits_r[:n], y)
        dice_v = foreground_dice_loss(probs_v[:n, 1], fg)
        dice_r = foreground_dice_loss(probs_r[:n, 1], fg)
        diff = difference_mask(probs_v[:n], probs_r[:n])
        cdr_v, cdr_r = cdr_loss(probs_v[:n, 1], fg, diff), cdr_loss(probs_r[:n, 1], fg, diff)
        sup_v = ce_v + dice_v + cfg.cdr_weight * cdr_v
        sup_r = ce_r + dice_r + cfg.cdr_weight * cdr_r

        # dynamic competition: the lower labeled Dice teaches the other net (ties -> the ResNet teaches)
        resnet_good = (dice_v >= dice_r).detach().float()   # 0: V-Net is the good student, 1: ResNet
        cons_v = competition_mse(probs_v[n:], sharpen_softmax(probs_r[n:], cfg.temperature))
        cons_r = competition_mse(probs_r[n:], sharpen_softmax(probs_v[n:], cfg.temperature))
        weight = cfg.consistency_weight(step)
        loss_v = sup_v + weight * resnet_good * cons_v
        loss_r = sup_r + weight * (1 - resnet_good) * cons_r
        loss = loss_v + loss_r
        self.update(loss, self.vnet_optimizer, self.resnet_optimizer)
        cons = resnet_good * cons_v + (1 - resnet_good) * cons_r   # the term that was applied
        return {"loss": loss.detach(), "loss_vnet": loss_v.detach(), "loss_resnet": loss_r.detach(),
                "loss_ce_vnet": ce_v.detach(), "loss_ce_resnet": ce_r.detach(),
                "loss_dice_vnet": dice_v.detach(), "loss_dice_resnet": dice_r.detach(),
                "loss_cdr_vnet": cdr_v.detach(), "loss_cdr_resnet": cdr_r.detach(),
                "loss_cons": cons.detach(), "good_student": resnet_good, "diff_fraction": diff.mean().detach(),
                "cons_weight": torch.tensor(weight)}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return mean_softmax_logits(self.vnet(x), self.resnet(x))
