"""UNet variants of SSL4MIS `code/networks/unet.py` used by CCT and URPC, built from `benchmark.nets.unet` blocks.

Facts checked in SSL4MIS `code/networks/unet.py` (HiLab-git/SSL4MIS @9c2d468):

- Up-sampling: `UpBlock` defaults to `bilinear=True` and `Decoder`/`Decoder_URPC` never pass `bilinear`, so
  the `'bilinear': False` in the `UNet_CCT`/`UNet_URPC` params has no effect: every decoder is 1x1 conv +
  bilinear x2, i.e. our `UpBlock`/`Decoder`. Encoder dropout [0.05, 0.1, 0.2, 0.3, 0.5] as the plain UNet.
- `UNet_CCT`: one encoder, a main `Decoder` and three auxiliary `Decoder`s. Each auxiliary decoder gets ALL
  five encoder features perturbed (not only the bottleneck): aux1 `FeatureNoise` (a fresh module per
  level), aux2 `Dropout` = `F.dropout(x, p=0.3)` (element-wise, not dropout2d), aux3 `FeatureDropout`.
  Output order (main, aux1, aux2, aux3).
- `FeatureNoise(uniform_range=0.3)`: x + x * n with n ~ U(-0.3, 0.3) of shape x.shape[1:] (one draw shared
  by the batch), i.e. multiplicative noise.
- `FeatureDropout`: attention = channel mean (B,1,H,W); threshold = per-sample spatial max of the attention
  times ONE draw U(0.7, 0.9) for the whole batch; features are zeroed where attention >= threshold.
- `UNet_URPC` (`Decoder_URPC`): the decoder path is the plain one; 3x3 conv heads on the outputs of up1
  (128 ch, 1/8), up2 (64 ch, 1/4), up3 (32 ch, 1/2) and the full-resolution `out_conv`. In training only the
  head inputs are perturbed (the decoder path itself is not): up1 -> `Dropout(x, p=0.5)` (F.dropout),
  up2 -> `FeatureDropout`, up3 -> `FeatureNoise`. The side outputs are resized to the input size with
  `F.interpolate(..., shape)`, i.e. mode "nearest". Order (full-res, 1/2, 1/4, 1/8). The unused
  `out_conv_dp4` head is left out (it takes no part in the forward pass, so no gradient reaches it).

Departures: CCT's perturbations are applied only in training mode (SSL4MIS applies them in eval too, where
only the main output is used, so predictions are the same); the random draws come from torch's RNG instead
of numpy's (FeatureDropout's threshold factor) and torch.distributions (FeatureNoise).
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from benchmark.nets.unet import CHANNELS, Decoder, Encoder


# ---- feature perturbations (SSL4MIS FeatureNoise / Dropout / FeatureDropout) --------------------------------
def feature_noise(x: torch.Tensor, uniform_range: float = 0.3) -> torch.Tensor:
    """x + x * n, n ~ U(-r, r) of shape x.shape[1:], shared by the batch."""
    noise = torch.empty(x.shape[1:], device=x.device, dtype=x.dtype).uniform_(-uniform_range, uniform_range)
    return x + x * noise.unsqueeze(0)


def feature_dropout_elementwise(x: torch.Tensor, p: float) -> torch.Tensor:
    """SSL4MIS `Dropout`: element-wise `F.dropout` (scaled by 1/(1-p)), always on."""
    return F.dropout(x, p, training=True)


def feature_dropout(x: torch.Tensor, low: float = 0.7, high: float = 0.9) -> torch.Tensor:
    """SSL4MIS `FeatureDropout`: zero the positions whose channel-mean attention is >= max * U(low, high)."""
    attention = x.mean(1, keepdim=True)
    max_val = attention.flatten(1).max(1).values.view(-1, 1, 1, 1)
    factor = float(torch.empty(()).uniform_(low, high))
    return x * (attention < max_val * factor).to(x.dtype)


# ---- CCT ----------------------------------------------------------------------------------------------------
class UNetCCT(nn.Module):
    """Encoder + main decoder + 3 auxiliary decoders on perturbed features: returns [main, aux1, aux2, aux3]."""

    def __init__(self, in_channels: int = 1, num_classes: int = 4, dropout_p: float = 0.3,
                 noise_range: float = 0.3) -> None:
        super().__init__()
        self.dropout_p, self.noise_range = dropout_p, noise_range
        self.encoder = Encoder(in_channels)
        self.main_decoder = Decoder(num_classes)
        self.aux_decoders = nn.ModuleList(Decoder(num_classes) for _ in range(3))

    def perturbations(self):
        return (lambda f: feature_noise(f, self.noise_range),
                lambda f: feature_dropout_elementwise(f, self.dropout_p),
                feature_dropout)

    def forward_main(self, x: torch.Tensor) -> torch.Tensor:
        return self.main_decoder(self.encoder(x))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.encoder(x)
        outputs = [self.main_decoder(features)]
        for decoder, perturb in zip(self.aux_decoders, self.perturbations()):
            outputs.append(decoder([perturb(f) for f in features] if self.training else features))
        return outputs


# ---- URPC ---------------------------------------------------------------------------------------------------
class PyramidDecoder(Decoder):
    """`Decoder` with 3x3 heads after up1, up2, up3 (SSL4MIS `Decoder_URPC`); head inputs perturbed in training
    by dropout p=0.5 (1/8), feature dropout (1/4) and feature noise (1/2). Returns [full, 1/2, 1/4, 1/8] logits
    resized (nearest) to `size`."""

    def __init__(self, num_classes: int, dropout_p: float = 0.5, noise_range: float = 0.3) -> None:
        super().__init__(num_classes)
        self.dropout_p, self.noise_range = dropout_p, noise_range
        # side heads after up1, up2, up3: widths CHANNELS[3], [2], [1]
        self.side_heads = nn.ModuleList(nn.Conv2d(CHANNELS[i], num_classes, 3, padding=1) for i in (3, 2, 1))

    def perturbations(self):
        return (lambda f: feature_dropout_elementwise(f, self.dropout_p),
                feature_dropout,
                lambda f: feature_noise(f, self.noise_range))

    def forward(self, features: list[torch.Tensor], size: tuple[int, int] | None = None) -> list[torch.Tensor]:
        size = size or features[0].shape[2:]
        x, sides = features[-1], []
        for i, (up, skip) in enumerate(zip(self.ups, reversed(features[:-1]))):
            x = up(x, skip)
            if i < 3:
                h = self.perturbations()[i](x) if self.training else x
                sides.append(F.interpolate(self.side_heads[i](h), size=tuple(size)))
        return [self.head(x), *reversed(sides)]


class UNetURPC(nn.Module):
    """SSL4MIS UNet_URPC: `UNetURPC(1, 4)(x) -> [full, 1/2, 1/4, 1/8]` logits, all of the input's size."""

    def __init__(self, in_channels: int = 1, num_classes: int = 4) -> None:
        super().__init__()
        self.encoder = Encoder(in_channels)
        self.decoder = PyramidDecoder(num_classes)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.decoder(self.encoder(x), x.shape[2:])
