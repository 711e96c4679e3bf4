"""CML's co-training network: two UNet sub-networks (encoder E_i + decoder D_i), built from the SSL4MIS UNet
pieces of `benchmark/nets/unet.py` and MC-Net's transposed-conv decoder (`benchmark/nets/mcnet.py`).

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
"""
from __future__ import annotations

import torch
from torch import nn

from benchmark.nets.mcnet import TransposedDecoder
from benchmark.nets.unet import Decoder, Encoder


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
