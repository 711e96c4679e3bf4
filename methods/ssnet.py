"""SS-Net (Wu et al., MICCAI 2022, "Exploring smoothness and class-separation for semi-supervised medical image
segmentation"), 2D ACDC version: ycwu1997/SS-Net @c0a8bf6 `code/train_ss_2d.py` (PROTOCOLS.md §3.7), with
`code/networks/unet.py`, `code/utils/losses.py` (DiceLoss, softDiceLoss, VAT2d), `code/utils/feature_memory.py`
and `code/utils/contrastive_losses.py` (both adapted there from Shathe/SemiSeg-Contrastive); the LA (3D) version
`code/train_ss_3d.py` in the same class, its differences listed at the end.

What the reference does, and this module does too (2D):
- Network: the plain SSL4MIS UNet, which also returns its finest decoder features (16 channels, full
  resolution; `UNet2D.forward_with_decoder_features`), plus SS-Net's heads (`SSNetHeads`): projection 16->32 and
  prediction 32->32 MLPs (Linear, BN1d, ReLU, Linear) and, per class, two "selector" MLPs (Linear 32->32,
  BN1d, LeakyReLU 0.2, Linear 32->1), one for batch features and one for memory features. One SGD optimiser
  over everything.
- Supervised loss: Dice only (SS-Net's DiceLoss: mean over all 4 classes, smooth 1e-10, no CE: the script
  computes CE for its log but does not add it).
- Smoothness (`vat_loss`): VAT on the WHOLE batch. Target = softmax of a separate no-grad pass (train mode);
  d = uniform(-0.5, 0.5) noise, L2-normalised per image; one power iteration: probe x + xi*d (xi = 10), d <-
  normalised grad of the soft-Dice distance w.r.t. d; r_adv = epsilon * d (`magnitude` 6.0 on ACDC, the L2
  norm of each image's perturbation); loss = soft Dice(softmax(f(x + r_adv)), target). BN running statistics
  are frozen during the probe and the adversarial pass (batch statistics are still used).
- Class separation (prototypes): the labeled pixels whose prediction is correct and not background are
  projected (heads in eval mode, no grad); per class at most 32 of them are kept in a memory that is replaced
  every step (a class without such pixels keeps its last entry; background never gets one, so it never
  contributes). When a class has more than 32, the class's batch selector scores them and the reference's
  ascending sort keeps the 32 LOWEST scores (its comment says "highest"; `memory_keep_highest=True` gives
  that reading). Then every labeled pixel (with its label) and every unlabeled pixel (with its argmax
  pseudo-label) goes through projection + prediction heads, and per class c with > 1 pixel and > 1 memory
  entry: distance = 1 - cosine(feature, memory entry), times the feature's weight sigmoid(selector(
  feature.detach())) rescaled to mean 1 over the class's features (so the batch selectors train, through
  this weight only); the class term is the mean weighted distance and the loss is the sum over classes /
  num_classes (`separation_loss`). The memory is a constant (numpy in the reference, L36).
- Memory-entry weights (`memory_weights`): the reference computes sigmoid(memory_selector(normalised entry))
  (`contrastive_losses.py` L39, L51, L60), transposes it to (1, M) (L61) and then rescales it along dim 0,
  which has length 1 (L62): each weight is v_j / v_j = 1 (1.0 +- 6e-8 measured), so the memory is weighted
  uniformly and the memory selectors get no (non-zero) gradient. Default `memory_weights="uniform"`: weight
  exactly 1 and the memory selectors are not run (their parameters stay as initialised: grad None, so SGD
  skips them, where the reference's all-but-zero gradient lets weight decay shrink them; they never affect
  an output). `memory_weights="learned"` (preset `learned-memory-weights`; our earlier default, and the
  evident intent of the code): the same scores rescaled to mean 1 over the class's M entries, so entries
  are weighted unevenly and the memory selectors train; they score the L2-normalised entries, as the
  reference feeds them (our earlier code scored the un-normalised ones).
- loss = Dice + w * (VAT + 0.1 * (sep_labeled + sep_unlabeled)), w = 0.1 * sigmoid_rampup(step // 150, 200)
  (the script computes w before incrementing its counter: step t uses t // 150). The reference calls one
  backward on it; here the main part is backpropagated before VAT's passes are built (same gradient, tested;
  one batch graph less at the peak: 9.8 -> 6.5 GB peak RSS for a step at 12+12 x 256 on CPU, measured).
- Inference: the UNet's logits.

Not a method setting but in the suites: SS-Net on ACDC trains with a constant lr (SGD 0.01, momentum 0.9,
weight decay 1e-4), batch 24 (12 labeled), patch 256, 30 000 iterations.

3D (LA): ycwu1997/SS-Net@c0a8bf6:code/train_ss_3d.py ("the 3D script") with `code/networks/VNet.py`, `VAT3d` and
`Binary_dice_loss` in `code/utils/losses.py`. The same algorithm and the same memory / contrastive code
(`feature_memory.py`, `contrastive_losses.py` serve both scripts); where the 3D script differs from the 2D one:
- Network: the V-Net (`vnet-ssnet`, `benchmark/nets/vnet_variants.py`) with the heads built into the network
  (`VNet.py` L245-275; 9,457,318 parameters at width 16), so on LA they are `model.heads`, not a second module;
  built with the suite's `network_options`. The features are the V-Net's x9 AFTER its pre-head Dropout3d(0.5)
  (`VNet.py` L232-237; the 2D UNet's features have no dropout after them), 16 channels, per voxel
  (`permute(0, 2, 3, 4, 1)`, 3D script L123, L147).
- Classes: 2 (L60), so only the foreground class ever gets memory entries and the separation sums are / 2.
- Supervised loss (L159): `Binary_dice_loss(softmax[:, 1], label == 1)` = 1 - (2 sum(p t) + 1e-8) /
  (sum p + sum t + 1e-8) over the labeled batch: the foreground only, LINEAR denominators, eps 1e-8 (2D:
  `DiceLoss` mean over all classes, squared denominators, 1e-10). `supervised_dice` = "binary" (LA).
- VAT distance (`VAT3d`, losses.py L124-153): the same `Binary_dice_loss` between the two (B, 2, ...) softmax
  maps taken as one tensor (all channels summed together), instead of `softDiceLoss(4)` per class.
  `vat_distance` = "binary" (LA). Perturbation: uniform(-0.5, 0.5) noise normalised per sample over all its
  voxels (`_l2_normalize`, n-D as written), xi 10, epsilon = `--magnitude` 10 (L37, L93), one power iteration,
  BN running statistics frozen in the probe and adversarial passes: as in 2D.
- Weight 1.0 * sigmoid_rampup(iter // 150, 40) (L35-36, L175) computed AFTER iter is incremented (L163), so
  step t (0-based) uses (t + 1) // 150 (2D: t // 150): `rampup_step_offset` = 1 (LA).
- Memory sampling: the same rule (correct, non-background labeled voxels; > 32 of a class -> the selector's 32
  lowest scores), over the voxels of the two labeled volumes.
- Unchanged from 2D: the order of the passes, the VAT on the whole batch, and here the two-part backward (the
  main part, then VAT's; the reference's single backward gives the same gradient).
- Not method settings (suite tables): batch 4 (2+2), 15000 iterations, SGD 0.01 x0.1 every 2500 (L232-235);
  best on the TEST list every 200 iterations from 2000 (L237-249); `test_LA.py` nms 1 (largest component).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from itertools import chain
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.config import ConfigError
from benchmark.losses import binary_dice_loss, dice_loss, soft_dice_loss
from benchmark.nets.vnet_variants import SSNetHeads
from benchmark.schedules import RampedConsistency
from methods.base import METHODS, Labeled, Method, MethodContext

DICE_FORMS = ("classes", "binary")
MEMORY_WEIGHTS = ("uniform", "learned")


@dataclass
class SSNetConfig(RampedConsistency):
    magnitude: float = 6.0             # VAT epsilon: L2 norm of each image's adversarial perturbation (LA: 10)
    xi: float = 10.0                   # VAT probe step
    power_iterations: int = 1
    separation_weight: float = 0.1     # inside the ramped weight: w * (vat + 0.1 * (sep_l + sep_u))
    memory_size: int = 32              # memory entries per class
    memory_keep_highest: bool = False  # reference: ascending sort keeps the lowest-scored features
    memory_weights: str = "uniform"    # uniform: the reference's (every entry 1) | learned: memory selectors, mean 1
    dice_smooth: float = 1e-10         # the "classes" Dice (2D DiceLoss / softDiceLoss)
    supervised_dice: str = "classes"   # classes: 2D DiceLoss over all classes | binary: 3D Binary_dice_loss (class 1)
    vat_distance: str = "classes"      # classes: 2D softDiceLoss per class | binary: 3D Binary_dice_loss, all channels
    binary_dice_eps: float = 1e-8      # Binary_dice_loss's ep
    rampup_step_offset: int = 0        # 2D: weight(t // 150); the 3D script increments iter first: 1

    def __post_init__(self) -> None:
        for name, valid in (("supervised_dice", DICE_FORMS), ("vat_distance", DICE_FORMS),
                            ("memory_weights", MEMORY_WEIGHTS)):
            if getattr(self, name) not in valid:
                raise ConfigError(f"ss-net: {name} must be one of {', '.join(valid)} "
                                  f"(got {getattr(self, name)!r})")


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """BatchNorm layers use batch statistics but do not update their running ones (VAT's extra passes)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in bns:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in bns:
            m.track_running_stats = True


def l2_normalise(d: torch.Tensor) -> torch.Tensor:
    """Each image's perturbation divided by its L2 norm (+1e-8)."""
    return d / (d.flatten(1).norm(dim=1).view(-1, *([1] * (d.dim() - 1))) + 1e-8)


Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def class_dice_distance(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """VAT2d's distance: `softDiceLoss`, the per-class soft Dice (squared denominators, 1e-10) averaged."""
    return soft_dice_loss(probs, target, 1e-10)


def vat_perturbation(model: nn.Module, x: torch.Tensor, target: torch.Tensor, xi: float, epsilon: float,
                     iterations: int = 1, distance: Distance = class_dice_distance) -> torch.Tensor:
    """r_adv = epsilon * (normalised gradient of distance(softmax(model(x + xi d)), target) w.r.t. d); each
    sample's d has L2 norm 1 over all its elements (any number of spatial axes)."""
    d = l2_normalise(torch.rand_like(x) - 0.5)
    for _ in range(iterations):
        d.requires_grad_(True)
        dist = distance(model(x + xi * d).float().softmax(1), target)
        (grad,) = torch.autograd.grad(dist, d)
        d = l2_normalise(grad)
    return epsilon * d


def vat_loss(model: nn.Module, x: torch.Tensor, xi: float, epsilon: float, iterations: int = 1,
             distance: Distance = class_dice_distance) -> torch.Tensor:
    """SS-Net's local distributional smoothness: `distance` between f(x + r_adv) and f(x) (a no-grad pass)."""
    with torch.no_grad():
        target = model(x).float().softmax(1)
    with frozen_bn_stats(model):
        r_adv = vat_perturbation(model, x, target, xi, epsilon, iterations, distance)
        return distance(model(x + r_adv).float().softmax(1), target)


def memory_entry_weights(heads: SSNetHeads, c: int, entries: torch.Tensor, mode: str = "uniform") -> torch.Tensor:
    """(1, M_c) weights of class c's memory entries. uniform: all 1, what the reference's rescaling along its
    length-1 axis yields (module docstring); learned: sigmoid(memory_selector(normalised entry)), mean 1."""
    if mode == "uniform":
        return entries.new_ones(1, entries.shape[0])
    v = torch.sigmoid(heads.memory_selectors[c](F.normalize(entries, dim=1))).T
    return v / v.mean()


def separation_loss(features: torch.Tensor, labels: torch.Tensor, memory: list[torch.Tensor | None],
                    heads: SSNetHeads, memory_weights: str = "uniform") -> torch.Tensor:
    """Class-wise pull of embedded `features` (N, D) towards their class's memory entries (M_c, D):
    sum over classes c (> 1 feature and > 1 entry) of mean_ij w_i v_j (1 - cos(f_i, m_j)), / num_classes;
    w = sigmoid selector scores of the (detached) features rescaled to mean 1, v = `memory_entry_weights`."""
    loss = features.new_zeros(())
    for c, entries in enumerate(memory):
        feats = features[labels == c]
        if entries is None or feats.shape[0] <= 1 or entries.shape[0] <= 1:
            continue
        distances = 1 - F.normalize(feats, dim=1) @ F.normalize(entries, dim=1).T
        w = torch.sigmoid(heads.selectors[c](feats.detach()))          # (N_c, 1)
        v = memory_entry_weights(heads, c, entries, memory_weights)      # (1, M_c)
        loss = loss + (distances * (w / w.mean()) * v).mean()
    return loss / len(memory)


@METHODS.register("ss-net", "VAT smoothness + class-wise prototype pull on decoder features, Dice only (SS-Net)")
class SSNet(Method):
    Config = SSNetConfig
    dims = (2, 3)
    networks = ("unet", "vnet")  # the SSL4MIS UNet's decoder features (2D); SS-Net's V-Net, vnet-ssnet (3D)
    presets = {"learned-memory-weights": {"memory_weights": "learned"}}   # see the module docstring

    def __init__(self, cfg: SSNetConfig, ctx: MethodContext) -> None:
        super().__init__(cfg, ctx)
        if "binary" in (cfg.supervised_dice, cfg.vat_distance) and ctx.num_classes != 2:
            raise ConfigError(f"ss-net: the binary Dice (supervised_dice / vat_distance) needs 2 classes "
                              f"(got {ctx.num_classes})")
        if ctx.spatial_dims == 3:   # the heads are part of SS-Net's V-Net (model.heads)
            self.model = ctx.build_network("vnet-ssnet", **ctx.network_options)
            self.optimizer = ctx.make_optimizer(self.model.parameters())
        else:
            self.model = ctx.build_network("unet")
            self.heads = SSNetHeads(ctx.num_classes)
            self.optimizer = ctx.make_optimizer(chain(self.model.parameters(), self.heads.parameters()))
        self.memory: list[torch.Tensor | None] = [None] * ctx.num_classes

    @property
    def ssnet_heads(self) -> SSNetHeads:
        """The projection / prediction / selector heads: a module of the method (2D) or of the V-Net (3D)."""
        return self.heads if hasattr(self, "heads") else self.model.heads

    def _dice(self, probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.cfg.supervised_dice == "binary":
            return binary_dice_loss(probs[:, 1], (target == 1).to(probs.dtype), self.cfg.binary_dice_eps)
        return dice_loss(probs, target, self.cfg.dice_smooth)

    def _vat_distance(self) -> Distance:
        if self.cfg.vat_distance == "binary":
            eps = self.cfg.binary_dice_eps
            return lambda p, t: binary_dice_loss(p, t, eps)
        return class_dice_distance

    @torch.no_grad()
    def update_memory(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Replace each present class's entries with (at most memory_size of) its projected `features`."""
        heads = self.ssnet_heads
        heads.eval()
        projected = heads.projection(features)
        heads.train()
        for c in range(len(self.memory)):
            feats = projected[labels == c]
            if feats.shape[0] > self.cfg.memory_size:
                scores = torch.sigmoid(heads.selectors[c](feats))[:, 0]
                order = scores.argsort(descending=self.cfg.memory_keep_highest)
                feats = feats[order[: self.cfg.memory_size]]
            if feats.shape[0] > 0:
                self.memory[c] = feats.clone()

    def train_step(self, labeled: Labeled, unlabeled: torch.Tensor | None, step: int) -> dict[str, torch.Tensor]:
        cfg, n = self.cfg, labeled.image.shape[0]
        x = labeled.image if unlabeled is None else torch.cat([labeled.image, unlabeled])
        heads = self.ssnet_heads
        logits, features = self.model.forward_with_decoder_features(x)
        probs = logits.float().softmax(1)
        sup = self._dice(probs[:n], labeled.label)
        pred = probs.detach().argmax(1)
        pixels = features.movedim(1, -1)                                # (B, *spatial, feature width)
        correct = (pred[:n] == labeled.label) & (pred[:n] > 0)
        self.update_memory(pixels[:n][correct], labeled.label[correct])
        sep_l = separation_loss(heads.embed(pixels[:n].reshape(-1, pixels.shape[-1])),
                                labeled.label.reshape(-1), self.memory, heads, cfg.memory_weights)
        sep_u = (separation_loss(heads.embed(pixels[n:].reshape(-1, pixels.shape[-1])),
                                 pred[n:].reshape(-1), self.memory, heads, cfg.memory_weights)
                 if n < x.shape[0] else sup.new_zeros(()))
        weight = cfg.consistency_weight(step + cfg.rampup_step_offset)
        # loss = sup + w * (vat + 0.1 * (sep_l + sep_u)), backpropagated in two parts: the main pass's graph is
        # freed before VAT builds two more passes over the whole batch (same gradient and forward order as the
        # reference's single backward; the peak memory of one graph instead of two)
        main = sup + weight * cfg.separation_weight * (sep_l + sep_u)
        self.optimizer.zero_grad(set_to_none=True)
        main.backward()
        vat = vat_loss(self.model, x, cfg.xi, cfg.magnitude, cfg.power_iterations, self._vat_distance())
        self.update(weight * vat, self.optimizer, accumulate=True)
        loss = main.detach() + weight * vat.detach()
        return {"loss": loss, "loss_dice": sup.detach(), "loss_vat": vat.detach(),
                "loss_sep_l": sep_l.detach(), "loss_sep_u": sep_u.detach(), "cons_weight": torch.tensor(weight)}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    # The memory is training state: keep it in checkpoints so a resumed run continues with it.
    def state_dict(self) -> dict:
        return {**super().state_dict(), "memory": list(self.memory)}

    def load_state_dict(self, state: dict, weights_only: bool = False) -> None:
        super().load_state_dict(state, weights_only)
        if "memory" in state and not weights_only:
            self.memory = list(state["memory"])
