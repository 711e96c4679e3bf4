"""The V-Net of the semi-supervised LA literature (ycwu1997/SS-Net@c0a8bf6:code/networks/VNet.py; the same
network in UA-MT, MC-Net, CML and BCP), written from its description.

- Encoder: five stages of 1, 2, 3, 3, 3 convs at widths 16, 32, 64, 128, 256 (`width` * 1, 2, 4, 8, 16); each
  conv is 3x3x3 (padding 1) + BatchNorm3d + ReLU, no residual addition. Between stages a 2x2x2 stride-2
  conv + BN + ReLU that also doubles the width.
- Decoder: 2x2x2 stride-2 ConvTranspose3d + BN + ReLU halving the width (256->128->64->32->16); the skip is
  ADDED (x5_up + x4, ...), not concatenated; stages of 3, 3, 2, 1 convs at 128, 64, 32, 16; 1x1x1 output conv.
- Dropout3d(p=0.5) on the bottleneck x5 and before the head when `has_dropout` (only active in training).
- Input (B, C, D, H, W), each spatial size a multiple of 16 (LA patches are 112x112x80).

Parameters for in_channels=1, num_classes=2, width=16: encoder 7,376,896 + decoder 2,071,970 = 9,448,866.
"""
from __future__ import annotations

import torch
from torch import nn

ENCODER_DEPTHS = (1, 2, 3, 3, 3)
DECODER_DEPTHS = (3, 3, 2, 1)
DROPOUT = 0.5


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1) -> list[nn.Module]:
    """Conv3d + BatchNorm3d + ReLU, as a list of modules to splice into a Sequential."""
    return [nn.Conv3d(in_channels, out_channels, kernel_size, stride=stride, padding=padding),
            nn.BatchNorm3d(out_channels), nn.ReLU(inplace=True)]


class ConvStage(nn.Sequential):
    """`depth` 3x3x3 conv + BN + ReLU layers; the first maps in_channels to out_channels."""

    def __init__(self, depth: int, in_channels: int, out_channels: int) -> None:
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += conv_bn_relu(in_channels if i == 0 else out_channels, out_channels)
        super().__init__(*layers)


class Down(nn.Sequential):
    """2x2x2 stride-2 conv + BN + ReLU (the reference's DownsamplingConvBlock)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(*conv_bn_relu(in_channels, out_channels, kernel_size=2, stride=2, padding=0))


class Up(nn.Sequential):
    """2x2x2 stride-2 ConvTranspose3d + BN + ReLU (the reference's UpsamplingDeconvBlock)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.ConvTranspose3d(in_channels, out_channels, 2, stride=2),
                         nn.BatchNorm3d(out_channels), nn.ReLU(inplace=True))


class VNetEncoder(nn.Module):
    """Returns the five stage outputs x1..x5, finest first; dropout on x5 when `has_dropout` (training only)."""

    def __init__(self, in_channels: int = 1, width: int = 16, has_dropout: bool = True) -> None:
        super().__init__()
        channels = [width * 2 ** i for i in range(len(ENCODER_DEPTHS))]
        self.stages = nn.ModuleList(
            ConvStage(ENCODER_DEPTHS[0], in_channels, channels[0]) if i == 0 else ConvStage(depth, c, c)
            for i, (depth, c) in enumerate(zip(ENCODER_DEPTHS, channels))
        )
        self.downs = nn.ModuleList(Down(channels[i], channels[i + 1]) for i in range(len(channels) - 1))
        self.has_dropout = has_dropout
        self.dropout = nn.Dropout3d(DROPOUT)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for i, stage in enumerate(self.stages):
            x = stage(x if i == 0 else self.downs[i - 1](x))
            features.append(x)
        if self.has_dropout:
            features[-1] = self.dropout(features[-1])
        return features


class VNetDecoder(nn.Module):
    """Up-convolution, add the skip, conv stage; dropout before the 1x1x1 head when `has_dropout`."""

    def __init__(self, num_classes: int = 2, width: int = 16, has_dropout: bool = True) -> None:
        super().__init__()
        channels = [width * 2 ** i for i in reversed(range(len(DECODER_DEPTHS) + 1))]  # 256, 128, 64, 32, 16
        self.ups = nn.ModuleList(Up(channels[i], channels[i + 1]) for i in range(len(DECODER_DEPTHS)))
        self.stages = nn.ModuleList(ConvStage(d, c, c) for d, c in zip(DECODER_DEPTHS, channels[1:]))
        self.has_dropout = has_dropout
        self.dropout = nn.Dropout3d(DROPOUT)
        self.head = nn.Conv3d(width, num_classes, 1)

    def last_features(self, features: list[torch.Tensor]) -> torch.Tensor:
        """The finest decoder feature map (B, width, D, H, W), before dropout and the head."""
        x = features[-1]
        for up, stage, skip in zip(self.ups, self.stages, reversed(features[:-1])):
            x = stage(up(x) + skip)
        return x

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.last_features(features)
        if self.has_dropout:
            x = self.dropout(x)
        return self.head(x)


class VNet(nn.Module):
    """LA-literature V-Net: `VNet(in_channels=1, num_classes=2)(x) -> logits` of the input's spatial size."""

    dims = 3
    multiple = 16

    def __init__(self, in_channels: int = 1, num_classes: int = 2, width: int = 16, has_dropout: bool = True) -> None:
        super().__init__()
        self.encoder = VNetEncoder(in_channels, width, has_dropout)
        self.decoder = VNetDecoder(num_classes, width, has_dropout)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five stage outputs x1..x5, finest first (x5 after dropout when training with has_dropout)."""
        if any(s % self.multiple for s in x.shape[2:]):
            raise ValueError(f"VNet needs spatial sizes that are a multiple of {self.multiple}, got {tuple(x.shape[2:])}")
        return self.encoder(x)

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Class logits (B, num_classes, D, H, W) from the five encoder features."""
        return self.decoder(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))
