"""DK-UXNet's network: 3D UX-Net (`benchmark.nets.uxnet.UXNet3D`) + a kMaX-DeepLab decoder + the MaxQuery head
(`benchmark.nets.kmax`). Facts: ../shared/PROTOCOLS-3D-DATASETS.md §B.4-B.5, ../shared/papers/dk-uxnet.md §2.2.

Layouts (`layout`):
- "paper" (default, paper §2.2.1): the kMaX layers read encoder stages 2, 3 and 4 (`stages[1:]`), fed coarse to
  fine: 8fs@1/16, 4fs@1/8, 2fs@1/4 (384, 192, 96 channels at feature_size 48); the query response is computed
  from the pixel decoder's output P (`pixel`, decoder1, fs@1/1: the features the conv head reads, §2.2.3);
  cls_head "per_query" (the paper's "MLP on C -> C_k in R^{N x K}").
- "released" (Rows21/DK-UXNet@d1d34e2 `networks/UXNet_3D/network_backbone.py::UXNET`): the layers read the
  decoder features [dec3, dec2, dec1] = 8fs@1/8, 4fs@1/4, 2fs@1/2 (L364); the final predictor reads dec0 (the
  decoder2 output, fs@1/1, BEFORE decoder1); the MLP runs on the flattened queries (L311, cls_head "flattened");
  query groups (16, 4, 108) (L419-421).
Each choice is also a separate option (cls_head, response_from, query_groups), so a layout's pieces can be mixed.

Both: `layers_per_scale` (2) layers on each of the 3 scales (6; kMaX config DEC_LAYERS [2,2,2], the released
code), 128 queries of dim 256 (kMaX config L65-67). The released code's unused heads (COCO-sized class heads of
133/32 classes in every predictor, the class-embedding projection, the 65,500,197 total) are not built.

query_groups (paper leaves the sizes open, §B.5): the queries are split into contiguous groups, one per
query_distribution channel. Default for "paper": num_queries split as evenly as possible into num_classes groups
(binary: (64, 64)). Reason: with equal groups the softmax response at initialisation puts equal mass on every
group, so Q starts unbiased across classes (an uneven split is a class prior the paper does not state; the
released split (16, 4, 108) is for 3 categories, background / organ / tumour, of which binary LA uses two).

Outputs (`DKUXNetOutput`): logits = UX-Net conv head; query_logits (B, num_classes, *S); query_distribution
(B, G, *S), sums to 1 over G at every voxel; response (B, N, *S) only with return_response (memory: 128 x
112x112x80 fp32 = 514 MB per sample). `segment(x)` runs the UX-Net alone (the conv-head logits, for inference).

Parameters (in_channels 1, num_classes 2, feature_size 48, 128 queries, dim 256, 2 layers per scale):
UX-Net 53,005,922; kMaX decoder 10,071,404 (6 layers + centres); MaxQuery head "per_query" 167,700, "flattened"
2,264,978 -> totals "paper" 63,245,026, "released" 65,342,304. The released UXNET's 65,500,197 is exactly ours
(released) + its unused heads (6 class heads 256->32, the final 256->133 class head, the class-embedding
projection) + its MLP's third output per query (tests/test_dk_uxnet_net.py checks the identity).

Memory, one forward+backward, paper layout, defaults, 2 classes, 112x112x80, fp32, measured as peak RSS on a
shared 2-core CPU machine (times inflated by other jobs; model + grads ~1 GB of it):
  checkpoint=True:  batch 1 6.6 GB (184 s), batch 2 12.1 GB (363 s) -> ~5.4 GB per sample; batch 4 ~23 GB (est.)
  checkpoint=False: batch 1 12.5 GB (180 s) -> ~11.5 GB per sample; batch 2 ~24 GB, batch 4 ~47 GB (est.)
The full-resolution MaxQuery head is most of it (its 256-channel pixel embedding and the 128-query response at
1M voxels). The reference's batch 4 ran as one sample per P100 (16 GB), which fits either way.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import nn

from benchmark.config import ConfigError
from benchmark.nets.kmax import CLS_HEADS, KMaXDecoder, MaxQueryHead
from benchmark.nets.uxnet import UXNet3D

LAYOUTS = ("paper", "released")
RESPONSE_FROM = ("pixel", "decoder2")
RELEASED_GROUPS = (16, 4, 108)      # network_backbone.py L419-421: queries 0-15, 16-19, 20-127
NUM_HEADS = 8                       # kMaX self-attention heads


class DKUXNetOutput(NamedTuple):
    logits: torch.Tensor                # (B, num_classes, *S) the UX-Net conv head
    query_logits: torch.Tensor          # (B, num_classes, *S) cluster classification x query response
    query_distribution: torch.Tensor    # (B, G, *S) softmax-over-queries response summed within each group
    response: torch.Tensor | None       # (B, N, *S) softmax over queries, only with return_response


def even_groups(num_queries: int, num_groups: int) -> tuple[int, ...]:
    """num_queries split into num_groups contiguous groups, sizes differing by at most one (larger first)."""
    base, extra = divmod(num_queries, num_groups)
    return tuple(base + (g < extra) for g in range(num_groups))


def _layout_defaults(layout: str, num_classes: int, num_queries: int, query_groups: Sequence[int] | None,
                     cls_head: str | None, response_from: str | None) -> tuple[tuple[int, ...], str, str]:
    if layout not in LAYOUTS:
        raise ConfigError(f"dk-uxnet: layout {layout!r} is not one of {LAYOUTS} (paper: kMaX on encoder stages 2-4; "
                          f"released: on the decoder features, as Rows21/DK-UXNet)")
    released = layout == "released"
    if query_groups is None:
        if released:
            if num_queries != sum(RELEASED_GROUPS):
                raise ConfigError(f"dk-uxnet: layout 'released' splits 128 queries as {RELEASED_GROUPS}; with "
                                  f"num_queries {num_queries} set query_groups (sizes summing to {num_queries})")
            query_groups = RELEASED_GROUPS
        else:
            if num_queries < num_classes:
                raise ConfigError(f"dk-uxnet: num_queries {num_queries} < num_classes {num_classes}: every class "
                                  f"group needs a query; raise num_queries or set query_groups")
            query_groups = even_groups(num_queries, num_classes)
    cls_head = cls_head or ("flattened" if released else "per_query")
    response_from = response_from or ("decoder2" if released else "pixel")
    return tuple(query_groups), cls_head, response_from


def _validate(num_queries: int, query_dim: int, query_groups: Sequence[int], layers_per_scale: int, cls_head: str,
              response_from: str) -> None:
    if num_queries < 1:
        raise ConfigError(f"dk-uxnet: num_queries must be >= 1 (got {num_queries})")
    if query_dim < 2 * NUM_HEADS or query_dim % (2 * NUM_HEADS):
        raise ConfigError(f"dk-uxnet: query_dim must be a positive multiple of {2 * NUM_HEADS} (key depth "
                          f"query_dim/2 over {NUM_HEADS} heads; got {query_dim}); the paper's code uses 256")
    if len(query_groups) < 2 or any(int(g) != g or g < 1 for g in query_groups):
        raise ConfigError(f"dk-uxnet: query_groups must be 2 or more positive integers (got {list(query_groups)})")
    if sum(query_groups) != num_queries:
        raise ConfigError(f"dk-uxnet: sum(query_groups) = {sum(query_groups)} ({list(query_groups)}) must equal "
                          f"num_queries {num_queries}; change query_groups or num_queries")
    if layers_per_scale < 1:
        raise ConfigError(f"dk-uxnet: layers_per_scale must be >= 1 (got {layers_per_scale})")
    if cls_head not in CLS_HEADS:
        raise ConfigError(f"dk-uxnet: cls_head {cls_head!r} is not one of {CLS_HEADS}")
    if response_from not in RESPONSE_FROM:
        raise ConfigError(f"dk-uxnet: response_from {response_from!r} is not one of {RESPONSE_FROM} "
                          f"(pixel: decoder1's output; decoder2: its input, as the released code)")


class DKUXNet(nn.Module):
    """3D UX-Net + kMaX decoder (3 scales) + MaxQuery head; forward(x) -> DKUXNetOutput. See the module docstring."""

    def __init__(self, in_channels: int = 1, num_classes: int = 2, layout: str = "paper", num_queries: int = 128,
                 query_dim: int = 256, query_groups: Sequence[int] | None = None, layers_per_scale: int = 2,
                 feature_size: int = 48, checkpoint: bool = False, cls_head: str | None = None,
                 response_from: str | None = None, return_response: bool = False, hidden_size: int = 768,
                 depths: Sequence[int] = (2, 2, 2, 2), kernel_size: int = 7, layer_scale_init: float = 1e-6,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        query_groups, cls_head, response_from = _layout_defaults(layout, num_classes, num_queries, query_groups,
                                                                 cls_head, response_from)
        _validate(num_queries, query_dim, query_groups, layers_per_scale, cls_head, response_from)
        self.layout, self.query_groups = layout, query_groups
        self.cls_head, self.response_from = cls_head, response_from
        self.return_response = return_response
        self.backbone = UXNet3D(in_channels, num_classes, feature_size=feature_size, hidden_size=hidden_size,
                                depths=tuple(depths), kernel_size=kernel_size, layer_scale_init=layer_scale_init,
                                drop_path=drop_path, checkpoint=checkpoint)
        fs = feature_size
        self.kmax = KMaXDecoder([8 * fs, 4 * fs, 2 * fs], layers_per_scale, num_queries, query_dim, NUM_HEADS,
                                spatial_dims=3, checkpoint=checkpoint)
        self.head = MaxQueryHead(fs, num_classes, query_groups, query_dim, cls_head, spatial_dims=3,
                                 checkpoint=checkpoint)

    def kmax_features(self, features) -> list[torch.Tensor]:
        """The 3 maps the kMaX layers read, coarse to fine."""
        if self.layout == "paper":
            return list(features.stages[1:])[::-1]     # 8fs@1/16, 4fs@1/8, 2fs@1/4
        return list(features.decoder[:3])              # 8fs@1/8, 4fs@1/4, 2fs@1/2

    def forward(self, x: torch.Tensor, return_response: bool | None = None) -> DKUXNetOutput:
        features = self.backbone.forward_features(x)
        queries = self.kmax(self.kmax_features(features))
        pixel = features.pixel if self.response_from == "pixel" else features.decoder[3]
        want = self.return_response if return_response is None else return_response
        head = self.head(pixel, queries, return_response=want)
        return DKUXNetOutput(features.logits, head.query_logits, head.query_distribution, head.response)

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """The UX-Net conv-head logits alone (no kMaX, no response): what inference reads."""
        return self.backbone(x)
