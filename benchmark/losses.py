"""Losses shared by the methods (SSL4MIS `utils/losses.py` semantics, written from PROTOCOLS.md §3.1)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def dice_loss(probs: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Soft Dice of softmax `probs` (B,C,H,W) against integer `target` (B,H,W), mean over ALL classes
    (background included): 1 - (2 sum(p t) + eps) / (sum(p^2) + sum(t^2) + eps), per class over the batch."""
    onehot = F.one_hot(target.long(), probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    intersect = (probs * onehot).sum(dims)
    denom = (probs * probs).sum(dims) + onehot.sum(dims)
    return (1 - (2 * intersect + eps) / (denom + eps)).mean()


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The supervised loss of every SSL4MIS-family method: 0.5 * (CE + Dice)."""
    logits = logits.float()
    return 0.5 * (F.cross_entropy(logits, target.long()) + dice_loss(logits.softmax(1), target))


def softmax_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Squared difference of the two softmax maps (Mean Teacher's consistency): its mean, or with
    reduction="none" the (B,C,H,W) map (SSL4MIS `softmax_mse_loss`, which UA-MT masks before summing)."""
    return F.mse_loss(student_logits.float().softmax(1), teacher_logits.float().softmax(1), reduction=reduction)


def entropy_map(probs: torch.Tensor, normalise: bool = False, eps: float = 1e-6) -> torch.Tensor:
    """Per-pixel entropy -sum_c p log(p + eps) of softmax `probs` (B,C,H,W) -> (B,H,W), natural log.

    eps = 1e-6 inside the log as SSL4MIS (`entropy_map`, UA-MT's uncertainty). With normalise=True the map is
    divided by log(C), so a uniform softmax scores ~1 (SSL4MIS `entropy_loss_map`; `entropy_loss` is its mean).
    """
    probs = probs.float()
    ent = -(probs * torch.log(probs + eps)).sum(1)
    return ent / math.log(probs.shape[1]) if normalise else ent


def dice_loss_per_sample(probs: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Soft Dice with sums per sample and a linear denominator (BCP / CML `mask_DiceLoss`, no weight mask):
    1 - mean over samples and ALL classes (background included) of (2 sum(p t) + eps) / (sum p + sum t + eps)."""
    onehot = F.one_hot(target.long(), probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (2, 3)
    intersect = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    return 1 - ((2 * intersect + eps) / (denom + eps)).mean()
