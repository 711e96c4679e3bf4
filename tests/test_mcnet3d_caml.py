"""MC-Net / MC-Net+ in 3D (and MC-Net+ in 2D) and CAML: nets (parameter counts, up-sampling, attention), the
losses on known inputs, the memory bank, one train step each and 3-step Trainer smoke runs on synthetic LA."""
import math

import pytest
import torch
from torch import nn

from benchmark.config import ConfigError, TrainConfig
from benchmark.nets.caml3d import CAML3D, CrossSampleAttention
from benchmark.nets.mcnet3d import InterpolatingVNetDecoder, MCNet2DPlus, NearestDecoder, mcnet3d_v1, mcnet3d_v2
from benchmark.nets.vnet import Up, VNet, VNetDecoder
from benchmark.run.trials import check_trainable
from method_helpers import method_ctx, method_ctx_3d, smoke_run_3d, tiny_batch, tiny_volumes
from methods.caml import (CAML, CAMLConfig, LabeledFeatureMemory, correlation_matrix, correlation_rows,
                          omni_correlation_loss)
from methods.mcnet import MCNet, MCNetConfig, MCNetPlus, binary_dice_loss, mutual_consistency, sharpen

LA = dict(lamda=0.5, consistency=1.0, consistency_rampup=40.0)   # the LA suites' MC-Net settings


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------------------------------------ nets
def test_reference_parameter_counts():
    # PROTOCOLS-3D-DATASETS.md §0 item 2 (instantiated reference classes, width 16, 1 input channel, 2 classes)
    v1, v2 = mcnet3d_v1(1, 2), mcnet3d_v2(1, 2)
    assert _count(v1) == 12_347_716
    assert _count(v2) == 15_246_566
    assert _count(v1.decoders[1]) == 2_898_850          # §A.1: the up_type 1/2 decoder
    assert _count(v1.encoder) + _count(v1.decoders[0]) == _count(VNet(1, 2)) == 9_448_866
    assert _count(CAML3D(1, 2)) == 20_128_836           # feat_dim 32, the class default train_caml.py uses
    assert _count(CAML3D(1, 2, feat_dim=64)) == 20_148_804
    assert _count(MCNet2DPlus(1, 4)) == 3_210_924       # ycwu1997/MC-Net unet.py MCNet2d_v2(1, 4), instantiated


def test_decoders_upsample_differently():
    torch.manual_seed(0)
    net = mcnet3d_v2(1, 2, width=4)
    d1, d2, d3 = net.decoders
    assert type(d1) is VNetDecoder and all(isinstance(u, Up) for u in d1.ups)
    assert isinstance(d2, InterpolatingVNetDecoder) and d2.mode == "trilinear"
    assert isinstance(d3, InterpolatingVNetDecoder) and d3.mode == "nearest"
    assert d2.ups[0][0].mode == "trilinear" and d2.ups[0][0].align_corners and d3.ups[0][0].mode == "nearest"
    assert not any(isinstance(m, nn.ConvTranspose3d) for m in (*d2.modules(), *d3.modules()))
    assert set(d1.state_dict()) == set(VNet(1, 2, width=4).decoder.state_dict())   # decoder 1 = the plain V-Net's
    assert len(mcnet3d_v1(1, 2, width=4).decoders) == 2
    net.eval()
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        outs = net(x)
        assert [tuple(o.shape) for o in outs] == [(1, 2, 16, 16, 16)] * 3
        assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[1], outs[2])
        torch.testing.assert_close(net.first(x), outs[0])
        # same weights, other up-sampling: only the interpolation differs between decoders 2 and 3
        d3.load_state_dict(d2.state_dict())
        assert not torch.allclose(d2(net.encoder(x)), d3(net.encoder(x)))
    # the 2D MC-Net+ UNet: decoder 3 up-samples by nearest interpolation
    net2d = MCNet2DPlus(1, 4)
    assert isinstance(net2d.decoder3, NearestDecoder) and _count(net2d.decoder3) == _count(net2d.decoder1)
    with torch.no_grad():
        o1, o2, o3 = net2d.eval()(torch.rand(1, 1, 32, 32))
    assert o1.shape == o3.shape == (1, 4, 32, 32) and not torch.allclose(o1, o3)


def test_cross_sample_attention_mixes_voxels_and_samples_in_training_only():
    torch.manual_seed(0)
    cma = CrossSampleAttention(8)
    for m in cma.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    x = torch.randn(2, 8, 2, 2, 2)
    with torch.no_grad():
        y = cma(x)
        other_sample = x.clone()
        other_sample[1] += 1.0
        assert not torch.allclose(cma(other_sample)[0], y[0])      # inter-sample: sample 0 sees sample 1
        other_voxel = x.clone()
        other_voxel[0, :, 0, 0, 0] += 1.0
        assert not torch.allclose(cma(other_voxel)[0, :, 1, 1, 1], y[0, :, 1, 1, 1])   # intra-sample
        assert torch.equal(cma.eval()(x), x)                        # identity at test time
    net = CAML3D(1, 2, width=4).eval()
    net.encoder1.load_state_dict(net.encoder2.state_dict(), strict=False)
    x = torch.rand(2, 1, 16, 16, 16)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(net.encoder1(x), net.encoder2(x)))
        torch.testing.assert_close(net.first(x), net(x)[0])
        logits_v, logits_a, emb_v, emb_a = net(x)
    assert logits_a.shape == (2, 2, 16, 16, 16) and emb_v.shape == emb_a.shape == (2, 4, 16, 16, 16)


# ---------------------------------------------------------------------------------------------- MC-Net losses
def test_sharpening_and_mutual_consistency_3d_known_values():
    p = torch.tensor([0.5, 0.9, 0.0, 1.0])
    torch.testing.assert_close(sharpen(p, 0.1), torch.tensor([0.5, 0.9 ** 10 / (0.9 ** 10 + 0.1 ** 10), 0.0, 1.0]))
    shape = (2, 1, 2, 2, 2)
    half = torch.full((2, 2, 2, 2, 2), 0.5)                                     # sharpen: 0.5
    fg = torch.cat([torch.zeros(shape), torch.ones(shape)], 1)                  # sharpen: itself
    bg = torch.cat([torch.ones(shape), torch.zeros(shape)], 1)
    # ordered pairs: (half, fg) (half, bg) (fg, half) (bg, half) 0.25 each; (fg, bg) (bg, fg) 1 each
    assert mutual_consistency([half, fg, bg], 0.1).item() == pytest.approx(3.0)
    assert mutual_consistency([half, fg], 0.1).item() == pytest.approx(0.5)


def test_binary_dice_has_the_factor_two_and_sums_over_the_batch():
    target = torch.tensor([[1, 0], [1, 1]])
    assert binary_dice_loss(target.float(), target == 1).item() == pytest.approx(0.0, abs=1e-7)
    probs = torch.tensor([[0.5, 0.5], [0.0, 1.0]])
    assert binary_dice_loss(probs, target == 1).item() == pytest.approx(1 - 2 * 1.5 / (2.0 + 3.0))


def test_mcnet_3d_step_la_weights_whole_batch_and_decoder1_prediction(monkeypatch):
    import methods.mcnet as mod

    seen = []
    real = mod.mutual_consistency
    monkeypatch.setattr(mod, "mutual_consistency",
                        lambda p, t, d: seen.append([x.shape[0] for x in p]) or real(p, t, d))
    torch.manual_seed(0)
    labeled, u = tiny_volumes(n=2, m=2, shape=(16, 16, 16))
    for cls, decoders in ((MCNet, 2), (MCNetPlus, 3)):
        seen.clear()
        mc = cls(MCNetConfig(**LA), method_ctx_3d())
        assert len(mc.model.decoders) == decoders
        out = mc.train_step(labeled, u, step=149)   # the reference's iter = step + 1: (149 + 1) // 150 = 1
        assert seen == [[4] * decoders]
        assert out["cons_weight"].item() == pytest.approx(math.exp(-5 * (1 - 1 / 40) ** 2))
        assert out["loss"].item() == pytest.approx(0.5 * out["loss_dice"].item() + out["cons_weight"].item()
                                                   * out["loss_cons"].item(), rel=1e-5)
        mc.train(False)
        x = torch.rand(1, 1, 16, 16, 16)
        with torch.no_grad():
            torch.testing.assert_close(mc.predict(x), mc.model(x)[0])
    with pytest.raises(ValueError, match="needs 2 classes"):
        MCNet(MCNetConfig(), method_ctx_3d(num_classes=3))
    assert MCNet.dims == MCNetPlus.dims == (2, 3) and MCNet.networks == ("unet", "vnet")
    check_trainable("mc-net-plus", MCNetPlus, TrainConfig(network="vnet", patch_size=(32, 32, 32),
                                                      augmentation="la-rotflip-crop"), 3, "suite: train")


def test_mcnet_plus_2d_builds_three_decoders_and_steps():
    torch.manual_seed(0)
    mc = MCNetPlus(MCNetConfig(), method_ctx())
    assert isinstance(mc.model, MCNet2DPlus)
    labeled, u = tiny_batch(n=2, m=2)
    out = mc.train_step(labeled, u, step=0)
    assert all(math.isfinite(v.item()) for v in out.values())
    mc.train(False)
    with torch.no_grad():
        torch.testing.assert_close(mc.predict(u), mc.model(u)[0])


# ----------------------------------------------------------------------------------------------- CAML pieces
def test_correlation_rows_filter_the_most_confident_per_class():
    label = torch.tensor([0, 1, 0, 1, 1])
    prob = torch.tensor([0.6, 0.9, 0.8, 0.7, 0.55])
    assert correlation_rows(label, prob, 2, num_filtered=2).tolist() == [2, 0, 1, 3]
    assert correlation_rows(label, prob, 2, num_filtered=10).tolist() == [2, 0, 1, 3, 4]
    assert correlation_rows(label, prob, 2, num_filtered=1).numel() == 0     # a class left with one voxel is skipped
    assert correlation_rows(torch.tensor([0, 1, 1]), torch.rand(3), 2, 10).tolist()[0] == 1   # class 0: one voxel


def test_omni_correlation_on_a_hand_computed_input():
    memory = [torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[0.0, 0.0], [1.0, 1.0]])]
    feature = torch.tensor([[0.1, 0.0]])   # products with the 4 entries: 0.1, 0, 0, 0.1 -> logits / 0.1 = 1, 0, 0, 1
    corr = correlation_matrix(feature, memory, 0.1)
    e = math.e
    torch.testing.assert_close(corr, torch.tensor([[e, 1, 1, e]]) / (2 * e + 2))
    p1, p2 = e / (2 * e + 2), 1 / (2 * e + 2)
    entropy = -2 * (p1 * math.log(p1) + p2 * math.log(p2))
    # equal matrices: the loss is their entropy (1.2753...), per row, whatever the number of rows
    assert omni_correlation_loss(corr, corr).item() == pytest.approx(entropy, rel=1e-6)
    assert omni_correlation_loss(corr.repeat(3, 1), corr.repeat(3, 1)).item() == pytest.approx(entropy, rel=1e-6)
    # zero when both branches' correlations are the same one-hot row
    sharp = correlation_matrix(torch.tensor([[100.0, 0.0]]), [memory[0], None], 0.1)
    torch.testing.assert_close(sharp, torch.tensor([[1.0, 0.0]]))
    assert omni_correlation_loss(sharp, sharp).item() == pytest.approx(0.0, abs=1e-6)
    # a class with a single memory entry, or no memory at all, gives no columns
    assert correlation_matrix(feature, [memory[0][:1], None], 0.1) is None
    assert correlation_matrix(feature, [None, None], 0.1) is None
    # the target branch (a) gets gradient too
    fv, fa = feature.clone().requires_grad_(), torch.tensor([[0.0, 0.1]], requires_grad=True)
    omni_correlation_loss(correlation_matrix(fv, memory, 0.1), correlation_matrix(fa, memory, 0.1)).backward()
    assert fv.grad.abs().sum() > 0 and fa.grad.abs().sum() > 0


def test_memory_keeps_the_last_scans_and_samples_from_their_union():
    mem = LabeledFeatureMemory(scans=2, num_classes=2)
    for k in range(3):   # features are their ids: scan k holds ids 10k .. 10k + 9, even ids class 0
        ids = torch.arange(10 * k, 10 * k + 10, dtype=torch.float32)
        mem.add(ids[:, None].repeat(1, 3), (ids % 2).long())
    assert len(mem.entries) == 2
    torch.manual_seed(0)
    drawn = mem.sample(per_class=10)
    ids0, ids1 = drawn[0][:, 0], drawn[1][:, 0]
    assert drawn[0].shape == (10, 3) and ids0.unique().numel() == 10 and set(ids0.tolist()) == set(range(10, 30, 2))
    assert set(ids1.tolist()) == set(range(11, 30, 2))
    assert mem.sample(per_class=11) == [None, None]
    some = mem.sample(per_class=4)[0][:, 0]
    assert some.unique().numel() == 4 and all(v in range(10, 30, 2) for v in some.tolist())


def test_caml_step_weights_memory_update_and_branch_v_prediction():
    torch.manual_seed(0)
    cfg = CAMLConfig(memory_per_class=8)
    caml = CAML(cfg, method_ctx_3d())
    assert caml.model.projection_head1[0].out_features == 32 and caml.memory.entries.maxlen == 4
    bn = caml.model.projection_head1[1]
    labeled, u = tiny_volumes(n=2, m=2, shape=(16, 16, 16))
    # the labeled entries: heads in eval mode (running statistics untouched), back in train mode afterwards
    probs = [torch.rand(2, 2, 16, 16, 16).softmax(1) for _ in range(2)]
    before = bn.running_mean.clone()
    caml._store_labeled(probs, torch.randn(2, 4, 16, 16, 16), torch.randn(2, 4, 16, 16, 16), labeled.label)
    assert torch.equal(bn.running_mean, before) and bn.training and len(caml.memory.entries) == 2
    correct = (probs[0].argmax(1) == labeled.label) & (probs[1].argmax(1) == labeled.label)
    assert sum(x.shape[0] for e in caml.memory.entries for x in e) == int(correct.sum())
    out = caml.train_step(labeled, u, step=299)   # (299 + 1) // 150 = 2
    ramp = math.exp(-5 * (1 - 2 / 40) ** 2)
    assert out["cons_weight"].item() == pytest.approx(ramp) and out["omni_weight"].item() == pytest.approx(0.05 * ramp)
    assert out["loss_omni"].item() > 0 and len(caml.memory.entries) == 4
    assert out["loss"].item() == pytest.approx(0.5 * out["loss_dice"].item() + ramp * out["loss_cons"].item()
                                               + 0.05 * ramp * out["loss_omni"].item(), rel=1e-5)
    caml.train(False)
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(caml.predict(x), caml.model(x)[0])
    assert CAML.dims == (3,) and CAML.networks == ("vnet",)
    with pytest.raises(ConfigError, match="3D only"):
        check_trainable("caml", CAML, TrainConfig(network="unet", patch_size=32), 2, "suite: train")


# ------------------------------------------------------------------------------------------------ smoke runs
@pytest.mark.parametrize("method", ["mc-net", "mc-net-plus"])
def test_mcnet_3d_trainer_smoke(tmp_path, method):
    rec = smoke_run_3d(tmp_path, method, MCNetConfig(**LA))
    assert all(math.isfinite(m["train/loss_cons"]) for m in rec.train.values())


def test_caml_trainer_smoke(tmp_path):
    rec = smoke_run_3d(tmp_path, "caml")
    assert all(math.isfinite(m["train/loss_omni"]) for m in rec.train.values())
