"""3D UX-Net (benchmark/nets/uxnet.py): exact parameter count, every UXNetFeatures field's channels and stride,
checkpoint on == off (outputs and gradients, DropPath included), our residual / up blocks == MONAI's on the same
weights, the channels-first LayerNorm, and clear errors on bad input."""
from __future__ import annotations

import pytest
import torch

from benchmark.config import ConfigError
from benchmark.nets.uxnet import (ChannelsFirstLayerNorm, ResidualConvBlock, ResidualUpBlock, UXNet3D,
                                  UXNetFeatures)

REFERENCE_PARAMS = 53_005_922           # UXNET(out_chans=2), PROTOCOLS-3D-DATASETS.md §B.1 (verified there)
TINY = dict(feature_size=6, hidden_size=12)


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_count_equals_reference() -> None:
    with torch.device("meta"):
        net = UXNet3D(1, 2)
    assert _count(net) == REFERENCE_PARAMS
    # encoder5 = residual block 384 -> 768: two bias-free 3^3 convs + the 1^3 projection, norms without parameters
    assert _count(net.encoder5) == 384 * 768 * 27 + 768 * 768 * 27 + 384 * 768
    assert net.dims == (48, 96, 192, 384)


def test_feature_shapes_channels_strides_and_stage_norms() -> None:
    fs, size = 12, (32, 16, 48)                     # non-cubic: catches a swapped axis
    net = UXNet3D(1, 3, feature_size=fs, hidden_size=24).eval()
    with torch.no_grad():
        out = net.forward_features(torch.randn(1, 1, *size))
    assert isinstance(out, UXNetFeatures)

    def expect(t: torch.Tensor, channels: int, stride: int) -> None:
        assert t.shape == (1, channels, *(s // stride for s in size))

    assert len(out.stages) == 4 and len(out.decoder) == 4
    for t, c, s in zip(out.stages, (fs, 2 * fs, 4 * fs, 8 * fs), (2, 4, 8, 16)):
        expect(t, c, s)
    for t, c, s in zip(out.decoder, (8 * fs, 4 * fs, 2 * fs, fs), (8, 4, 2, 1)):
        expect(t, c, s)
    expect(out.pixel, fs, 1)
    expect(out.logits, 3, 1)
    for t in out.stages:        # fresh output norms (weight 1, bias 0): zero mean, unit variance over channels
        torch.testing.assert_close(t.mean(1), torch.zeros_like(t[:, 0]), atol=1e-5, rtol=0)
        torch.testing.assert_close(t.var(1, unbiased=False), torch.ones_like(t[:, 0]), atol=1e-3, rtol=0)
    with torch.no_grad():
        assert torch.equal(net(torch.ones(1, 1, *size)), net.forward_features(torch.ones(1, 1, *size)).logits)


def test_channels_first_layer_norm_matches_formula() -> None:
    torch.manual_seed(0)
    norm = ChannelsFirstLayerNorm(5)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(2, 5, 3, 4, 6) * 3 + 1
    mean = x.mean(1, keepdim=True)
    var = (x - mean).pow(2).mean(1, keepdim=True)
    expected = norm.weight.view(-1, 1, 1, 1) * (x - mean) / torch.sqrt(var + 1e-6) + norm.bias.view(-1, 1, 1, 1)
    torch.testing.assert_close(norm(x), expected)


def _run_with_grads(net: UXNet3D, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    torch.manual_seed(123)                  # the same DropPath masks in both nets
    out = net(x)
    out.square().mean().backward()
    return out.detach(), [p.grad for p in net.parameters()]


def test_checkpoint_matches_plain_outputs_and_gradients() -> None:
    torch.manual_seed(0)
    plain = UXNet3D(1, 2, drop_path=0.3, **TINY).train()
    ckpt = UXNet3D(1, 2, drop_path=0.3, checkpoint=True, **TINY).train()
    ckpt.load_state_dict(plain.state_dict())
    calls = []
    ckpt.encoder5.register_forward_pre_hook(lambda *_: calls.append(1))
    x = torch.randn(2, 1, 16, 16, 32)
    out_plain, grads_plain = _run_with_grads(plain, x)
    out_ckpt, grads_ckpt = _run_with_grads(ckpt, x)
    assert len(calls) == 2                  # forward + recomputation in backward: checkpointing is on
    torch.testing.assert_close(out_ckpt, out_plain, rtol=0, atol=0)
    assert all(g is not None for g in grads_plain)          # every parameter is on the graph
    for g_plain, g_ckpt in zip(grads_plain, grads_ckpt):
        torch.testing.assert_close(g_ckpt, g_plain, rtol=1e-6, atol=1e-9)
    with torch.no_grad():                   # no recomputation without autograd
        ckpt(x)
    assert len(calls) == 3


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("in_channels,out_channels", [(3, 8), (8, 8)])
def test_residual_block_equals_monai(spatial_dims: int, in_channels: int, out_channels: int) -> None:
    unetr_block = pytest.importorskip("monai.networks.blocks.unetr_block", reason="monai is not installed")
    torch.manual_seed(0)
    ref = unetr_block.UnetrBasicBlock(spatial_dims, in_channels, out_channels, kernel_size=3, stride=1,
                                      norm_name="instance", res_block=True)
    ours = ResidualConvBlock(in_channels, out_channels, spatial_dims=spatial_dims)
    _copy_parameters(ref, ours)
    x = torch.randn(2, in_channels, *(8,) * spatial_dims)
    torch.testing.assert_close(ours(x), ref(x))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_up_block_equals_monai(spatial_dims: int) -> None:
    unetr_block = pytest.importorskip("monai.networks.blocks.unetr_block", reason="monai is not installed")
    torch.manual_seed(0)
    ref = unetr_block.UnetrUpBlock(spatial_dims, 12, 6, kernel_size=3, upsample_kernel_size=2,
                                   norm_name="instance", res_block=True)
    ours = ResidualUpBlock(12, 6, spatial_dims=spatial_dims)
    _copy_parameters(ref, ours)
    x, skip = torch.randn(2, 12, *(4,) * spatial_dims), torch.randn(2, 6, *(8,) * spatial_dims)
    torch.testing.assert_close(ours(x, skip), ref(x, skip))


def _copy_parameters(src: torch.nn.Module, dst: torch.nn.Module) -> None:
    """Copy in registration order (both register transposed conv, conv1, conv2, projection), checking shapes."""
    src_params, dst_params = list(src.parameters()), list(dst.parameters())
    assert len(src_params) == len(dst_params)
    with torch.no_grad():
        for a, b in zip(src_params, dst_params):
            assert a.shape == b.shape
            b.copy_(a)


def test_axis_not_multiple_of_16_raises() -> None:
    net = UXNet3D(1, 2, **TINY)
    with pytest.raises(ValueError, match="multiple of 16"):
        net(torch.randn(1, 1, 16, 16, 24))
    with pytest.raises(ValueError, match=r"\(B, C, D, H, W\)"):
        net(torch.randn(1, 1, 16, 16))
    # a 16^3 patch passes the check but leaves 1x1x1 at the bottleneck, where InstanceNorm (MONAI's too) refuses
    # to train: the reference constraint, kept
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        net.train()(torch.randn(1, 1, 16, 16, 16))


@pytest.mark.parametrize("options", [dict(depths=(2, 2, 2)), dict(kernel_size=4), dict(feature_size=0),
                                     dict(drop_path=1.0), dict(layer_scale_init=-1.0)])
def test_bad_options_raise_config_error(options: dict) -> None:
    with pytest.raises(ConfigError, match="uxnet-3d"):
        UXNet3D(1, 2, **{**TINY, **options})
