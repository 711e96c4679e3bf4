"""Mean Teacher (Tarvainen & Valpola 2017) as in SSL4MIS `train_mean_teacher_2D.py` (PROTOCOLS.md §3.1).

The student sees labeled + unlabeled images in one forward pass; the EMA teacher sees the unlabeled images
plus clipped Gaussian noise and stays in train mode (dropout and batch statistics on), as in SSL4MIS.
Consistency = mean squared difference of softmaxes, weighted 0.1 * sigmoid ramp-up over step // 150 and
forced to 0 for the first 1000 steps. Inference uses the student.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from benchmark.ema import ema_update, frozen_copy
from benchmark.losses import dice_ce_loss, softmax_mse
from benchmark.schedules import RampedConsistency
from methods.base import METHODS, Labeled, Method, MethodContext


@dataclass
class MeanTeacherConfig(RampedConsistency):
    ema_decay: float = 0.99
    consistency_start: int = 1000       # no consistency before this step (SSL4MIS)
    noise_std: float = 0.1
    noise_clip: float = 0.2


@METHODS.register("mean-teacher", "EMA teacher, noisy teacher input, softmax-MSE consistency ramped to 0.1 (SSL4MIS)")
class MeanTeacher(Method):
    Config = MeanTeacherConfig
    dims = (2, 3)   # 2D slices / images or 3D volumes, with whichever registered net the suite names
    # `bench tune` defaults: ranges around SSL4MIS's values (consistency 0.1, ema_decay 0.99, lr 0.01)
    search_space = {"consistency": "loguniform:0.01:1.0", "ema_decay": "choice:0.99,0.995,0.999",
                    "lr": "loguniform:0.001:0.1"}
    search_grids = {"consistency": [0.01, 0.03, 0.1, 0.3, 1.0], "ema_decay": [0.9, 0.99, 0.999]}

    def __init__(self, cfg: MeanTeacherConfig, ctx: MethodContext) -> None:
        super().__init__(cfg, ctx)
        self.model = ctx.build_network()
        self.teacher = frozen_copy(self.model)
        self.optimizer = ctx.make_optimizer(self.model.parameters())

    def train_step(self, labeled: Labeled, unlabeled: torch.Tensor | None, step: int) -> dict[str, torch.Tensor]:
        cfg, n = self.cfg, labeled.image.shape[0]
        logits = self.model(torch.cat([labeled.image, unlabeled]))
        sup = dice_ce_loss(logits[:n], labeled.label)
        noise = (torch.randn_like(unlabeled) * cfg.noise_std).clamp(-cfg.noise_clip, cfg.noise_clip)
        with torch.no_grad():
            teacher_logits = self.teacher(unlabeled + noise)
        cons = softmax_mse(logits[n:], teacher_logits) if step >= cfg.consistency_start else logits.new_zeros(())
        out = self.consistency_update(sup, cons, step, self.optimizer)
        ema_update(self.teacher, self.model, cfg.ema_decay, step)
        return out

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
