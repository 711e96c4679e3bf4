"""`vnet_sdf` of SASSNet and DTC: the LA V-Net trunk with two 1x1x1 heads, a tanh signed-distance head and a
segmentation head.

The reference (kleinzcy/SASSnet@1761aa8:code/networks/vnet_sdf.py; HiLab-git/DTC@2525b9c:code/networks/vnet_sdf.py
is the same file plus a print): the UA-MT V-Net encoder / decoder (`benchmark/nets/vnet.py`, reused here, not
copied), then on the finest decoder features x9 (after the Dropout3d(0.5) when `has_dropout`, L232-234; ONE
dropout mask shared by both heads) `out_conv` (1x1x1 conv, then tanh: the SDF head, L235-236) and `out_conv2`
(1x1x1 conv: the segmentation logits, L237); forward returns (tanh output, segmentation logits) (L238, L249). Both
training scripts build it with n_classes = num_classes - 1 = 1, i.e. one sigmoid channel for binary LA
(train_gan_sdfloss.py L94, train_la_dtc.py L113).

Here: `VNetSDF(in_channels, num_classes=2)` is a `VNet` whose decoder head (the segmentation head, the reference's
out_conv2) has num_classes - 1 channels, plus `sdf_head` (the reference's out_conv). `forward(x)` returns
(sdf in [-1, 1], segmentation logits), both (B, num_classes - 1, D, H, W).

Parameters for in_channels=1, num_classes=2, width=16: encoder 7,376,896 + decoder 2,071,936 (17 in its head) +
SDF head 17 = 9,448,866, the same as the 2-class V-Net (PROTOCOLS-3D-DATASETS.md §0 item 2).
"""
from __future__ import annotations

import torch
from torch import nn

from benchmark.nets.vnet import VNet


class VNetSDF(VNet):
    """`VNetSDF(in_channels=1, num_classes=2)(x) -> (tanh SDF, seg logits)`, each with num_classes - 1 channels."""

    def __init__(self, in_channels: int = 1, num_classes: int = 2, width: int = 16, has_dropout: bool = True) -> None:
        if num_classes < 2:
            raise ValueError(f"VNetSDF needs num_classes >= 2 (background + foreground), got {num_classes}")
        super().__init__(in_channels, num_classes - 1, width, has_dropout)
        self.sdf_head = nn.Conv3d(width, num_classes - 1, 1)

    def decode(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        """(tanh SDF, segmentation logits) from the five encoder features; both heads see the same dropout."""
        x = self.decoder.last_features(features)
        if self.decoder.has_dropout:
            x = self.decoder.dropout(x)
        return torch.tanh(self.sdf_head(x)), self.decoder.head(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        return self.decode(self.encode(x))
