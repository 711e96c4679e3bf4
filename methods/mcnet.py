"""MC-Net (Wu et al., MICCAI 2021, "Semi-supervised left atrium segmentation with mutual consistency
training"), 2D ACDC version: ycwu1997/MC-Net @fee453c `code/train_mcnet_2d.py` with model `mcnet2d_v1`
(`code/networks/unet.py`), `code/utils/losses.py`, `code/utils/val_2d.py`, `code/test_2d.py`.

What the reference does, and this module does too:
- Network: one SSL4MIS UNet encoder, decoder 1 up-samples bilinearly, decoder 2 with transposed convs
  (`benchmark/nets/mcnet.py`). One SGD optimiser (the Trainer's) over everything.
- Supervised loss: the sum over both decoders of MC-Net's own Dice loss on the labeled part, which has NO
  factor 2: per class 1 - sum(p t) / (sum p^2 + sum t^2 + 1e-10), averaged over all classes (background
  included). The script also computes a CE loss but never adds it to the loss, so there is no CE here.
  Weight `lamda` = 1 (the default at the current commit; an April-2022 copy under `mcnet/` had `beta` 0.5).
- Sharpening, per element and per class (no renormalisation over classes):
  s(p) = p^(1/T) / (p^(1/T) + (1 - p)^(1/T)), T = 0.1.
- Mutual consistency over the WHOLE batch (labeled + unlabeled): sum over i != j of
  mean((p_i - s(p_j))^2), p = softmax. The reference does NOT detach s(p_j): it writes the sharpened map into a
  zeros tensor by index assignment, which keeps the graph, so gradients also flow through the target.
  `detach_target=False` reproduces that; True gives the stop-gradient variant.
- Weight 0.1 * sigmoid_rampup(iter // 150, 200) where the script increments iter BEFORE computing it, so
  step t (0-based) uses (t + 1) // 150: `consistency_weight(step + 1)`.
- Inference: validation and `test_2d.py` both take `output[0]`, decoder 1 (bilinear) alone; so does `predict`.

Not a method setting but worth knowing for the suite: the 2D script never changes the lr (SGD 0.01,
momentum 0.9, weight decay 1e-4, constant), unlike SSL4MIS's poly schedule.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchmark.schedules import RampedConsistency
from methods.base import METHODS, Labeled, Method, MethodContext


@dataclass
class MCNetConfig(RampedConsistency):
    temperature: float = 0.1
    lamda: float = 1.0                  # weight of the supervised (Dice) loss
    detach_target: bool = False         # the reference back-propagates through the sharpened target


def sharpen(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """p^(1/T) / (p^(1/T) + (1-p)^(1/T)), elementwise (MC-Net `sharpening`)."""
    power = 1.0 / temperature
    num = probs ** power
    return num / (num + (1 - probs) ** power)


def mcnet_dice_loss(probs: torch.Tensor, target: torch.Tensor, smooth: float = 1e-10) -> torch.Tensor:
    """MC-Net `DiceLoss` on softmax `probs` (B,C,H,W): mean over classes of 1 - I / (sum p^2 + sum t^2 + smooth),
    I = sum p t over the batch. Note: no factor 2, so a perfect prediction scores 0.5, not 0."""
    onehot = F.one_hot(target.long(), probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    intersect = (probs * onehot).sum(dims)
    union = (probs * probs).sum(dims) + (onehot * onehot).sum(dims) + smooth
    return (1 - intersect / union).mean()


def mutual_consistency(probs: list[torch.Tensor], temperature: float, detach_target: bool = False) -> torch.Tensor:
    """sum over i != j of mean((p_i - sharpen(p_j))^2)."""
    targets = [sharpen(p.detach() if detach_target else p, temperature) for p in probs]
    return sum(F.mse_loss(p, t) for i, p in enumerate(probs) for j, t in enumerate(targets) if i != j)


@METHODS.register("mc-net", "one encoder, bilinear + transposed-conv decoders, MSE to each other's sharpened softmax (MC-Net)")
class MCNet(Method):
    Config = MCNetConfig
    networks = ("unet",)  # builds its own UNet variant, mcnet-2d

    def __init__(self, cfg: MCNetConfig, ctx: MethodContext) -> None:
        super().__init__(cfg, ctx)
        self.model = ctx.build_network("mcnet-2d")
        self.optimizer = ctx.make_optimizer(self.model.parameters())

    def train_step(self, labeled: Labeled, unlabeled: torch.Tensor | None, step: int) -> dict[str, torch.Tensor]:
        cfg, n = self.cfg, labeled.image.shape[0]
        x = labeled.image if unlabeled is None else torch.cat([labeled.image, unlabeled])
        probs = [logits.float().softmax(1) for logits in self.model(x)]
        sup = sum(mcnet_dice_loss(p[:n], labeled.label) for p in probs)
        cons = mutual_consistency(probs, cfg.temperature, cfg.detach_target)
        weight = cfg.consistency_weight(step + 1)
        loss = cfg.lamda * sup + weight * cons
        self.update(loss, self.optimizer)
        return {"loss": loss.detach(), "loss_dice": sup.detach(), "loss_cons": cons.detach(),
                "cons_weight": torch.tensor(weight)}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[0]
