"""Box mixing shared by the methods that cut and paste between images (CutMix, copy-paste).

`random_box` draws one axis-aligned box of a given side fraction at a uniformly random position that fits
inside the image; `box_mask` turns it into a boolean mask; `cutmix_masks` draws a batch of UniMatch-style
CutMix boxes (random area and aspect ratio, applied with a probability); `mix` pastes where a mask is set.
"""
from __future__ import annotations

import math

import torch

Box = tuple[slice, slice]


def _uniform(generator: torch.Generator | None, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def random_box(h: int, w: int, ratio: float | tuple[float, float], generator: torch.Generator | None = None) -> Box:
    """(rows, cols) slices of a box whose sides are `ratio` of the image's (a float, or (row, col) fractions),
    rounded down and at least 1 pixel, placed uniformly at random entirely inside the h x w image."""
    rh, rw = (ratio, ratio) if isinstance(ratio, (int, float)) else ratio
    if not (0 < rh <= 1 and 0 < rw <= 1):
        raise ValueError(f"box side fractions must be in (0, 1] (got {ratio!r})")
    bh, bw = max(1, int(h * rh)), max(1, int(w * rw))
    top = int(torch.randint(0, h - bh + 1, (), generator=generator))
    left = int(torch.randint(0, w - bw + 1, (), generator=generator))
    return slice(top, top + bh), slice(left, left + bw)


def box_mask(h: int, w: int, box: Box, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean (h, w) mask, True inside `box`."""
    mask = torch.zeros(h, w, dtype=torch.bool, device=device)
    mask[box] = True
    return mask


def cutmix_masks(n: int, h: int, w: int, p: float = 0.5, area: tuple[float, float] = (0.02, 0.4),
                 aspect: tuple[float, float] = (0.3, 1 / 0.3), generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """(n, h, w) boolean CutMix masks: with probability `p` a box of area fraction ~ U(area) and aspect ratio
    (height / width) ~ U(aspect), else empty (UniMatch's medical CutMix box, PROTOCOLS.md §3.8)."""
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    for i in range(n):
        if _uniform(generator) >= p:
            continue
        a, r = _uniform(generator, *area), _uniform(generator, *aspect)
        rh, rw = min(1.0, math.sqrt(a * r)), min(1.0, math.sqrt(a / r))
        masks[i][random_box(h, w, (rh, rw), generator)] = True
    return masks.to(device)


def mix(base: torch.Tensor, pasted: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`pasted` where `mask` (B, H, W) is True, `base` elsewhere; works for (B, H, W) and (B, C, H, W)."""
    if base.dim() == mask.dim() + 1:
        mask = mask.unsqueeze(1)
    return torch.where(mask, pasted, base)
