"""Copy-paste mixing shared by the methods that cut a box out of one image and paste it into another
(BCP's bidirectional copy-paste; FixMatch / SemSim's CutMix boxes via `cutmix_masks`), in any number of
spatial dimensions (2D (H, W) or 3D (D, H, W)):

    box = sample_box((256, 256), side_ratio=2 / 3)      # where the foreground goes
    mask = box_mask((256, 256), box)                    # (*spatial) 1 inside the box, 0 outside
    mixed = paste(background, foreground, mask)         # images (B, C, *spatial) or labels (B, *spatial) alike

Convention: the mask is 1 where the FOREGROUND (the pasted box) is. Randomness comes from torch's RNG (or a
given generator), so it follows the Trainer's seeding and resume.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch


class Box(NamedTuple):
    """An axis-aligned box: its first index and its length along each spatial axis."""

    start: tuple[int, ...]
    size: tuple[int, ...]

    @property
    def slices(self) -> tuple[slice, ...]:
        return tuple(slice(s, s + n) for s, n in zip(self.start, self.size))


def box_size(shape: Sequence[int], side_ratio: float | Sequence[float]) -> tuple[int, ...]:
    """int(ratio * side) along each axis; one ratio for every axis, or one per axis. Raises on a ratio outside
    (0, 1] or an empty box."""
    shape = tuple(int(s) for s in shape)
    ratios = (side_ratio,) * len(shape) if isinstance(side_ratio, (int, float)) else tuple(side_ratio)
    if len(ratios) != len(shape):
        raise ValueError(f"{len(ratios)} side ratios for a {len(shape)}-D shape {shape}")
    if not all(0.0 < r <= 1.0 for r in ratios):
        raise ValueError(f"side_ratio must be in (0, 1] (got {side_ratio})")
    size = tuple(int(s * r) for s, r in zip(shape, ratios))
    if min(size) < 1:
        raise ValueError(f"a {side_ratio} box of a {'x'.join(map(str, shape))} image is empty")
    return size


def sample_box(shape: Sequence[int], side_ratio: float | Sequence[float],
               generator: torch.Generator | None = None) -> Box:
    """A box of `box_size(shape, side_ratio)` at a uniformly random position (CML's 3D box: beta*D x beta*H x
    beta*W from one ratio).

    Each start is drawn from [0, S - s), upper bound EXCLUDED, as BCP's `generate_mask` (numpy's randint),
    one `torch.randint` per axis in axis order (2D: top, then left): the position flush with the far border
    is never drawn. When the box fills an axis (s == S) its start is 0.
    """
    size = box_size(shape, side_ratio)
    start = tuple(int(torch.randint(0, max(int(s) - n, 1), (), generator=generator)) for s, n in zip(shape, size))
    return Box(start, size)


def box_mask(shape: Sequence[int], box: Box, device: torch.device | str | None = None) -> torch.Tensor:
    """(*shape) float mask, 1 inside `box` and 0 elsewhere."""
    mask = torch.zeros(*shape, device=device)
    mask[box.slices] = 1.0
    return mask


def _align(mask: torch.Tensor, target: torch.Tensor, spatial_dims: int | None) -> torch.Tensor:
    """`mask` ((*spatial) or (B, *spatial)) viewed so that it broadcasts against `target` ((B, *spatial) or
    (B, C, *spatial)): a batched mask gets singleton axes after its batch axis."""
    n, m = target.dim(), mask.dim()
    if spatial_dims is None:
        fits_spatial = m >= 2 and mask.shape == target.shape[n - m:]
        fits_batched = (m >= 3 and n > m and mask.shape[0] in (1, target.shape[0])
                        and mask.shape[1:] == target.shape[n - m + 1:])
        if fits_spatial and fits_batched and mask.shape[0] > 1:
            raise ValueError(f"a {tuple(mask.shape)} mask is ambiguous for a {tuple(target.shape)} input "
                             "((*spatial) or (B, *spatial)?): pass spatial_dims")
        batched = fits_batched and not fits_spatial
    else:
        if m not in (spatial_dims, spatial_dims + 1):
            raise ValueError(f"a {m}-D mask is neither (*spatial) nor (B, *spatial) with {spatial_dims} spatial dims")
        batched = m == spatial_dims + 1
    return mask.view(mask.shape[0], *(1,) * (n - m), *mask.shape[1:]) if batched else mask


def paste(background: torch.Tensor, foreground: torch.Tensor, mask: torch.Tensor,
          spatial_dims: int | None = None) -> torch.Tensor:
    """`foreground` where `mask` is 1, `background` elsewhere; the (*spatial) or (B, *spatial) mask broadcasts
    over images (B, C, *spatial) and label maps (B, *spatial), and the result keeps the inputs' dtype.

    `spatial_dims` (len(spatial)) says which of the two the mask is. Without it the shapes decide, and a
    mask that fits both readings (a (B, X, Y, Z) input with a (B, Y, Z) mask, B > 1: 2D images of B channels
    or 3D label maps of depth B) raises."""
    return torch.where(_align(mask, background, spatial_dims).bool(), foreground, background)


def cutmix_masks(n: int, shape: Sequence[int], p: float = 0.5, area: tuple[float, float] = (0.02, 0.4),
                 aspect: tuple[float, float] = (0.3, 1 / 0.3), generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """(n, *shape) boolean CutMix masks: with probability `p` a box of area (volume) fraction a ~ U(area) at a
    random position (`sample_box`), else empty (UniMatch's medical CutMix, PROTOCOLS.md §3.8; its box may
    also sit flush with the far border, ours never does). The aspect ratio r ~ U(aspect) is that of the last
    two axes (height / width): their side ratios are sqrt(a^(2/k) r) and sqrt(a^(2/k) / r) for k axes, any
    earlier axis (3D depth) gets a^(1/k); each is capped at 1."""
    shape = tuple(int(s) for s in shape)
    k = len(shape)
    masks = torch.zeros(n, *shape, dtype=torch.bool)
    for i in range(n):
        if float(torch.rand((), generator=generator)) >= p:
            continue
        a = area[0] + (area[1] - area[0]) * float(torch.rand((), generator=generator))
        r = aspect[0] + (aspect[1] - aspect[0]) * float(torch.rand((), generator=generator))
        plane = a ** (2 / k)                      # = a in 2D
        ratios = (min(1.0, a ** (1 / k)),) * (k - 2) + (min(1.0, (plane * r) ** 0.5), min(1.0, (plane / r) ** 0.5))
        masks[i][sample_box(shape, ratios, generator).slices] = True
    return masks.to(device)
