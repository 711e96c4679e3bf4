"""kMaX-DeepLab's transformer decoder (k-means cross-attention) and the MaxQuery head, n-dimensional, as used
by DK-UXNet. Written from the facts in ../shared/PROTOCOLS-3D-DATASETS.md §B.3-B.4 and the DK-UXNet paper
(../shared/papers/dk-uxnet.md §2.2.2 Eq. 2, §2.2.3); no code is copied.

Sources: bytedance/kmax-deeplab@f8e1d04 `kmax_deeplab/modeling/transformer_decoder/kmax_transformer_decoder.py`
(kMaXTransformerLayer L123/L184, kMaXPredictor, AttentionOperation; config.py L65-67: 2 layers per scale, 128
queries, query dim 256) and its 3D copy Rows21/DK-UXNet@d1d34e2 `networks/UXNet_3D/transformer_decoder.py`
(L188/L250; argmax L265, k-means update L270, qkv from query_space L277) and `network_backbone.py` (final
predictor, MLP, softmax over queries, group sums, query_logits einsum, L286-L426).

One `KMaXTransformerLayer` (queries are (B, D, N): D = query_dim channels, N queries; pixels (B, C, *S)):
  1. pixel_space = 1x1 conv-BN-GELU(GELU(pixel)) -> D; query_space = 1x1 conv-BN-GELU(queries) -> D.
  2. k-means cross-attention (Eq. 2): a `KMaXPredictor` gives mask logits (N x P) from query_space and
     pixel_space; with no gradient, argmax over the query axis -> one-hot A (B, N, P) (`hard_assignment`);
     update = A . pixel_value (`cluster_update`, in fp32 as the reference), BN, 1x1 conv-BN with zero-init
     gain, residual add to the queries. The argmax carries no gradient (as the reference): the queries learn
     through the value path of the update, the self-attention, the FFN and the final head. The layers'
     predictors are trained by nothing in DK-UXNet (kMaX-DeepLab trains them with per-layer auxiliary losses,
     which DK-UXNet drops): they keep their initial weights, as in the released code, so they run without a
     graph here; their BatchNorm statistics still update.
  3. self-attention with q/k/v from the PRE-update query_space: 8 heads, key depth D/2, value depth D, BN on
     the similarity logits (no 1/sqrt(d) scaling), softmax over keys (fp32), BN-GELU on the output, 1x1
     conv-BN (zero-init gain), residual, GELU.
  4. FFN D -> 8D (2048) -> D with BN (second BN zero-init), residual, GELU.
Predictor: pixel head 5^n depthwise conv-BN-GELU -> 1x1 -> D (BN-GELU) -> 1x1 -> D/2 (bias, BN; std 0.01),
L2-normalised over channels; mask kernel = 1x1 conv-BN(query embeddings) -> D/2; mask logits = einsum, then
ONE scalar BatchNorm over all of them (gamma init 0.1). The reference's class head (COCO 133 classes + void
prior) feeds no DK-UXNet output and is not built.

Norms: plain `nn.BatchNorm1d` (eps 1e-3, momentum 0.01 = TF 0.99, as the reference's get_norm) on flattened
(B, C, P) maps: the same statistics as BatchNorm2d/3d. SyncBatchNorm (the reference's multi-GPU BN) is not
needed for single-process training; wrap the model with `nn.SyncBatchNorm.convert_sync_batchnorm` for DDP.
Inits as the reference: he-normal (truncated at 2 std) 1x1 convs, xavier-uniform depthwise, trunc-normal
cluster centres (std 1).

`MaxQueryHead` (MaxQuery post-processing, paper §2.2.3): mask embedding = 1x1 conv-BN-GELU(queries), a
`KMaXPredictor` on the final pixel features -> response logits R (B, N, *S), softmax over queries; cluster
classification C_k (B, N, K) by an MLP on the queries C; query_logits = einsum(C_k, softmax R) (B, K, *S);
query_distribution = softmax R summed within each contiguous query group (B, G, *S). cls_head "per_query"
(default; the paper's "MLP on C -> C_k in R^{N x K}": D -> 64 -> K on each query) or "flattened" (the released
code's MLP on the flattened (D, N) queries: D*N -> 64 -> N*K, DK-UXNet network_backbone.py L311).

Checkpointing (`checkpoint=True`): torch.utils.checkpoint (use_reentrant=False) around each transformer layer,
and in the head around each block of the full-resolution pixel embedding (depthwise, 1x1 -> D, 1x1 -> D/2 +
L2 norm) and around the response/aggregation: one segment for the whole head would recompute all of it at once
in backward and save nothing at the peak (measured: 6.8 GB per 1M voxels either way, 4.6 GB block-wise).
BatchNorm running statistics are restored after each recomputation, so they are updated once per forward,
exactly as without checkpointing.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterator, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as torch_checkpoint

from benchmark.nets.uxnet import conv_nd

BN_EPS = 1e-3          # kMaX get_norm: eps 1e-3
BN_MOMENTUM = 0.01     # kMaX get_norm: momentum 0.01 (TF decay 0.99)
MASK_BN_GAIN = 0.1     # kMaXPredictor: the mask-logit BatchNorm's gamma init
CLS_HIDDEN = 64        # DK-UXNet MLP hidden width (network_backbone.py L311)


def _trunc_normal(weight: torch.Tensor, std: float) -> None:
    """TF-style truncated normal: N(0, std) cut at +-2 std (timm trunc_normal_tf_)."""
    nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


def _bn(channels: int, gain: float = 1.0) -> nn.BatchNorm1d:
    bn = nn.BatchNorm1d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)
    nn.init.constant_(bn.weight, gain)
    return bn


class PointwiseBN(nn.Module):
    """1x1 conv + BatchNorm (+ GELU) on a flattened (B, C, L) map (pixels or queries)."""

    def __init__(self, in_channels: int, out_channels: int, gelu: bool = True, bias: bool = False,
                 std: float | None = None, norm_gain: float = 1.0, norm: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, 1, bias=bias)
        _trunc_normal(self.conv.weight, math.sqrt(2.0 / in_channels) if std is None else std)   # he-normal
        if bias:
            nn.init.zeros_(self.conv.bias)
        self.norm = _bn(out_channels, norm_gain) if norm else nn.Identity()
        self.gelu = gelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x))
        return F.gelu(x) if self.gelu else x


class DepthwiseBN(nn.Module):
    """5^n depthwise conv + BatchNorm + GELU on a (B, C, *S) map (n = spatial_dims)."""

    def __init__(self, channels: int, spatial_dims: int, kernel_size: int = 5) -> None:
        super().__init__()
        self.conv = conv_nd(spatial_dims)(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=False)
        nn.init.xavier_uniform_(self.conv.weight)
        self.norm = _bn(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return F.gelu(self.norm(y.flatten(2))).view_as(y)


# ------------------------------------------------------------------------------- k-means cross-attention
@torch.no_grad()
def hard_assignment(mask_logits: torch.Tensor) -> torch.Tensor:
    """One-hot cluster assignment A (B, N, P) of each pixel to its argmax query (Eq. 2's argmax_N); no gradient."""
    index = mask_logits.detach().argmax(dim=1, keepdim=True)
    return torch.zeros_like(mask_logits, dtype=torch.float32).scatter_(1, index, 1.0)


def cluster_update(assignment: torch.Tensor, pixel_value: torch.Tensor) -> torch.Tensor:
    """C_hat = A . P: per query the sum of its assigned pixels' values, (B, N, P) x (B, Cv, P) -> (B, Cv, N), fp32."""
    with torch.autocast(pixel_value.device.type, enabled=False):
        return torch.bmm(pixel_value.float(), assignment.float().transpose(1, 2))


# ------------------------------------------------------------------------------------------ predictor
class KMaXPredictor(nn.Module):
    """Mask logits (B, N, P) between query embeddings (B, D, N) and pixel features (B, C, *S)."""

    def __init__(self, pixel_channels: int, query_dim: int, mask_dim: int, hidden_dim: int,
                 spatial_dims: int = 3) -> None:
        super().__init__()
        self.pixel_depthwise = DepthwiseBN(pixel_channels, spatial_dims)
        self.pixel_hidden = PointwiseBN(pixel_channels, hidden_dim)
        self.pixel_out = PointwiseBN(hidden_dim, mask_dim, gelu=False, bias=True, std=0.01)
        self.mask_kernel = PointwiseBN(query_dim, mask_dim, gelu=False)
        self.mask_norm = _bn(1, MASK_BN_GAIN)      # one BatchNorm over every mask logit

    def pixel_embedding(self, pixel: torch.Tensor, checkpoint: bool = False) -> torch.Tensor:
        """L2-normalised pixel embeddings (B, mask_dim, P); `checkpoint`: each block checkpointed on its own."""
        if not (checkpoint and torch.is_grad_enabled()):
            p = self.pixel_hidden(self.pixel_depthwise(pixel).flatten(2))
            return F.normalize(self.pixel_out(p), p=2, dim=1)
        p = run_checkpointed(self.pixel_depthwise, self.pixel_depthwise, pixel).flatten(2)
        p = run_checkpointed(self.pixel_hidden, self.pixel_hidden, p)
        return run_checkpointed(self.pixel_out, lambda t: F.normalize(self.pixel_out(t), p=2, dim=1), p)

    def mask_logits(self, pixel_embedding: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        kernel = self.mask_kernel(embeddings)                                        # (B, mask_dim, N)
        logits = torch.bmm(kernel.transpose(1, 2), pixel_embedding)                  # (B, N, P)
        b, n, pixels = logits.shape
        return self.mask_norm(logits.reshape(b, 1, n * pixels)).view(b, n, pixels)

    def forward(self, pixel: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        return self.mask_logits(self.pixel_embedding(pixel), embeddings)


# -------------------------------------------------------------------------------- transformer layer
class KMaXTransformerLayer(nn.Module):
    """One kMaX layer: k-means cross-attention, query self-attention, FFN. forward(pixel, queries) -> queries."""

    def __init__(self, pixel_channels: int, query_dim: int = 256, num_heads: int = 8, key_dim: int | None = None,
                 ffn_dim: int | None = None, mask_dim: int | None = None, spatial_dims: int = 3) -> None:
        super().__init__()
        key_dim = query_dim // 2 if key_dim is None else key_dim     # reference: 128 at query dim 256
        ffn_dim = 8 * query_dim if ffn_dim is None else ffn_dim      # reference: 2048
        mask_dim = query_dim // 2 if mask_dim is None else mask_dim  # reference: 128
        if key_dim % num_heads or query_dim % num_heads:
            raise ValueError(f"kMaX: key_dim {key_dim} and query_dim {query_dim} must be multiples of num_heads "
                             f"{num_heads}")
        self.num_heads, self.key_dim, self.value_dim = num_heads, key_dim, query_dim
        self.pixel_space = PointwiseBN(pixel_channels, query_dim)
        self.query_space = PointwiseBN(query_dim, query_dim)
        self.pixel_value = PointwiseBN(query_dim, self.value_dim, gelu=False, std=query_dim ** -0.5)
        self.predictor = KMaXPredictor(query_dim, query_dim, mask_dim, query_dim, spatial_dims)
        self.kmeans_norm = _bn(self.value_dim)
        self.kmeans_proj = PointwiseBN(self.value_dim, query_dim, gelu=False, norm_gain=0.0)
        self.qkv = PointwiseBN(query_dim, 2 * key_dim + self.value_dim, gelu=False, std=query_dim ** -0.5)
        self.similarity_norm = _bn(num_heads)
        self.retrieved_norm = _bn(self.value_dim)
        self.attn_proj = PointwiseBN(self.value_dim, query_dim, gelu=False, norm_gain=0.0)
        self.ffn_in = PointwiseBN(query_dim, ffn_dim)
        self.ffn_out = PointwiseBN(ffn_dim, query_dim, gelu=False, norm_gain=0.0)

    def kmeans_cross_attention(self, pixel_space: torch.Tensor, query_space: torch.Tensor) -> torch.Tensor:
        """The k-means update (B, D, N) before the residual add."""
        value = self.pixel_value(pixel_space.flatten(2))                              # (B, Cv, P)
        with torch.no_grad():      # only the argmax of these logits is used: no graph (BN stats still update)
            assignment = hard_assignment(self.predictor(pixel_space, query_space))    # (B, N, P)
        return self.kmeans_proj(self.kmeans_norm(cluster_update(assignment, value)))

    def self_attention(self, query_space: torch.Tensor) -> torch.Tensor:
        b, _, n = query_space.shape
        h = self.num_heads
        q, k, v = self.qkv(query_space).split([self.key_dim, self.key_dim, self.value_dim], dim=1)
        q, k, v = q.reshape(b, h, -1, n), k.reshape(b, h, -1, n), v.reshape(b, h, -1, n)
        similarity = torch.einsum("bhdl,bhdm->bhlm", q, k)
        similarity = self.similarity_norm(similarity.reshape(b, h, n * n)).view(b, h, n, n)
        weights = similarity.float().softmax(dim=-1).to(v.dtype)
        retrieved = torch.einsum("bhlm,bhdm->bhdl", weights, v).reshape(b, self.value_dim, n)
        return self.attn_proj(F.gelu(self.retrieved_norm(retrieved)))

    def forward(self, pixel: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        b, _, *spatial = pixel.shape
        pixel_space = self.pixel_space(F.gelu(pixel).flatten(2)).view(b, -1, *spatial)
        query_space = self.query_space(queries)
        queries = queries + self.kmeans_cross_attention(pixel_space, query_space)
        queries = F.gelu(queries + self.self_attention(query_space))
        return F.gelu(queries + self.ffn_out(self.ffn_in(queries)))


@contextmanager
def kept_norm_statistics(module: nn.Module) -> Iterator[None]:
    """Run a forward pass that must not count: `module`'s BatchNorm running statistics are restored after it
    (a recomputation, or a gradient-free first pass of the same batch)."""
    saved = [(buf, buf.clone()) for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             for buf in (m.running_mean, m.running_var, m.num_batches_tracked) if buf is not None]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)


def run_checkpointed(module: nn.Module, fn: Callable[..., object], *args: object) -> object:
    """fn(*args) under activation checkpointing; `module`'s BatchNorm running stats are updated once, not twice."""
    calls = [0]

    def run(*inner: object) -> object:
        calls[0] += 1
        if calls[0] == 1:
            return fn(*inner)
        with kept_norm_statistics(module):   # the recomputation in backward: keep the forward's statistics
            return fn(*inner)

    return torch_checkpoint(run, *args, use_reentrant=False)


# ------------------------------------------------------------------------------------------- decoder
class KMaXDecoder(nn.Module):
    """Learnable cluster centres (D, N) refined by `layers_per_scale` kMaX layers on each feature map in turn.

    forward(features) -> queries (B, D, N); `features[i]` has `in_channels[i]` channels (any spatial size)."""

    def __init__(self, in_channels: Sequence[int], layers_per_scale: int = 2, num_queries: int = 128,
                 query_dim: int = 256, num_heads: int = 8, spatial_dims: int = 3, checkpoint: bool = False) -> None:
        super().__init__()
        self.in_channels = list(in_channels)
        self.layers_per_scale = layers_per_scale
        self.checkpoint = checkpoint
        self.cluster_centers = nn.Parameter(torch.empty(query_dim, num_queries))    # reference: Embedding(256, N)
        _trunc_normal(self.cluster_centers, 1.0)
        self.layers = nn.ModuleList(
            KMaXTransformerLayer(c, query_dim, num_heads, spatial_dims=spatial_dims)
            for c in self.in_channels for _ in range(layers_per_scale))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(features) != len(self.in_channels):
            raise ValueError(f"KMaXDecoder: got {len(features)} feature maps, built for {len(self.in_channels)}")
        queries = self.cluster_centers.unsqueeze(0).expand(features[0].shape[0], -1, -1)
        for i, layer in enumerate(self.layers):
            pixel = features[i // self.layers_per_scale]
            if self.checkpoint and torch.is_grad_enabled():
                queries = run_checkpointed(layer, layer, pixel, queries)
            else:
                queries = layer(pixel, queries)
        return queries


# ---------------------------------------------------------------------------------------- MaxQuery head
class MaxQueryOutput(NamedTuple):
    query_logits: torch.Tensor          # (B, K, *S) einsum(C_k, softmax response)
    query_distribution: torch.Tensor    # (B, G, *S) softmax response summed within each query group
    response: torch.Tensor | None       # (B, N, *S) softmax over queries, when asked


CLS_HEADS = ("per_query", "flattened")


class MaxQueryHead(nn.Module):
    """MaxQuery post-processing from the final pixel features (B, C, *S) and the queries (B, D, N)."""

    def __init__(self, pixel_channels: int, num_classes: int, query_groups: Sequence[int], query_dim: int = 256,
                 cls_head: str = "per_query", cls_hidden: int = CLS_HIDDEN, mask_dim: int | None = None,
                 spatial_dims: int = 3, checkpoint: bool = False) -> None:
        super().__init__()
        if cls_head not in CLS_HEADS:
            raise ValueError(f"MaxQueryHead: cls_head {cls_head!r} is not one of {CLS_HEADS}")
        self.num_queries = sum(query_groups)
        self.num_classes, self.cls_head, self.checkpoint = num_classes, cls_head, checkpoint
        self.mask_embedding = PointwiseBN(query_dim, query_dim)
        self.predictor = KMaXPredictor(pixel_channels, query_dim, query_dim // 2 if mask_dim is None else mask_dim,
                                       query_dim, spatial_dims)
        width_in, width_out = (query_dim, num_classes) if cls_head == "per_query" else \
            (query_dim * self.num_queries, num_classes * self.num_queries)
        self.classifier = nn.Sequential(nn.Linear(width_in, cls_hidden), nn.ReLU(), nn.Linear(cls_hidden, width_out))
        groups = torch.zeros(len(query_groups), self.num_queries)
        for g, (start, size) in enumerate(zip([0, *torch.tensor(query_groups).cumsum(0).tolist()], query_groups)):
            groups[g, start:start + size] = 1.0
        self.register_buffer("group_indicator", groups, persistent=False)          # (G, N)

    def cluster_classification(self, queries: torch.Tensor) -> torch.Tensor:
        """C_k (B, N, K) from the queries (B, D, N)."""
        b = queries.shape[0]
        if self.cls_head == "per_query":
            return self.classifier(queries.transpose(1, 2))
        return self.classifier(queries.reshape(b, -1)).view(b, self.num_queries, self.num_classes)

    def _aggregate(self, pixel_embedding: torch.Tensor, queries: torch.Tensor, return_response: bool) -> tuple:
        """Response softmax, cluster classification and the two aggregations, from the pixel embeddings."""
        b = queries.shape[0]
        logits = self.predictor.mask_logits(pixel_embedding, self.mask_embedding(queries))
        response = logits.float().softmax(dim=1)                                           # (B, N, P) fp32
        weights = torch.cat([self.cluster_classification(queries).transpose(1, 2),
                             self.group_indicator.expand(b, -1, -1)], dim=1)               # (B, K + G, N)
        with torch.autocast(queries.device.type, enabled=False):      # one fp32 pass over the response
            out = torch.bmm(weights.float(), response)
        return out, (response if return_response else None)

    def forward(self, pixel: torch.Tensor, queries: torch.Tensor, return_response: bool = False) -> MaxQueryOutput:
        if queries.shape[-1] != self.num_queries:
            raise ValueError(f"MaxQueryHead: {queries.shape[-1]} queries, built for {self.num_queries}")
        b, _, *spatial = pixel.shape
        checkpoint = self.checkpoint and torch.is_grad_enabled()
        embedding = self.predictor.pixel_embedding(pixel, checkpoint)
        if checkpoint:
            out, response = run_checkpointed(self, lambda p, q: self._aggregate(p, q, return_response),
                                             embedding, queries)
        else:
            out, response = self._aggregate(embedding, queries, return_response)
        out = out.view(b, -1, *spatial)
        return MaxQueryOutput(out[:, :self.num_classes], out[:, self.num_classes:],
                              None if response is None else response.view(b, -1, *spatial))
