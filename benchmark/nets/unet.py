"""The UNet-2D every SSL4MIS-derived ACDC paper uses (PROTOCOLS.md §2.1), written from its description.

Five levels with [16, 32, 64, 128, 256] channels; each block is conv3x3-BN-LeakyReLU-Dropout-conv3x3-BN-LeakyReLU;
encoder dropout [0.05, 0.1, 0.2, 0.3, 0.5], none in the decoder; 2x2 max-pool down; up = 1x1 conv then
bilinear x2 (align_corners=True) then concat with the skip; 3x3 output conv. About 1.81 M parameters.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F

FeatureHook = Callable[[torch.Tensor], torch.Tensor]

CHANNELS = (16, 32, 64, 128, 256)
ENCODER_DROPOUT = (0.05, 0.1, 0.2, 0.3, 0.5)


class ConvBlock(nn.Sequential):
    """Two 3x3 conv + BN + LeakyReLU, with dropout between them."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(),
            nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(),
        )


class UpBlock(nn.Module):
    """1x1 conv to the skip's width, bilinear x2, concat with the skip, ConvBlock."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(in_channels, skip_channels, 1)
        self.conv = ConvBlock(2 * skip_channels, out_channels, dropout=0.0)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(self.reduce(x), scale_factor=2, mode="bilinear", align_corners=True)
        return self.conv(torch.cat([skip, x], dim=1))


class Encoder(nn.Module):
    """Returns the five feature maps, finest first."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        widths = (in_channels, *CHANNELS)
        self.blocks = nn.ModuleList(
            ConvBlock(widths[i], widths[i + 1], ENCODER_DROPOUT[i]) for i in range(len(CHANNELS))
        )

    def forward(self, x: torch.Tensor, after_first: FeatureHook | None = None) -> list[torch.Tensor]:
        """`after_first` (optional) rewrites the first block's output, skip included (AdvMIM's CNN masking)."""
        features = []
        for i, block in enumerate(self.blocks):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            if i == 0 and after_first is not None:
                x = after_first(x)
            features.append(x)
        return features


class Decoder(nn.Module):
    """Mirror of the encoder without dropout, ending in a 3x3 conv to class logits."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        c = CHANNELS
        self.ups = nn.ModuleList(UpBlock(c[i + 1], c[i], c[i]) for i in reversed(range(len(c) - 1)))
        self.head = nn.Conv2d(c[0], num_classes, 3, padding=1)

    def last_features(self, features: list[torch.Tensor]) -> torch.Tensor:
        """The finest decoder feature map (B, 16, H, W), the input of the output conv."""
        x = features[-1]
        for up, skip in zip(self.ups, reversed(features[:-1])):
            x = up(x, skip)
        return x

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.head(self.last_features(features))


class UNet2D(nn.Module):
    """SSL4MIS UNet: `UNet2D(in_channels=1, num_classes=4)(x) -> logits` of the input's spatial size."""

    def __init__(self, in_channels: int = 1, num_classes: int = 4) -> None:
        super().__init__()
        self.encoder = Encoder(in_channels)
        self.decoder = Decoder(num_classes)

    def forward(self, x: torch.Tensor, after_first: FeatureHook | None = None) -> torch.Tensor:
        return self.decoder(self.encoder(x, after_first))

    def forward_with_encoder_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(logits, the encoder's five feature maps, finest first) from one pass; no extra parameters."""
        features = self.encoder(x)
        return self.decoder(features), features

    def forward_with_decoder_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, last decoder features (B, 16, H, W)): the pixel embeddings SS-Net's prototypes use."""
        features = self.decoder.last_features(self.encoder(x))
        return self.decoder.head(features), features
