"""Batch augmentations applied on the device, inside a method's `train_step` (weak / strong views of the
unlabeled batch for FixMatch-style methods). Images are (B, C, *spatial) in [0, 1] (ACDC is min-max
normalised per volume). Each sample draws its own parameters; pass a CPU `generator` for reproducible tests.

- `random_flip`: flip of the last axis (2D: horizontal) with probability p (the weak view of FixMatch / SemSim).
- `colour_jitter`: brightness, then contrast, then (RGB only) saturation, each factor ~ U[1 - s, 1 + s] and
  each step clamped to [0, 1], applied with probability p (torchvision ColorJitter without hue, in a fixed
  order where torchvision shuffles it; on a grey image saturation and hue leave the one channel unchanged,
  so only brightness and contrast act).
- `gaussian_blur`: sigma ~ U[0.1, 2.0] with probability p (UniMatch's `blur`), 2D or 3D.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _draw(n: int, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=generator)


def random_flip(x: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip the last axis of each sample of (B, C, *spatial) with probability p; returns (images, which
    samples were flipped)."""
    flipped = (_draw(x.shape[0], generator) < p).to(x.device)
    return torch.where(flipped.view(-1, *[1] * (x.dim() - 1)), x.flip(-1), x), flipped


GREY_WEIGHTS = (0.299, 0.587, 0.114)   # ITU-R 601 luma of (R, G, B), as torchvision's rgb_to_grayscale


def grey(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, *spatial) RGB -> (B, 1, *spatial) luma."""
    w = torch.tensor(GREY_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, *[1] * (x.dim() - 2))
    return (x * w).sum(1, keepdim=True)


def colour_jitter(x: torch.Tensor, brightness: float, contrast: float, p: float = 1.0,
                  generator: torch.Generator | None = None, saturation: float = 0.0) -> torch.Tensor:
    """Per-sample jitter of (B, C, *spatial) images (see module docstring), applied with probability p.

    Brightness scales the image; contrast blends it with its mean over channels and pixels (torchvision
    takes the grey image's mean); saturation (C == 3) blends it with its grey image (`grey`). The saturation
    factor is drawn last and only when it acts, so with saturation=0, or on one channel where it is ignored,
    the results and the random stream are those of brightness + contrast alone; other C need saturation=0."""
    n, c, shape = x.shape[0], x.shape[1], (-1,) + (1,) * (x.dim() - 1)
    if saturation and c not in (1, 3):
        raise ValueError(f"saturation jitter needs 1 or 3 (RGB) channels (got {c})")
    apply = (_draw(n, generator) < p).view(shape).to(x.device)
    fb = (1 + brightness * (2 * _draw(n, generator) - 1)).view(shape).to(x)
    fc = (1 + contrast * (2 * _draw(n, generator) - 1)).view(shape).to(x)
    y = (x * fb).clamp(0, 1)
    mean = y.mean(dim=tuple(range(1, x.dim())), keepdim=True)
    y = ((y - mean) * fc + mean).clamp(0, 1)
    if saturation and c == 3:
        fs = (1 + saturation * (2 * _draw(n, generator) - 1)).view(shape).to(x)
        y = (y * fs + grey(y) * (1 - fs)).clamp(0, 1)
    return torch.where(apply, y, x)


def gaussian_blur(x: torch.Tensor, p: float = 0.5, sigma: tuple[float, float] = (0.1, 2.0),
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample Gaussian blur of (B, C, *spatial) images, 2D or 3D (separable, reflect padding), with
    sigma ~ U(sigma), applied with probability p."""
    k = x.dim() - 2
    if k not in (2, 3):
        raise ValueError(f"gaussian_blur takes (B, C, H, W) or (B, C, D, H, W) images (got {tuple(x.shape)})")
    conv = F.conv2d if k == 2 else F.conv3d
    n, c = x.shape[:2]
    apply = _draw(n, generator) < p
    s = sigma[0] + (sigma[1] - sigma[0]) * _draw(n, generator)
    radius = math.ceil(3 * sigma[1])
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-t[None] ** 2 / (2 * s[:, None] ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).to(x)       # (n, 2r+1)
    kernel = kernel.repeat_interleave(c, 0)                      # one kernel per (sample, channel)
    y = x.reshape(1, n * c, *x.shape[2:])
    y = F.pad(y, (radius,) * (2 * k), mode="reflect")
    for axis in reversed(range(k)):                              # the last axis first
        y = conv(y, kernel.view(n * c, 1, *[-1 if a == axis else 1 for a in range(k)]), groups=n * c)
    return torch.where(apply.view(-1, *[1] * (k + 1)).to(x.device), y.view_as(x), x)
