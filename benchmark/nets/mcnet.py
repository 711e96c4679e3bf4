"""MC-Net's 2D network (ycwu1997/MC-Net @fee453c `code/networks/unet.py::MCNet2d_v1`), written from its
description and built from the SSL4MIS UNet pieces of `benchmark/nets/unet.py`.

One UNet encoder and two decoders that differ only in how they up-sample:
- decoder 1 = the plain UNet decoder: 1x1 conv to the skip's width, bilinear x2 (align_corners=True);
- decoder 2 = transposed conv: ConvTranspose2d(in, skip width, kernel 2, stride 2), no 1x1 conv.
Both then concat [skip, up] and apply the same ConvBlock (no dropout) and a 3x3 output conv.
`forward` returns (logits1, logits2). The plain UNet is untouched.
"""
from __future__ import annotations

import torch
from torch import nn

from benchmark.nets.unet import CHANNELS, ConvBlock, Decoder, Encoder


class TransposedUpBlock(nn.Module):
    """ConvTranspose2d(k=2, s=2) to the skip's width, concat with the skip, ConvBlock (MC-Net mode 0)."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, skip_channels, kernel_size=2, stride=2)
        self.conv = ConvBlock(2 * skip_channels, out_channels, dropout=0.0)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class TransposedDecoder(Decoder):
    """The UNet decoder with transposed-conv up blocks (same forward, same head)."""

    def __init__(self, num_classes: int) -> None:
        nn.Module.__init__(self)  # not Decoder.__init__: no throw-away bilinear blocks drawing from the RNG
        c = CHANNELS
        self.ups = nn.ModuleList(TransposedUpBlock(c[i + 1], c[i], c[i]) for i in reversed(range(len(c) - 1)))
        self.head = nn.Conv2d(c[0], num_classes, 3, padding=1)


class MCNet2D(nn.Module):
    """`MCNet2D(in_channels, num_classes)(x) -> (bilinear-decoder logits, transposed-conv-decoder logits)`."""

    def __init__(self, in_channels: int = 1, num_classes: int = 4) -> None:
        super().__init__()
        self.encoder = Encoder(in_channels)
        self.decoder1 = Decoder(num_classes)
        self.decoder2 = TransposedDecoder(num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.encoder(x)
        return self.decoder1(features), self.decoder2(features)
