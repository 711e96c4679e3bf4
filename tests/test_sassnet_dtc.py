"""SASSNet and DTC (LA, 3D): the normalised SDF on hand-made masks, DTC's sigmoid(-1500 sdf) transform, the vnet-sdf
and discriminator shapes and parameter counts, the supervised / consistency / adversarial pieces, predict = [0, z],
the SASSNet step order (generator, then D at its own constant lr), and a 3-step Trainer run of each."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmark.config import ConfigError, TrainConfig
from benchmark.nets import NETWORKS, build_network
from benchmark.nets.discriminator import FC3DDiscriminator
from benchmark.nets.vnet import VNet
from benchmark.nets.vnet_sdf import VNetSDF
from benchmark.sdf import compute_sdf, inner_boundary, sdf_to_mask, signed_distance_map
from benchmark.run.trials import check_trainable
from methods.base import METHODS
from methods.dtc import DTC, DTCConfig, dual_task_consistency
from methods.sassnet import SASSNet, SASSNetConfig, sdf_supervised_loss, sigmoid_as_two_class
from method_helpers import method_ctx_3d, smoke_run_3d, tiny_volumes


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------------------------------- SDF
def cube_mask() -> np.ndarray:
    """A 6^3 cube at [3:9] in a 12^3 volume."""
    mask = np.zeros((12, 12, 12), dtype=np.int64)
    mask[3:9, 3:9, 3:9] = 1
    return mask


def test_sdf_of_a_cube_is_negative_inside_positive_outside_zero_on_the_inner_boundary():
    sdf = signed_distance_map(cube_mask())
    # deepest inside voxels (5 or 6 on every axis) are 3 voxels from the background: normalised to exactly -1
    assert sdf[5, 5, 5] == -1.0 and sdf[6, 5, 6] == -1.0 and sdf.min() == -1.0
    assert sdf[4, 5, 5] == pytest.approx(-2 / 3)                  # posdis 2 of max 3
    # the cube's faces, edges and corners (inner boundary) are 0; the voxel just outside is not
    assert sdf[3, 5, 5] == 0.0 and sdf[8, 6, 4] == 0.0 and sdf[3, 3, 3] == 0.0
    far = math.sqrt(27)                                            # volume corner (0,0,0) to cube corner (3,3,3)
    assert sdf[2, 5, 5] == pytest.approx(1 / far)
    assert sdf[1, 5, 5] == pytest.approx(2 / far)
    assert sdf[0, 0, 0] == 1.0 and sdf[11, 11, 11] == 1.0 and sdf.max() == 1.0
    inside = np.zeros_like(cube_mask(), dtype=bool)
    inside[4:8, 4:8, 4:8] = True
    assert (sdf[inside] < 0).all() and (sdf[cube_mask() == 0] > 0).all()
    assert (sdf == 0).sum() == 6 ** 3 - 4 ** 3                     # exactly the cube's shell


def test_sdf_edge_cases_and_nd():
    # a mask touching the volume edge has no boundary there (skimage's reflect mode), only at its free face
    half = np.zeros((8, 8), dtype=np.int64)
    half[:, :4] = 1
    b = inner_boundary(half)
    assert b[:, 3].all() and b.sum() == 8
    sdf = signed_distance_map(half)
    assert (sdf[:, 3] == 0).all() and sdf[:, :3].max() < 0 and sdf[:, 4:].min() > 0
    np.testing.assert_allclose(sdf[0], [-1, -3 / 4, -2 / 4, 0, 1 / 4, 2 / 4, 3 / 4, 1])   # posdis 4, 3, 2, (1)
    assert (signed_distance_map(np.zeros((5, 5))) == 0).all()       # empty: zeros, as the reference
    assert (signed_distance_map(np.ones((5, 5))) == -1).all()       # full: -1 (the reference: NaN)
    # batches: per-sample normalisation, float32 on the labels' device
    labels = torch.from_numpy(np.stack([cube_mask(), np.zeros((12, 12, 12), dtype=np.int64)]))
    out = compute_sdf(labels)
    assert out.dtype == torch.float32 and out.shape == labels.shape and out.device == labels.device
    assert out[0, 5, 5, 5] == -1 and (out[1] == 0).all()


def test_dtc_transform_is_a_steep_reversed_sigmoid_in_float32():
    sdf = torch.tensor([-1.0, -0.01, -0.001, 0.0, 0.001, 0.01, 1.0], dtype=torch.bfloat16)
    mask = sdf_to_mask(sdf)
    assert mask.dtype == torch.float32
    expected = torch.sigmoid(-1500 * sdf.float())
    torch.testing.assert_close(mask, expected)
    assert mask[3] == 0.5                                   # the zero level
    assert mask[0] == 1.0 and mask[-1] == 0.0               # inside -> 1, outside -> 0
    assert mask[1] > 0.999999 and mask[5] < 1e-6            # |sdf| = 0.01 is already saturated
    assert (mask[1:] <= mask[:-1]).all()                    # monotone decreasing
    # a reference SDF turns into (nearly) the binary mask, 0.5 on the inner boundary
    sdf = compute_sdf(torch.from_numpy(cube_mask())[None])
    soft = sdf_to_mask(sdf)[0]
    cube = torch.from_numpy(cube_mask()).bool()
    shell = sdf[0] == 0
    assert (soft[shell] == 0.5).all() and (soft[cube & ~shell] > 0.99).all() and (soft[~cube] < 0.01).all()


# ------------------------------------------------------------------------------------------------- networks
def test_parameter_counts_and_registration():
    full = build_network("vnet-sdf", 1, 2)
    assert isinstance(full, VNetSDF) and NETWORKS.get("vnet-sdf").factory is VNetSDF
    assert n_params(full) == 9_448_866 == n_params(VNet(1, 2))          # PROTOCOLS-3D-DATASETS.md §0 item 2
    assert full.decoder.head.out_channels == 1 and full.sdf_head.out_channels == 1
    d = build_network("fc3d-discriminator", 1, 2)
    assert isinstance(d, FC3DDiscriminator) and NETWORKS.get("fc3d-discriminator").role == "discriminator"
    # 2 first convs (1 -> 64) + 64 -> 128 -> 256 -> 512 (4^3 kernels, biases) + Linear(512, 2)
    assert n_params(d) == 2 * (64 * 64 + 64) + (64 * 128 * 64 + 128) + (128 * 256 * 64 + 256) \
        + (256 * 512 * 64 + 512) + 1026 == 11_020_290


def test_vnet_sdf_outputs_and_one_dropout_mask_for_both_heads():
    torch.manual_seed(0)
    net = VNetSDF(1, 2, width=4)
    x = torch.randn(2, 1, 16, 16, 16)
    sdf, seg = net(x)
    assert sdf.shape == seg.shape == (2, 1, 16, 16, 16)
    assert sdf.abs().max() <= 1
    with torch.no_grad():                                   # identical heads: tanh(seg) == sdf iff one mask
        net.sdf_head.weight.copy_(net.decoder.head.weight)
        net.sdf_head.bias.copy_(net.decoder.head.bias)
    net.train()
    sdf, seg = net(x)
    torch.testing.assert_close(sdf, torch.tanh(seg))
    with pytest.raises(ValueError, match="multiple of 16"):
        net(torch.randn(1, 1, 24, 16, 16))


def test_discriminator_output_shape_and_global_pool_at_the_reference_patch():
    d = FC3DDiscriminator(ndf=4).eval()
    assert d(torch.randn(3, 1, 32, 32, 32), torch.randn(3, 1, 32, 32, 32)).shape == (3, 2)
    d = FC3DDiscriminator(ndf=2).eval()
    seen = {}
    d.conv4.register_forward_hook(lambda m, i, o: seen.update(shape=tuple(o.shape[2:])))
    assert d(torch.randn(1, 1, 112, 112, 80), torch.randn(1, 1, 112, 112, 80)).shape == (1, 2)
    assert seen["shape"] == (7, 7, 5)        # the reference's AvgPool3d((7, 7, 5)) is a global average here
    with pytest.raises(ValueError):
        d(torch.randn(1, 1, 8, 32, 32), torch.randn(1, 1, 8, 32, 32))


# ------------------------------------------------------------------------------------------------- losses
def test_supervised_loss_is_reference_dice_plus_beta_sdf_mse():
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, 2, (2, 16, 16, 16), generator=g)
    seg = torch.randn(2, 1, 16, 16, 16, generator=g)
    sdf = torch.rand(2, 1, 16, 16, 16, generator=g) * 2 - 1
    loss, parts = sdf_supervised_loss(sdf, seg, label, beta=0.3)
    p, t = torch.sigmoid(seg[:, 0]), label.float()          # the reference's dice_loss, written out
    dice = 1 - (2 * (p * t).sum() + 1e-5) / ((p * p).sum() + (t * t).sum() + 1e-5)
    mse = ((sdf[:, 0] - compute_sdf(label)) ** 2).mean()
    torch.testing.assert_close(parts["loss_dice"], dice)
    torch.testing.assert_close(parts["loss_sdf"], mse)
    torch.testing.assert_close(loss, dice + 0.3 * mse)
    # a perfect prediction scores ~0
    cube = torch.from_numpy(cube_mask())[None]
    good, _ = sdf_supervised_loss(compute_sdf(cube)[:, None], (cube[:, None].float() * 2 - 1) * 50, cube, 0.3)
    assert good.item() < 1e-6
    with_ce, parts = sdf_supervised_loss(sdf, seg, label, beta=0.3, ce_weight=1.0)
    torch.testing.assert_close(with_ce, loss + F.binary_cross_entropy_with_logits(seg, label[:, None].float()))


def test_dual_task_consistency_on_known_inputs_reaches_both_heads():
    zeros = torch.zeros(1, 1, 2, 2, 2)
    assert dual_task_consistency(zeros, zeros).item() == 0.0            # 0.5 vs 0.5
    inside = torch.full((1, 1, 2, 2, 2), -1.0)
    assert dual_task_consistency(inside, torch.full_like(inside, 30.0)).item() == pytest.approx(0, abs=1e-12)
    assert dual_task_consistency(inside, torch.full_like(inside, -30.0)).item() == pytest.approx(1.0)
    sdf = torch.full((1, 1, 2, 2, 2), 1e-4, requires_grad=True)        # in the transform's steep range
    seg = torch.zeros(1, 1, 2, 2, 2, requires_grad=True)
    value = dual_task_consistency(sdf, seg)
    assert value.item() == pytest.approx((torch.sigmoid(torch.tensor(-0.15)) - 0.5).item() ** 2)
    value.backward()
    assert sdf.grad.abs().sum() > 0 and seg.grad.abs().sum() > 0


def test_predict_is_two_class_logits_whose_softmax_is_the_sigmoid():
    z = torch.randn(2, 1, 4, 4, 4)
    logits = sigmoid_as_two_class(z)
    assert logits.shape == (2, 2, 4, 4, 4)
    torch.testing.assert_close(logits.softmax(1)[:, 1:], torch.sigmoid(z))
    assert ((logits.argmax(1) == 1) == (torch.sigmoid(z[:, 0]) > 0.5)).all()
    method = DTC(DTCConfig(), method_ctx_3d())
    method.train(False)
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(method.predict(x), sigmoid_as_two_class(method.model(x)[1]))


def test_configs_hold_the_la_reference_defaults():
    s, d = SASSNetConfig(), DTCConfig()
    assert (s.consistency, s.consistency_rampup, s.rampup_unit, s.beta, s.d_lr, s.d_beta1, s.d_beta2) == \
        (0.01, 40.0, 150, 0.3, 1e-4, 0.9, 0.99)
    assert (d.consistency, d.consistency_rampup, d.beta, d.transform_k, d.ce_weight) == (1.0, 40.0, 0.3, 1500.0, 0.0)
    assert s.consistency_weight(0) == pytest.approx(0.01 * math.exp(-5))
    assert s.consistency_weight(149) == s.consistency_weight(0)         # iter // 150
    assert s.consistency_weight(6000) == pytest.approx(0.01) and d.consistency_weight(6000) == pytest.approx(1.0)
    assert METHODS.get("sassnet") is SASSNet and METHODS.get("dtc") is DTC
    for cls in (SASSNet, DTC):
        assert cls.dims == (3,) and cls.networks == ("vnet",)
    with pytest.raises(ValueError, match="binary"):
        DTC(DTCConfig(), method_ctx_3d(num_classes=3))
    la = TrainConfig(network="vnet", patch_size=(112, 112, 80), augmentation="la-rotflip-crop")
    for name, cls in (("sassnet", SASSNet), ("dtc", DTC)):
        check_trainable(name, cls, la, 3, "suite: train")       # vnet-sdf and the discriminator take the LA patch
        with pytest.raises(ConfigError, match="3D only"):
            check_trainable(name, cls, TrainConfig(network="unet", patch_size=256), 2, "suite: train")


# ------------------------------------------------------------------------------------------------- SASSNet step
def test_sassnet_step_updates_the_discriminator_at_its_own_constant_lr_on_reference_targets():
    torch.manual_seed(0)
    method = SASSNet(SASSNetConfig(d_ndf=8), method_ctx_3d(lr=0.01, patch=(16, 16, 16)))
    for group in method.d_optimizer.param_groups:
        group["lr"] = 1e-7                  # as if the Trainer's step schedule had decayed it
    before = {k: v.clone() for k, v in method.discriminator.state_dict().items()}
    seg_before = method.model.decoder.head.weight.clone()
    seen = []
    method.discriminator.register_forward_pre_hook(
        lambda m, args: seen.append((m.training, args[0].shape[0], args[0].requires_grad)))
    labeled, u = tiny_volumes(n=2, m=2, shape=(16, 16, 16))
    out = method.train_step(labeled, u, step=0)
    # generator pass: D in eval on the 2 unlabeled SDF maps (with grad); then D in train on all 4 (no grad)
    assert seen == [(False, 2, True), (True, 4, False)]
    assert method.d_optimizer.param_groups[0]["lr"] == 1e-4
    after = method.discriminator.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(seg_before, method.model.decoder.head.weight)
    assert method.model.training
    assert {"loss", "loss_sup", "loss_dice", "loss_sdf", "loss_adv", "loss_d", "d_acc", "cons_weight"} <= set(out)
    assert all(torch.isfinite(v) for v in out.values())
    torch.testing.assert_close(out["loss"], out["loss_sup"] + 0.01 * math.exp(-5) * out["loss_adv"])


def test_sassnet_adversarial_target_is_labeled_and_d_targets_are_labeled_then_unlabeled():
    """With D's last layer forced to favour class 0 ("unlabeled"), the generator's CE against "labeled" is large
    and D's own CE against [1, 1, 0, 0] is ln(1 + e^a) averaged over the two labeled entries."""
    method = SASSNet(SASSNetConfig(d_lr=0.0, d_ndf=8), method_ctx_3d(lr=0.0, patch=(16, 16, 16)))
    with torch.no_grad():
        method.discriminator.classifier.weight.zero_()
        method.discriminator.classifier.bias.copy_(torch.tensor([4.0, 0.0]))
    labeled, u = tiny_volumes(n=2, m=2, shape=(16, 16, 16))
    out = method.train_step(labeled, u, step=0)
    assert out["loss_adv"].item() == pytest.approx(math.log1p(math.exp(4.0)), rel=1e-5)
    assert out["loss_d"].item() == pytest.approx(0.5 * math.log1p(math.exp(4.0)) + 0.5 * math.log1p(math.exp(-4.0)),
                                                 rel=1e-5)
    assert out["d_acc"].item() == 0.5


# ------------------------------------------------------------------------------------------------- Trainer
@pytest.mark.parametrize("method", ["sassnet", "dtc"])
def test_smoke_run_3d(tmp_path, method):
    # a narrow discriminator too (ndf 8; the default 64 is instantiated in test_parameter_counts_and_registration)
    rec = smoke_run_3d(tmp_path, method, SASSNetConfig(d_ndf=8) if method == "sassnet" else None)
    keys = {"train/loss_dice", "train/loss_sdf", "train/cons_weight"}
    keys |= {"train/loss_adv", "train/loss_d"} if method == "sassnet" else {"train/loss_cons"}
    assert keys <= set(rec.train[1])
    assert rec.train[1]["train/lr"] == pytest.approx(0.01)      # the segmenter's optimiser is the one logged
