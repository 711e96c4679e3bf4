"""DTC, dual-task consistency (Luo, Chen, Song, Wang, AAAI 2021), LA (3D) only, as in its released code
HiLab-git/DTC@2525b9c `code/train_la_dtc.py` (PROTOCOLS-3D-DATASETS.md §A.2, checked in the code). The paper is not
in shared/papers; every fact below is the code's.

What the reference does, and this module does too:
- Network `vnet_sdf` (`benchmark/nets/vnet_sdf.py`, registered `vnet-sdf`), the same file as SASSNet's: the LA
  V-Net with a tanh SDF head and a segmentation head, one sigmoid channel each (n_classes = 1, L113), dropout on.
- One forward pass of the whole batch (labeled first, 2 + 2), one SGD step (L172-195):
  - supervised = Dice(sigmoid(seg), label == 1) + beta * MSE(tanh SDF, normalised SDF of the label) on the labeled
    part (L180, L183-184, L188), beta = 0.3 (L50); the Dice and the SDF are SASSNet's (`methods/sassnet.py`
    `sdf_supervised_loss`, `benchmark/sdf.py`): 1 - (2 sum(p t) + 1e-5) / (sum(p^2) + sum(t^2) + 1e-5) over the
    whole labeled batch (utils/losses.py L8-16).
  - dual-task consistency = mean((sigmoid(-1500 * tanh SDF) - sigmoid(seg))^2) over the WHOLE batch, labeled and
    unlabeled (L185-187), with gradients into BOTH heads (neither side is detached). k = 1500 (`transform_k`).
  - loss = supervised + w * consistency (L191), w = consistency * sigmoid_rampup(step // 150, 40) with
    consistency 1.0 (L60-63, L92-94, L189: computed before the counter increments, so 0-based step t uses
    t // 150 = `consistency_weight(step)`).
  - the Trainer's SGD lr 0.01, momentum 0.9, wd 1e-4, x0.1 every 2500 iterations (L144-145, L250-254), 6000
    iterations (L34), checkpoints every 1000 (L255).
- Unused arguments, hence not here: `--consistency_weight 0.1` (L47), `--consistency_type kl` (L56; it selects a
  criterion that is never called, L149-154), `--D_lr`, `--ema_decay`, `--gamma`, `--with_cons`; the BCE of the
  seg head is computed and logged but never added (L181; `ce_weight` > 0 adds it).
- Test (`test_LA.py`, `test_util.py` L107-122): the segmentation head's sigmoid, averaged over sliding windows,
  > 0.5 (the SDF head's transform is computed there but not used); `--nms` default 1 (largest connected
  component, L15). It loads `best_model.pth`, which the training script never writes; the authors used the last
  iteration (HiLab-git/DTC issue #14). `predict` returns the 2-class logits [0, z] (softmax = the sigmoid).

Departures: an all-foreground labeled crop gets SDF -1 (the reference: NaN; `benchmark/sdf.py`); binary tasks
only (num_classes == 2), as the reference's one sigmoid channel. As for every method, the Trainer runs the step under
bf16 autocast on CUDA (the reference: float32); the losses, the -1500 transform included, are computed in float32
from the heads' outputs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from benchmark.schedules import RampedConsistency
from benchmark.sdf import DTC_K, sdf_to_mask
from methods.base import METHODS, Labeled, Method, MethodContext
from methods.sassnet import check_binary, sdf_supervised_loss, sigmoid_as_two_class


@dataclass
class DTCConfig(RampedConsistency):
    consistency: float = 1.0            # weight of the dual-task consistency (L60-61)
    consistency_rampup: float = 40.0    # sigmoid ramp over step // 150 (L62-63)
    rampup_unit: int = 150
    beta: float = 0.3                   # weight of the SDF MSE (L50)
    transform_k: float = DTC_K          # sigmoid(-k * sdf), k = 1500 (L185)
    ce_weight: float = 0.0              # BCE of the seg head: computed, never added by the reference (L181)


def dual_task_consistency(sdf: torch.Tensor, seg: torch.Tensor, k: float = DTC_K) -> torch.Tensor:
    """mean((sigmoid(-k * sdf) - sigmoid(seg))^2) over every voxel of the batch, gradients into both heads."""
    return torch.mean((sdf_to_mask(sdf, k) - torch.sigmoid(seg.float())) ** 2)


@METHODS.register("dtc", "DTC: V-Net + tanh SDF head, SDF MSE + MSE(sigmoid(-1500 sdf), sigmoid(seg)) (LA)")
class DTC(Method):
    Config = DTCConfig
    dims = (3,)
    networks = ("vnet",)   # builds its own V-Net variant, vnet-sdf
    also_builds = ("vnet-sdf",)

    def __init__(self, cfg: DTCConfig, ctx: MethodContext) -> None:
        super().__init__(cfg, ctx)
        check_binary(ctx, "DTC")
        self.model = ctx.build_network("vnet-sdf", **ctx.network_options)
        self.optimizer = ctx.make_optimizer(self.model.parameters())

    def train_step(self, labeled: Labeled, unlabeled: torch.Tensor | None, step: int) -> dict[str, torch.Tensor]:
        cfg, n = self.cfg, labeled.image.shape[0]
        x = labeled.image if unlabeled is None else torch.cat([labeled.image, unlabeled])
        sdf, seg = self.model(x)
        sup, parts = sdf_supervised_loss(sdf[:n], seg[:n], labeled.label, cfg.beta, cfg.ce_weight)
        cons = dual_task_consistency(sdf, seg, cfg.transform_k)
        return {**self.consistency_update(sup, cons, step, self.optimizer), **parts}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return sigmoid_as_two_class(self.model(x)[1])
