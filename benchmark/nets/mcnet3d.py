"""MC-Net's V-Net family (ycwu1997/MC-Net@fee453c `code/networks/VNet.py`), written from its description and built
from the LA V-Net pieces of `benchmark/nets/vnet.py`; plus MC-Net+'s 2D three-decoder UNet (`code/networks/unet.py`),
which the 2D `mc-net-plus` needs and `benchmark/nets/mcnet.py` (the 2D two-decoder net) does not have.

3D (`MCNet3D`): one V-Net encoder (dropout on x5 when `has_dropout`, computed once and shared by every decoder) and
V-Net decoders that differ only in how they up-sample (`Upsampling_function`, VNet.py L94-122, `mode_upsampling`):
- up type 0 "transposed": 2x2x2 stride-2 ConvTranspose3d + BN + ReLU (the plain V-Net decoder, `VNetDecoder`);
- up type 1 "trilinear": x2 trilinear upsample (align_corners=True), 3x3x3 conv (padding 1) + BN + ReLU;
- up type 2 "nearest": x2 nearest upsample, 3x3x3 conv + BN + ReLU.
Each then adds the skip, runs the same conv stage (3, 3, 2, 1 convs), Dropout3d(0.5) before the 1x1x1 head when
`has_dropout` (every decoder: VNet.py L213-214 with one flag for all; the train factory sets it, net_factory.py L16,
the test factory does not, L22), and the head.
- `mcnet3d_v1` (VNet.py L231-243): decoder 1 transposed, decoder 2 trilinear. 12,347,716 parameters at width 16,
  1 input channel, 2 classes (= 7,376,896 encoder + 2,071,970 + 2,898,850).
- `mcnet3d_v2` (VNet.py L245-259): decoder 1 transposed, decoder 2 trilinear, decoder 3 nearest. 15,246,566.
`forward` returns one logits tensor per decoder, in that order; `first(x)` runs the encoder and decoder 1 only (what
the reference test does: `test_3d.py` L44-46 loads the weights into a plain `vnet`, strict=False).
Decoder 1 is a `VNetDecoder`, so encoder + decoder 1 have the plain `VNet`'s modules.

2D (`MCNet2DPlus`, `mcnet2d_v2`, unet.py L167-199): `MCNet2D` (decoder 1 bilinear, decoder 2 transposed) plus
decoder 3 with up type 2: 1x1 conv to the skip's width, nearest x2, concat with the skip, the same ConvBlock
(unet.py L50-52, L58-64). Forward returns the three logits.

Departure: none in the computation. The modules are built in the harness's order (a decoder's up-convs, then its
conv stages, then its head), not the reference's interleaved order, so a given seed draws different initial weights.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.nets.mcnet import MCNet2D
from benchmark.nets.unet import CHANNELS, Decoder, UpBlock
from benchmark.nets.vnet import DECODER_DEPTHS, DROPOUT, ConvStage, VNetDecoder, VNetEncoder, conv_bn_relu

#: MC-Net's `up_type` / `mode_upsampling` codes
UP_TYPES = ("transposed", "trilinear", "nearest")


class InterpolatingUp(nn.Sequential):
    """x2 interpolation then a 3x3x3 conv + BN + ReLU (MC-Net `Upsampling_function` modes 1 and 2)."""

    def __init__(self, in_channels: int, out_channels: int, mode: str) -> None:
        if mode not in ("trilinear", "nearest"):
            raise ValueError(f"mode must be trilinear or nearest, got {mode!r}")
        up = nn.Upsample(scale_factor=2, mode=mode, align_corners=True if mode == "trilinear" else None)
        super().__init__(up, *conv_bn_relu(in_channels, out_channels))


class InterpolatingVNetDecoder(VNetDecoder):
    """The V-Net decoder with interpolation + conv up-sampling (same forward, stages, dropout and head)."""

    def __init__(self, num_classes: int = 2, width: int = 16, has_dropout: bool = True,
                 mode: str = "trilinear") -> None:
        nn.Module.__init__(self)  # not VNetDecoder.__init__: no throw-away transposed convs drawing from the RNG
        channels = [width * 2 ** i for i in reversed(range(len(DECODER_DEPTHS) + 1))]  # 256, 128, 64, 32, 16
        self.ups = nn.ModuleList(InterpolatingUp(channels[i], channels[i + 1], mode)
                                 for i in range(len(DECODER_DEPTHS)))
        self.stages = nn.ModuleList(ConvStage(d, c, c) for d, c in zip(DECODER_DEPTHS, channels[1:]))
        self.has_dropout = has_dropout
        self.dropout = nn.Dropout3d(DROPOUT)
        self.head = nn.Conv3d(width, num_classes, 1)
        self.mode = mode


def vnet_decoder(up_type: str, num_classes: int = 2, width: int = 16, has_dropout: bool = True) -> VNetDecoder:
    """A V-Net decoder whose up-sampling is one of `UP_TYPES`."""
    if up_type == "transposed":
        return VNetDecoder(num_classes, width, has_dropout)
    return InterpolatingVNetDecoder(num_classes, width, has_dropout, mode=up_type)


class MCNet3D(nn.Module):
    """`MCNet3D(in_channels, num_classes, up_types=(...))(x) -> tuple of logits`, one per decoder."""

    dims = 3
    multiple = 16

    def __init__(self, in_channels: int = 1, num_classes: int = 2, width: int = 16, has_dropout: bool = True,
                 up_types: tuple[str, ...] = ("transposed", "trilinear")) -> None:
        super().__init__()
        self.encoder = VNetEncoder(in_channels, width, has_dropout)
        self.decoders = nn.ModuleList(vnet_decoder(u, num_classes, width, has_dropout) for u in up_types)
        self.up_types = tuple(up_types)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        if any(s % self.multiple for s in x.shape[2:]):
            raise ValueError(f"MCNet3D needs spatial sizes that are a multiple of {self.multiple}, "
                             f"got {tuple(x.shape[2:])}")
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.encode(x)
        return tuple(decoder(features) for decoder in self.decoders)

    def first(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder 1's logits alone (the reference's test-time network)."""
        return self.decoders[0](self.encode(x))


def mcnet3d_v1(in_channels: int = 1, num_classes: int = 2, width: int = 16, has_dropout: bool = True) -> MCNet3D:
    """MC-Net: transposed-conv and trilinear decoders."""
    return MCNet3D(in_channels, num_classes, width, has_dropout, ("transposed", "trilinear"))


def mcnet3d_v2(in_channels: int = 1, num_classes: int = 2, width: int = 16, has_dropout: bool = True) -> MCNet3D:
    """MC-Net+: transposed-conv, trilinear and nearest decoders."""
    return MCNet3D(in_channels, num_classes, width, has_dropout, ("transposed", "trilinear", "nearest"))


# ---------------------------------------------------------------------------------------------- 2D (MC-Net+)
class NearestUpBlock(UpBlock):
    """1x1 conv to the skip's width, nearest x2, concat with the skip, ConvBlock (MC-Net 2D mode 2)."""

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(self.reduce(x), scale_factor=2, mode="nearest")
        return self.conv(torch.cat([skip, x], dim=1))


class NearestDecoder(Decoder):
    """The UNet decoder with nearest up blocks (same parameters, forward and head)."""

    def __init__(self, num_classes: int) -> None:
        nn.Module.__init__(self)
        c = CHANNELS
        self.ups = nn.ModuleList(NearestUpBlock(c[i + 1], c[i], c[i]) for i in reversed(range(len(c) - 1)))
        self.head = nn.Conv2d(c[0], num_classes, 3, padding=1)


class MCNet2DPlus(MCNet2D):
    """`MCNet2DPlus(in_channels, num_classes)(x) -> (bilinear, transposed-conv, nearest decoder logits)`."""

    def __init__(self, in_channels: int = 1, num_classes: int = 4) -> None:
        super().__init__(in_channels, num_classes)
        self.decoder3 = NearestDecoder(num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.encoder(x)
        return self.decoder1(features), self.decoder2(features), self.decoder3(features)


__all__ = ["UP_TYPES", "InterpolatingUp", "InterpolatingVNetDecoder", "MCNet2DPlus", "MCNet3D",
           "NearestDecoder", "NearestUpBlock", "mcnet3d_v1", "mcnet3d_v2", "vnet_decoder"]
