"""Losses shared by the methods (SSL4MIS `utils/losses.py` semantics, written from PROTOCOLS.md §3.1)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def one_hot(target: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Integer labels (B, *spatial) -> one-hot (B, C, *spatial) of `dtype`."""
    return F.one_hot(target.long(), num_classes).movedim(-1, 1).to(dtype)


def soft_dice_loss(probs: torch.Tensor, target_probs: torch.Tensor, eps: float = 1e-5,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """Dice between two (B, C, *spatial) maps, mean over ALL classes (background included):
    1 - (2 sum(p t) + eps) / (sum(p^2) + sum(t^2) + eps), per class over the batch. A soft target is allowed
    (SS-Net's VAT distance `softDiceLoss`).

    `mask` ((B, *spatial) or (*spatial), 0/1 or weights) restricts every sum to the masked pixels (BCP's
    masked `DiceLoss(..., mask)`: each term multiplied by the mask before summing)."""
    dims = (0, *range(2, probs.dim()))
    if mask is not None:
        m = mask.to(probs.dtype)
        m = m.unsqueeze(1) if m.dim() == probs.dim() - 1 else m
        intersect = (probs * target_probs * m).sum(dims)
        denom = (probs * probs * m).sum(dims) + (target_probs * target_probs * m).sum(dims)
    else:
        intersect = (probs * target_probs).sum(dims)
        denom = (probs * probs).sum(dims) + (target_probs * target_probs).sum(dims)
    return (1 - (2 * intersect + eps) / (denom + eps)).mean()


def binary_dice_loss(probs: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """The LA codebases' `Binary_dice_loss` (MC-Net, SS-Net, CAML) on a foreground probability map and a binary
    target of the same shape: 1 - (2 sum(p t) + eps) / (sum p + sum t + eps), LINEAR denominators, every sum over
    the whole tensor (batch included)."""
    target = target.to(probs.dtype)
    return 1 - (2 * (probs * target).sum() + eps) / (probs.sum() + target.sum() + eps)


def dice_loss(probs: torch.Tensor, target: torch.Tensor, eps: float = 1e-5,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """Soft Dice of softmax `probs` (B, C, *spatial) against integer `target` (B, *spatial): `soft_dice_loss`
    against the one-hot target (SSL4MIS `DiceLoss`), optionally restricted to `mask`."""
    return soft_dice_loss(probs, one_hot(target, probs.shape[1], probs.dtype), eps, mask)


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The supervised loss of every SSL4MIS-family method: 0.5 * (CE + Dice)."""
    logits = logits.float()
    return 0.5 * (F.cross_entropy(logits, target.long()) + dice_loss(logits.softmax(1), target))


def softmax_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Squared difference of the two softmax maps (Mean Teacher's consistency): its mean, or with
    reduction="none" the (B, C, *spatial) map (SSL4MIS `softmax_mse_loss`, which UA-MT masks before summing)."""
    return F.mse_loss(student_logits.float().softmax(1), teacher_logits.float().softmax(1), reduction=reduction)


def entropy_map(probs: torch.Tensor, normalise: bool = False, eps: float = 1e-6) -> torch.Tensor:
    """Per-pixel entropy -sum_c p log(p + eps) of softmax `probs` (B, C, *spatial) -> (B, *spatial), natural log.

    eps = 1e-6 inside the log as SSL4MIS (`entropy_map`, UA-MT's uncertainty). With normalise=True the map is
    divided by log(C), so a uniform softmax scores ~1 (SSL4MIS `entropy_loss_map`; `entropy_loss` is its mean).
    """
    probs = probs.float()
    ent = -(probs * torch.log(probs + eps)).sum(1)
    return ent / math.log(probs.shape[1]) if normalise else ent


def pseudo_targets(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A teaching net's signal for the other net: (argmax labels, max softmax probability = certainty), both
    (B, *spatial) and detached (cross teaching: CTCT, AdvMIM Eqs. 1-2)."""
    certainty, labels = logits.detach().float().softmax(1).max(1)
    return labels, certainty


def weighted_ce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                normalise: bool = False) -> torch.Tensor:
    """Pixel-wise CE weighted by `weight` (B, *spatial): mean(w * CE) (an expectation, AdvMIM Eq. 2), or with
    normalise=True sum(w * CE) / sum(w) (AdvMIM's released code). Without weights: plain mean CE."""
    ce = F.cross_entropy(logits.float(), target.long(), reduction="none")
    if weight is None:
        return ce.mean()
    weighted = weight.float() * ce
    return weighted.sum() / weight.float().sum().clamp_min(1e-8) if normalise else weighted.mean()


def lsgan_discriminator_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Least-squares GAN (Mao et al. 2017) for the discriminator: E[(D(real) - 1)^2] + E[D(fake)^2]."""
    return ((real.float() - 1) ** 2).mean() + (fake.float() ** 2).mean()


def lsgan_generator_loss(fake: torch.Tensor) -> torch.Tensor:
    """Least-squares GAN for the generator: E[(D(fake) - 1)^2] (the fakes should be scored as real)."""
    return ((fake.float() - 1) ** 2).mean()


def confidence_mask(probs: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """FixMatch's pseudo-labels and their mask from softmax `probs` (B, C, *spatial): (argmax (B, *spatial),
    max >= tau)."""
    conf, pseudo = probs.max(1)
    return pseudo, conf >= tau


def masked_ce_loss(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                   weight: torch.Tensor | None = None) -> torch.Tensor:
    """Pixel CE kept where `mask` is True (optionally times a per-pixel `weight`), summed and divided by ALL
    pixels (masked ones count as 0), as FixMatch's (1/|B|) sum 1(conf >= tau) CE."""
    keep = mask.to(torch.float32)
    return weighted_ce(logits, target, keep if weight is None else keep * weight)


def dice_loss_per_sample(probs: torch.Tensor, target: torch.Tensor, eps: float = 1e-5,
                         mask: torch.Tensor | None = None) -> torch.Tensor:
    """Soft Dice of (B, C, *spatial) `probs` against (B, *spatial) `target` with sums per sample and a linear
    denominator (BCP / CML `mask_DiceLoss`):
    1 - mean over samples and ALL classes (background included) of (2 sum(p t) + eps) / (sum p + sum t + eps);
    with a (B, *spatial) `mask` m every sum runs over m * (...) (`mask_DiceLoss(logits, target, mask)`)."""
    onehot = one_hot(target, probs.shape[1], probs.dtype)
    dims = tuple(range(2, probs.dim()))
    if mask is None:
        intersect = (probs * onehot).sum(dims)
        denom = probs.sum(dims) + onehot.sum(dims)
    else:
        m = mask.to(probs.dtype).unsqueeze(1)
        intersect = (probs * onehot * m).sum(dims)
        denom = ((probs + onehot) * m).sum(dims)
    return 1 - ((2 * intersect + eps) / (denom + eps)).mean()


def info_nce(z: torch.Tensor, positive_index, tau: float, reduction: str = "mean",
             eps: float = 1e-8) -> torch.Tensor:
    """SimCLR's NT-Xent (InfoNCE with cosine similarity; DK-UXNet Eq. 3) among V vectors z (..., V, D): anchor i
    with positive j = positive_index[i] scores -log(exp(sim(z_i, z_j)/tau) / sum_{k != i} exp(sim(z_i, z_k)/tau)),
    sim(x, y) = x.y / (|x| |y|) (norms floored at `eps`). Leading dims are independent sets (e.g. one set of views
    per voxel; `positive_index` a sequence or CPU tensor). Returns the mean over anchors and sets, or with
    reduction="none" the (..., V) per-anchor losses."""
    v = z.shape[-2]
    pos = torch.as_tensor(positive_index, dtype=torch.long).reshape(-1).cpu()   # checked on the host: no sync
    if pos.numel() != v or bool(((pos < 0) | (pos >= v) | (pos == torch.arange(pos.numel()))).any()):
        raise ValueError(f"info_nce: positive_index must give each of the {v} anchors another vector in 0..{v - 1} "
                         f"(got {pos.tolist()})")
    pos = pos.to(z.device)
    if tau <= 0:
        raise ValueError(f"info_nce: tau must be > 0 (got {tau})")
    with torch.autocast(z.device.type, enabled=False):                # cosines in float32, also under AMP
        unit = F.normalize(z.float(), dim=-1, eps=eps)
        logits = unit @ unit.transpose(-1, -2) / tau                   # (..., V, V)
    self_pair = torch.eye(v, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_pair, float("-inf"))               # the denominator runs over k != i
    positive = logits.gather(-1, pos.view(v, 1).expand(*logits.shape[:-1], 1)).squeeze(-1)
    loss = torch.logsumexp(logits, dim=-1) - positive
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean()
    raise ValueError(f"info_nce: reduction must be mean or none (got {reduction!r})")
