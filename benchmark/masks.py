"""Mask operations shared by evaluation and methods (pseudo-label cleaning, random block masks for masked
image modeling): written once, here."""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import torch
from scipy import ndimage


def largest_component(mask: np.ndarray, connectivity: int | None = None) -> np.ndarray:
    """The largest connected component of a boolean mask (empty stays empty).

    `connectivity` as scipy's `generate_binary_structure` rank: default = full (8 in 2D, 26 in 3D), which is
    skimage.measure.label's default as used by SS-Net / BCP / CML `getLargestCC`.
    """
    mask = np.asarray(mask, dtype=bool)
    structure = ndimage.generate_binary_structure(mask.ndim, connectivity or mask.ndim)
    labels, n = ndimage.label(mask, structure)
    if n <= 1:
        return mask.copy()
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(sizes.argmax())


def largest_component_per_class(labels: np.ndarray, classes: Iterable[int]) -> np.ndarray:
    """Keep, for each class, only its largest connected component; removed voxels become background."""
    out = np.zeros_like(labels)
    for c in classes:
        out[largest_component(labels == c)] = c
    return out


def largest_component_per_sample(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Pseudo-label cleaning of BCP / CML: for each label map of a (B, *spatial) batch and each foreground
    class 1..num_classes-1, keep only the largest fully connected component (8-connected in 2D, 26 in 3D; the
    rest -> background)."""
    arr = labels.detach().cpu().numpy()
    out = np.stack([largest_component_per_class(a, range(1, num_classes)) for a in arr])
    return torch.from_numpy(out).to(labels.device)


# ----------------------------------------------------------------------------------------- block masks
def masked_block_count(n_blocks: int, ratio: float) -> int:
    """ceil(ratio * n_blocks), robust to float noise (0.7 * 10 = 7.000000000000001 must give 7, not 8)."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must be in [0, 1] (got {ratio})")
    return math.ceil(round(ratio * n_blocks, 9))


def random_block_masks(batch: int, grid: Sequence[int], ratio: float,
                       device: torch.device | str = "cpu") -> torch.Tensor:
    """(batch, *grid) boolean masks, each with exactly ceil(ratio * prod(grid)) True blocks at random
    positions, drawn independently per sample from torch's global RNG (SimMIM-style random masking, as
    AdvMIM)."""
    n = math.prod(grid)
    k = masked_block_count(n, ratio)
    order = torch.rand(batch, n, device=device).argsort(1)
    masks = torch.zeros(batch, n, dtype=torch.bool, device=device)
    masks.scatter_(1, order[:, :k], True)
    return masks.view(batch, *grid)


def upsample_block_mask(mask: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Block mask (B, *grid) -> (B, *size) by repeating each block; the grid must divide `size` on every axis."""
    grid = tuple(mask.shape[mask.dim() - len(size):])
    if any(s % g for s, g in zip(size, grid)):
        raise ValueError(f"mask grid {'x'.join(map(str, grid))} does not divide {'x'.join(map(str, size))}")
    for axis, (s, g) in enumerate(zip(size, grid), start=-len(size)):
        mask = mask.repeat_interleave(s // g, axis)
    return mask
