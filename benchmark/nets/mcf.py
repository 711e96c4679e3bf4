"""MCF's second network: a 3D ResNet-34 encoder under the V-Net decoder ("ResNet34-UNet"), written from its
description in WYC-321/MCF@ad20659 `code/networks/ResNet34.py` (class `Resnet34`) and `code/networks/resnet.py`
(`ResNet`, `BasicBlock`, `resnet34`). MCF pairs it with the plain LA V-Net (`code/networks/vnet.py`, the same
net as `benchmark/nets/vnet.py`); `code/train_MCF.py` L103-114 builds both with batchnorm and has_dropout=True.

Encoder (`resnet.py::ResNet`, built by `resnet34()` with its defaults in_channel=1, width=1, so base = 16):
- stem: 7x7x7 conv, stride 1, padding 3, no bias (L122) + BatchNorm3d + ReLU -> x1 (16 ch, full resolution).
  The `maxpool` (L127) and `avgpool` (L137) modules are built but never used in `forward` (L199-211); they have
  no parameters and are left out here.
- four stages of BasicBlocks (3x3x3 conv no bias + BN + ReLU, 3x3x3 conv no bias + BN, residual add, ReLU),
  depths 3, 4, 6, 3 (`resnet34`, L222), widths 32, 64, 128, 256, EACH with stride 2 in its first block
  (L128-132: layer1 is strided too, unlike the 2D ImageNet ResNet), the first block's shortcut a 1x1x1
  stride-2 conv (no bias) + BN (`_make_layer`, L186-190). Outputs c2..c5 at 1/2, 1/4, 1/8, 1/16.
- the five features [x1, c2, c3, c4, c5] have the V-Net encoder's widths (16..256) and resolutions.
- `Resnet34.__init__` ignores its `n_channels` argument (`resnet34()` is called without it, so in_channel = 1);
  here `in_channels` is honoured (LA has 1 channel, so this is the same net).

Decoder (`ResNet34.py::Resnet34.decoder`, L209-235): exactly the V-Net's (2x2x2 stride-2 ConvTranspose + BN +
ReLU, skip ADDED, conv stages 3, 3, 2, 1 at 128, 64, 32, 16, 1x1x1 head), so `VNetDecoder` is reused. Dropout3d
(0.5) only before the head (x9) when `has_dropout`; unlike the V-Net there is none on the bottleneck.

Initialisation (`Resnet34.__init_weight`, L242-248, run after the encoder is built): kaiming_normal_ (fan_in,
gain sqrt 2) on every Conv3d / ConvTranspose3d weight, encoder included; every BatchNorm3d weight 1, bias 0.
That pass also UNDOES `ResNet`'s zero-gamma trick (resnet.py L165-173 zeroes each block's bn2.weight first),
so every BN gamma ends at 1. Conv biases (decoder only) keep PyTorch's default. `reference_init_` does this.
The V-Net's `__init_weight` (vnet.py) is the same pass; MCF's method applies it to the harness V-Net too.

Parameters (in 1, 2 classes, width 16), from the architecture arithmetic (3^3 = 27, BN = 2 per channel):
- stem 7^3*1*16 = 5,488 + BN 32 = 5,520;
- layer1 (16->32, 3 blocks) 153,024; layer2 (32->64, 4) 832,640; layer3 (64->128, 6) 5,098,752;
  layer4 (128->256, 3) 9,768,448; e.g. a first block = 27*in*out + 27*out*out + in*out + 3 BN*2*out, a later
  one = 2*27*out*out + 2 BN*2*out;
- encoder 15,858,384 + V-Net decoder 2,071,970 = 17,930,354 (the V-Net itself: 9,448,866; MCF total 27,379,220).
"""
from __future__ import annotations

import torch
from torch import nn

from benchmark.nets.vnet import VNetDecoder

RESNET34_DEPTHS = (3, 4, 6, 3)


def reference_init_(module: nn.Module) -> nn.Module:
    """MCF's `__init_weight` (ResNet34.py L242-248, vnet.py likewise), in place: kaiming_normal_ on every
    Conv3d / ConvTranspose3d weight (biases untouched), BatchNorm3d weight 1 and bias 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return module


def conv3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv3d:
    """3x3x3 conv, padding 1, no bias (resnet.py `conv3x3`)."""
    return nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class BasicBlock3d(nn.Module):
    """conv-BN-ReLU-conv-BN + shortcut, then ReLU; the shortcut is a strided 1x1x1 conv + BN when the shape
    changes (resnet.py `BasicBlock`, `_make_layer`)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv3(in_channels, out_channels, stride), nn.BatchNorm3d(out_channels)
        self.conv2, self.bn2 = conv3(out_channels, out_channels), nn.BatchNorm3d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv3d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm3d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet34Encoder(nn.Module):
    """Returns [x1, c2, c3, c4, c5]: the stem output (width ch, full size) and the four stage outputs
    (2, 4, 8, 16 x width ch at 1/2 .. 1/16), finest first, as `VNetEncoder`."""

    def __init__(self, in_channels: int = 1, width: int = 16, depths: tuple[int, ...] = RESNET34_DEPTHS) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv3d(in_channels, width, 7, stride=1, padding=3, bias=False),
                                  nn.BatchNorm3d(width), nn.ReLU(inplace=True))
        stages, channels = [], width
        for i, depth in enumerate(depths):
            out = width * 2 ** (i + 1)
            stages.append(nn.Sequential(*(BasicBlock3d(channels if j == 0 else out, out, 2 if j == 0 else 1)
                                          for j in range(depth))))
            channels = out
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [self.stem(x)]
        for stage in self.stages:
            features.append(stage(features[-1]))
        return features


class ResNet34UNet(nn.Module):
    """MCF's `Resnet34`: `ResNet34UNet(in_channels=1, num_classes=2, width=16, has_dropout=True)(x) -> logits`
    of the input's spatial size (each a multiple of 16). `width` scales every channel count (16 = reference)."""

    dims = 3
    multiple = 16

    def __init__(self, in_channels: int = 1, num_classes: int = 2, width: int = 16, has_dropout: bool = True) -> None:
        super().__init__()
        self.encoder = ResNet34Encoder(in_channels, width)
        self.decoder = VNetDecoder(num_classes, width, has_dropout)  # dropout before the head only
        reference_init_(self)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        if any(s % self.multiple for s in x.shape[2:]):
            raise ValueError(f"ResNet34UNet needs spatial sizes that are a multiple of {self.multiple}, "
                             f"got {tuple(x.shape[2:])}")
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encode(x))
