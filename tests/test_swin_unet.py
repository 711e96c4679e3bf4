"""Swin-UNet (timm blocks): structure against SSL4MIS's lite Swin-UNet (parameter count derived here from the
architecture, stage shapes, windows, heads, drop-path), mask tokens, local ImageNet weights (the reference
`load_from`: encoder + mirrored decoder)."""
import re

import pytest
import torch

from benchmark.nets import NETWORKS, build_network
from benchmark.nets.swin_unet import SwinUNet, load_pretrained
from benchmark.weights import MissingWeights

TINY = dict(embed_dim=16, num_heads=(1, 2, 4, 8))   # Swin-T's key layout at 1/6 of the width: cheap on a CPU


@pytest.fixture(scope="module")
def lite() -> SwinUNet:
    torch.manual_seed(0)
    return build_network("swin-unet", 1, 4).eval()


def _lite_param_count(num_classes: int, c: int = 96, heads=(3, 6, 12, 24), window: int = 7, depth: int = 2) -> int:
    """Parameters of the SSL4MIS lite Swin-UNet, from its description (PROTOCOLS.md §3.1), not from any code:
    Swin block at width d with h heads = 2 LayerNorms (4d) + qkv (3d^2 + 3d) + proj (d^2 + d) + MLP 4d
    (8d^2 + 5d) + relative position bias ((2w - 1)^2 h); patch merging from d = LayerNorm 4d (8d) + Linear
    4d -> 2d without bias; patch expanding at d = Linear d -> 2d without bias + LayerNorm d/2."""
    def block(d: int, h: int) -> int:
        return 12 * d * d + 13 * d + (2 * window - 1) ** 2 * h

    dims = [c * 2 ** i for i in range(4)]
    encoder = (3 * 16 * c + c + 2 * c                                    # 4x4 patch conv + its LayerNorm
               + sum(depth * block(d, h) for d, h in zip(dims, heads))
               + sum(8 * d + 8 * d * d for d in dims[:3])                 # three mergings
               + 2 * dims[3])                                            # bottleneck LayerNorm
    decoder = (dims[3] * 2 * dims[3] + 2 * dims[2]                       # first expanding 768 -> 1536, LN 384
               + sum(2 * d * d + d for d in dims[:3])                     # concat linears 2d -> d (bias)
               + sum(depth * block(d, h) for d, h in zip(dims[:3], heads[:3]))
               + sum(2 * d * d + d for d in dims[1:3])                    # expandings after the 384/192 stages
               + 2 * c                                                   # norm_up
               + c * 16 * c + 2 * c                                      # final x4 expanding + LayerNorm
               + c * num_classes)                                        # 1x1 conv, no bias
    return encoder + decoder


def test_registered_lite_net_has_the_reference_parameter_count(lite):
    assert NETWORKS.get("swin-unet").factory is SwinUNet and lite.pretrained is None
    assert sum(p.numel() for p in lite.parameters()) == _lite_param_count(4) == 27_168_420
    tiny = SwinUNet(1, 9, **TINY)                        # the count formula holds at other widths and classes
    assert sum(p.numel() for p in tiny.parameters()) == _lite_param_count(9, c=16, heads=TINY["num_heads"])
    with pytest.raises(ValueError, match="multiple of 32"):
        SwinUNet(img_size=48)


def test_stage_shapes_windows_heads_and_drop_path_follow_the_lite_config(lite):
    net, seen = lite, {}
    hooked = [*((f"enc{i}", s.blocks) for i, s in enumerate(net.layers)),
              *((f"dec{i}", s) for i, s in enumerate(net.layers_up)),
              ("first", net.first_expand), ("final", net.final_expand)]
    for name, module in hooked:
        module.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, tuple(o.shape[1:])))
    with torch.no_grad():
        assert net(torch.rand(1, 1, 224, 224)).shape == (1, 4, 224, 224)   # grayscale repeated to 3 channels
    assert [seen[f"enc{i}"] for i in range(4)] == [(56, 56, 96), (28, 28, 192), (14, 14, 384), (7, 7, 768)]
    assert seen["first"] == (14, 14, 384)                                  # patch expanding from the bottleneck
    assert [seen[f"dec{i}"] for i in range(3)] == [(28, 28, 192), (56, 56, 96), (56, 56, 96)]
    assert seen["final"] == (224, 224, 96)                                 # x4 expanding, then the 1x1 conv
    rates = torch.linspace(0, 0.2, 8).tolist()
    for i, stage in enumerate(net.layers):
        for j, blk in enumerate(stage.blocks):
            resolution = 56 // 2 ** i
            assert blk.attn.num_heads == (3, 6, 12, 24)[i] and blk.window_size == (7, 7)
            # shifted every second block; at 7x7 the window covers the map and nothing shifts (reference)
            assert blk.shift_size == ((3, 3) if j % 2 and resolution > 7 else (0, 0))
            assert getattr(blk.drop_path1, "drop_prob", 0.0) == pytest.approx(rates[2 * i + j])
    for k, stage in enumerate(net.layers_up):   # decoder stage k mirrors encoder stage 2 - k
        for j, blk in enumerate(stage.blocks):
            assert blk.attn.num_heads == (12, 6, 3)[k]
            assert getattr(blk.drop_path1, "drop_prob", 0.0) == pytest.approx(rates[2 * (2 - k) + j])
    assert net.patch_embed.proj.kernel_size == (4, 4) and not hasattr(net, "absolute_pos_embed")


def test_small_nets_and_masked_positions_hold_the_learnable_token():
    torch.manual_seed(0)
    net = SwinUNet(1, 4, img_size=64, mask_tokens=True, **TINY)
    x = torch.rand(2, 1, 64, 64)
    mask = torch.tensor([[[True, False], [False, True]], [[False, False], [True, False]]])
    tokens = net.patch_embed(x.repeat(1, 3, 1, 1))          # (2, 16, 16, 16); one 32-px block = 8x8 tokens
    masked = net.apply_mask(tokens, mask)
    full = mask.repeat_interleave(8, 1).repeat_interleave(8, 2)
    token = net.mask_token.expand_as(masked)
    assert torch.equal(masked[full], token[full]) and torch.equal(masked[~full], tokens[~full])
    net(x, mask).sum().backward()
    assert net.mask_token.grad is not None and net.mask_token.grad[0, :8, :8].abs().sum() > 0
    assert net.mask_token.grad[0, :8, 8:].abs().sum() == 0   # no sample masks the top-right block
    with torch.no_grad():  # masking changes the prediction; without a mask the tokens are unused
        assert not torch.allclose(net.eval()(x, mask), net(x))
    with pytest.raises(ValueError, match="without mask tokens"):
        SwinUNet(1, 4, img_size=64, **TINY)(x, mask)


def timm_swin_tiny_state(**overrides) -> dict[str, torch.Tensor]:
    """A state dict in timm's swin_tiny_patch4_window7_224 key layout (depths 2-2-6-2) with random values."""
    import timm

    torch.manual_seed(1)
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, **overrides).state_dict()


def test_loads_a_local_timm_checkpoint_into_encoder_and_mirrored_decoder(tmp_path):
    state = timm_swin_tiny_state(**TINY)
    path = tmp_path / "swin_tiny.pth"
    torch.save(state, path)
    net = SwinUNet(1, 4, pretrained=str(path), **TINY)
    assert net.pretrained == str(path)
    torch.testing.assert_close(net.patch_embed.proj.weight, state["patch_embed.proj.weight"])
    torch.testing.assert_close(net.layers[1].downsample.reduction.weight, state["layers.1.downsample.reduction.weight"])
    torch.testing.assert_close(net.layers[3].blocks[1].mlp.fc2.weight, state["layers.3.blocks.1.mlp.fc2.weight"])
    torch.testing.assert_close(net.norm.weight, state["norm.weight"])
    # decoder stages get the encoder stage of the same width (reference load_from: layers.i -> layers_up.3-i)
    torch.testing.assert_close(net.layers_up[0].blocks[0].attn.qkv.weight, state["layers.2.blocks.0.attn.qkv.weight"])
    torch.testing.assert_close(net.layers_up[1].blocks[1].norm2.bias, state["layers.1.blocks.1.norm2.bias"])
    torch.testing.assert_close(net.layers_up[2].blocks[1].attn.proj.weight, state["layers.0.blocks.1.attn.proj.weight"])
    report = net.pretrained_report
    assert len(report["loaded"]) == 119 + 78          # encoder tensors + the three mirrored decoder stages
    assert set(report["unused"]) == {"head.fc.weight", "head.fc.bias"} | {
        k for k in state if re.match(r"layers\.2\.blocks\.[2-5]\.", k)}   # Swin-T stage 2 has 6 blocks, lite 2
    kept = {k.split(".")[0] for k in report["kept_init"]}
    assert kept == {"first_expand", "concat_back", "layers_up", "norm_up", "final_expand", "output"}
    assert all(".upsample." in k for k in report["kept_init"] if k.startswith("layers_up"))

    # The original Microsoft layout (merging at a stage's END, wrapped in "model") is renamed on load.
    original = {re.sub(r"layers\.(\d+)\.downsample", lambda g: f"layers.{int(g.group(1)) - 1}.downsample", k): v
                for k, v in state.items()}
    torch.save({"model": original}, path)
    fresh = SwinUNet(1, 4, **TINY)
    again = load_pretrained(fresh, path)
    torch.testing.assert_close(fresh.layers[2].downsample.norm.weight, state["layers.2.downsample.norm.weight"])
    torch.testing.assert_close(fresh.layers_up[0].blocks[1].mlp.fc1.weight, state["layers.2.blocks.1.mlp.fc1.weight"])
    assert again["loaded"] == report["loaded"]


def test_missing_or_foreign_weight_files_fail_clearly(tmp_path):
    with pytest.raises(MissingWeights, match="nowhere.pth does not exist.*--pretrained none"):
        SwinUNet(1, 4, img_size=32, pretrained=str(tmp_path / "nowhere.pth"), **TINY)
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="does not look like a Swin checkpoint"):
        SwinUNet(1, 4, img_size=32, pretrained=str(tmp_path / "other.pth"), **TINY)
    assert SwinUNet(1, 4, img_size=32, pretrained="none", **TINY).pretrained is None


def test_patch_merging_concatenates_the_2x2_neighbours_in_the_original_swin_order(lite):
    """Microsoft's Swin (and SSL4MIS's copy, L336-340) concatenates the 2x2 neighbours as (row 0, col 0),
    (row 1, col 0), (row 0, col 1), (row 1, col 1) before LayerNorm + Linear; timm's merging must agree, or the
    original checkpoint's reduction weights would mix the wrong channels."""
    torch.manual_seed(0)
    merge = lite.layers[1].downsample
    x = torch.randn(2, 56, 56, 96)
    grouped = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
    with torch.no_grad():
        torch.testing.assert_close(merge(x), merge.reduction(merge.norm(grouped)))
