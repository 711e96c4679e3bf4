"""Copy-paste mixing shared by the methods that cut a box out of one image and paste it into another
(BCP's bidirectional copy-paste; FixMatch / SemSim's CutMix boxes via `cutmix_masks`).

    box = sample_box(256, 256, side_ratio=2 / 3)        # where the foreground goes
    mask = box_mask(256, 256, box)                      # (H, W) 1 inside the box, 0 outside
    mixed = paste(background, foreground, mask)         # images (B,C,H,W) or labels (B,H,W) alike

Convention: the mask is 1 where the FOREGROUND (the pasted box) is. Randomness comes from torch's RNG (or a
given generator), so it follows the Trainer's seeding and resume.
"""
from __future__ import annotations

from typing import NamedTuple

import torch


class Box(NamedTuple):
    top: int
    left: int
    height: int
    width: int


def sample_box(height: int, width: int, side_ratio: float | tuple[float, float],
               generator: torch.Generator | None = None) -> Box:
    """A box of int(side_ratio * H) x int(side_ratio * W) pixels at a uniformly random position; a
    (row, column) pair of ratios gives a rectangle.

    The top-left corner is drawn from [0, H - h) x [0, W - w), upper bound EXCLUDED, as BCP's
    `generate_mask` (numpy's randint): the position flush with the bottom/right border is never drawn. When
    the box fills a side (h == H) the corner is 0.
    """
    rh, rw = (side_ratio, side_ratio) if isinstance(side_ratio, (int, float)) else side_ratio
    if not (0.0 < rh <= 1.0 and 0.0 < rw <= 1.0):
        raise ValueError(f"side_ratio must be in (0, 1] (got {side_ratio})")
    h, w = int(height * rh), int(width * rw)
    if h < 1 or w < 1:
        raise ValueError(f"a {side_ratio} box of a {height}x{width} image is empty")
    top = int(torch.randint(0, max(height - h, 1), (), generator=generator))
    left = int(torch.randint(0, max(width - w, 1), (), generator=generator))
    return Box(top, left, h, w)


def box_mask(height: int, width: int, box: Box, device: torch.device | str | None = None) -> torch.Tensor:
    """(H, W) float mask, 1 inside `box` and 0 elsewhere."""
    mask = torch.zeros(height, width, device=device)
    mask[box.top:box.top + box.height, box.left:box.left + box.width] = 1.0
    return mask


def paste(background: torch.Tensor, foreground: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`foreground` where `mask` is 1, `background` elsewhere; the (H, W) or (B, H, W) mask broadcasts over
    images (B, C, H, W) and label maps (B, H, W), and the result keeps the inputs' dtype."""
    if background.dim() == 4 and mask.dim() == 3:
        mask = mask.unsqueeze(1)
    return torch.where(mask.bool(), foreground, background)


def cutmix_masks(n: int, height: int, width: int, p: float = 0.5, area: tuple[float, float] = (0.02, 0.4),
                 aspect: tuple[float, float] = (0.3, 1 / 0.3), generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """(n, H, W) boolean CutMix masks: with probability `p` a box of area fraction ~ U(area) and aspect ratio
    (height / width) ~ U(aspect) at a random position (`sample_box`), else empty (UniMatch's medical CutMix,
    PROTOCOLS.md §3.8; its box may also sit flush with the bottom/right border, ours never does)."""
    masks = torch.zeros(n, height, width, dtype=torch.bool)
    for i in range(n):
        if float(torch.rand((), generator=generator)) >= p:
            continue
        a = area[0] + (area[1] - area[0]) * float(torch.rand((), generator=generator))
        r = aspect[0] + (aspect[1] - aspect[0]) * float(torch.rand((), generator=generator))
        box = sample_box(height, width, (min(1.0, (a * r) ** 0.5), min(1.0, (a / r) ** 0.5)), generator)
        masks[i] = box_mask(height, width, box).bool()
    return masks.to(device)
