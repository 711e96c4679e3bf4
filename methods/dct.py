"""Deep Co-Training (Qiao, Shen, Zhang, Wang & Yuille, ECCV 2018), for 2D segmentation, in two named variants.

Where the medical numbers come from. The DCT rows of the seed tables (AdvMIM Table 2 / SemSim Table I: 3 cases
Dice 58.2, HD95 26.4; 7 cases 80.4, 13.8) are the Cross-Teaching (CTBCT, Luo et al., MIDL 2022) numbers, which
both papers say they follow; CTBCT's author trained its baselines with SSL4MIS, whose
`code/train_deep_co_training_2D.py` (HiLab-git/SSL4MIS @06df604; added in 9c2d468, 2021-12, before CTBCT;
the README lists it as "(9) Deep Co-Training") is the only DCT script there. SS-Net and MC-Net (ycwu1997)
have no DCT script. That SSL4MIS script is NOT the paper's method; it keeps only the "two views agree" idea.

variant="paper" (the default; the paper's Sec. 3, with its CIFAR-10 weights, adapted per pixel):
- Two UNets with independent initialisations and optimisers (as CPS here).
- L_sup: each net's supervised loss on the labeled part; here the harness's 0.5*(CE + Dice) (the paper, a
  classifier, used CE only).
- L_cot on the UNLABELED part: Jensen-Shannon divergence H((p1+p2)/2) - (H(p1) + H(p2))/2, per pixel, mean.
- L_dif, the view-difference constraint, on ALL images (labeled + unlabeled): g_i(x) = FGSM adversarial
  example of net i, x + eps * sign(grad_x CE(net_i(x), y)), y = the label on labeled images and net i's own
  argmax on unlabeled ones; then L_dif = H(p1(x), p2(g1(x))) + H(p2(x), p1(g2(x))) (cross-entropies, per
  pixel, mean): each net must keep the other's prediction on the other's adversarial examples, so the two
  nets cannot collapse into one. The targets p_i(x) are not detached (the paper's formula; nothing says to
  stop the gradient). The input gradient reuses the main forward pass (same dropout mask), so no extra pass.
- loss = L_sup1 + L_sup2 + lambda_cot(t) * L_cot + lambda_dif(t) * L_dif; the paper: lambda_cot 10,
  lambda_dif 0.5, FGSM eps 0.02, both weights ramped up with exp(-5(1-t)^2) over the first 80 of its 600
  epochs: here over `rampup_fraction` (80/600) of the stage's iterations.
- Prediction: net 1.
- Not checked here: the paper's text is not in ../shared, so the items above come from its equations as
  cited; whether its two nets saw the same labeled minibatch is not verified (an unofficial CIFAR-10
  re-implementation feeds each net its own labeled batch; here both see the same one).

variant="ssl4mis" (preset `dct:ssl4mis`, the script behind the table numbers, in one of its two versions below):
- ONE UNet. Labeled + unlabeled go through it; the unlabeled images also go through it rotated by
  k * 90 degrees, k drawn uniformly from {0,1,2,3} once per step (k=0: the same images again, so the two
  passes differ only by their dropout masks).
- Consistency: 0.5 * (mean((q.detach() - rot(p))^2) + mean((q - rot(p).detach())^2)), p/q the softmax of
  the plain/rotated pass: the value of an MSE, half of its gradient, split evenly between the two views
  (train_deep_co_training_2D.py L157 at 06df604; `rotation_gradient="split"`).
- loss = 0.5*(CE + Dice) + 0.1 * sigmoid_rampup(step // 150, 200) * consistency (step // 150 before the counter
  increments, L155); SGD poly lr.
- History: the script's first upload (9c2d468, 2021-12-02, a week before CTBCT's arXiv v1) had the plain MSE
  mean((q - rot(p))^2) with the full gradient into both views; ed919cf (2022-01-12, "fixed a typo") changed it
  to the split form. Which one CTBCT's DCT numbers were trained with is not stated; the plain form is
  `rotation_gradient="full"` (preset `dct:ssl4mis-9c2d468`), i.e. twice the split form's gradient.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchmark.config import ConfigError
from benchmark.losses import dice_ce_loss, entropy_map
from benchmark.schedules import RampedConsistency, sigmoid_rampup
from methods.base import METHODS, Labeled, Method, MethodContext

VARIANTS = ("paper", "ssl4mis")
ROTATION_GRADIENTS = ("split", "full")


@dataclass
class DCTConfig(RampedConsistency):
    """`consistency*` (the RampedConsistency fields) weight only the ssl4mis variant."""

    variant: str = "paper"
    lambda_cot: float = 10.0          # paper, CIFAR-10
    lambda_dif: float = 0.5           # paper, CIFAR-10
    epsilon: float = 0.02             # FGSM step (images in [0, 1])
    rampup_fraction: float = 80 / 600  # both lambdas ramp up over this share of the iterations (paper: 80 epochs)
    rotation_gradient: str = "split"   # ssl4mis variant: split (06df604) | full (the first upload, 9c2d468)

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"dct: variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.rotation_gradient not in ROTATION_GRADIENTS:
            raise ConfigError(f"dct: rotation_gradient must be one of {ROTATION_GRADIENTS}, "
                              f"got {self.rotation_gradient!r}")


def jensen_shannon(p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    """Mean over pixels of H((p1 + p2) / 2) - (H(p1) + H(p2)) / 2 for softmax maps (B,C,H,W); 0 iff p1 == p2."""
    return (entropy_map((p1 + p2) / 2) - (entropy_map(p1) + entropy_map(p2)) / 2).mean()


def soft_cross_entropy(target_probs: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """H(target, softmax(logits)) = -sum_c t log q, mean over pixels."""
    return -(target_probs * F.log_softmax(logits.float(), 1)).sum(1).mean()


def fgsm(x: torch.Tensor, loss: torch.Tensor, epsilon: float) -> torch.Tensor:
    """x + epsilon * sign(d loss / d x), detached; `x` must be part of `loss`'s graph. The graph is kept."""
    (grad,) = torch.autograd.grad(loss, x, retain_graph=True)
    return (x + epsilon * grad.sign()).detach()


def rotation_consistency(p: torch.Tensor, q: torch.Tensor, k: int, split: bool = True) -> torch.Tensor:
    """SSL4MIS DCT: 0.5 * (mse(q.detach(), rot_k(p)) + mse(q, rot_k(p).detach())), p of the plain view;
    split=False: the plain mse(q, rot_k(p)) of the script's first upload (same value, twice the gradient)."""
    p_rot = torch.rot90(p, k, (2, 3))
    if not split:
        return F.mse_loss(q, p_rot)
    return 0.5 * (F.mse_loss(p_rot, q.detach()) + F.mse_loss(q, p_rot.detach()))


@METHODS.register("dct", "deep co-training: two UNets, JSD agreement, each robust to the other's FGSM views (Qiao 2018)")
class DCT(Method):
    Config = DCTConfig
    presets = {"ssl4mis": {"variant": "ssl4mis"},
               "ssl4mis-9c2d468": {"variant": "ssl4mis", "rotation_gradient": "full"}}

    def __init__(self, cfg: DCTConfig, ctx: MethodContext) -> None:
        super().__init__(cfg, ctx)
        self.model1 = ctx.build_network()
        self.optimizer1 = ctx.make_optimizer(self.model1.parameters())
        if cfg.variant == "paper":
            self.model2 = ctx.build_network()
            self.optimizer2 = ctx.make_optimizer(self.model2.parameters())

    def ramp(self, step: int) -> float:
        return sigmoid_rampup(step, self.cfg.rampup_fraction * self.ctx.iterations)

    def train_step(self, labeled: Labeled, unlabeled: torch.Tensor | None, step: int) -> dict[str, torch.Tensor]:
        if unlabeled is None:
            raise ValueError("DCT needs unlabeled images in every batch (batch_size > labeled_batch_size)")
        if self.cfg.variant == "ssl4mis":
            return self._rotation_step(labeled, unlabeled, step)
        return self._co_training_step(labeled, unlabeled, step)

    def _co_training_step(self, labeled: Labeled, unlabeled: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        cfg, n = self.cfg, labeled.image.shape[0]
        x = torch.cat([labeled.image, unlabeled]).requires_grad_(True)
        logits1, logits2 = self.model1(x), self.model2(x)
        p1, p2 = logits1.float().softmax(1), logits2.float().softmax(1)
        sup1, sup2 = dice_ce_loss(logits1[:n], labeled.label), dice_ce_loss(logits2[:n], labeled.label)
        cot = jensen_shannon(p1[n:], p2[n:])
        # FGSM targets: the labels on the labeled part, each net's own argmax on the unlabeled part.
        y1 = torch.cat([labeled.label.long(), logits1[n:].detach().argmax(1)])
        y2 = torch.cat([labeled.label.long(), logits2[n:].detach().argmax(1)])
        adv1 = fgsm(x, F.cross_entropy(logits1.float(), y1), cfg.epsilon)
        adv2 = fgsm(x, F.cross_entropy(logits2.float(), y2), cfg.epsilon)
        dif = soft_cross_entropy(p1, self.model2(adv1)) + soft_cross_entropy(p2, self.model1(adv2))
        ramp = self.ramp(step)
        loss = sup1 + sup2 + cfg.lambda_cot * ramp * cot + cfg.lambda_dif * ramp * dif
        self.update(loss, self.optimizer1, self.optimizer2,
                    inputs=[*self.model1.parameters(), *self.model2.parameters()])
        return {"loss": loss.detach(), "loss_sup1": sup1.detach(), "loss_sup2": sup2.detach(),
                "loss_cot": cot.detach(), "loss_dif": dif.detach(), "ramp": torch.tensor(ramp)}

    def _rotation_step(self, labeled: Labeled, unlabeled: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        n, k = labeled.image.shape[0], random.randrange(4)
        logits = self.model1(torch.cat([labeled.image, unlabeled]))
        rot_logits = self.model1(torch.rot90(unlabeled, k, (2, 3)))
        sup = dice_ce_loss(logits[:n], labeled.label)
        cons = rotation_consistency(logits[n:].float().softmax(1), rot_logits.float().softmax(1), k,
                                    split=self.cfg.rotation_gradient == "split")
        out = self.consistency_update(sup, cons, step, self.optimizer1)
        out["rot_k"] = torch.tensor(k)
        return out

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model1(x)
