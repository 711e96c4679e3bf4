"""CML's co-training networks: in 2D two UNet sub-networks (encoder E_i + decoder D_i), built from the SSL4MIS
UNet pieces of `benchmark/nets/unet.py` and MC-Net's transposed-conv decoder (`benchmark/nets/mcnet.py`); in 3D
two V-Nets from the pieces of `benchmark/nets/vnet.py` (`CoTrainingVNet`, below).

`forward(x) -> (logits0, logits1, bottleneck0, bottleneck1)`; the bottlenecks are the encoders' deepest
feature maps (256 channels at 1/16), which CML's discrepancy loss compares (SongwuJob/CML @1229a71
`code/networks/unet.py`: the decoder returns `x4`, the encoder's last output).

- `shared=False` (the paper, §3.1): E0, E1, D0, D1 share no parameters. The decoders differ in up-sampling as
  in the released 3D V-Net and the released 2D file's two decoder definitions: D0 = 1x1 conv + bilinear x2
  (the plain UNet decoder, so sub-network 0 is exactly `UNet2D`, 1,813,764 parameters with 1 input channel
  and 4 classes), D1 = transposed conv (k=2, s=2).
- `shared=True` (the released 2D code): one encoder and one bilinear decoder, each run twice on the same
  input, so the two outputs differ only through the encoder's dropout (and coincide in eval mode). The
  released file also builds a transposed-conv decoder that its forward never uses; it is left out here (it
  would only consume random numbers at initialisation).

3D (LA), `CoTrainingVNet` (SongwuJob/CML @1229a71 `code/networks/VNet.py` L227-242; the paper §3.1 and the LA code
agree: two encoders, two decoders, nothing shared): branch 0 = `VNet` encoder + its transposed-conv decoder
(`decoder1`, `up_type=0`, L234), branch 1 = a second `VNet` encoder + a decoder whose four up-sampling blocks
are x2 trilinear interpolation (align_corners=True) + 3x3x3 conv + BN + ReLU (`decoder2`, `up_type=1`, L235,
`Upsampling_function` L99-103). The features the discrepancy loss compares are each encoder's bottleneck x5
after its dropout (`Decoder.forward(..., with_feature=True)` returns x5, L222-223). Parameters at width 16, 1
input channel, 2 classes: 9,448,866 (branch 0, = `VNet`) + 10,275,746 (branch 1: encoder 7,376,896 + decoder
2,898,850) = 19,724,612 (PROTOCOLS-3D-DATASETS.md §0 item 2).
"""
from __future__ import annotations

import torch
from torch import nn

from benchmark.nets.mcnet import TransposedDecoder
from benchmark.nets.unet import Decoder, Encoder
from benchmark.nets.vnet import DECODER_DEPTHS, VNetDecoder, VNetEncoder, conv_bn_relu


class SubNet(nn.Module):
    """One branch: `encoder` then `decoder`; returns (logits, bottleneck features)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.encoder(x)
        return self.decoder(features), features[-1]


class CoTrainingUNet2D(nn.Module):
    """Two UNet branches; `shared=True` runs one encoder + one decoder twice (CML's released 2D network)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 4, shared: bool = False) -> None:
        super().__init__()
        self.shared = shared
        if shared:
            one = SubNet(Encoder(in_channels), Decoder(num_classes))
            self.branches = nn.ModuleList([one])
        else:
            self.branches = nn.ModuleList([SubNet(Encoder(in_channels), Decoder(num_classes)),
                                           SubNet(Encoder(in_channels), TransposedDecoder(num_classes))])

    def branch(self, index: int) -> SubNet:
        """Sub-network 0 or 1 (the same module twice when shared)."""
        return self.branches[0 if self.shared else index]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        logits0, feat0 = self.branch(0)(x)
        logits1, feat1 = self.branch(1)(x)
        return logits0, logits1, feat0, feat1


# ------------------------------------------------------------------------------------------------- 3D (LA)
class TrilinearUp(nn.Sequential):
    """x2 trilinear up-sampling (align_corners=True) + 3x3x3 conv + BN + ReLU (CML `Upsampling_function`,
    mode_upsampling=1)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.Upsample(scale_factor=2, mode="trilinear", align_corners=True),
                         *conv_bn_relu(in_channels, out_channels))


class TrilinearVNetDecoder(VNetDecoder):
    """The V-Net decoder with `TrilinearUp` in place of its transposed convs (CML LA `decoder2`); the skips,
    conv stages, dropout and head are `VNetDecoder`'s."""

    def __init__(self, num_classes: int = 2, width: int = 16, has_dropout: bool = True) -> None:
        super().__init__(num_classes, width, has_dropout)
        channels = [width * 2 ** i for i in reversed(range(len(DECODER_DEPTHS) + 1))]  # 256, 128, 64, 32, 16
        self.ups = nn.ModuleList(TrilinearUp(channels[i], channels[i + 1]) for i in range(len(DECODER_DEPTHS)))


class CoTrainingVNet(nn.Module):
    """CML's LA network: two V-Nets with no shared parameters; branch 0 up-samples with transposed convs,
    branch 1 trilinearly. `forward(x) -> (logits0, logits1, bottleneck0, bottleneck1)`, as `CoTrainingUNet2D`."""

    dims = 3
    multiple = 16
    shared = False

    def __init__(self, in_channels: int = 1, num_classes: int = 2, width: int = 16, has_dropout: bool = True) -> None:
        super().__init__()
        self.branches = nn.ModuleList([
            SubNet(VNetEncoder(in_channels, width, has_dropout), VNetDecoder(num_classes, width, has_dropout)),
            SubNet(VNetEncoder(in_channels, width, has_dropout), TrilinearVNetDecoder(num_classes, width, has_dropout)),
        ])

    def branch(self, index: int) -> SubNet:
        """Sub-network 0 (transposed-conv decoder) or 1 (trilinear decoder)."""
        return self.branches[index]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if any(s % self.multiple for s in x.shape[2:]):
            raise ValueError(f"CoTrainingVNet needs spatial sizes that are a multiple of {self.multiple}, "
                             f"got {tuple(x.shape[2:])}")
        logits0, feat0 = self.branch(0)(x)
        logits1, feat1 = self.branch(1)(x)
        return logits0, logits1, feat0, feat1
