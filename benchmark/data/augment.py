"""Train-time transforms as named rules. Each rule maps (image, label, rng) -> (image, label) at native size;
`resize_nearest` then brings both to the patch (scipy zoom order 0, as SSL4MIS `RandomGenerator`).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import ndimage

from benchmark.registry import Registry

Rule = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]
AUGMENTATIONS: Registry[Rule] = Registry("augmentation")


def rot90_flip(image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random rot90 (k in 0..3) then a flip along a random axis."""
    k, axis = int(rng.integers(0, 4)), int(rng.integers(0, 2))
    return (np.flip(np.rot90(image, k), axis).copy(), np.flip(np.rot90(label, k), axis).copy())


def small_rotation(image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Rotation by an integer angle in [-20, 20) degrees, nearest interpolation, same size."""
    angle = int(rng.integers(-20, 20))
    return (ndimage.rotate(image, angle, order=0, reshape=False),
            ndimage.rotate(label, angle, order=0, reshape=False))


@AUGMENTATIONS.register("ssl4mis-2021", "50% rot90+flip, 25% rotation in [-20,20), 25% none (SSL4MIS before 2025-06-07; all papers)")
def ssl4mis_2021(image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if rng.random() > 0.5:
        return rot90_flip(image, label, rng)
    if rng.random() > 0.5:
        return small_rotation(image, label, rng)
    return image, label


@AUGMENTATIONS.register("ssl4mis-2025", "50% rot90+flip, 50% rotation in [-20,20) (SSL4MIS after commit 24db034)")
def ssl4mis_2025(image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if rng.random() > 0.5:
        return rot90_flip(image, label, rng)
    return small_rotation(image, label, rng)


@AUGMENTATIONS.register("none", "no augmentation (resize only)")
def no_augmentation(image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return image, label


def resize_nearest(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """scipy zoom with order 0 to `size` (the SSL4MIS resize for images, labels and predictions alike)."""
    if array.shape == tuple(size):
        return array
    return ndimage.zoom(array, (size[0] / array.shape[0], size[1] / array.shape[1]), order=0)
