"""Mask operations shared by evaluation and methods (pseudo-label cleaning): written once, here."""
from __future__ import annotations

from typing import Iterable

import numpy as np
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
