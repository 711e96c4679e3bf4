"""Shared networks, one registry. `build_network(name, in_channels, num_classes)` is the one way methods get
them, and every net a method builds is registered here with what it supports: its spatial dimensions and
the size constraint on each patch axis, checked against a trial's patch before training starts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from torch import nn

from benchmark.config import ConfigError
from benchmark.nets.caml3d import CAML3D
from benchmark.nets.cml import CoTrainingUNet2D, CoTrainingVNet
from benchmark.nets.discriminator import FC3DDiscriminator, FCDiscriminator, PatchDiscriminator
from benchmark.nets.dk_uxnet import DKUXNet
from benchmark.nets.mcf import ResNet34UNet
from benchmark.nets.mcnet import MCNet2D
from benchmark.nets.mcnet3d import MCNet2DPlus, mcnet3d_v1, mcnet3d_v2
from benchmark.nets.swin_unet import SwinUNet
from benchmark.nets.unet import UNet2D
from benchmark.nets.unet_variants import UNetCCT, UNetURPC
from benchmark.nets.uxnet import UXNet3D
from benchmark.nets.vnet import VNet
from benchmark.nets.vnet_sdf import VNetSDF
from benchmark.nets.vnet_variants import VNetSSNet, VNetURPC
from benchmark.registry import Registry


@dataclass(frozen=True)
class NetworkSpec:
    """A registered network: how to build it and which patches it accepts."""

    factory: Callable[..., nn.Module]   # (in_channels=, num_classes=, **options) -> module
    dims: tuple[int, ...]               # spatial dimensions it supports
    multiple: int = 1                   # every patch axis must be a multiple of this (the net's total stride)
    square: bool = False                # all patch axes equal (Swin-UNet's square token grid)
    role: str = "segmentation"          # segmentation (a `train.network` choice) | method (a method's own variant,
                                        # several outputs) | discriminator (an auxiliary net of a method)

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
NETWORKS.add("unet-cct", NetworkSpec(UNetCCT, (2,), 16, role="method"), "CCT's UNet-2D: main + 3 perturbed auxiliary decoders (SSL4MIS UNet_CCT)")
NETWORKS.add("unet-urpc", NetworkSpec(UNetURPC, (2,), 16, role="method"), "URPC's UNet-2D with 4 pyramid heads (SSL4MIS UNet_URPC)")
NETWORKS.add("mcnet-2d", NetworkSpec(MCNet2D, (2,), 16, role="method"), "MC-Net's UNet-2D: bilinear and transposed-conv decoders")
NETWORKS.add("cml-unet-2d", NetworkSpec(CoTrainingUNet2D, (2,), 16, role="method"),
             "CML's two sub-networks (paper: two encoders and decoders; option shared: one encoder)")
NETWORKS.add("fc-discriminator", NetworkSpec(FCDiscriminator, (2,), role="discriminator"),
             "DAN's fully-convolutional discriminator on (image, softmax) (option input_size)")
NETWORKS.add("patch-discriminator",
             NetworkSpec(lambda in_channels, num_classes, **o: PatchDiscriminator(num_classes, **o), (2,),
                         role="discriminator"),
             "AdvMIM's patch discriminator on softmax maps")

# LA (3D): the V-Net and the variants the LA methods build
NETWORKS.add("vnet-sdf", NetworkSpec(VNetSDF, (3,), 16, role="method"),
             "SASSNet/DTC vnet_sdf: V-Net trunk + tanh SDF head + segmentation head, one sigmoid channel each, "
             "9,448,866 params; option width")
NETWORKS.add("fc3d-discriminator",
             NetworkSpec(lambda in_channels, num_classes, **o: FC3DDiscriminator(in_channels=in_channels, **o), (3,),
                         16, role="discriminator"),
             "SASSNet's 3D discriminator on (SDF map, image): labeled vs unlabeled logits, 11,020,290 params; "
             "options ndf, map_channels")
NETWORKS.add("mcnet-3d", NetworkSpec(mcnet3d_v1, (3,), 16, role="method"),
             "MC-Net's V-Net (mcnet3d_v1): one encoder, transposed-conv + trilinear decoders, 12,347,716 params")
NETWORKS.add("mcnet-3d-plus", NetworkSpec(mcnet3d_v2, (3,), 16, role="method"),
             "MC-Net+'s V-Net (mcnet3d_v2): transposed-conv, trilinear and nearest decoders, 15,246,566 params")
NETWORKS.add("mcnet-2d-plus", NetworkSpec(MCNet2DPlus, (2,), 16, role="method"),
             "MC-Net+'s UNet-2D (mcnet2d_v2): bilinear, transposed-conv and nearest decoders")
NETWORKS.add("caml-3d", NetworkSpec(CAML3D, (3,), 16, role="method"),
             "CAML's caml3d_v1: V-Net + V-Net with cross-sample attention on x4, 2 decoders, heads, 20,128,836 params")
NETWORKS.add("vnet-urpc", NetworkSpec(VNetURPC, (3,), 16, role="method"),
             "URPC on the LA V-Net: 1x1x1 heads at 1/8, 1/4, 1/2 (side dropout) + full, trilinear up (9,449,320)")
NETWORKS.add("vnet-ssnet", NetworkSpec(VNetSSNet, (3,), 16, role="method"),
             "SS-Net's V-Net: features after the pre-head dropout + projection/selector heads (9,457,318)")
NETWORKS.add("cml-vnet", NetworkSpec(CoTrainingVNet, (3,), 16, role="method"),
             "CML's LA network: two V-Nets, no shared parameters, transposed-conv / trilinear decoders, "
             "19,724,612 params; option width")
NETWORKS.add("mcf-resnet34-unet", NetworkSpec(ResNet34UNet, (3,), 16),
             "MCF's ResNet-34 encoder (7^3 stem, 4 strided BasicBlock stages) + V-Net decoder, 17,930,354 params; "
             "option width")

NETWORKS.add("uxnet-3d", NetworkSpec(UXNet3D, (3,), 16),
             "3D UX-Net (MASILab/3DUX-Net UXNET): 7^3 depthwise ConvNeXt-style encoder 48..384, UNETR-style residual "
             "decoder, 53,005,922 params; options feature_size, hidden_size, depths, checkpoint")
NETWORKS.add("dk-uxnet", NetworkSpec(DKUXNet, (3,), 16, role="method"),
             "DK-UXNet: 3D UX-Net + kMaX decoder (2 k-means layers on each of 3 scales, 128 queries) + MaxQuery head; "
             "63,245,026 params (layout paper) / 65,342,304 (released); options layout, query_groups, checkpoint")


def build_network(name: str, in_channels: int, num_classes: int, **options: Any) -> nn.Module:
    """Instantiate a registered network by name; `options` go to its constructor (e.g. Swin-UNet's img_size)."""
    return NETWORKS.get(name).factory(in_channels=in_channels, num_classes=num_classes, **options)


def check_network(name: str, patch: Sequence[int], method: str, where: str) -> None:
    """ConfigError naming the method, the net and the patch when `patch` cannot go through net `name`."""
    problem = NETWORKS.get(name).problem(patch)
    if problem:
        raise ConfigError(f"{where}: {method} trains network {name!r} on patch {list(patch)}, but {problem}; "
                          f"change train.patch_size or train.network (bench ls networks)")
