"""Shared networks, one registry. `build_network(name, in_channels, num_classes)` is the one way methods get
them, and every net a method builds is registered here with what it supports: its spatial dimensions and
the size constraint on each patch axis, checked against a trial's patch before training starts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from torch import nn

from benchmark.config import ConfigError
from benchmark.nets.cml import CoTrainingUNet2D
from benchmark.nets.discriminator import FCDiscriminator, PatchDiscriminator
from benchmark.nets.mcnet import MCNet2D
from benchmark.nets.swin_unet import SwinUNet
from benchmark.nets.unet import UNet2D
from benchmark.nets.unet_variants import UNetCCT, UNetURPC
from benchmark.nets.vnet import VNet
from benchmark.registry import Registry


@dataclass(frozen=True)
class NetworkSpec:
    """A registered network: how to build it and which patches it accepts."""

    factory: Callable[..., nn.Module]   # (in_channels=, num_classes=, **options) -> module
    dims: tuple[int, ...]               # spatial dimensions it supports
    multiple: int = 1                   # every patch axis must be a multiple of this (the net's total stride)
    square: bool = False                # all patch axes equal (Swin-UNet's square token grid)
    role: str = "segmentation"          # segmentation | discriminator (an auxiliary net of a method)

    def problem(self, patch: Sequence[int]) -> str | None:
        """Why `patch` cannot go through this net, or None."""
        if len(patch) not in self.dims:
            return f"it is a {'/'.join(map(str, self.dims))}D network and the patch {list(patch)} is {len(patch)}D"
        if any(p % self.multiple for p in patch):
            return f"every patch axis must be a multiple of {self.multiple} (got {list(patch)})"
        if self.square and len(set(patch)) != 1:
            return f"it needs a square patch (got {list(patch)})"
        return None


NETWORKS: Registry[NetworkSpec] = Registry("network")
NETWORKS.add("unet", NetworkSpec(UNet2D, (2,), 16),
             "SSL4MIS UNet-2D: 5 levels, 16..256 channels, encoder dropout, bilinear up (~1.8 M params)")
NETWORKS.add("swin-unet", NetworkSpec(SwinUNet, (2,), 32, square=True),
             "Swin-UNet lite (timm Swin blocks): patch 4, embed 96, depths 2-2-2-2, window 7, 224 input (~27.2 M params)")
NETWORKS.add("vnet", NetworkSpec(VNet, (3,), 16),
             "V-Net of the LA papers (SS-Net VNet.py): 16..256 channels, additive skips, 9,448,866 params; option width")
NETWORKS.add("unet-cct", NetworkSpec(UNetCCT, (2,), 16), "CCT's UNet-2D: main + 3 perturbed auxiliary decoders (SSL4MIS UNet_CCT)")
NETWORKS.add("unet-urpc", NetworkSpec(UNetURPC, (2,), 16), "URPC's UNet-2D with 4 pyramid heads (SSL4MIS UNet_URPC)")
NETWORKS.add("mcnet-2d", NetworkSpec(MCNet2D, (2,), 16), "MC-Net's UNet-2D: bilinear and transposed-conv decoders")
NETWORKS.add("cml-unet-2d", NetworkSpec(CoTrainingUNet2D, (2,), 16),
             "CML's two sub-networks (paper: two encoders and decoders; option shared: one encoder)")
NETWORKS.add("fc-discriminator", NetworkSpec(FCDiscriminator, (2,), role="discriminator"),
             "DAN's fully-convolutional discriminator on (image, softmax) (option input_size)")
NETWORKS.add("patch-discriminator",
             NetworkSpec(lambda in_channels, num_classes, **o: PatchDiscriminator(num_classes, **o), (2,),
                         role="discriminator"),
             "AdvMIM's patch discriminator on softmax maps")

# LA (3D) networks of the V-Net family (one NETWORKS.add block per group below its anchor)
# -- nets: sassnet/dtc --
# -- nets: mc-net/caml --
# -- nets: urpc/ss-net --
# -- nets: cml --
# -- nets: mcf --


def build_network(name: str, in_channels: int, num_classes: int, **options: Any) -> nn.Module:
    """Instantiate a registered network by name; `options` go to its constructor (e.g. Swin-UNet's img_size)."""
    return NETWORKS.get(name).factory(in_channels=in_channels, num_classes=num_classes, **options)


def check_network(name: str, patch: Sequence[int], method: str, where: str) -> None:
    """ConfigError naming the method, the net and the patch when `patch` cannot go through net `name`."""
    problem = NETWORKS.get(name).problem(patch)
    if problem:
        raise ConfigError(f"{where}: {method} trains network {name!r} on patch {list(patch)}, but {problem}; "
                          f"change train.patch_size or train.network (bench ls networks)")
