"""MCF (LA, 3D): the ResNet34-UNet's parameter count against its architecture arithmetic, MCF's init, the
difference-review and competition pieces on hand-made inputs, the good-student gating against a literal
if/else step, predict = mean of the two softmaxes, and a 3-step Trainer run."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from benchmark.nets import NETWORKS, build_network
from benchmark.nets.mcf import ResNet34UNet, reference_init_
from methods.base import METHODS
from methods.mcf import (MCF, MCFConfig, cdr_loss, competition_mse, difference_mask, foreground_dice_loss,
                         mean_softmax_logits, sharpen_softmax)
from tests.method_helpers import method_ctx_3d, smoke_run_3d, tiny_volumes


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def resnet34_unet_arithmetic(width: int, in_channels: int = 1, num_classes: int = 2) -> tuple[int, int]:
    """(encoder, decoder) parameter counts from MCF's architecture (ResNet34.py / resnet.py @ad20659):
    7^3 stem conv (no bias) + BN; stages of 3, 4, 6, 3 BasicBlocks (two 3^3 convs without bias, two BNs, the
    first block's 1^3 shortcut conv + BN); the V-Net decoder (transposed 2^3 convs with bias + BN, 3^3 convs
    with bias + BN in stages of 3, 3, 2, 1, 1^3 head)."""
    enc = 7 ** 3 * in_channels * width + 2 * width
    c_in = width
    for i, depth in enumerate((3, 4, 6, 3)):
        c = width * 2 ** (i + 1)
        enc += 27 * c_in * c + 27 * c * c + c_in * c + 3 * 2 * c          # first block + shortcut
        enc += (depth - 1) * (2 * 27 * c * c + 2 * 2 * c)                 # the other blocks
        c_in = c
    dec = 0
    chans = [width * 2 ** i for i in (4, 3, 2, 1, 0)]
    for c_hi, c_lo, depth in zip(chans, chans[1:], (3, 3, 2, 1)):
        dec += 8 * c_hi * c_lo + c_lo + 2 * c_lo                          # up: ConvTranspose3d + BN
        dec += depth * (27 * c_lo * c_lo + c_lo + 2 * c_lo)               # conv stage
    dec += width * num_classes + num_classes                              # head
    return enc, dec


# ----------------------------------------------------------------------------------------- networks
def test_resnet34_unet_parameter_count_matches_the_architecture():
    enc, dec = resnet34_unet_arithmetic(16)
    assert (enc, dec) == (15_858_384, 2_071_970)            # by hand, as in benchmark/nets/mcf.py
    net = build_network("mcf-resnet34-unet", 1, 2)          # width 16 = the reference's n_filters / base
    assert n_params(net.encoder) == enc and n_params(net.decoder) == dec
    assert n_params(net) == 17_930_354
    assert n_params(build_network("vnet", 1, 2)) == 9_448_866   # PROTOCOLS-3D-DATASETS.md §A.1
    narrow = ResNet34UNet(1, 2, width=4)
    assert n_params(narrow) == sum(resnet34_unet_arithmetic(4)) == 1_123_790
    method = MCF(MCFConfig(), method_ctx_3d(width=16))           # the pair MCF trains at the reference width
    assert (n_params(method.vnet), n_params(method.resnet)) == (9_448_866, 17_930_354)
    assert sum(n_params(m) for m in method.modules().values()) == 27_379_220
    spec = NETWORKS.get("mcf-resnet34-unet")
    assert spec.dims == (3,) and spec.multiple == 16


def test_resnet34_unet_shapes_and_dropout_only_before_the_head():
    net = ResNet34UNet(1, 2, width=4)
    feats = net.encode(torch.randn(1, 1, 32, 32, 16))
    assert [tuple(f.shape[1:]) for f in feats] == [(4, 32, 32, 16), (8, 16, 16, 8), (16, 8, 8, 4),
                                                   (32, 4, 4, 2), (64, 2, 2, 1)]
    assert net(torch.randn(2, 1, 32, 32, 16)).shape == (2, 2, 32, 32, 16)
    assert not hasattr(net.encoder, "dropout") and net.decoder.has_dropout
    with pytest.raises(ValueError, match="multiple of 16"):
        net(torch.randn(1, 1, 24, 32, 32))


def test_reference_init_undoes_zero_gamma_and_is_kaiming_normal():
    torch.manual_seed(0)
    net = ResNet34UNet(1, 2, width=16)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    assert all(bool((m.weight == 1).all()) and bool((m.bias == 0).all()) for m in bns)
    w = net.encoder.stages[2][1].conv1.weight                 # 128 -> 128, fan_in 27 * 128
    assert abs(w.std().item() / math.sqrt(2 / (27 * 128)) - 1) < 0.01
    vnet = reference_init_(build_network("vnet", 1, 2))
    w = vnet.decoder.stages[0][0].weight                      # 128 -> 128 conv of the V-Net decoder
    assert abs(w.std().item() / math.sqrt(2 / (27 * 128)) - 1) < 0.01


# ------------------------------------------------------------------------------------ loss pieces
def test_foreground_dice_by_hand():
    p = torch.tensor([[1.0, 0.5, 0.0, 0.25]])
    t = torch.tensor([[1, 1, 0, 0]], dtype=torch.bool)
    # I = 1.5, sum p^2 = 1 + 0.25 + 0.0625 = 1.3125, sum t^2 = 2
    expected = 1 - (3 + 1e-5) / (3.3125 + 1e-5)
    assert foreground_dice_loss(p, t).item() == pytest.approx(expected, rel=1e-6)
    assert foreground_dice_loss(t.float(), t).item() == pytest.approx(0.0, abs=1e-6)


def test_difference_mask_is_the_xor_of_the_argmax_foregrounds():
    fg_a = torch.tensor([[0.9, 0.2, 0.7, 0.1]])               # argmax fg: 1 0 1 0
    fg_b = torch.tensor([[0.6, 0.8, 0.3, 0.4]])               #            1 1 0 0
    probs = lambda fg: torch.stack([1 - fg, fg], 1)           # noqa: E731
    mask = difference_mask(probs(fg_a), probs(fg_b))
    assert mask.tolist() == [[0.0, 1.0, 1.0, 0.0]]
    assert not mask.requires_grad


def test_cdr_loss_averages_the_squared_error_over_disagreeing_voxels():
    p = torch.tensor([[0.9, 0.2, 0.7, 0.1]], requires_grad=True)
    y = torch.tensor([[1, 1, 0, 0]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    loss = cdr_loss(p, y, mask)
    assert loss.item() == pytest.approx((0.8 ** 2 + 0.7 ** 2) / 2, rel=1e-6)   # 0.565
    loss.backward()
    assert p.grad.tolist()[0][0] == 0 and p.grad.tolist()[0][3] == 0          # agreeing voxels: no gradient
    assert cdr_loss(p, y, torch.zeros_like(mask)).item() == 0.0               # nets agree everywhere: 0


def test_sharpen_and_competition_mse_by_hand():
    probs = torch.tensor([0.6, 0.4]).view(1, 2, 1, 1, 1).requires_grad_()
    pl = sharpen_softmax(probs, 0.1)
    hi = 0.6 ** 10 / (0.6 ** 10 + 0.4 ** 10)                                   # 0.98295...
    assert pl.flatten().tolist() == pytest.approx([hi, 1 - hi], rel=1e-5)
    assert not pl.requires_grad
    # mean over both channels: ((0.6 - hi)^2 + (0.4 - (1 - hi))^2) / 2 = (0.6 - hi)^2
    assert competition_mse(probs, pl).item() == pytest.approx((0.6 - hi) ** 2, rel=1e-5)


def test_config_defaults_are_the_la_reference():
    cfg = MCFConfig()
    assert (cfg.consistency, cfg.consistency_rampup, cfg.rampup_unit, cfg.temperature, cfg.cdr_weight) == \
        (0.1, 40.0, 150, 0.1, 0.5)
    assert cfg.consistency_weight(0) == pytest.approx(0.1 * math.exp(-5))
    assert cfg.consistency_weight(6000) == pytest.approx(0.1)
    assert METHODS.get("mcf") is MCF and MCF.dims == (3,) and MCF.networks == ("vnet",)
    assert MCF.also_builds == ("mcf-resnet34-unet",)


# ------------------------------------------------------------------------------------ the method
def _method(width: int = 2, **cfg) -> MCF:
    ctx = method_ctx_3d(width=width, lr=0.01)
    ctx.network_options = {"width": width, "has_dropout": False}   # deterministic forwards for the checks
    return MCF(MCFConfig(**cfg), ctx)


def _reference_style_losses(vnet, resnet, labeled, unlabeled, weight, T=0.1):
    """One MCF iteration written as train_MCF.py L161-225 reads: a literal if/else on the good student."""
    n = labeled.image.shape[0]
    x = torch.cat([labeled.image, unlabeled])
    zv, zr = vnet(x), resnet(x)
    y = labeled.label
    pv, pr = F.softmax(zv, 1), F.softmax(zr, 1)
    dv = foreground_dice_loss(pv[:n, 1], y == 1)
    dr = foreground_dice_loss(pr[:n, 1], y == 1)
    good = 0 if dv < dr else 1
    diff = ((pv[:n].argmax(1) == 1) ^ (pr[:n].argmax(1) == 1)).float()
    mse_v = (diff * (pv[:n, 1] - y) ** 2).sum() / (diff.sum() + 1e-16)
    mse_r = (diff * (pr[:n, 1] - y) ** 2).sum() / (diff.sum() + 1e-16)
    sv = F.cross_entropy(zv[:n], y) + dv + 0.5 * mse_v
    sr = F.cross_entropy(zr[:n], y) + dr + 0.5 * mse_r
    teacher = (pv if good == 0 else pr)[n:].detach() ** (1 / T)
    plabel = teacher / teacher.sum(1, keepdim=True)
    if good == 0:
        return sv, sr + weight * ((pr[n:] - plabel) ** 2).mean(), good
    return sv + weight * ((pv[n:] - plabel) ** 2).mean(), sr, good


@pytest.mark.parametrize("seed, expected_good", [(1, 1), (2, 0)])   # both branches: ResNet, then V-Net teaches
def test_train_step_matches_a_literal_if_else_step(seed, expected_good):
    torch.manual_seed(seed)
    method = _method()
    labeled, unlabeled = tiny_volumes(2, 2, (16, 16, 16), seed=seed)
    step = 3000
    vnet, resnet = copy.deepcopy(method.vnet), copy.deepcopy(method.resnet)
    weight = MCFConfig().consistency_weight(step)
    loss_v, loss_r, good = _reference_style_losses(vnet, resnet, labeled, unlabeled, weight)
    (loss_v + loss_r).backward()
    out = method.train_step(labeled, unlabeled, step)
    assert out["good_student"].item() == good == expected_good
    assert 0 < out["diff_fraction"].item() < 1                              # the review term is exercised
    assert out["loss_vnet"].item() == pytest.approx(loss_v.item(), rel=1e-5)
    assert out["loss_resnet"].item() == pytest.approx(loss_r.item(), rel=1e-5)
    for ref_net, net in ((vnet, method.vnet), (resnet, method.resnet)):   # same gradients, net by net
        for p_ref, p in zip(ref_net.parameters(), net.parameters()):
            assert torch.allclose(p_ref.grad, p.grad, rtol=1e-4, atol=1e-7)


def test_only_the_bad_student_gets_the_competition_term():
    torch.manual_seed(0)
    method = _method()
    labeled, unlabeled = tiny_volumes(2, 2, (16, 16, 16), seed=3)
    out = method.train_step(labeled, unlabeled, 6000)
    sup_v = out["loss_ce_vnet"] + out["loss_dice_vnet"] + 0.5 * out["loss_cdr_vnet"]
    sup_r = out["loss_ce_resnet"] + out["loss_dice_resnet"] + 0.5 * out["loss_cdr_resnet"]
    good_is_resnet = bool(out["good_student"].item())
    assert good_is_resnet == bool(out["loss_dice_vnet"] >= out["loss_dice_resnet"])
    student_loss, student_sup, teacher_loss, teacher_sup = (
        (out["loss_vnet"], sup_v, out["loss_resnet"], sup_r) if good_is_resnet
        else (out["loss_resnet"], sup_r, out["loss_vnet"], sup_v))
    assert teacher_loss.item() == pytest.approx(teacher_sup.item(), rel=1e-6)
    assert student_loss.item() == pytest.approx(student_sup.item() + 0.1 * out["loss_cons"].item(), rel=1e-5)
    assert 0 <= out["diff_fraction"].item() <= 1


def test_predict_is_the_log_of_the_mean_softmax():
    torch.manual_seed(0)
    method = _method()
    method.train(False)
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        logits = method.predict(x)
        mean = (method.vnet(x).softmax(1) + method.resnet(x).softmax(1)) / 2
    assert logits.shape == (2, 2, 16, 16, 16) and torch.isfinite(logits).all()
    assert torch.allclose(logits.softmax(1), mean, atol=1e-6)
    assert torch.allclose(logits.exp().sum(1), torch.ones(2, 16, 16, 16), atol=1e-5)   # log-probabilities
    big = torch.tensor([[-200.0, 200.0]]).view(1, 2, 1, 1, 1)                          # no -inf on saturation
    assert torch.isfinite(mean_softmax_logits(big, -big)).all()


def test_resnet_width_option_and_binary_only():
    method = _method(width=4, resnet_width=8)
    assert method.resnet.encoder.stem[0].out_channels == 8 and method.vnet.decoder.head.in_channels == 4
    assert set(method.optimizers()) == {"vnet_optimizer", "resnet_optimizer"}
    ctx = method_ctx_3d(num_classes=3)
    with pytest.raises(ValueError, match="binary"):
        MCF(MCFConfig(), ctx)


def test_smoke_run_3d(tmp_path):
    rec = smoke_run_3d(tmp_path, "mcf")
    assert {"train/loss_cdr_vnet", "train/good_student", "train/loss_cons"} <= set(rec.train[1])
