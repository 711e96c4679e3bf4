"""Mixing helpers shared by the methods: a box of a given side fraction and the CutMix paste that uses it.

    box = random_box(256, 256, 0.5)              # Box(top, left, height=128, width=128)
    inside = box_mask((256, 256), box)           # bool (H, W), True inside the box
    mixed = paste(background, pasted, inside)    # pasted inside the box, background elsewhere

The box side is `int(side_fraction * image side)` on each axis, as the BCP / CML `generate_mask_2D` helpers
(PROTOCOLS.md §3.3); its position is uniform over every placement that fits the image, or centred. `paste`
broadcasts one (H, W) mask over images (B, C, H, W) and label maps (B, H, W), so a whole batch of pairs
shares one box, as those helpers do; per-sample boxes are a (B, H, W) mask for label maps or (B, 1, H, W)
for images.
"""
from __future__ import annotations

from typing import NamedTuple

import torch


class Box(NamedTuple):
    top: int
    left: int
    height: int
    width: int


def random_box(height: int, width: int, side_fraction: float | tuple[float, float], *, centered: bool = False,
               generator: torch.Generator | None = None) -> Box:
    """A box whose sides are `int(side_fraction * side)` (one fraction, or one per axis), placed uniformly at
    random among all positions inside the image (torch's RNG, or `generator`), or centred."""
    fy, fx = side_fraction if isinstance(side_fraction, tuple) else (side_fraction, side_fraction)
    if not (0 < fy <= 1 and 0 < fx <= 1):
        raise ValueError(f"side_fraction must lie in (0, 1] (got {side_fraction})")
    h, w = int(height * fy), int(width * fx)
    if h < 1 or w < 1:
        raise ValueError(f"a {side_fraction} box of a {height}x{width} image is empty")
    if centered:
        return Box((height - h) // 2, (width - w) // 2, h, w)
    top = int(torch.randint(0, height - h + 1, (), generator=generator))
    left = int(torch.randint(0, width - w + 1, (), generator=generator))
    return Box(top, left, h, w)


def box_mask(shape: tuple[int, int], box: Box, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean (H, W) mask, True inside `box`."""
    mask = torch.zeros(shape, dtype=torch.bool, device=device)
    mask[box.top:box.top + box.height, box.left:box.left + box.width] = True
    return mask


def paste(background: torch.Tensor, pasted: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """CutMix: `pasted` where `inside` is True, `background` elsewhere (images or label maps alike)."""
    return torch.where(inside, pasted, background)
