"""DAN and MC-Net: the discriminator, their distinctive pieces on known inputs, one step on tiny tensors,
3-step Trainer smoke runs."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.nets.discriminator import FCDiscriminator
from benchmark.nets.mcnet import MCNet2D, TransposedUpBlock
from benchmark.nets.unet import UNet2D, UpBlock
from methods.dan import DAN, LABELED, DANConfig, adversarial_loss, discriminator_targets
from methods.mcnet import MCNet, MCNetConfig, mcnet_dice_loss, mutual_consistency, sharpen
from method_helpers import SMOKE, method_ctx, smoke_run, tiny_batch




# ------------------------------------------------------------------------------------ discriminator
def test_discriminator_matches_the_reference_layout_at_256():
    d = FCDiscriminator(num_classes=4, in_channels=1)
    assert d.classifier.in_features == 64 * 32  # Linear(ndf*32, 2): AvgPool 7 on 16x16 leaves 2x2x512
    assert isinstance(d.avgpool, nn.AvgPool2d) and d.avgpool.kernel_size == 7
    d.eval()
    with torch.no_grad():
        out = d(torch.rand(2, 4, 256, 256).softmax(1), torch.rand(2, 1, 256, 256))
    assert out.shape == (2, 2)


def test_discriminator_small_patches_and_size_check():
    d = FCDiscriminator(4, 1, input_size=32)  # conv4 map 2x2 < 7: global average, Linear 512
    assert d.classifier.in_features == 512
    assert d(torch.rand(3, 4, 32, 32), torch.rand(3, 1, 32, 32)).shape == (3, 2)
    assert FCDiscriminator(4, 1, input_size=224).classifier.in_features == 2048  # 14x14 -> 2x2
    with pytest.raises(ValueError, match="disc_input_size"):
        d(torch.rand(1, 4, 64, 64), torch.rand(1, 1, 64, 64))


# ---------------------------------------------------------------------------------------------- DAN
def test_dan_label_convention_and_adversarial_term_pushes_towards_labeled():
    assert discriminator_targets(2, 3, torch.device("cpu")).tolist() == [1, 1, 0, 0, 0]
    logits = torch.zeros(3, 2, requires_grad=True)
    loss = adversarial_loss(logits)
    torch.testing.assert_close(loss, torch.tensor(math.log(2.0)))
    loss.backward()
    assert (logits.grad[:, LABELED] < 0).all() and (logits.grad[:, 1 - LABELED] > 0).all()  # descent raises "labeled"


def test_dan_segmenter_gradient_moves_d_towards_labeled():
    """One small step of the segmenter on the adversarial term alone raises D's 'labeled' logit margin."""
    torch.manual_seed(0)
    dan = DAN(DANConfig(disc_input_size=32), method_ctx())
    dan.discriminator.eval()
    _, u = tiny_batch()

    def margin():
        with torch.no_grad():
            out = dan.discriminator(dan.model(u).softmax(1), u)
        return (out[:, LABELED] - out[:, 1 - LABELED]).mean().item()

    dan.model.eval()  # deterministic forward (BN running stats, no dropout) to compare before/after
    before = margin()
    opt = torch.optim.SGD(dan.model.parameters(), lr=1.0)
    loss = adversarial_loss(dan.discriminator(dan.model(u).softmax(1), u))
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert margin() > before


def test_dan_step_updates_d_on_its_own_step_with_constant_lr():
    torch.manual_seed(0)
    dan = DAN(DANConfig(disc_input_size=32), method_ctx())
    assert set(dan.optimizers()) == {"optimizer", "d_optimizer"} and set(dan.modules()) == {"model", "discriminator"}
    group = dan.d_optimizer.param_groups[0]
    assert group["lr"] == 1e-4 and group["betas"] == (0.9, 0.99) and isinstance(dan.d_optimizer, torch.optim.Adam)
    group["lr"] = 1e-9  # as if the Trainer's poly schedule had decayed it: the step restores 1e-4
    d_before = [p.clone() for p in dan.discriminator.parameters()]
    s_before = [p.clone() for p in dan.model.parameters()]
    d_inputs = []
    dan.discriminator.register_forward_hook(lambda m, i, o: d_inputs.append((i[0].shape[0], i[0].requires_grad, m.training)))
    labeled, u = tiny_batch(n=2, m=3)
    out = dan.train_step(labeled, u, step=30000)
    assert group["lr"] == 1e-4
    # segmenter pass: unlabeled only, D in eval, gradient to the segmenter; D pass: whole batch, detached, D in train
    assert d_inputs == [(3, True, False), (5, False, True)]
    assert all(not torch.equal(a, b) for a, b in zip(d_before, dan.discriminator.parameters()))  # Adam moves all
    assert any(not torch.equal(a, b) for a, b in zip(s_before, dan.model.parameters()))
    assert out["cons_weight"].item() == pytest.approx(0.1)
    assert out["loss"].item() == pytest.approx(out["loss_sup"].item() + 0.1 * out["loss_adv"].item(), rel=1e-5)
    assert dan.model.training
    dan.train(False)
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(dan.predict(x), dan.model(x))


def test_dan_d_step_alone_changes_only_d():
    """The segmenter's loss does not touch D's weights: with the segmenter weight at 0 and D's lr at 0, D stays."""
    torch.manual_seed(0)
    dan = DAN(DANConfig(disc_input_size=32, d_lr=0.0), method_ctx())
    d_before = [p.clone() for p in dan.discriminator.parameters()]
    labeled, u = tiny_batch()
    dan.train_step(labeled, u, step=30000)
    assert all(torch.equal(a, b) for a, b in zip(d_before, dan.discriminator.parameters()))


def test_dan_trainer_smoke(synthetic, tmp_path):
    rec = smoke_run(synthetic, tmp_path, DAN, DANConfig(disc_input_size=SMOKE.patch_size[0]))
    assert all(math.isfinite(m["train/loss_d"]) for m in rec.metrics.values() if "train/loss" in m)


# ------------------------------------------------------------------------------------------- MC-Net
def test_sharpening_with_temperature_0_1():
    p = torch.tensor([0.0, 0.25, 0.5, 0.6, 1.0])
    expected = torch.tensor([0.0, 1 / (1 + 3.0 ** 10), 0.5, 0.6 ** 10 / (0.6 ** 10 + 0.4 ** 10), 1.0])
    torch.testing.assert_close(sharpen(p, 0.1), expected)
    assert expected[3] == pytest.approx(0.98295, abs=1e-5)
    # per element, no renormalisation over classes: a 3-class softmax sharpened no longer sums to 1
    q = sharpen(torch.tensor([0.5, 0.3, 0.2]), 0.1)
    assert q.sum().item() != pytest.approx(1.0, abs=1e-3)


def test_mutual_consistency_zero_when_decoders_agree_on_one_hot():
    onehot = F.one_hot(torch.randint(0, 4, (2, 8, 8)), 4).permute(0, 3, 1, 2).float()
    assert mutual_consistency([onehot, onehot.clone()], 0.1).item() == 0.0
    torch.manual_seed(0)
    a, b = torch.rand(2, 4, 8, 8).softmax(1), torch.rand(2, 4, 8, 8).softmax(1)
    expected = F.mse_loss(a, sharpen(b, 0.1)) + F.mse_loss(b, sharpen(a, 0.1))
    torch.testing.assert_close(mutual_consistency([a, b], 0.1), expected)


def test_mutual_consistency_gradient_flows_through_target_unless_detached():
    a = torch.rand(1, 4, 4, 4).softmax(1).requires_grad_()
    b = torch.rand(1, 4, 4, 4).softmax(1).requires_grad_()
    # only b's sharpened target in the (a, s(b)) term, as the reference (no stop-gradient)
    F.mse_loss(a.detach(), sharpen(b, 0.1)).backward()
    assert b.grad.abs().sum() > 0
    b.grad = None
    mutual_consistency([a, b], 0.1, detach_target=True).backward()
    torch.testing.assert_close(b.grad, 2 * (b - sharpen(a, 0.1)).detach() / b.numel())


def test_mcnet_dice_has_no_factor_two():
    target = torch.randint(0, 4, (2, 8, 8))
    target[0, 0, :4] = torch.arange(4)  # every class present
    perfect = F.one_hot(target, 4).permute(0, 3, 1, 2).float()
    assert mcnet_dice_loss(perfect, target).item() == pytest.approx(0.5, abs=1e-6)


def test_mcnet_decoders_differ_in_upsampling_and_unet_is_unchanged():
    net = MCNet2D(1, 4)
    assert all(isinstance(b, UpBlock) for b in net.decoder1.ups)
    assert all(isinstance(b, TransposedUpBlock) and isinstance(b.up, nn.ConvTranspose2d) for b in net.decoder2.ups)
    assert net.decoder2.ups[0].up.in_channels == 256 and net.decoder2.ups[0].up.out_channels == 128
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in net.decoder1.modules())
    assert sum(p.numel() for p in UNet2D(1, 4).parameters()) == 1_813_764
    unet_params = sum(p.numel() for p in net.encoder.parameters()) + sum(p.numel() for p in net.decoder1.parameters())
    assert unet_params == 1_813_764
    o1, o2 = net(torch.rand(2, 1, 32, 32))
    assert o1.shape == o2.shape == (2, 4, 32, 32) and not torch.equal(o1, o2)


def test_mcnet_step_consistency_covers_whole_batch_and_predicts_with_decoder1(monkeypatch):
    import methods.mcnet as mod

    seen = []
    real = mod.mutual_consistency
    monkeypatch.setattr(mod, "mutual_consistency", lambda p, t, d: seen.append([x.shape[0] for x in p]) or real(p, t, d))
    torch.manual_seed(0)
    mc = MCNet(MCNetConfig(), method_ctx())
    labeled, u = tiny_batch(n=2, m=3)
    before = [p.clone() for p in mc.model.parameters()]
    out = mc.train_step(labeled, u, step=149)  # the reference's iter (step + 1) // 150 = 1
    assert seen == [[5, 5]]
    assert out["cons_weight"].item() == pytest.approx(0.1 * math.exp(-5 * (1 - 1 / 200) ** 2))
    assert out["loss"].item() == pytest.approx(out["loss_dice"].item() + out["cons_weight"].item()
                                               * out["loss_cons"].item(), rel=1e-5)
    assert sum(not torch.equal(a, b) for a, b in zip(before, mc.model.parameters())) > 0
    mc.train(False)
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(mc.predict(x), mc.model(x)[0])
    # MC-Net builds its own two-decoder UNet: another `network` is refused when a suite expands
    from benchmark.config import ConfigError, TrainConfig
    from benchmark.run.trials import check_trainable

    assert MCNet.networks == ("unet", "vnet")
    with pytest.raises(ConfigError, match="mc-net builds its own network and accepts network 'unet' or 'vnet' only"):
        check_trainable("mc-net", MCNet, TrainConfig(network="swin-unet", patch_size=224), 2, "suite: train")


def test_mcnet_trainer_smoke(synthetic, tmp_path):
    rec = smoke_run(synthetic, tmp_path, MCNet, MCNetConfig())
    assert all(math.isfinite(m["train/loss_cons"]) for m in rec.metrics.values() if "train/loss" in m)
