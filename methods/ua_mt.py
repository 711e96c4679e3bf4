"""Uncertainty-Aware Mean Teacher (Yu et al., MICCAI 2019): 2D as SSL4MIS `train_uncertainty_aware_mean_teacher_2D.py`,
3D (LA) as the authors' yulequan/UA-MT@88ed29a:code/train_LA_meanteacher_certainty_unlabel.py (below: "the LA script").

Mean Teacher (`methods/mean_teacher.py`: same EMA update, decay 0.99, teacher kept in train mode) whose
consistency only counts pixels where the teacher is confident. Facts checked in the SSL4MIS 2D script
(PROTOCOLS.md §3.1):

- Consistency target: the teacher's output on ONE noisy copy of the unlabeled batch (noise randn*0.1 clamped
  to +-0.2), a forward pass of its own. The T=8 passes below only build the uncertainty map; they are not
  the target (not their mean).
- Uncertainty: T=8 further teacher passes, each on a fresh noisy copy. SSL4MIS batches them as 4 forwards
  of the unlabeled batch repeated twice (each copy with its own noise); `passes_per_forward` = 2 keeps
  that grouping, which matters only through the teacher's batch-norm statistics (train mode); 8 runs
  all passes in one forward. Uncertainty = entropy -sum_c p log(p + 1e-6) of the mean softmax over the T
  passes, natural log, not normalised.
- Threshold: (0.75 + 0.25 * sigmoid_rampup(step, max_iterations)) * ln 2, ramped over the raw step (not
  step // 150). ln 2 is the binary maximum entropy (the LA origin of the method), kept for 4-class ACDC as
  in SSL4MIS. Mask = uncertainty < threshold, one value per pixel shared by all classes.
- Consistency = sum(mask * (softmax(student) - softmax(teacher))^2) / (2 * sum(mask) + 1e-16): the sum runs
  over classes too while sum(mask) counts pixels.
- Weight 0.1 * sigmoid_rampup(step // 150, 200). Unlike MT there is NO zero period for the first 1000 steps.
- Supervised 0.5 * (CE + Dice) on the labeled part of the student's single forward on the whole batch.
Inference uses the student.

3D (LA), the same algorithm; facts read in the LA script (it is the SSL4MIS 2D script's origin):
- Network: the plain V-Net (`networks/vnet.py`, = `benchmark.nets.vnet`, has_dropout=True) for student and
  teacher (L87-97); both in train mode throughout (L119-120), so the teacher's dropout and batch statistics are
  active in all its passes, as in 2D. EMA decay 0.99 with the same warm-up min(1 - 1/(iter + 1), 0.99) (L68-72),
  called with iter before its increment (L182).
- Consistency target: one teacher pass on the unlabeled part + clamp(randn * 0.1, -0.2, 0.2) (L146-150).
- Uncertainty: T = 8; the unlabeled batch repeated twice (`repeat(2, 1, 1, 1, 1)`, L152), 4 forwards, each copy
  with its own noise (L155-158), softmax, reshaped (T, B_u, ...) and averaged over T (L159-161): the same
  grouping as `passes_per_forward` = 2. Entropy with +1e-6 inside the log, natural log (L162).
- Threshold (0.75 + 0.25 * sigmoid_rampup(iter, max_iterations)) * ln 2 on the raw iteration (L173); mask =
  uncertainty < threshold (L174); consistency sum(mask * softmax-MSE) / (2 * sum(mask) + 1e-16) (L175) over the
  UNLABELED part only (student outputs[labeled_bs:] vs the teacher's unlabeled pass, L172).
- Weight 0.1 * sigmoid_rampup(iter // 150, 40) (L38-39, L171), iter before its increment: LA method_config
  {consistency: 0.1, consistency_rampup: 40}.
- Supervised 0.5 * (CE + Dice) on the labeled part (L166-169), BUT the Dice is the LA script's own
  `losses.dice_loss(softmax[:, 1], label == 1)` (`code/utils/losses.py` L5-13): the FOREGROUND channel only,
  1 - (2 sum(p t) + 1e-5) / (sum p^2 + sum t^2 + 1e-5) summed over the whole labeled batch; SSL4MIS's 2D
  `DiceLoss` averages that over ALL classes, background included. `dice_classes` = "foreground" gives the LA
  form (for more than 2 classes: the mean over classes 1..C-1, a generalisation the binary script does not
  need); the default "all" keeps the 2D form.
- Not method settings (suite `method_train` / `method_protocol`): SGD 0.01, x0.1 every 2500 (L239-242), batch 4
  (2+2), 6000 iterations (L28-30); `test_LA.py` evaluates `iter_6000.pth` (the last), argmax of the averaged
  softmax, no largest component. The script hard-codes labeled_idxs = range(16) (L112): 20% only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchmark.config import ConfigError
from benchmark.ema import ema_update, frozen_copy
from benchmark.losses import dice_ce_loss, entropy_map, one_hot, soft_dice_loss, softmax_mse
from benchmark.schedules import RampedConsistency, sigmoid_rampup
from methods.base import METHODS, Labeled, Method, MethodContext


@dataclass
class UAMTConfig(RampedConsistency):
    ema_decay: float = 0.99
    noise_std: float = 0.1
    noise_clip: float = 0.2
    uncertainty_passes: int = 8         # T
    passes_per_forward: int = 2         # SSL4MIS: 4 forwards of the unlabeled batch repeated twice
    threshold_start: float = 0.75       # threshold = (start + ramp * sigmoid_rampup(step, iterations)) * unit
    threshold_ramp: float = 0.25
    threshold_unit: float = math.log(2)
    dice_classes: str = "all"           # all: SSL4MIS DiceLoss (2D) | foreground: the LA script's dice_loss (class 1)

    def __post_init__(self) -> None:
        if self.dice_classes not in ("all", "foreground"):
            raise ConfigError(f"ua-mt: dice_classes must be 'all' or 'foreground' (got {self.dice_classes!r})")


def uncertainty_threshold(step: int, iterations: int, cfg: UAMTConfig) -> float:
    """(0.75 + 0.25 * sigmoid_rampup(step, iterations)) * ln 2 with the defaults."""
    return (cfg.threshold_start + cfg.threshold_ramp * sigmoid_rampup(step, iterations)) * cfg.threshold_unit


def certainty_mask(mean_probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """1.0 where the entropy of the mean softmax (B,C,*spatial) is below `threshold`, else 0.0; (B,1,*spatial)."""
    return (entropy_map(mean_probs) < threshold).float().unsqueeze(1)


def masked_consistency(dist: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum(mask * dist) / (2 * sum(mask) + 1e-16), `dist` (B,C,*spatial), `mask` (B,1,*spatial) as in SSL4MIS."""
    return (mask * dist).sum() / (2 * mask.sum() + 1e-16)


def supervised_loss(logits: torch.Tensor, target: torch.Tensor, dice_classes: str = "all") -> torch.Tensor:
    """0.5 * (CE + Dice); Dice over all classes (SSL4MIS, `dice_ce_loss`) or the foreground ones only (the LA
    script's `dice_loss(softmax[:, 1], label == 1)`: one soft Dice with squared denominators, smooth 1e-5)."""
    if dice_classes == "all":
        return dice_ce_loss(logits, target)
    logits = logits.float()
    probs = logits.softmax(1)
    dice = soft_dice_loss(probs[:, 1:], one_hot(target, probs.shape[1], probs.dtype)[:, 1:], 1e-5)
    return 0.5 * (F.cross_entropy(logits, target.long()) + dice)


@METHODS.register("ua-mt", "Mean Teacher whose softmax-MSE counts only pixels of low teacher entropy over 8 noisy passes (SSL4MIS)")
class UAMT(Method):
    Config = UAMTConfig
    dims = (2, 3)   # the suite's network (UNet in 2D, V-Net on LA) for student and teacher

    def __init__(self, cfg: UAMTConfig, ctx: MethodContext) -> None:
        super().__init__(cfg, ctx)
        if cfg.uncertainty_passes % cfg.passes_per_forward:
            raise ValueError("uncertainty_passes must be a multiple of passes_per_forward")
        self.model = ctx.build_network()
        self.teacher = frozen_copy(self.model)
        self.optimizer = ctx.make_optimizer(self.model.parameters())

    def _noisy(self, x: torch.Tensor) -> torch.Tensor:
        return x + (torch.randn_like(x) * self.cfg.noise_std).clamp(-self.cfg.noise_clip, self.cfg.noise_clip)

    @torch.no_grad()
    def teacher_mean_probs(self, unlabeled: torch.Tensor) -> torch.Tensor:
        """Mean softmax of the teacher over `uncertainty_passes` noisy copies of `unlabeled`."""
        cfg, b = self.cfg, unlabeled.shape[0]
        k = cfg.passes_per_forward
        total = None
        for _ in range(cfg.uncertainty_passes // k):
            probs = self.teacher(self._noisy(unlabeled.repeat(k, *[1] * (unlabeled.dim() - 1)))).float().softmax(1)
            part = probs.reshape(k, b, *probs.shape[1:]).sum(0)
            total = part if total is None else total + part
        return total / cfg.uncertainty_passes

    def train_step(self, labeled: Labeled, unlabeled: torch.Tensor | None, step: int) -> dict[str, torch.Tensor]:
        cfg, n = self.cfg, labeled.image.shape[0]
        logits = self.model(torch.cat([labeled.image, unlabeled]))
        sup = supervised_loss(logits[:n], labeled.label, cfg.dice_classes)
        with torch.no_grad():
            teacher_logits = self.teacher(self._noisy(unlabeled))
        mask = certainty_mask(self.teacher_mean_probs(unlabeled), uncertainty_threshold(step, self.ctx.iterations, cfg))
        cons = masked_consistency(softmax_mse(logits[n:], teacher_logits, reduction="none"), mask)
        out = self.consistency_update(sup, cons, step, self.optimizer)
        ema_update(self.teacher, self.model, cfg.ema_decay, step)
        return {**out, "mask_ratio": mask.mean()}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
