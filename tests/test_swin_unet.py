"""Swin-UNet (timm blocks): output shape, mask tokens, local ImageNet weights."""
import re

import pytest
import torch

from benchmark.nets import NETWORKS, build_network
from benchmark.nets.swin_unet import SwinUNet, load_pretrained


def test_registered_lite_net_maps_224_grayscale_to_class_logits():
    torch.manual_seed(0)
    net = build_network("swin-unet", 1, 4)
    assert NETWORKS.get("swin-unet").factory is SwinUNet and net.pretrained is None
    assert sum(p.numel() for p in net.parameters()) == 27_168_420  # reference lite config, 4 classes
    with torch.no_grad():
        assert net(torch.rand(2, 1, 224, 224)).shape == (2, 4, 224, 224)
    with pytest.raises(ValueError, match="multiple of 32"):
        SwinUNet(img_size=48)


def test_small_nets_and_masked_positions_hold_the_learnable_token():
    torch.manual_seed(0)
    net = SwinUNet(1, 4, img_size=64, mask_tokens=True)
    x = torch.rand(2, 1, 64, 64)
    mask = torch.tensor([[[True, False], [False, True]], [[False, False], [True, False]]])
    tokens = net.patch_embed(x.repeat(1, 3, 1, 1))          # (2, 16, 16, 96); one 32-px block = 8x8 tokens
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
        SwinUNet(1, 4, img_size=64)(x, mask)


def _timm_swin_tiny_state() -> dict[str, torch.Tensor]:
    import timm

    torch.manual_seed(1)
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).state_dict()


def test_loads_a_local_timm_checkpoint_into_encoder_and_mirrored_decoder(tmp_path):
    state = _timm_swin_tiny_state()
    path = tmp_path / "swin_tiny.pth"
    torch.save(state, path)
    net = SwinUNet(1, 4, pretrained=str(path))
    assert net.pretrained == str(path)
    torch.testing.assert_close(net.patch_embed.proj.weight, state["patch_embed.proj.weight"])
    torch.testing.assert_close(net.layers[1].downsample.reduction.weight, state["layers.1.downsample.reduction.weight"])
    torch.testing.assert_close(net.layers[3].blocks[1].mlp.fc2.weight, state["layers.3.blocks.1.mlp.fc2.weight"])
    torch.testing.assert_close(net.norm.weight, state["norm.weight"])
    # decoder stages get the encoder stage of the same width (reference load_from); 384-wide = encoder stage 2
    torch.testing.assert_close(net.layers_up[0].blocks[0].attn.qkv.weight, state["layers.2.blocks.0.attn.qkv.weight"])
    torch.testing.assert_close(net.layers_up[2].blocks[1].attn.proj.weight, state["layers.0.blocks.1.attn.proj.weight"])

    # The original Microsoft layout (merging at a stage's END, wrapped in "model") is renamed on load.
    original = {re.sub(r"layers\.(\d+)\.downsample", lambda g: f"layers.{int(g.group(1)) - 1}.downsample", k): v
                for k, v in state.items()}
    torch.save({"model": original}, path)
    fresh = SwinUNet(1, 4)
    report = load_pretrained(fresh, path)
    torch.testing.assert_close(fresh.layers[2].downsample.norm.weight, state["layers.2.downsample.norm.weight"])
    assert "layers.2.blocks.5.attn.qkv.weight" in report["skipped"]   # Swin-T stage 2 has 6 blocks, lite 2
    assert not any(k.startswith("head") for k in report["loaded"])


def test_missing_or_foreign_weight_files_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pth.*pretrained: null"):
        SwinUNet(1, 4, img_size=32, pretrained=str(tmp_path / "nowhere.pth"))
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="does not look like a Swin checkpoint"):
        SwinUNet(1, 4, img_size=32, pretrained=str(tmp_path / "other.pth"))
