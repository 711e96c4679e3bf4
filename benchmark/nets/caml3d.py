"""CAML's network `caml3d_v1` (Herschel555/CAML@b635479 `code/networks/VNet.py` L242-398, built by
`code/networks/net_factory.py` with `has_dropout=True` for training and False for testing), written from its
description and built from the LA V-Net pieces of `benchmark/nets/vnet.py` and MC-Net's decoders
(`benchmark/nets/mcnet3d.py`).

- Branch v (the "main" model): a plain V-Net encoder (`encoder1`) and the transposed-conv V-Net decoder
  (`decoder1`, up type 0).
- Branch a (the auxiliary model): a V-Net encoder with cross-sample mutual attention ("CMA", `cma_type` "v2+",
  `insert_idx` 4) on the output x4 of its fourth stage (8 * width channels, at 1/8 resolution), then the trilinear
  V-Net decoder (`decoder2`, up type 1). CMA = two `nn.TransformerEncoderLayer(d, nhead=4, dim_feedforward=4 d,
  dropout=0.5)` (post-norm, ReLU, sequence-first), applied in order:
  1. intra-sample attention (L263-283): each sample's voxels attend to each other (sequence = the D*H*W voxels,
     batch = the samples);
  2. inter-sample attention (L242-260): at each voxel position the samples of the batch attend to each other
     (sequence = the B samples, batch = the voxels).
  Both run only in training mode (`if self.training`, L253, L274); in eval mode branch a is a plain V-Net.
- Heads on the decoders' last feature map x9 (width channels, AFTER the decoder's dropout: `with_feature=True`
  returns x9 after `self.dropout`, L218-224): per branch a projection MLP Linear(width, f) - BN1d - ReLU -
  Linear(f, f) and a prediction MLP Linear(f, f) - BN1d - ReLU - Linear(f, f), f = `feat_dim`.
- `feat_dim` 32: the class default (L358); `train_caml.py` builds the net with `net_factory(..., mode="train")`
  without kwargs (L106), so its `--embedding_dim 64` (L56) names the run folder only and never reaches the net.
  The stated 20,128,836 parameters (width 16, 1 input channel, 2 classes) are those of feat_dim 32; 64 gives
  20,148,804.
- `forward(x)` returns (logits_v, logits_a, embedding_v, embedding_a) as the reference (L393-398); `first(x)` runs
  encoder1 + decoder1 only, the test-time network (`test_3d.py` builds `caml3d_v1` and the sliding window takes
  output [0], `utils/test_patch.py` L149-151).

Departure: none in the computation. Modules are created in the harness's order, so a seed draws other initial
weights than the reference's.
"""
from __future__ import annotations

import torch
from torch import nn

from benchmark.nets.mcnet3d import vnet_decoder
from benchmark.nets.vnet import VNetDecoder, VNetEncoder

CMA_STAGE = 3        # the fourth encoder stage's output x4 (reference insert_idx 4)
CMA_HEADS = 4
CMA_DROPOUT = 0.5


def _token_layer(dim: int) -> nn.TransformerEncoderLayer:
    return nn.TransformerEncoderLayer(dim, CMA_HEADS, 4 * dim, CMA_DROPOUT)   # sequence-first, post-norm, ReLU


class CrossSampleAttention(nn.Module):
    """Intra-sample then inter-sample self-attention over a (B, C, *spatial) map; identity in eval mode."""

    def __init__(self, dim: int, intra: bool = True) -> None:
        super().__init__()
        self.intra = _token_layer(dim) if intra else None
        self.inter = _token_layer(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        b, c, *spatial = x.shape
        tokens = x.flatten(2).permute(2, 0, 1)            # (voxels, B, C): sequence = voxels, batch = samples
        if self.intra is not None:
            tokens = self.intra(tokens)
        tokens = self.inter(tokens.transpose(0, 1)).transpose(0, 1)   # (B, voxels, C): sequence = samples
        return tokens.permute(1, 2, 0).reshape(b, c, *spatial)


class CMAEncoder(VNetEncoder):
    """The V-Net encoder with `CrossSampleAttention` on the fourth stage's output (before its down-conv)."""

    def __init__(self, in_channels: int = 1, width: int = 16, has_dropout: bool = True, intra: bool = True) -> None:
        super().__init__(in_channels, width, has_dropout)
        self.cma = CrossSampleAttention(width * 2 ** CMA_STAGE, intra)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for i, stage in enumerate(self.stages):
            x = stage(x if i == 0 else self.downs[i - 1](x))
            if i == CMA_STAGE:
                x = self.cma(x)
            features.append(x)
        if self.has_dropout:
            features[-1] = self.dropout(features[-1])
        return features


def mlp(in_features: int, features: int) -> nn.Sequential:
    """Linear - BN1d - ReLU - Linear (CAML's projection and prediction heads)."""
    return nn.Sequential(nn.Linear(in_features, features), nn.BatchNorm1d(features), nn.ReLU(inplace=True),
                         nn.Linear(features, features))


def decode_with_embedding(decoder: VNetDecoder, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, x9): the decoder's last feature map after its dropout, as the reference's `with_feature=True`."""
    x = decoder.last_features(features)
    if decoder.has_dropout:
        x = decoder.dropout(x)
    return decoder.head(x), x


class CAML3D(nn.Module):
    """`CAML3D(in_channels, num_classes)(x) -> (logits_v, logits_a, embedding_v, embedding_a)`."""

    dims = 3
    multiple = 16

    def __init__(self, in_channels: int = 1, num_classes: int = 2, width: int = 16, has_dropout: bool = True,
                 feat_dim: int = 32, cma_intra: bool = True) -> None:
        super().__init__()
        self.encoder1 = VNetEncoder(in_channels, width, has_dropout)
        self.encoder2 = CMAEncoder(in_channels, width, has_dropout, intra=cma_intra)
        self.decoder1 = vnet_decoder("transposed", num_classes, width, has_dropout)
        self.decoder2 = vnet_decoder("trilinear", num_classes, width, has_dropout)
        self.projection_head1, self.prediction_head1 = mlp(width, feat_dim), mlp(feat_dim, feat_dim)
        self.projection_head2, self.prediction_head2 = mlp(width, feat_dim), mlp(feat_dim, feat_dim)

    def _check(self, x: torch.Tensor) -> None:
        if any(s % self.multiple for s in x.shape[2:]):
            raise ValueError(f"CAML3D needs spatial sizes that are a multiple of {self.multiple}, "
                             f"got {tuple(x.shape[2:])}")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        self._check(x)
        logits_v, embedding_v = decode_with_embedding(self.decoder1, self.encoder1(x))
        logits_a, embedding_a = decode_with_embedding(self.decoder2, self.encoder2(x))
        return logits_v, logits_a, embedding_v, embedding_a

    def first(self, x: torch.Tensor) -> torch.Tensor:
        """Branch v's logits alone (the reference's test-time output)."""
        self._check(x)
        return self.decoder1(self.encoder1(x))
