"""Train-time augmentation rules as named *samplers* that produce the training patch.

A rule's `sample(image, label, rng, patch)` takes one training case at native size, `image` (C, *spatial)
float32 and `label` (*spatial) integer, and returns the augmented patch: image (C, *patch) float32 and
label (*patch) with the label's dtype. Every random parameter is drawn once per call from `rng`, then the
same spatial transform is applied to each channel of the image and to the label, so channels and label
stay aligned. The loader calls it once per sample with `rng = np.random.default_rng([seed, 2, step, slot])`,
so a batch is a pure function of (seed, step).

`dims` lists the numbers of spatial dimensions a rule works on ((2,) for slices, (3,) for volumes).
`resize_nearest` (scipy zoom order 0, as SSL4MIS `RandomGenerator`) is also used outside training, for
images, labels and predictions alike; `resize_cubic` (zoom order 3, TransUNet's image resize) for images.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage

from benchmark.registry import Registry

Sampler = Callable[[np.ndarray, np.ndarray, np.random.Generator, tuple[int, ...]], tuple[np.ndarray, np.ndarray]]
Transform = Callable[[np.ndarray], np.ndarray]  # one drawn spatial transform, applied to one (*spatial) array


@dataclass(frozen=True)
class AugmentationRule:
    sample: Sampler
    dims: tuple[int, ...]  # numbers of spatial dims the rule works on, e.g. (2,) or (3,)


AUGMENTATIONS: Registry[AugmentationRule] = Registry("augmentation")


def _register(name: str, dims: tuple[int, ...], description: str) -> Callable[[Sampler], Sampler]:
    def wrap(sample: Sampler) -> Sampler:
        AUGMENTATIONS.add(name, AugmentationRule(sample, dims), description)
        return sample
    return wrap


def resize_nearest(array: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """scipy zoom with order 0 to `size` (one entry per axis of `array`; the SSL4MIS resize).

    Per-axis factors size[i] / shape[i]; for (H, W) arrays this is exactly the former 2D resize. An array
    already at `size` is returned as is (not copied).
    """
    size = tuple(int(s) for s in size)
    if len(size) != array.ndim:
        raise ValueError(f"resize_nearest: size {size} has {len(size)} axes, array has shape {array.shape}")
    if array.shape == size:
        return array
    return ndimage.zoom(array, tuple(t / s for t, s in zip(size, array.shape)), order=0)


def resize_cubic(array: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """scipy zoom with order 3 (scipy's defaults otherwise: spline prefilter, mode 'constant') to `size`, as
    float32: TransUNet's image resize in training and test (Beckschen/TransUNet@ee8acce
    `datasets/dataset_synapse.py::RandomGenerator`, `utils.py::test_single_volume`). An array already at `size`
    is returned unchanged (cast only), as both skip the zoom then. For images only: a label map needs order 0."""
    size = tuple(int(s) for s in size)
    if len(size) != array.ndim:
        raise ValueError(f"resize_cubic: size {size} has {len(size)} axes, array has shape {array.shape}")
    if array.shape == size:
        return array.astype(np.float32, copy=False)
    return ndimage.zoom(array, tuple(t / s for t, s in zip(size, array.shape)), order=3).astype(np.float32, copy=False)


def _check(rule: str, image: np.ndarray, label: np.ndarray, patch: Sequence[int], ndim: int) -> tuple[int, ...]:
    patch = tuple(int(p) for p in patch)
    if label.ndim != ndim or image.ndim != ndim + 1 or image.shape[1:] != label.shape:
        raise ValueError(f"augmentation {rule!r} needs image (C, *spatial) and label (*spatial) with {ndim} "
                         f"spatial dims; got image {image.shape}, label {label.shape}")
    if len(patch) != ndim:
        raise ValueError(f"augmentation {rule!r} needs a patch of {ndim} sizes, got {patch}")
    return patch


def _apply(transform: Transform, image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same drawn transform on every channel of the image and on the label."""
    return np.stack([transform(c) for c in image]), transform(label)


def _resize_to_patch(image: np.ndarray, label: np.ndarray, patch: tuple[int, ...],
                     resize_image: Callable[[np.ndarray, Sequence[int]], np.ndarray] = resize_nearest,
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Each image channel by `resize_image` (nearest: SSL4MIS; `resize_cubic`: TransUNet), the label nearest."""
    out = np.stack([resize_image(c, patch) for c in image]).astype(np.float32, copy=False)
    return out, np.array(resize_nearest(label, patch))


# ------------------------------------------------------------------------------- SSL4MIS (2D slices)
def _draw_rot90_flip(rng: np.random.Generator) -> Transform:
    """Random rot90 (k in 0..3) then a flip along a random axis (SSL4MIS `random_rot_flip`)."""
    k, axis = int(rng.integers(0, 4)), int(rng.integers(0, 2))
    return lambda a: np.flip(np.rot90(a, k), axis).copy()


def _draw_small_rotation(rng: np.random.Generator) -> Transform:
    """Rotation by an integer angle in [-20, 20) degrees, nearest interpolation, same size (`random_rotate`)."""
    angle = int(rng.integers(-20, 20))
    return lambda a: ndimage.rotate(a, angle, order=0, reshape=False)


def _identity(a: np.ndarray) -> np.ndarray:
    return a


def _ssl4mis(name: str, draw: Callable[[np.random.Generator], Transform],
             resize_image: Callable[[np.ndarray, Sequence[int]], np.ndarray] = resize_nearest) -> Sampler:
    def sample(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
               patch: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        size = _check(name, image, label, patch, 2)
        return _resize_to_patch(*_apply(draw(rng), image, label), size, resize_image)
    sample.__name__ = sample.__qualname__ = name.replace("-", "_")
    return sample


def _draw_ssl4mis_2021(rng: np.random.Generator) -> Transform:
    if rng.random() > 0.5:
        return _draw_rot90_flip(rng)
    if rng.random() > 0.5:
        return _draw_small_rotation(rng)
    return _identity


def _draw_ssl4mis_2025(rng: np.random.Generator) -> Transform:
    if rng.random() > 0.5:
        return _draw_rot90_flip(rng)
    return _draw_small_rotation(rng)


ssl4mis_2021 = _register("ssl4mis-2021", (2,), "50% rot90+flip, 25% rotation in [-20,20), 25% none, then nearest "
                         "resize to the patch (SSL4MIS before 2025-06-07; all papers)")(
    _ssl4mis("ssl4mis-2021", _draw_ssl4mis_2021))
ssl4mis_2025 = _register("ssl4mis-2025", (2,), "50% rot90+flip, 50% rotation in [-20,20), then nearest resize to "
                         "the patch (SSL4MIS after commit 24db034)")(
    _ssl4mis("ssl4mis-2025", _draw_ssl4mis_2025))
no_augmentation = _register("none", (2,), "no augmentation (nearest resize to the patch only)")(
    _ssl4mis("none", lambda rng: _identity))

transunet = _register("transunet", (2,), "the draws of ssl4mis-2021, then CUBIC (order 3) resize of the image and "
                      "nearest of the label to the patch (TransUNet's Synapse training transform)")(
    _ssl4mis("transunet", _draw_ssl4mis_2021, resize_cubic))

ssl4mis_2021.__doc__ = """SSL4MIS `RandomGenerator` (before 2025-06-07): if random() > 0.5 rot90+flip, elif
random() > 0.5 rotation in [-20, 20) degrees (order 0), else nothing; then zoom order 0 to the patch.
One draw per call; for C > 1 the drawn transform is applied to each channel (for C = 1: the former rule)."""
ssl4mis_2025.__doc__ = """SSL4MIS `RandomGenerator` after commit 24db034: if random() > 0.5 rot90+flip, else
rotation in [-20, 20) degrees (order 0); then zoom order 0 to the patch. One draw, applied to each channel."""
transunet.__doc__ = """TransUNet `RandomGenerator` (Beckschen/TransUNet@ee8acce `datasets/dataset_synapse.py`): the
same draws as ssl4mis-2021 (if random() > 0.5 rot90+flip, elif random() > 0.5 rotation in [-20, 20) order 0),
then zoom ORDER 3 of each image channel (`resize_cubic`) and order 0 of the label to the patch."""
no_augmentation.__doc__ = """No augmentation: zoom order 0 of each channel and of the label to the patch."""


# ----------------------------------------------------------------------------------- LA (3D volumes)
def la_pad_widths(spatial: Sequence[int], patch: Sequence[int]) -> tuple[int, ...]:
    """Padding (each side) of the reference `RandomCrop`: if ANY spatial size is <= the patch size along it,
    every axis is padded by max((p - s) // 2 + 3, 0) on both sides; otherwise nothing is padded."""
    if all(s > p for s, p in zip(spatial, patch)):
        return (0,) * len(patch)
    return tuple(max((p - s) // 2 + 3, 0) for s, p in zip(spatial, patch))


def crop_start(rng: np.random.Generator, size: int, patch: int) -> int:
    """Crop offset drawn uniformly from [0, size - patch) -- EXCLUSIVE upper bound, as the reference's
    np.random.randint(0, size - patch), so the last valid offset size - patch is never drawn. When
    size == patch the offset is 0 without a draw (np.random.randint(0, 0) would raise; after the reference
    padding this case does not arise). A size below the patch is an error."""
    if size < patch:
        raise ValueError(f"crop_start: size {size} < patch {patch}")
    if size == patch:
        return 0
    return int(rng.integers(0, size - patch))


@_register("la-rotflip-crop", (3,), "rot90 in the (x, y) plane + flip of x or y, then a random crop to the patch "
           "(padded when too small); the LA training transform of SS-Net@c0a8bf6")
def la_rotflip_crop(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                    patch: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """LA training transform of the reference code (ycwu1997/SS-Net@c0a8bf6 `code/dataloaders/dataset.py`,
    Compose([RandomRotFlip(), RandomCrop(patch), ToTensor()])).

    1. `random_rot_flip`: np.rot90 with k uniform in {0..3} in the plane of spatial axes (0, 1), then
       ALWAYS one flip, of spatial axis 0 or 1 (50/50). The z axis (2) is never rotated or flipped.
    2. `RandomCrop`: zero padding of image and label by `la_pad_widths` (only when some axis is <= the
       patch), then a crop whose start along each axis is `crop_start` (uniform in [0, s - p), exclusive).

    Draw order: k, flip axis, then the crop starts of axes 0, 1, 2. The draws come from `rng.integers`,
    our Generator, not the reference's global numpy RNG, so the values differ from the reference's for any
    seed while following the same distributions. The same transform is applied to every channel of the
    image. Output: image (C, *patch) float32, label (*patch), exactly the patch shape.
    """
    size = _check("la-rotflip-crop", image, label, patch, 3)
    k, axis = int(rng.integers(0, 4)), int(rng.integers(0, 2))
    image = np.flip(np.rot90(image, k, axes=(1, 2)), 1 + axis)  # channel axis 0 untouched
    label = np.flip(np.rot90(label, k, axes=(0, 1)), axis)
    return _la_random_crop(image, label, rng, size)


@_register("la-crop", (3,), "the random crop of la-rotflip-crop alone (padded when too small); MCF's LA "
           "training transform (WYC-321/MCF@ad20659 code/train_MCF.py: RandomCrop only)")
def la_crop(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
            patch: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Step 2 of `la_rotflip_crop` without the rotation and flip: the crop starts of axes 0, 1, 2 are the
    only draws."""
    return _la_random_crop(image, label, rng, _check("la-crop", image, label, patch, 3))


def _la_random_crop(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                    size: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """SS-Net's `RandomCrop`: pad by `la_pad_widths` where needed, then crop at `crop_start` per axis."""
    pad = la_pad_widths(label.shape, size)
    if any(pad):
        image = np.pad(image, [(0, 0)] + [(w, w) for w in pad], mode="constant", constant_values=0)
        label = np.pad(label, [(w, w) for w in pad], mode="constant", constant_values=0)
    starts = [crop_start(rng, s, p) for s, p in zip(label.shape, size)]
    box = tuple(slice(b, b + p) for b, p in zip(starts, size))
    return (np.ascontiguousarray(image[(slice(None), *box)], dtype=np.float32),
            np.ascontiguousarray(label[box]))


# ------------------------------------------------------------------------------ 2D images (ISIC etc.)
@_register("image-2d", (2,), "bilinear resize to the patch (label nearest), random h/v flips and rot90 "
           "(our choice for 2D images such as ISIC 2018; no seed paper released code)")
def image_2d(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
             patch: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """For 2D images such as ISIC 2018 dermoscopy (RGB, native sizes vary and are not square).

    OUR CHOICE: no seed paper released ISIC training code, so this rule is not a reproduction. Steps:
    resize each image channel to the patch with bilinear interpolation (scipy.ndimage.zoom order 1, mode
    'nearest' at the borders) and the label with nearest (zoom order 0, `resize_nearest`), so label
    values are preserved; then a horizontal flip (width axis) with p 0.5, a vertical flip (height axis)
    with p 0.5, then np.rot90 in the (H, W) plane with k uniform in 0..3 when the patch is square, else
    k uniform in {0, 2} (a quarter turn would change the shape). Draw order: horizontal (random() < 0.5),
    vertical (random() < 0.5), k -- always three draws. Same transform on every channel.
    Output: image (C, *patch) float32, label (*patch), exactly the patch shape.
    """
    size = _check("image-2d", image, label, patch, 2)
    if image.shape[1:] == size:
        small = image.astype(np.float32, copy=True)
    else:
        factors = tuple(t / s for t, s in zip(size, image.shape[1:]))
        small = np.stack([ndimage.zoom(c, factors, order=1, mode="nearest") for c in image]).astype(np.float32)
    lab = resize_nearest(label, size)
    h_flip, v_flip = bool(rng.random() < 0.5), bool(rng.random() < 0.5)
    k = int(rng.integers(0, 4)) if size[0] == size[1] else 2 * int(rng.integers(0, 2))

    def transform(a: np.ndarray) -> np.ndarray:
        if h_flip:
            a = np.flip(a, -1)
        if v_flip:
            a = np.flip(a, -2)
        return np.ascontiguousarray(np.rot90(a, k, axes=(-2, -1)))

    return transform(small), transform(lab)
