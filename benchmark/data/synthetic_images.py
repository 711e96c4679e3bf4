"""A seeded, procedurally generated dermoscopy-like RGB 2D dataset in the `image-folder` layout (ISIC-like).

Each image is skin-coloured background (per-image tone, smooth texture, pores, dark hair-like curves and a
circular vignette, as dermoscopes give) with one lesion: an irregular, darker brown blob with mottled
pigment and a soft border. Hairs cross the lesion without changing the mask, as in ISIC:

    <root>/images/SKIN_<id>.jpg               RGB, JPEG quality 95
    <root>/masks/SKIN_<id>_segmentation.png   0 background / 255 lesion

No list files: cards split the sorted ids with {from, to} (reader image-folder, image_pattern
"SKIN_{id}.jpg", mask_pattern "SKIN_{id}_segmentation.png", mask_values {0: 0, 255: 1}).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from benchmark.data.synthetic import GeneratorSpec, ensure_generated

#: Bump when the image model changes: cached copies and trial identities then change with it.
GENERATOR_VERSION = 1
IMAGES, MASKS = "images", "masks"
IMAGE_PATTERN, MASK_PATTERN = "SKIN_{id}.jpg", "SKIN_{id}_segmentation.png"
MASK_VALUES = {0: 0, 255: 1}
JPEG_QUALITY = 95


@dataclass(frozen=True)
class ImageSpec(GeneratorSpec):
    """What to generate; equal specs give identical data."""

    generator: ClassVar[str] = "synthetic-skin"
    seed: int = 0
    size: int = 64     # H = W of every image
    images: int = 40   # how many image / mask pairs

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"ImageSpec.{f.name} must be an int, got {value!r}")
        if self.size < 16:
            raise ValueError(f"ImageSpec.size must be >= 16, got {self.size}")
        if not 1 <= self.images <= 9999:
            raise ValueError(f"ImageSpec.images must be in 1..9999 (4-digit ids), got {self.images}")



# ------------------------------------------------------------------------------------------ rendering


def _smooth(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    field = gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap")
    return field / (field.std() + 1e-8)


def _hair(rng: np.random.Generator, size: int) -> np.ndarray:
    """Darkening (0..1) of one thin curved hair: a quadratic Bezier curve, splatted and blurred."""
    p0, p2 = rng.uniform(-0.1, 1.1, size=(2, 2)) * size
    p1 = (p0 + p2) / 2 + rng.normal(0.0, 0.25 * size, size=2)
    width = rng.uniform(0.35, 0.7) * size / 64
    strength = rng.uniform(0.5, 0.9)
    t = np.linspace(0.0, 1.0, 16 * size)[:, None]
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2  # (n, 2) as (y, x)
    step = np.hypot(*np.diff(pts, axis=0).T)  # curve length per sample, so the line has unit density
    pts = pts[1:]
    ok = (pts >= 0).all(axis=1) & (pts < size - 1).all(axis=1)
    pts, step = pts[ok], step[ok]
    canvas = np.zeros((size, size))
    base = np.floor(pts).astype(int)
    fy, fx = (pts - base).T
    for dy, dx, w in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        np.add.at(canvas, (base[:, 0] + dy, base[:, 1] + dx), w * step)
    line = gaussian_filter(canvas, width) * np.sqrt(2 * np.pi) * width  # ~1 on the curve
    return np.clip(line, 0.0, 1.0) * strength


def render(spec: ImageSpec, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Image `index` (0-based): RGB uint8 (H, W, 3) and mask uint8 (H, W) in {0, 255}."""
    rng = np.random.default_rng([spec.seed, 2594, index])
    n = spec.size
    y, x = np.mgrid[0:n, 0:n].astype(np.float64)

    # Skin: a per-image tone, smooth blotches, fine pores.
    tone = np.array([rng.uniform(0.78, 0.93), rng.uniform(0.58, 0.72), rng.uniform(0.48, 0.62)])
    tone = tone * rng.uniform(0.85, 1.05)
    blotch = 0.04 * _smooth(rng, n, n / 10)
    pores = 0.025 * _smooth(rng, n, 0.8)
    img = tone[None, None, :] * (1 + blotch + pores)[..., None]

    # Lesion: a star-shaped blob with a few random harmonics on its radius.
    cy, cx = (0.5 + rng.uniform(-0.12, 0.12, size=2)) * n
    r0 = rng.uniform(0.16, 0.3) * n
    angle = np.arctan2(y - cy, x - cx)
    radius = np.ones_like(angle)
    for k in range(2, 7):
        radius += rng.uniform(0.0, 0.22 / k ** 0.7) * np.cos(k * angle + rng.uniform(0, 2 * np.pi))
    edge_noise = 0.06 * _smooth(rng, n, n / 24)
    rel = np.hypot(y - cy, x - cx) / (r0 * radius) + edge_noise  # < 1 inside
    mask = rel < 1.0
    inside = np.clip((1.0 - rel) / 0.12 + 0.5, 0.0, 1.0)  # a soft border of a few pixels
    red = rng.uniform(0.36, 0.58)
    green = red * rng.uniform(0.55, 0.7)
    brown = np.array([red, green, green * rng.uniform(0.6, 0.8)])
    mottle = 0.12 * _smooth(rng, n, n / 20) - 0.15 * np.clip(1.0 - rel, 0, 1)  # darker, blotchy centre
    lesion = brown[None, None, :] * (1 + mottle)[..., None]
    img = img * (1 - inside[..., None]) + lesion * inside[..., None]

    # Hairs (over skin and lesion), then the dermoscope's vignette and sensor noise.
    dark = np.zeros((n, n))
    for _ in range(int(rng.integers(0, 5))):
        dark = np.maximum(dark, _hair(rng, n))
    img = img * (1 - dark[..., None]) + np.array([0.12, 0.08, 0.06]) * dark[..., None]
    r = np.hypot(y - (n - 1) / 2, x - (n - 1) / 2) / (n / 2)
    vignette = np.clip(1.0 - rng.uniform(0.25, 0.5) * np.clip(r - rng.uniform(0.55, 0.8), 0, None) ** 1.5 * 2.5,
                       0.05, 1.0)
    img = img * vignette[..., None] + rng.normal(0.0, 0.01, size=img.shape)
    rgb = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    return rgb, (mask * 255).astype(np.uint8)


def image_ids(spec: ImageSpec) -> list[str]:
    return [f"{i:04d}" for i in range(1, spec.images + 1)]


def generate(root: Path, spec: ImageSpec) -> None:
    """Write the dataset into `root` (created), image-folder layout. Deterministic given spec."""
    root = Path(root)
    (root / IMAGES).mkdir(parents=True, exist_ok=True)
    (root / MASKS).mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(image_ids(spec)):
        rgb, mask = render(spec, index)
        Image.fromarray(rgb, "RGB").save(root / IMAGES / IMAGE_PATTERN.format(id=name), quality=JPEG_QUALITY)
        Image.fromarray(mask, "L").save(root / MASKS / MASK_PATTERN.format(id=name))


def ensure_images(root: Path, spec: ImageSpec) -> Path:
    """Generate once into `root` unless a complete copy of the same spec is there (atomic). Returns root."""
    return ensure_generated(root, spec, generate, GENERATOR_VERSION)
