"""SASSNet, shape-aware semi-supervised segmentation (Li, Zhang, He, MICCAI 2020), LA (3D) only, as in its released
code kleinzcy/SASSnet@1761aa8 `code/train_gan_sdfloss.py` (PROTOCOLS-3D-DATASETS.md §A.2, checked in the code).
The paper is not in shared/papers; every fact below is the code's.

What the reference does, and this module does too:
- Network `vnet_sdf` (`benchmark/nets/vnet_sdf.py`, registered `vnet-sdf`): the LA V-Net with a tanh SDF head and a
  segmentation head, one sigmoid channel each (n_classes = num_classes - 1 = 1, L94), dropout on (L94).
- Segmenter step (L153-180), segmenter in train mode, discriminator in EVAL mode (L154-155), one forward pass of
  the whole batch (labeled first):
  - supervised = Dice(sigmoid(seg), label == 1) + beta * MSE(tanh SDF, normalised SDF of the label) on the labeled
    part (L164, L166, L170), beta = 0.3 (L42). The Dice is the reference's `losses.dice_loss` (utils/losses.py
    L7-15): 1 - (2 sum(p t) + 1e-5) / (sum(p^2) + sum(t^2) + 1e-5), one sum over the whole labeled batch (=
    `benchmark.losses.soft_dice_loss` on one channel). The SDF target is `benchmark.sdf.compute_sdf` (negative
    inside, +-1 extremes, 0 on the inner boundary), computed on the CPU per step (L161-163).
  - adversarial = CE(D(tanh SDF of the unlabeled part, unlabeled images), "labeled") (L172-174): the segmenter
    pushes D to call unlabeled SDF maps labeled; gradients reach the segmenter through D (not detached). D sees
    the SDF map and the image, each through its own first conv, summed (`FC3DDiscriminator`, not the
    segmentation probabilities).
  - loss = supervised + w * adversarial (L176), w = consistency * sigmoid_rampup(step // 150, 40) (L75-77, L168,
    computed before the counter increments, so 0-based step t uses t // 150 = `consistency_weight(step)`).
    consistency: the script default and the README's 16-label command use 0.01; the README's 8-label command
    0.015 ("the best setting in our experiment"). The README and the script say nothing for 4 labels.
  - one SGD step of the segmenter (the Trainer's SGD lr 0.01, momentum 0.9, wd 1e-4, x0.1 every 2500 iterations,
    L125, L220-224).
- Discriminator step, after the segmenter's (L184-200): segmenter in EVAL mode (BatchNorm running statistics, no
  dropout), discriminator in train mode (dropout on); the whole batch is re-predicted under no_grad by the UPDATED
  segmenter; D(tanh SDF, image) is trained with CE against [1]*labeled + [0]*unlabeled (L153, L190-192: class 1 =
  labeled). D's optimiser: Adam lr 1e-4, betas (0.9, 0.99), no weight decay (L37, L124); its lr is never decayed,
  so `train_step` puts it back to `d_lr` before D's step (the Trainer applies its schedule to every optimiser).
  D's base width is `d_ndf` = 64 as the reference (a smaller value only narrows it, e.g. in tests).
- Test (`test_LA.py`): the segmentation head's sigmoid, averaged over sliding windows, > 0.5; the SDF head is not
  used; `--nms` default 0 (no largest component, L13); the checkpoint `iter_6000` (L11, README). `predict`
  returns the 2-class logits [0, z], whose softmax is [1 - sigmoid(z), sigmoid(z)], so the harness's softmax
  averaging and argmax reproduce the reference's sigmoid > 0.5.

Not used by the reference, hence not here: the BCE of the segmentation head (computed and logged, never added,
L165; `ce_weight` > 0 adds it), `--ema_decay`, `--gamma`, `--consistency_type` (its criterion is unused, L129-134).

Departures:
- The reference's generator target is `Dtarget[:labeled_bs]` and its D target the literal [1, 1, 0, 0], which
  need 2 labeled + 2 unlabeled; here the targets have one entry per image (identical at 2 + 2).
- The discriminator's pool is a global average (the reference's AvgPool3d((7, 7, 5)) is that at 112x112x80 only;
  `benchmark/nets/discriminator.py`).
- An all-foreground labeled crop gets SDF -1 (the reference: NaN; `benchmark/sdf.py`).
- Binary tasks only (num_classes == 2), as the reference's one sigmoid channel.
- As for every method, the Trainer runs the step under bf16 autocast on CUDA (the reference: float32); the losses
  are computed in float32 from the heads' outputs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchmark.losses import soft_dice_loss
from benchmark.schedules import RampedConsistency
from benchmark.sdf import compute_sdf
from methods.base import METHODS, Labeled, Method, MethodContext
from methods.dan import adversarial_loss, discriminator_targets


def sdf_supervised_loss(sdf: torch.Tensor, seg: torch.Tensor, label: torch.Tensor, beta: float,
                        ce_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SASSNet / DTC supervised loss on the labeled part: Dice(sigmoid(seg), label == 1) + beta * MSE(sdf, SDF of
    the label) (+ ce_weight * BCE(seg, label), 0 in both references). `sdf`, `seg`: (B, 1, *spatial); `label`
    (B, *spatial). Returns the loss and its detached parts."""
    sdf, seg = sdf.float(), seg.float()
    target = (label == 1).to(seg.dtype).unsqueeze(1)
    dice = soft_dice_loss(torch.sigmoid(seg), target)
    sdf_mse = F.mse_loss(sdf, compute_sdf(label).unsqueeze(1))
    loss = dice + beta * sdf_mse
    parts = {"loss_dice": dice.detach(), "loss_sdf": sdf_mse.detach()}
    if ce_weight:
        bce = F.binary_cross_entropy_with_logits(seg, target)
        loss = loss + ce_weight * bce
        parts["loss_bce"] = bce.detach()
    return loss, parts


def sigmoid_as_two_class(seg: torch.Tensor) -> torch.Tensor:
    """One sigmoid logit channel z (B, 1, *spatial) -> 2-class logits [0, z], whose softmax is the sigmoid."""
    return torch.cat([torch.zeros_like(seg), seg], 1)


def check_binary(ctx: MethodContext, name: str) -> None:
    if ctx.num_classes != 2:
        raise ValueError(f"{name} has one sigmoid output (binary tasks only); the card has {ctx.num_classes} classes")


@dataclass
class SASSNetConfig(RampedConsistency):
    consistency: float = 0.01           # adversarial weight: script default / README 16 labels; README 8 labels 0.015
    consistency_rampup: float = 40.0    # sigmoid ramp over step // 150 (L48)
    rampup_unit: int = 150
    beta: float = 0.3                   # weight of the SDF MSE (L42)
    ce_weight: float = 0.0              # BCE of the seg head: computed, never added by the reference (L165)
    d_lr: float = 1e-4                  # discriminator Adam (L37, L124), never decayed
    d_beta1: float = 0.9
    d_beta2: float = 0.99
    d_ndf: int = 64                     # discriminator base width (FC3DDiscriminator ndf, L56 of discriminator.py)


@METHODS.register("sassnet", "SASSNet: V-Net with a tanh SDF head, SDF MSE + adversarial D on (SDF, image) (LA)")
class SASSNet(Method):
    Config = SASSNetConfig
    dims = (3,)
    networks = ("vnet",)   # builds its own V-Net variant, vnet-sdf
    also_builds = ("vnet-sdf", "fc3d-discriminator")

    def __init__(self, cfg: SASSNetConfig, ctx: MethodContext) -> None:
        super().__init__(cfg, ctx)
        check_binary(ctx, "SASSNet")
        self.model = ctx.build_network("vnet-sdf", **ctx.network_options)
        self.discriminator = ctx.build_network("fc3d-discriminator", ndf=cfg.d_ndf)
        self.optimizer = ctx.make_optimizer(self.model.parameters())
        self.d_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=cfg.d_lr,
                                            betas=(cfg.d_beta1, cfg.d_beta2))

    def train_step(self, labeled: Labeled, unlabeled: torch.Tensor | None, step: int) -> dict[str, torch.Tensor]:
        if unlabeled is None:
            raise ValueError("SASSNet needs unlabeled volumes in every batch (batch_size > labeled_batch_size)")
        cfg, n = self.cfg, labeled.image.shape[0]
        x = torch.cat([labeled.image, unlabeled])

        # 1) segmenter: Dice + beta * SDF MSE on labeled + w * CE(D(unlabeled SDF, image), "labeled"); D in eval mode
        self.model.train()
        self.discriminator.eval()
        sdf, seg = self.model(x)
        sup, parts = sdf_supervised_loss(sdf[:n], seg[:n], labeled.label, cfg.beta, cfg.ce_weight)
        adv = adversarial_loss(self.discriminator(sdf[n:], unlabeled))
        weight = cfg.consistency_weight(step)
        loss = sup + weight * adv
        self.update(loss, self.optimizer)   # D's gradients from this pass are cleared by D's zero_grad below

        # 2) discriminator on the updated segmenter's SDF maps (eval mode, no grad), labeled = 1, unlabeled = 0
        for group in self.d_optimizer.param_groups:
            group["lr"] = cfg.d_lr   # constant, as the reference (undo the Trainer's schedule)
        self.model.eval()
        self.discriminator.train()
        with torch.no_grad():
            sdf_all, _ = self.model(x)
        d_logits = self.discriminator(sdf_all, x).float()
        targets = discriminator_targets(n, x.shape[0] - n, x.device)
        d_loss = F.cross_entropy(d_logits, targets)
        self.update(d_loss, self.d_optimizer)
        self.model.train()
        d_acc = (d_logits.detach().argmax(1) == targets).float().mean()
        return {"loss": loss.detach(), "loss_sup": sup.detach(), **parts, "loss_adv": adv.detach(),
                "loss_d": d_loss.detach(), "d_acc": d_acc, "cons_weight": torch.tensor(weight)}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return sigmoid_as_two_class(self.model(x)[1])
