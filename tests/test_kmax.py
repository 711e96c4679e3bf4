"""kMaX decoder and MaxQuery head (benchmark/nets/kmax.py): the k-means step against a brute-force loop, gradient
paths, output shapes in 2D and 3D, the group-sum invariant, zero-init residuals, checkpoint equivalence."""
from __future__ import annotations

import copy

import pytest
import torch

from benchmark.nets.kmax import (KMaXDecoder, KMaXTransformerLayer, MaxQueryHead, cluster_update,
                                 hard_assignment)

D, N = 16, 8              # query_dim, num_queries
GROUPS = (3, 5)


def _brute_force_kmeans(mask_logits: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    b, n, p = mask_logits.shape
    assign = torch.zeros(b, n, p)
    update = torch.zeros(b, value.shape[1], n)
    for i in range(b):
        for pix in range(p):
            best = max(range(n), key=lambda q: mask_logits[i, q, pix].item())
            assign[i, best, pix] = 1.0
            update[i, :, best] += value[i, :, pix]
    return assign, update


def test_kmeans_assignment_and_update_equal_brute_force() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 23, requires_grad=True)
    value = torch.randn(2, 4, 23, requires_grad=True)
    assign = hard_assignment(logits)
    update = cluster_update(assign, value)
    ref_assign, ref_update = _brute_force_kmeans(logits.detach(), value.detach())
    assert torch.equal(assign, ref_assign)
    assert torch.allclose(update, ref_update, atol=1e-5)
    assert torch.equal(assign.sum(1), torch.ones(2, 23))            # one query per pixel
    assert not assign.requires_grad                                   # the argmax is not differentiated
    update.sum().backward()
    assert logits.grad is None
    assert torch.allclose(value.grad, torch.ones_like(value))        # every pixel counted once


def _tiny(spatial_dims: int = 3, cls_head: str = "per_query", checkpoint: bool = False):
    torch.manual_seed(1)
    decoder = KMaXDecoder([24, 12, 6], layers_per_scale=2, num_queries=N, query_dim=D, spatial_dims=spatial_dims,
                          checkpoint=checkpoint)
    head = MaxQueryHead(4, 2, GROUPS, D, cls_head, spatial_dims=spatial_dims, checkpoint=checkpoint)
    size = (2, 4, 8) if spatial_dims == 3 else (2, 4, 8)
    feats = [torch.randn(2, c, *(s,) * spatial_dims) for c, s in zip([24, 12, 6], size)]
    pixel = torch.randn(2, 4, *(16,) * spatial_dims)
    return decoder, head, feats, pixel


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("cls_head", ["per_query", "flattened"])
def test_shapes_and_group_sums(spatial_dims: int, cls_head: str) -> None:
    decoder, head, feats, pixel = _tiny(spatial_dims, cls_head)
    queries = decoder(feats)
    assert queries.shape == (2, D, N)
    out = head(pixel, queries, return_response=True)
    spatial = (16,) * spatial_dims
    assert out.query_logits.shape == (2, 2, *spatial)
    assert out.query_distribution.shape == (2, len(GROUPS), *spatial)
    assert out.response.shape == (2, N, *spatial)
    assert torch.allclose(out.response.sum(1), torch.ones(2, *spatial), atol=1e-5)
    assert torch.allclose(out.query_distribution.sum(1), torch.ones(2, *spatial), atol=1e-5)
    assert torch.allclose(out.query_distribution[:, 0], out.response[:, :GROUPS[0]].sum(1), atol=1e-6)
    ck = head.cluster_classification(queries)
    assert torch.allclose(out.query_logits, torch.einsum("bnk,bn...->bk...", ck, out.response), atol=1e-5)
    assert head(pixel, queries).response is None


def test_gradients_reach_centres_and_classifier() -> None:
    decoder, head, feats, pixel = _tiny()
    out = head(pixel, decoder(feats))
    out.query_logits.square().mean().backward()
    assert decoder.cluster_centers.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.classifier.parameters())
    decoder.zero_grad(set_to_none=True)
    head.zero_grad(set_to_none=True)
    out = head(pixel, decoder(feats))
    (-out.query_distribution[:, 0].clamp_min(1e-6).log().mean()).backward()
    assert decoder.cluster_centers.grad.abs().sum() > 0
    assert head.predictor.mask_kernel.conv.weight.grad.abs().sum() > 0
    assert all(p.grad is None or not p.grad.any() for p in head.classifier.parameters())    # Q ignores C_k
    # the layers' own predictors only feed the argmax: no gradient (as the released code, no auxiliary losses)
    assert all(p.grad is None for p in decoder.layers[0].predictor.parameters())


def test_fresh_layer_is_gelu_gelu_identity() -> None:
    """The k-means, attention and FFN branches end in zero-init BN gains: at init a layer maps q to gelu(gelu(q))."""
    torch.manual_seed(2)
    layer = KMaXTransformerLayer(6, D, spatial_dims=3)
    q = torch.randn(2, D, N)
    out = layer(torch.randn(2, 6, 4, 4, 4), q)
    assert torch.allclose(out, torch.nn.functional.gelu(torch.nn.functional.gelu(q)), atol=1e-6)


def test_checkpoint_same_outputs_gradients_and_running_stats() -> None:
    decoder, head, feats, pixel = _tiny()
    dec_c, head_c = copy.deepcopy(decoder), copy.deepcopy(head)
    dec_c.checkpoint = head_c.checkpoint = True
    results = []
    for dec, hd in [(decoder, head), (dec_c, head_c)]:
        out = hd(pixel, dec(feats))
        (out.query_logits.square().mean() + out.query_distribution[:, 1].mean()).backward()
        results.append((out, dec, hd))
    (o1, d1, h1), (o2, d2, h2) = results
    assert torch.allclose(o1.query_logits, o2.query_logits, atol=1e-6)
    for a, b in zip([*d1.parameters(), *h1.parameters()], [*d2.parameters(), *h2.parameters()]):
        assert (a.grad is None) == (b.grad is None)
        if a.grad is not None:
            assert torch.allclose(a.grad, b.grad, atol=1e-6)
    for a, b in zip([*d1.buffers(), *h1.buffers()], [*d2.buffers(), *h2.buffers()]):
        assert torch.equal(a, b)                 # BN statistics updated once, not twice


def test_eval_mode_and_bf16_autocast() -> None:
    decoder, head, feats, pixel = _tiny()
    with torch.no_grad():
        head(pixel, decoder(feats))              # one training-mode pass fills the BN statistics
        decoder.eval(), head.eval()
        out = head(pixel, decoder(feats))
        assert torch.isfinite(out.query_logits).all()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = head(pixel, decoder(feats))
    assert out.query_distribution.dtype == torch.float32
    assert torch.allclose(out.query_distribution.sum(1), torch.ones(2, 16, 16, 16), atol=1e-5)


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="cls_head"):
        MaxQueryHead(4, 2, GROUPS, D, "softmax")
    with pytest.raises(ValueError, match="num_heads"):
        KMaXTransformerLayer(6, 20)
    decoder, head, feats, pixel = _tiny()
    with pytest.raises(ValueError, match="feature maps"):
        decoder(feats[:2])
