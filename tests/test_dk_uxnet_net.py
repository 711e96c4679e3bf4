"""DK-UXNet's network (benchmark/nets/dk_uxnet.py): output fields of both layouts on a tiny 3D input, the
query-distribution invariant, gradient paths, checkpoint equivalence, parameter counts at the defaults,
option validation, registration."""
from __future__ import annotations

import copy

import pytest
import torch

from benchmark.config import ConfigError
from benchmark.nets import NETWORKS, build_network
from benchmark.nets.dk_uxnet import DKUXNet, DKUXNetOutput, even_groups

TINY = dict(feature_size=12, hidden_size=24, num_queries=8, query_dim=16, query_groups=(4, 4))
SHAPE = (2, 1, 32, 32, 16)

UXNET_PARAMS = 53_005_922                   # UXNet3D(1, 2), asserted by N1's tests too
KMAX_DECODER_PARAMS = 10_071_404            # 6 layers on 384/192/96 channels + the (256, 128) centres
HEAD_PARAMS = {"per_query": 167_700, "flattened": 2_264_978}
RELEASED_UXNET_PARAMS = 65_500_197          # Rows21/DK-UXNet UXNET(out_chans=2), PROTOCOLS-3D §B.4


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _tiny(layout: str, **options) -> DKUXNet:
    torch.manual_seed(0)
    return DKUXNet(1, 2, layout=layout, **{**TINY, **options})


@pytest.mark.parametrize("layout", ["paper", "released"])
def test_output_fields_and_group_sums(layout: str) -> None:
    net = _tiny(layout, query_groups=None if layout == "paper" else (2, 1, 5))
    x = torch.randn(SHAPE)
    out = net(x, return_response=True)
    assert isinstance(out, DKUXNetOutput)
    groups = 2 if layout == "paper" else 3
    assert out.logits.shape == (2, 2, 32, 32, 16)
    assert out.query_logits.shape == (2, 2, 32, 32, 16)
    assert out.query_distribution.shape == (2, groups, 32, 32, 16)
    assert out.response.shape == (2, 8, 32, 32, 16)
    assert torch.allclose(out.query_distribution.sum(1), torch.ones(2, 32, 32, 16), atol=1e-5)
    assert torch.allclose(out.response.sum(1), torch.ones(2, 32, 32, 16), atol=1e-5)
    assert net(x).response is None
    assert torch.allclose(net.segment(x), out.logits)
    expected = ("per_query", "pixel") if layout == "paper" else ("flattened", "decoder2")
    assert (net.cls_head, net.response_from) == expected


@pytest.mark.parametrize("layout", ["paper", "released"])
def test_kmax_reads_the_layout_scales(layout: str) -> None:
    net = _tiny(layout)
    features = net.backbone.forward_features(torch.randn(SHAPE))
    maps = net.kmax_features(features)
    assert [m.shape[1] for m in maps] == [96, 48, 24]                 # 8fs, 4fs, 2fs, coarse to fine
    strides = [16, 8, 4] if layout == "paper" else [8, 4, 2]
    assert [32 // m.shape[2] for m in maps] == strides


def test_gradients_reach_centres_and_classifier() -> None:
    net = _tiny("paper")
    x = torch.randn(SHAPE)
    net(x).query_logits.square().mean().backward()
    assert net.kmax.cluster_centers.grad.abs().sum() > 0
    assert all(p.grad.abs().sum() > 0 for p in net.head.classifier.parameters())
    net.zero_grad(set_to_none=True)
    q = net(x).query_distribution
    (-q[:, 0].clamp_min(1e-6).log().mean()).backward()
    assert net.kmax.cluster_centers.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.backbone.parameters())


def test_checkpoint_same_outputs_and_gradients() -> None:
    net = _tiny("released", query_groups=(2, 6))
    net_c = copy.deepcopy(net)
    net_c.kmax.checkpoint = net_c.head.checkpoint = True
    x = torch.randn(SHAPE)
    outs = []
    for model in (net, net_c):
        out = model(x)
        (out.query_logits.square().mean() + out.query_distribution[:, 1].mean()).backward()
        outs.append(out)
    assert torch.allclose(outs[0].query_distribution, outs[1].query_distribution, atol=1e-6)
    for a, b in zip(net.kmax.parameters(), net_c.kmax.parameters()):
        assert (a.grad is None) == (b.grad is None)
        if a.grad is not None:
            assert torch.allclose(a.grad, b.grad, atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(net.kmax.buffers(), net_c.kmax.buffers()))
    assert DKUXNet(1, 2, checkpoint=True, **TINY).kmax.checkpoint


def test_parameter_counts_at_defaults() -> None:
    for layout, cls_head in [("paper", "per_query"), ("released", "flattened")]:
        net = DKUXNet(1, 2, layout=layout)
        assert _count(net.backbone) == UXNET_PARAMS
        assert _count(net.kmax) == KMAX_DECODER_PARAMS
        assert _count(net.head) == HEAD_PARAMS[cls_head]
        assert _count(net) == UXNET_PARAMS + KMAX_DECODER_PARAMS + HEAD_PARAMS[cls_head]
    # the released UXNET = ours ("released") + the heads it builds and never reads + its MLP's 3rd output per query
    unused = 6 * (256 * 32 + 32) + (256 * 133 + 133) + (256 * 256 + 2 * 256) + (64 * 128 + 128)
    assert _count(net) + unused == RELEASED_UXNET_PARAMS


def test_even_groups_and_defaults() -> None:
    assert even_groups(128, 2) == (64, 64)
    assert even_groups(10, 3) == (4, 3, 3)
    assert DKUXNet(1, 2, **{**TINY, "query_groups": None}).query_groups == (4, 4)
    assert DKUXNet(1, 2, layout="released", **{**TINY, "num_queries": 128, "query_groups": None}).query_groups \
        == (16, 4, 108)


@pytest.mark.parametrize("options, field", [
    (dict(query_groups=(4, 3)), "sum\\(query_groups\\)"),
    (dict(query_groups=(8,)), "query_groups"),
    (dict(query_groups=(9, -1)), "query_groups"),
    (dict(layout="kmax"), "layout"),
    (dict(cls_head="softmax"), "cls_head"),
    (dict(response_from="encoder"), "response_from"),
    (dict(query_dim=24), "query_dim"),
    (dict(layers_per_scale=0), "layers_per_scale"),
    (dict(layout="released", query_groups=None), "released"),
    (dict(num_queries=1, query_groups=None), "num_queries"),
])
def test_bad_options_raise_config_error(options: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        DKUXNet(1, 2, **{**TINY, **options})


def test_registered() -> None:
    spec = NETWORKS.get("dk-uxnet")
    assert spec.role == "method" and spec.dims == (3,)
    assert spec.problem([112, 112, 80]) is None and spec.problem([112, 112, 81])
    assert NETWORKS.get("uxnet-3d").role == "segmentation"
    net = build_network("dk-uxnet", 1, 2, **TINY)
    assert isinstance(net, DKUXNet)
    assert build_network("uxnet-3d", 1, 2, feature_size=12, hidden_size=24)(torch.randn(SHAPE)).shape == \
        (2, 2, 32, 32, 16)
