"""V-Net variants of URPC and SS-Net for LA (3D), built on the LA V-Net of `benchmark.nets.vnet` (its trunk
unchanged: with the extra heads removed each is exactly `vnet`, and under the same seed its trunk is
initialised identically, because the extra modules are created after it).

`VNetURPC` (registered `vnet-urpc`): there is no public LA URPC (PROTOCOLS-3D-DATASETS.md §A.2, §A.3), so this
is URPC's pyramid put on the V-Net. What SSL4MIS's 3D URPC network does
(HiLab-git/SSL4MIS@06df604:code/networks/unet_3D_dv_semi.py):
- four outputs, one per decoder scale: 1x1x1 convs `dsv4`/`dsv3`/`dsv2` on the up-block outputs at 1/8, 1/4
  and 1/2 resolution (L52-57), each followed by `nn.Upsample(scale_factor=8/4/2, mode='trilinear')`
  (`networks/utils.py` `UnetDsv3`, L455-461: align_corners unset, i.e. False), and a 1x1x1 conv `dsv1` at full
  resolution (L58); returned as (full, 1/2, 1/4, 1/8) (L106);
- Dropout3d 0.5 / 0.3 / 0.2 / 0.1 on the four up-block outputs (L61-64, L88-98): on the decoder path itself, so
  each also perturbs every finer stage, not only its head;
- a 3D UNet trunk (max-pool, concatenating `UnetUp3_CT` blocks, 16..256 channels) with Kaiming init (L66-71).
What this module adopts:
- the V-Net trunk instead of the 3D UNet (PyTorch default init, as the V-Net of every LA baseline; no Kaiming);
- heads as dv_semi: a 1x1x1 conv to the classes on the decoder stage outputs at 1/8 (width*8 channels), 1/4
  (width*4) and 1/2 (width*2), up-sampled trilinearly (align_corners=False) to the input size; the
  full-resolution head is the V-Net's own 1x1x1 head (after its Dropout3d 0.5 when `has_dropout`);
- dropout: the V-Net's own Dropout3d(0.5) on the bottleneck and before the full-resolution head is kept, and
  the three coarse heads get Dropout3d on their inputs with dv_semi's rates for those scales (`side_dropout`,
  default 0.5 / 0.3 / 0.2 at 1/8 / 1/4 / 1/2) on the SIDE path only, as SSL4MIS's 2D URPC perturbs only the
  head inputs (`Decoder_URPC`). Departure from dv_semi, which drops out the decoder path itself and uses 0.1
  before the full-resolution head: putting dv_semi's rates on the V-Net path would stack a second
  Dropout3d(0.5) right after the bottleneck's and change the trunk every other LA method trains. Dropout is
  active in training only (modules) and off altogether with has_dropout=False; side_dropout=(0, 0, 0) removes
  the side perturbation.
Output: [full, 1/2, 1/4, 1/8] logits, each of the input's spatial size (the 2D `UNetURPC` order). Parameters at
width 16, 1 input channel, 2 classes: 9,448,866 + 258 + 130 + 66 = 9,449,320.

`VNetSSNet` (registered `vnet-ssnet`): ycwu1997/SS-Net@c0a8bf6:code/networks/VNet.py. The V-Net whose decoder
also returns `x9`, the finest decoder features AFTER the Dropout3d that precedes the head (L232-237: `x9` is
reassigned to `dropout(x9)` when has_dropout, then both the head and the returned embedding use it), plus the
projection / prediction / selector heads as attributes of the network (L245-275; `SSNetHeads` below, also used by
the 2D method next to its UNet). Parameters at width 16, 2 classes: 9,448,866 + 8,452 = 9,457,318
(PROTOCOLS-3D-DATASETS.md §0 item 2). The reference hard-codes the head input `dim_in = 16` (= n_filters); here
it is `width`, so a narrow test net works.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.nets.vnet import VNet

URPC_SIDE_DROPOUT = (0.5, 0.3, 0.2)   # dv_semi's rates at 1/8, 1/4, 1/2


def _mlp(d_in: int, d_out: int, act: nn.Module, width: int = 32) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, width), nn.BatchNorm1d(width), act, nn.Linear(width, d_out))


class SSNetHeads(nn.Module):
    """SS-Net's projection / prediction MLPs (Linear, BN1d, ReLU, Linear) and per-class selectors (Linear, BN1d,
    LeakyReLU 0.2, Linear -> 1), one set scoring batch features and one scoring memory features (SS-Net
    `VNet.py` L247-275, `unet.py` the same). `feature_dim`: the decoder feature width (16 in the reference)."""

    def __init__(self, num_classes: int, feature_dim: int = 16, dim: int = 32) -> None:
        super().__init__()
        self.projection = _mlp(feature_dim, dim, nn.ReLU(inplace=True))
        self.prediction = _mlp(dim, dim, nn.ReLU(inplace=True))
        self.selectors = nn.ModuleList(_mlp(dim, 1, nn.LeakyReLU(0.2, inplace=True)) for _ in range(num_classes))
        self.memory_selectors = nn.ModuleList(_mlp(dim, 1, nn.LeakyReLU(0.2, inplace=True)) for _ in range(num_classes))

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return self.prediction(self.projection(features))


class VNetURPC(VNet):
    """`VNetURPC(1, 2)(x) -> [full, 1/2, 1/4, 1/8]` logits, all of the input's spatial size (module doc)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 2, width: int = 16, has_dropout: bool = True,
                 side_dropout: Sequence[float] = URPC_SIDE_DROPOUT) -> None:
        super().__init__(in_channels, num_classes, width, has_dropout)
        if len(side_dropout) != 3:
            raise ValueError(f"side_dropout needs 3 rates (1/8, 1/4, 1/2), got {list(side_dropout)}")
        # decoder stage outputs at 1/8, 1/4, 1/2: width * 8, 4, 2 channels
        self.side_heads = nn.ModuleList(nn.Conv3d(width * m, num_classes, 1) for m in (8, 4, 2))
        self.side_dropout = nn.ModuleList(nn.Dropout3d(float(p)) if has_dropout and p > 0 else nn.Identity()
                                          for p in side_dropout)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.encode(x)
        dec, h, stage_outputs = self.decoder, features[-1], []
        for up, stage, skip in zip(dec.ups, dec.stages, reversed(features[:-1])):
            h = stage(up(h) + skip)
            stage_outputs.append(h)                      # 1/8, 1/4, 1/2, full
        full = dec.head(dec.dropout(h) if dec.has_dropout else h)
        size = tuple(x.shape[2:])
        sides = [F.interpolate(head(drop(f)), size=size, mode="trilinear", align_corners=False)
                 for head, drop, f in zip(self.side_heads, self.side_dropout, stage_outputs[:3])]
        return [full, *reversed(sides)]

    def full_resolution(self, x: torch.Tensor) -> torch.Tensor:
        """forward(x)[0] without the side heads (inference): the plain V-Net path."""
        return VNet.forward(self, x)


class VNetSSNet(VNet):
    """SS-Net's V-Net: `forward(x)` -> logits (the plain V-Net's); `forward_with_decoder_features(x)` -> (logits,
    the finest decoder features after the pre-head dropout); `.heads` the SS-Net MLPs (module doc)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 2, width: int = 16, has_dropout: bool = True,
                 embed_dim: int = 32) -> None:
        super().__init__(in_channels, num_classes, width, has_dropout)
        self.heads = SSNetHeads(num_classes, feature_dim=width, dim=embed_dim)

    def forward_with_decoder_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.decoder.last_features(self.encode(x))
        if self.decoder.has_dropout:
            h = self.decoder.dropout(h)
        return self.decoder.head(h), h
