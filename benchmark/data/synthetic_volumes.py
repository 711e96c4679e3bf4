"""A seeded, procedurally generated left-atrium-MRI-like 3D dataset in the UA-MT LA layout (`la-h5`).

Each case is a noisy volume with a smooth multiplicative bias field in which the "atrium" is a smooth,
irregular bright blob (a union of 2-3 ellipsoids whose surface is perturbed by low-frequency noise). Two
distractors of similar brightness but other shapes (a tube, like the aorta, and a flat slab-like ellipsoid)
are unlabeled, so a threshold alone does not segment it. Images are z-scored per volume like UA-MT's
`mri_norm2.h5`:

    <root>/2018LA_Seg_Training Set/SYNxxx/mri_norm2.h5   image float32 (X, Y, Z) z-scored, label uint8 {0, 1}
    <root>/train.list, test.list (and val.list when val_cases > 0)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import ClassVar

import numpy as np
from scipy.ndimage import gaussian_filter

from benchmark.data.synthetic import GeneratorSpec, ensure_generated, write_h5, write_lists

#: Bump when the image model changes: cached copies and trial identities then change with it.
GENERATOR_VERSION = 1
FOLDER = "2018LA_Seg_Training Set"
FILE = "mri_norm2.h5"


@dataclass(frozen=True)
class VolumeSpec(GeneratorSpec):
    """What to generate; equal specs give identical data."""

    generator: ClassVar[str] = "synthetic-la"
    seed: int = 0
    shape: tuple[int, int, int] = (48, 48, 32)  # X, Y, Z of every volume
    train_cases: int = 12
    val_cases: int = 0
    test_cases: int = 4

    def __post_init__(self) -> None:
        if isinstance(self.shape, list):
            object.__setattr__(self, "shape", tuple(self.shape))
        for f in fields(self):
            value = getattr(self, f.name)
            items = value if f.name == "shape" and isinstance(value, tuple) else (value,)
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
                raise ValueError(f"VolumeSpec.{f.name} must be {'3 ints' if f.name == 'shape' else 'an int'}, "
                                 f"got {value!r}")
        if len(self.shape) != 3 or min(self.shape) < 16:
            raise ValueError(f"VolumeSpec.shape must be 3 ints >= 16 (X, Y, Z), got {self.shape!r}")
        if self.train_cases < 1 or self.val_cases < 0 or self.test_cases < 0:
            raise ValueError("VolumeSpec needs train_cases >= 1 and val_cases, test_cases >= 0")
        if self.total_cases > 999:
            raise ValueError(f"VolumeSpec: at most 999 cases (3-digit ids), got {self.total_cases}")

    @property
    def total_cases(self) -> int:
        return self.train_cases + self.val_cases + self.test_cases

    def to_dict(self) -> dict:
        return {**asdict(self), "shape": list(self.shape)}  # a list, so the JSON marker reads back equal



# ------------------------------------------------------------------------------------------ rendering


def _grid(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel coordinates in units of the smallest dimension, centred (broadcastable open grids)."""
    scale = min(shape)
    return tuple(((np.arange(n, dtype=np.float32) - (n - 1) / 2) / scale).reshape(
        [n if i == axis else 1 for i in range(3)]) for axis, n in enumerate(shape))  # type: ignore[return-value]


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


def _ellipsoid(g, centre, radii, rot) -> np.ndarray:
    """Normalised radius: < 1 inside an ellipsoid with the given centre, radii and rotation."""
    d = [g[i] - centre[i] for i in range(3)]
    total = 0.0
    for k in range(3):
        u = rot[0, k] * d[0] + rot[1, k] * d[1] + rot[2, k] * d[2]
        total = total + (u / radii[k]) ** 2
    return np.sqrt(total)


def _tube(g, centre, direction, radius) -> np.ndarray:
    """Normalised distance to an infinite straight tube: < 1 inside."""
    d = [g[i] - centre[i] for i in range(3)]
    along = direction[0] * d[0] + direction[1] * d[1] + direction[2] * d[2]
    sq = d[0] ** 2 + d[1] ** 2 + d[2] ** 2 - along ** 2
    return np.sqrt(np.maximum(sq, 0.0)) / radius


def _smooth_noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    field = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return field / (field.std() + 1e-8)


def _render_case(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    g = _grid(shape)
    extent = [n / (2 * min(shape)) for n in shape]  # half-size of the volume per axis, grid units
    # The atrium: 2-3 overlapping ellipsoids around a body centre, surface perturbed by smooth noise.
    centre = np.array([rng.uniform(-0.12, 0.12) * e * 2 for e in extent], dtype=np.float32)
    atrium = None
    for _ in range(int(rng.integers(2, 4))):
        offset = rng.normal(0.0, 0.08, size=3).astype(np.float32)
        radii = rng.uniform(0.19, 0.3, size=3).astype(np.float32)
        r = _ellipsoid(g, centre + offset, radii, _rotation(rng))
        atrium = r if atrium is None else np.minimum(atrium, r)
    wobble = _smooth_noise(rng, shape, sigma=min(shape) / 8)
    level = 1.0 - atrium + 0.12 * wobble  # > 0 inside
    label = (level > 0).astype(np.uint8)

    # Distractors of similar brightness, kept clear of the atrium: a tube and a flat ellipsoid.
    blood = np.zeros(shape, dtype=np.float32)
    direction = rng.normal(size=3)
    direction[2] += 2.0 * np.sign(direction[2] or 1.0)  # roughly along z, like the descending aorta
    direction = (direction / np.linalg.norm(direction)).astype(np.float32)
    side = rng.choice([-1.0, 1.0], size=2)
    tube_centre = np.array([side[0] * extent[0] * rng.uniform(0.55, 0.75),
                            side[1] * extent[1] * rng.uniform(0.55, 0.75), 0.0], dtype=np.float32)
    tube = _tube(g, tube_centre, direction, rng.uniform(0.09, 0.13))
    slab_centre = np.array([-side[0] * extent[0] * rng.uniform(0.5, 0.7),
                            side[1] * extent[1] * rng.uniform(-0.7, 0.7),
                            rng.uniform(-0.4, 0.4) * extent[2]], dtype=np.float32)
    slab = _ellipsoid(g, slab_centre, np.array([0.26, 0.18, 0.06], dtype=np.float32) * rng.uniform(0.8, 1.2, 3),
                      _rotation(rng))
    distract = ((tube < 1.0) | (slab < 1.0)) & (level < -0.25)  # a margin of background around the atrium

    # Tissue: background, a brighter "myocardial" shell around the atrium, blood pools.
    img = 0.25 + 0.08 * _smooth_noise(rng, shape, sigma=2.0)
    shell = (level > -0.18) & (label == 0)
    img[shell] = 0.45
    bright = rng.uniform(0.85, 1.0)
    blood[label == 1] = bright
    blood[distract] = bright * rng.uniform(0.9, 1.1)
    img = np.where(blood > 0, blood + 0.05 * _smooth_noise(rng, shape, sigma=1.5), img)
    img = gaussian_filter(img, 0.8)  # partial volume at the edges

    # Acquisition: smooth bias field (multiplicative), noise, then z-score per volume.
    coeffs = rng.normal(0.0, 0.25, size=4)
    bias = np.exp(coeffs[0] * g[0] + coeffs[1] * g[1] + coeffs[2] * g[2] + coeffs[3] * g[0] * g[1] * 4)
    img = img * bias + rng.normal(0.0, rng.uniform(0.05, 0.09), size=shape)
    img = (img - img.mean()) / (img.std() + 1e-8)
    return img.astype(np.float32), label


def case_ids(spec: VolumeSpec) -> tuple[list[str], list[str], list[str]]:
    """SYN001.. in order: the train cases, then val, then test."""
    ids = [f"SYN{i:03d}" for i in range(1, spec.total_cases + 1)]
    t, v = spec.train_cases, spec.val_cases
    return ids[:t], ids[t:t + v], ids[t + v:]


def render(spec: VolumeSpec, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Case `index` (0-based) of `spec`: image float32 (X, Y, Z), label uint8 (X, Y, Z)."""
    return _render_case(np.random.default_rng([spec.seed, 2018, index]), spec.shape)


def generate(root: Path, spec: VolumeSpec) -> None:
    """Write the dataset into `root` (created), UA-MT LA layout. Deterministic given spec."""
    root = Path(root)
    train, val, test = case_ids(spec)
    for index, name in enumerate(train + val + test):
        folder = root / FOLDER / name
        folder.mkdir(parents=True, exist_ok=True)
        write_h5(folder / FILE, *render(spec, index))
    lists = {"train.list": train, "test.list": test}
    if val:
        lists["val.list"] = val
    write_lists(root, lists)


def ensure_volumes(root: Path, spec: VolumeSpec) -> Path:
    """Generate once into `root` unless a complete copy of the same spec is there (atomic). Returns root."""
    return ensure_generated(root, spec, generate, GENERATOR_VERSION)
