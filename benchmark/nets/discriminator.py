"""Discriminators: `FCDiscriminator` (DAN), `PatchDiscriminator` (AdvMIM) and `FC3DDiscriminator` (SASSNet, at the
end of this file).

SSL4MIS `FCDiscriminator` (HiLab-git/SSL4MIS @06df604 `code/networks/discriminator.py`), written from its
description (PROTOCOLS.md §3.1, DAN).

Checked facts of the 2D reference:
- conv0 (softmax map, C -> 64) and conv1 (image, in_channels -> 64), each 4x4 stride 2 padding 1, are summed,
  with NO activation or dropout after the sum (the 3D variant has them; the 2D one does not).
- conv2 64->128, conv3 128->256: each 4x4 s2 p1, then LeakyReLU(0.2) and Dropout2d(0.5);
  conv4 256->512 4x4 s2 p1, then LeakyReLU(0.2) only.
- AvgPool2d(7) (stride 7), flatten, Linear(ndf * 32 = 2048, 2). The 2048 inputs mean the pooled map must be
  2x2: at the reference's 256x256 patches conv4 gives 16x16, and pooling 7 with stride 7 keeps the windows
  [0:7] and [7:14] of each axis (rows/columns 14 and 15 are dropped). Adaptive pooling to 2x2 would average
  [0:8] and [8:16] instead, so it is NOT used.

Other sizes: `input_size` (the training patch side) fixes the Linear's width, so the net is the reference
exactly at 256 and the same recipe (AvgPool 7 then flatten) at any size whose conv4 map is >= 7 (input >= 112).
Below that (tiny test patches only) the pool kernel shrinks to the whole conv4 map, a global average.
The forward pass checks the input size, so a mismatch fails loudly instead of silently.
"""
from __future__ import annotations

import torch
from torch import nn


def _conv_out(size: int) -> int:
    """Spatial size after a 4x4, stride 2, padding 1 conv."""
    return (size + 2 - 4) // 2 + 1


class FCDiscriminator(nn.Module):
    """`FCDiscriminator(num_classes, in_channels, input_size=256)(softmax_map, image) -> (B, 2)` logits."""

    POOL = 7

    def __init__(self, num_classes: int, in_channels: int = 1, ndf: int = 64, input_size: int = 256) -> None:
        super().__init__()
        self.input_size = input_size
        self.conv0 = nn.Conv2d(num_classes, ndf, 4, stride=2, padding=1)
        self.conv1 = nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(ndf, ndf * 2, 4, stride=2, padding=1)
        self.conv3 = nn.Conv2d(ndf * 2, ndf * 4, 4, stride=2, padding=1)
        self.conv4 = nn.Conv2d(ndf * 4, ndf * 8, 4, stride=2, padding=1)
        self.leaky_relu = nn.LeakyReLU(0.2)
        self.dropout = nn.Dropout2d(0.5)
        side = input_size
        for _ in range(4):
            side = _conv_out(side)
        if side < 1:
            raise ValueError(f"FCDiscriminator input_size {input_size} is too small (needs >= 16)")
        kernel = min(self.POOL, side)
        self.avgpool = nn.AvgPool2d(kernel)
        pooled = (side - kernel) // kernel + 1
        self.classifier = nn.Linear(ndf * 8 * pooled * pooled, 2)

    def forward(self, prob_map: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        if tuple(prob_map.shape[-2:]) != (self.input_size, self.input_size):
            raise ValueError(f"FCDiscriminator was built for {self.input_size}x{self.input_size} inputs, "
                             f"got {tuple(prob_map.shape[-2:])}; set the method's disc_input_size to the patch size")
        x = self.conv0(prob_map) + self.conv1(image)
        x = self.dropout(self.leaky_relu(self.conv2(x)))
        x = self.dropout(self.leaky_relu(self.conv3(x)))
        x = self.leaky_relu(self.conv4(x))
        return self.classifier(self.avgpool(x).flatten(1))


class PatchDiscriminator(nn.Module):
    """AdvMIM's "five-layer CNN" domain discriminator on softmax maps (PROTOCOLS.md §3.2, zlheui/AdvMIM
    `train.py::CNNDiscriminator`): four 4x4 stride-2 convs (ndf, 2ndf, 4ndf, 8ndf) each followed by
    LeakyReLU(0.2), then a 4x4 stride-2 conv to one channel; padding 1, no normalisation. A 224 input gives a
    (B, 1, 7, 7) map of real/fake scores (raw, for least-squares losses)."""

    def __init__(self, num_classes: int, ndf: int = 64) -> None:
        super().__init__()
        widths = (num_classes, ndf, ndf * 2, ndf * 4, ndf * 8)
        layers: list[nn.Module] = []
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(widths[-1], 1, 4, stride=2, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, prob_map: torch.Tensor) -> torch.Tensor:
        return self.net(prob_map)


class FC3DDiscriminator(nn.Module):
    """SASSNet's 3D discriminator (kleinzcy/SASSnet@1761aa8:code/networks/discriminator.py L54-98
    `FC3DDiscriminator(num_classes=1, ndf=64, n_channel=1)`, built at train_gan_sdfloss.py L103), written from its
    description. It classifies a (signed distance map, image) pair as coming from a labeled (class 1) or an
    unlabeled (class 0) scan; forward(map, image) -> (B, 2) logits (no softmax: the reference's `Softmax` module
    is never called, L70, L96).

    - conv0 on the map (map_channels -> ndf) and conv1 on the image (in_channels -> ndf), each 4x4x4 stride 2
      padding 1, are SUMMED (not concatenated; L74-76), then LeakyReLU(0.2) and Dropout3d(0.5) (L77-78; unlike
      the 2D FCDiscriminator above, the 3D one has them after the sum).
    - conv2 ndf -> 2ndf and conv3 2ndf -> 4ndf, each 4x4x4 s2 p1 + LeakyReLU(0.2) + Dropout3d(0.5); conv4
      4ndf -> 8ndf 4x4x4 s2 p1 + LeakyReLU(0.2) (L80-89).
    - AvgPool3d((7, 7, 5)), flatten, Linear(8ndf, 2) (L65-66, L91-94). At the reference's 112x112x80 patch
      conv4's map is exactly 7x7x5, so that pool is a global average.

    Departure: the pool is a global average at every input size (`adaptive_avg_pool3d` to 1), identical at
    112x112x80; the reference's fixed (7, 7, 5) kernel fails or changes the Linear's width at other patches (the
    tests' 32^3 patches give a 2x2x2 conv4 map). Dropout is active in train mode only: the reference keeps D in
    eval mode for the segmenter's step and in train mode for its own (train_gan_sdfloss.py L155, L186).
    Parameters at ndf 64 with one map and one image channel: 11,020,290.
    """

    def __init__(self, map_channels: int = 1, in_channels: int = 1, ndf: int = 64) -> None:
        super().__init__()
        self.conv0 = nn.Conv3d(map_channels, ndf, 4, stride=2, padding=1)
        self.conv1 = nn.Conv3d(in_channels, ndf, 4, stride=2, padding=1)
        self.conv2 = nn.Conv3d(ndf, ndf * 2, 4, stride=2, padding=1)
        self.conv3 = nn.Conv3d(ndf * 2, ndf * 4, 4, stride=2, padding=1)
        self.conv4 = nn.Conv3d(ndf * 4, ndf * 8, 4, stride=2, padding=1)
        self.classifier = nn.Linear(ndf * 8, 2)
        self.leaky_relu = nn.LeakyReLU(0.2)
        self.dropout = nn.Dropout3d(0.5)

    def forward(self, sdf_map: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        if sdf_map.dim() != 5 or any(s < 16 for s in sdf_map.shape[2:]):
            raise ValueError(f"FC3DDiscriminator needs (B, C, D, H, W) inputs of at least 16 per axis, "
                             f"got {tuple(sdf_map.shape)}")
        x = self.dropout(self.leaky_relu(self.conv0(sdf_map) + self.conv1(image)))
        x = self.dropout(self.leaky_relu(self.conv2(x)))
        x = self.dropout(self.leaky_relu(self.conv3(x)))
        x = self.leaky_relu(self.conv4(x))
        return self.classifier(torch.nn.functional.adaptive_avg_pool3d(x, 1).flatten(1))
