"""Batch augmentations applied on the device, inside a method's `train_step` (weak / strong views of the
unlabeled batch for FixMatch-style methods). Images are (B, C, H, W) in [0, 1] (ACDC is min-max normalised
per volume). Each sample draws its own parameters; pass a CPU `generator` for reproducible tests.

- `random_flip`: horizontal flip with probability p (the weak view of FixMatch / SemSim).
- `colour_jitter`: brightness then contrast factors ~ U[1 - s, 1 + s], clamped to [0, 1], applied with
  probability p (torchvision ColorJitter on a grey image: saturation and hue leave one channel unchanged,
  so only brightness and contrast act; we apply them in a fixed order where torchvision shuffles it).
- `gaussian_blur`: sigma ~ U[0.1, 2.0] with probability p (UniMatch's `blur`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _draw(n: int, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=generator)


def random_flip(x: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip each sample left-right with probability p; returns (images, which samples were flipped)."""
    flipped = (_draw(x.shape[0], generator) < p).to(x.device)
    return torch.where(flipped.view(-1, *[1] * (x.dim() - 1)), x.flip(-1), x), flipped


def colour_jitter(x: torch.Tensor, brightness: float, contrast: float, p: float = 1.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample brightness and contrast jitter (see module docstring), applied with probability p."""
    n, shape = x.shape[0], (-1,) + (1,) * (x.dim() - 1)
    apply = (_draw(n, generator) < p).view(shape).to(x.device)
    fb = (1 + brightness * (2 * _draw(n, generator) - 1)).view(shape).to(x)
    fc = (1 + contrast * (2 * _draw(n, generator) - 1)).view(shape).to(x)
    y = (x * fb).clamp(0, 1)
    mean = y.mean(dim=tuple(range(1, x.dim())), keepdim=True)
    y = ((y - mean) * fc + mean).clamp(0, 1)
    return torch.where(apply, y, x)


def gaussian_blur(x: torch.Tensor, p: float = 0.5, sigma: tuple[float, float] = (0.1, 2.0),
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample Gaussian blur (separable, reflect padding) with sigma ~ U(sigma), applied with probability p."""
    n, c = x.shape[:2]
    apply = _draw(n, generator) < p
    s = sigma[0] + (sigma[1] - sigma[0]) * _draw(n, generator)
    radius = math.ceil(3 * sigma[1])
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-t[None] ** 2 / (2 * s[:, None] ** 2))
    k = (k / k.sum(1, keepdim=True)).to(x)                      # (n, 2r+1)
    k = k.repeat_interleave(c, 0)                                # one kernel per (sample, channel)
    y = x.reshape(1, n * c, *x.shape[2:])
    y = F.pad(y, (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, -1, 1), groups=n * c).view_as(x)
    return torch.where(apply.view(-1, 1, 1, 1).to(x.device), y, x)
