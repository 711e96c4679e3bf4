"""Shared backbones. `build_network(name, in_channels, num_classes)` is the one way methods get them."""
from __future__ import annotations

from torch import nn

from benchmark.nets.swin_unet import SwinUNet
from benchmark.nets.unet import UNet2D
from benchmark.registry import Registry

NETWORKS: Registry[type[nn.Module]] = Registry("network")
NETWORKS.add("unet", UNet2D, "SSL4MIS UNet-2D: 5 levels, 16..256 channels, encoder dropout, bilinear up (~1.8 M params)")
NETWORKS.add("swin-unet", SwinUNet, "Swin-UNet lite (timm Swin blocks): patch 4, embed 96, depths 2-2-2-2, window 7, "
             "224 input (~27.2 M params)")


def build_network(name: str, in_channels: int, num_classes: int, **options) -> nn.Module:
    """Instantiate a registered backbone by name; `options` go to its constructor (e.g. Swin-UNet's img_size)."""
    return NETWORKS.get(name)(in_channels=in_channels, num_classes=num_classes, **options)
