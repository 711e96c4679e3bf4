"""MC-Net (Wu et al., MICCAI 2021, "Semi-supervised left atrium segmentation with mutual consistency
training") and MC-Net+ (Wu et al., MedIA 2022, "Mutual consistency learning for semi-supervised medical image
segmentation"): ycwu1997/MC-Net @fee453c. 2D ACDC: `code/train_mcnet_2d.py` with `mcnet2d_v1` / `mcnet2d_v2`
(`code/networks/unet.py`), `code/utils/losses.py`, `code/utils/val_2d.py`, `code/test_2d.py`. 3D LA:
`code/train_mcnet_3d.py` with `mcnet3d_v1` / `mcnet3d_v2` (`code/networks/VNet.py`), `code/test_3d.py`. One script
per dimension trains both nets (`--model`, `train_mcnet_2d.sh` / `train_mcnet_3d.sh`); its loop runs over however
many decoders the net has, so `mc-net` (two decoders) and `mc-net-plus` (three) share this class.

What the reference does, and this module does too:
- Network, selected by the patch's dimensions (`ctx.spatial_dims`):
  - 2D: one SSL4MIS UNet encoder; decoder 1 up-samples bilinearly, decoder 2 with transposed convs
    (`benchmark/nets/mcnet.py`, `mcnet-2d`); MC-Net+ adds decoder 3, nearest (`mcnet-2d-plus`, unet.py L167-199).
  - 3D: one V-Net encoder; decoder 1 transposed conv, decoder 2 trilinear + 3x3x3 conv, MC-Net+ decoder 3 nearest
    + 3x3x3 conv (`benchmark/nets/mcnet3d.py`, `mcnet-3d` / `mcnet-3d-plus`, VNet.py L231-259); Dropout3d(0.5) on
    the bottleneck and before every head (train factory `has_dropout=True`, net_factory.py L16-18). Built with the
    suite's `network_options` (e.g. `width`).
  One SGD optimiser (the Trainer's) over everything.
- Supervised loss, on the labeled part, summed over the decoders:
  - 2D: MC-Net's own Dice loss, which has NO factor 2: per class 1 - sum(p t) / (sum p^2 + sum t^2 + 1e-10),
    averaged over all classes (background included) (losses.py L22-56 `DiceLoss`; train_mcnet_2d.py L124-128).
  - 3D: `Binary_dice_loss` on the foreground softmax channel (train_mcnet_3d.py L147, losses.py L4-8):
    1 - (2 sum(p t) + 1e-8) / (sum p + sum t + 1e-8), with the factor 2 and linear (not squared) sums, over the
    labeled half-batch as one volume. It needs 2 classes (LA); a 3D task with more classes is refused.
  Both scripts also compute a CE loss but never add it to the loss, so there is no CE here.
  Weight `lamda`: 2D 1 (the default at the current commit; an April-2022 copy under `mcnet/` had `beta` 0.5), LA
  0.5 (train_mcnet_3d.py L49, L163).
- Sharpening, per element and per class (no renormalisation over classes):
  s(p) = p^(1/T) / (p^(1/T) + (1 - p)^(1/T)), T = 0.1 (train_mcnet_2d.py L30-33, L53; train_mcnet_3d.py L27-30, L48).
- Mutual consistency over the WHOLE batch (labeled + unlabeled): sum over ordered pairs i != j of
  mean((p_i - s(p_j))^2), p = softmax (2 pairs for two decoders, 6 for three) (train_mcnet_2d.py L130-139,
  losses.py L19-20 `mse_loss`). The reference does NOT detach
  s(p_j): it writes the sharpened map into a zeros tensor by index assignment, which keeps the graph, so gradients
  also flow through the target. `detach_target=False` reproduces that; True gives the stop-gradient variant.
- Weight `consistency` * sigmoid_rampup(iter // 150, `consistency_rampup`) where both scripts increment iter
  BEFORE computing it (train_mcnet_2d.py L141-142, train_mcnet_3d.py L160-161), so step t (0-based) uses
  (t + 1) // 150: `consistency_weight(step + 1)`. 2D: 0.1 and 200; LA: 1.0 and 40 (train_mcnet_3d.py L46-47).
- Inference: decoder 1 alone. 2D: validation takes `output[0]` (`val_2d.py` L29-31, bilinear); `test_2d.py` L90-92
  builds a plain `unet` and loads the weights with strict=False, i.e. encoder + decoder 1 (bilinear), the same net;
  3D: `test_3d.py` L44-46 builds a plain `vnet` and loads the weights with strict=False, i.e. encoder + decoder 1
  (transposed conv), and `--nms` defaults to 0 (L16): no largest-component post-processing.

Config defaults are the 2D (ACDC) reference; the LA values (lamda 0.5, consistency 1.0, ramp-up 40) are set by the
LA suites' `method_config`. Not method settings but for the suites: both scripts never change the lr (SGD 0.01,
momentum 0.9, weight decay 1e-4, constant); LA trains 15 000 iterations with batch 2 + 2 (train_mcnet_3d.py
L37-40) and the released LA numbers are the best-on-test checkpoint, evaluated every 200 iterations from 800
(L203-215; the final iter_15000 is saved too, L220-223).

Departures: none in the losses. In 3D the reference holds the softmax maps in CPU float32 tensors
(`torch.zeros(...)`, L138-139) for the MSE; here they stay on the training device, in float32.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchmark.losses import binary_dice_loss
from benchmark.schedules import RampedConsistency
from methods.base import METHODS, Labeled, Method, MethodContext


@dataclass
class MCNetConfig(RampedConsistency):
    temperature: float = 0.1
    lamda: float = 1.0                  # weight of the supervised (Dice) loss (LA reference: 0.5)
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


@METHODS.register("mc-net", "one encoder, two decoders up-sampling differently, MSE to each other's sharpened "
                             "softmax (MC-Net; 2D UNet, 3D V-Net)")
class MCNet(Method):
    Config = MCNetConfig
    dims = (2, 3)
    networks = ("unet", "vnet")  # builds its own variant of the net: mcnet-2d / mcnet-3d
    net_2d, net_3d = "mcnet-2d", "mcnet-3d"

    def __init__(self, cfg: MCNetConfig, ctx: MethodContext) -> None:
        super().__init__(cfg, ctx)
        if ctx.spatial_dims == 3:
            if ctx.num_classes != 2:
                raise ValueError(f"{type(self).__name__} in 3D uses the reference's binary Dice loss and needs "
                                 f"2 classes (got {ctx.num_classes})")
            self.model = ctx.build_network(self.net_3d, **ctx.network_options)
        else:
            self.model = ctx.build_network(self.net_2d)
        self.optimizer = ctx.make_optimizer(self.model.parameters())

    def supervised_loss(self, probs: list[torch.Tensor], label: torch.Tensor) -> torch.Tensor:
        """Sum over decoders of the reference's Dice loss on the labeled part (2D `DiceLoss`, 3D `Binary_dice_loss`)."""
        n = label.shape[0]
        if self.ctx.spatial_dims == 3:
            return sum(binary_dice_loss(p[:n, 1], label == 1) for p in probs)
        return sum(mcnet_dice_loss(p[:n], label) for p in probs)

    def train_step(self, labeled: Labeled, unlabeled: torch.Tensor | None, step: int) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        x = labeled.image if unlabeled is None else torch.cat([labeled.image, unlabeled])
        probs = [logits.float().softmax(1) for logits in self.model(x)]
        sup = self.supervised_loss(probs, labeled.label)
        cons = mutual_consistency(probs, cfg.temperature, cfg.detach_target)
        weight = cfg.consistency_weight(step + 1)
        loss = cfg.lamda * sup + weight * cons
        self.update(loss, self.optimizer)
        return {"loss": loss.detach(), "loss_dice": sup.detach(), "loss_cons": cons.detach(),
                "cons_weight": torch.tensor(weight)}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        if self.ctx.spatial_dims == 3:
            return self.model.first(x)   # encoder + decoder 1 only, as test_3d.py
        return self.model(x)[0]


@METHODS.register("mc-net-plus", "MC-Net+: MC-Net with three decoders (transposed / trilinear-or-bilinear / nearest "
                                  "up-sampling), mutual consistency over all six ordered pairs")
class MCNetPlus(MCNet):
    """MC-Net+ (`mcnet2d_v2` / `mcnet3d_v2`): the same training step over three decoders."""

    net_2d, net_3d = "mcnet-2d-plus", "mcnet-3d-plus"
