"""The LA-literature V-Net: reference parameter count, shapes, width, dropout and a short learning check."""
import pytest
import torch
import torch.nn.functional as F

from benchmark.nets.vnet import VNet


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _dice_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """0.5 * (CE + soft Dice over all classes) for (B, C, D, H, W) logits and (B, D, H, W) labels."""
    probs = logits.softmax(1)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 4, 1, 2, 3).float()
    dims = (0, 2, 3, 4)
    dice = 1 - (2 * (probs * onehot).sum(dims) + 1e-5) / ((probs ** 2).sum(dims) + (onehot ** 2).sum(dims) + 1e-5)
    return 0.5 * (F.cross_entropy(logits, target) + dice.mean())


def test_reference_parameter_count_and_encoder_decoder_split():
    net = VNet(in_channels=1, num_classes=2)
    assert _count(net) == 9_448_866                 # instantiated ycwu1997/SS-Net VNet(n_channels=1, n_classes=2)
    assert _count(net.encoder) == 7_376_896
    assert _count(net.decoder) == 2_071_970
    assert (VNet.dims, VNet.multiple) == (3, 16)


def test_narrow_net_output_shape_and_five_features():
    torch.manual_seed(0)
    net = VNet(1, 3, width=4).eval()
    x = torch.rand(2, 1, 32, 32, 16)
    with torch.no_grad():
        features = net.encode(x)
        assert [f.shape[1] for f in features] == [4, 8, 16, 32, 64]
        assert [tuple(f.shape[2:]) for f in features] == [(32 // 2 ** i, 32 // 2 ** i, 16 // 2 ** i) for i in range(5)]
        out = net(x)
    assert out.shape == (2, 3, 32, 32, 16)
    torch.testing.assert_close(out, net.decode(features))
    with pytest.raises(ValueError, match="multiple of 16"):
        net(torch.rand(1, 1, 32, 32, 24))


def test_width_scales_channels():
    small, wide = VNet(width=4), VNet(width=8)
    assert small.encoder.stages[-1][0].out_channels == 64 and wide.encoder.stages[-1][0].out_channels == 128
    assert small.decoder.head.in_channels == 4 and wide.decoder.head.in_channels == 8
    assert _count(small) < _count(wide) < _count(VNet())


def test_eval_is_deterministic_and_training_dropout_is_not():
    torch.manual_seed(0)
    net = VNet(1, 2, width=4)
    x = torch.rand(2, 1, 16, 16, 16)
    with torch.no_grad():
        net.eval()
        torch.testing.assert_close(net(x), net(x))
        net.train()
        assert not torch.allclose(net(x), net(x))
        quiet = VNet(1, 2, width=4, has_dropout=False)
        quiet.load_state_dict(net.state_dict())
        torch.testing.assert_close(quiet.train()(x), quiet(x))   # BN uses batch stats; nothing random left


def test_multi_channel_input():
    torch.manual_seed(0)
    net = VNet(in_channels=2, num_classes=2, width=4)
    out = net(torch.rand(2, 2, 16, 16, 16))   # batch 2: a 16^3 input leaves a 1x1x1 bottleneck for BN
    assert out.shape == (2, 2, 16, 16, 16)
    out.sum().backward()
    assert net.encoder.stages[0][0].weight.grad.shape[1] == 2


def test_learns_a_bright_sphere_in_noise():
    torch.manual_seed(0)
    # two 16^3 volumes, not one: a single 16^3 input has a 1x1x1 bottleneck, which BatchNorm refuses in training
    grid = torch.stack(torch.meshgrid(*[torch.arange(16.0)] * 3, indexing="ij"))
    y = torch.stack([((grid - c) ** 2).sum(0) < r ** 2 for c, r in ((7.5, 5.0), (6.0, 4.0))]).long()
    x = (y.float() + 0.3 * torch.randn(2, 16, 16, 16))[:, None]
    net = VNet(1, 2, width=4, has_dropout=False)  # p=0.5 channel dropout on 4 channels makes 30 steps too noisy
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = _dice_ce(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
