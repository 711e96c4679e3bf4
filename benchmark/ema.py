"""The EMA teacher update shared by Mean Teacher and its descendants."""
from __future__ import annotations

import copy

import torch
from torch import nn


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` whose parameters take no gradient: the starting point of an EMA teacher."""
    teacher = copy.deepcopy(model)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float, step: int, warmup: bool = True) -> None:
    """teacher <- a * teacher + (1 - a) * student over parameters, a = min(1 - 1/(step + 1), decay).

    The warm-up term makes the teacher a copy of the student at step 0 (SSL4MIS `update_ema_variables`);
    `warmup=False` uses a = decay from the first step (BCP's `update_model_ema`, whose teacher starts as a
    copy of the pre-trained student). Buffers (BN statistics) are not averaged: the teacher keeps its own, as
    in SSL4MIS.
    """
    alpha = min(1.0 - 1.0 / (step + 1), decay) if warmup else decay
    t_params = [p for p in teacher.parameters()]
    s_params = [p.detach() for p in student.parameters()]
    torch._foreach_mul_(t_params, alpha)
    torch._foreach_add_(t_params, s_params, alpha=1.0 - alpha)
