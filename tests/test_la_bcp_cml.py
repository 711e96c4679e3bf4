"""BCP and CML in 3D (LA): the 2/3 box on the LA patch, 3D pastes with a known box, the 3D pseudo-label rule
(foreground >= 0.5 + largest 26-connected component), BCP's LA losses (masked per-sample Dice region weights,
whole-volume pre-training loss) on hand-computed inputs, CML's heterogeneous targets in 3D, the CML V-Net's
19,724,612 parameters, the stage plans and hand-over optimisers, and two-stage Trainer smoke runs whose lr
is constant while pre-training and steps while self-training."""
import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from benchmark.losses import dice_loss_per_sample
from benchmark.mixing import Box, box_mask, paste, sample_box
from benchmark.nets import NETWORKS, build_network
from benchmark.nets.cml import CoTrainingVNet, TrilinearUp
from benchmark.nets.vnet import VNet
from methods.base import Labeled, MethodContext, Stage
from methods.bcp import BCP, BCPConfig, Mix, bidirectional_mix, mix_loss, pseudo_labels, \
    whole_loss
from methods.cml import CML, CMLConfig, heterogeneous_targets
from method_helpers import SMOKE_3D, method_ctx, method_ctx_3d, smoke_run_3d, tiny_volumes

LA_PATCH = (112, 112, 80)
SMALL = (16, 16, 16)
# the LA suites' method_config (2000 / 15000 pre-training, the LA script's Dice, losses and hand-over)
BCP_LA = BCPConfig(pretrain_fraction=2 / 15, dice="per_sample", dice_smooth=1e-5, pretrain_loss="whole",
                   fresh_optimizer=True)
CML_LA = CMLConfig(beta=2 / 3, lambda_u=1.0, lambda_dis=0.2, pretrain_fraction=2 / 15, fresh_optimizer=False,
                   ensemble="logits")
LN2 = math.log(2.0)


def sgd_ctx(patch: tuple[int, ...] = SMALL) -> MethodContext:
    """The LA optimiser (SGD 0.01, momentum 0.9, weight decay 1e-4) on a width-4 V-Net."""
    return MethodContext(1, 2, 100, "vnet", lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, weight_decay=1e-4),
                         patch, {"width": 4})


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------------------------- the box
def test_two_thirds_of_the_la_patch_is_context_masks_74_74_53_box_at_a_random_start():
    """BCP `context_mask` / CML `generate_mask_3D`: int(2/3 side) = 74, 74, 53, starts in [0, 38) x [0, 38) x
    [0, 27)."""
    g = torch.Generator().manual_seed(0)
    boxes = [sample_box(LA_PATCH, 2 / 3, g) for _ in range(600)]
    assert {b.size for b in boxes} == {(74, 74, 53)}
    for axis, bound in enumerate((112 - 74, 112 - 74, 80 - 53)):
        starts = {b.start[axis] for b in boxes}
        assert min(starts) == 0 and max(starts) == bound - 1   # the far border is never drawn
    x = torch.zeros(1, 1, *LA_PATCH)
    ctx = method_ctx_3d(patch=LA_PATCH)
    assert BCP(BCP_LA, ctx)._box(x).sum() == 74 * 74 * 53
    assert CML(CML_LA, ctx).box(x).sum() == 74 * 74 * 53


def test_3d_pastes_take_the_box_from_one_volume_and_the_rest_from_the_other():
    shape = (4, 6, 5)       # depth 4 = batch 4: the (*spatial) mask would also read as a batched 2D mask
    mask = box_mask(shape, Box((1, 2, 0), (2, 3, 4)))
    inside = mask.bool()
    assert int(mask.sum()) == 2 * 3 * 4 and inside[1:3, 2:5, 0:4].all()

    def vol(v: float) -> torch.Tensor:
        return torch.full((4, 1, *shape), v)

    def lab(v: int) -> torch.Tensor:
        return torch.full((4, *shape), v, dtype=torch.long)

    into_u, into_l = bidirectional_mix(Labeled(vol(1), lab(1)), Labeled(vol(2), lab(2)), vol(3), lab(3), vol(4),
                                       lab(4), mask, u_weight=0.5)
    assert torch.equal(into_u.image[:, 0], torch.where(inside, 1.0, 3.0).expand(4, *shape))   # labeled a in the box
    assert torch.equal(into_u.label(mask), torch.where(inside, 1, 3).expand(4, *shape))
    assert torch.equal(into_l.image[:, 0], torch.where(inside, 4.0, 2.0).expand(4, *shape))   # unlabeled b in the box
    assert torch.equal(into_l.label(mask), torch.where(inside, 4, 2).expand(4, *shape))
    assert (into_u.w_outside, into_u.w_inside, into_l.w_outside, into_l.w_inside) == (0.5, 1.0, 1.0, 0.5)
    with pytest.raises(ValueError, match="ambiguous"):   # why the methods pass spatial_dims
        paste(lab(0), lab(1), mask)


# ------------------------------------------------------------------------------------------ pseudo-labels
def test_3d_pseudo_labels_threshold_the_foreground_and_keep_the_largest_26_connected_component():
    fg = torch.zeros(1, 6, 6, 6)
    fg[0, 0:2, 0:2, 0:2] = 1        # an 8-voxel cube ...
    fg[0, 2, 2, 2] = 1              # ... and a voxel touching it at a corner only: one component (26-connectivity)
    fg[0, 4:6, 4:6, 5] = 1          # a 4-voxel blob elsewhere: removed
    logits = torch.stack([torch.zeros_like(fg), 4 * fg - 2], 1)
    logits[0, 1, 1, 1, 2] = 0.0     # a tie next to the cube: p = 0.5, foreground under LA's p >= 0.5
    expected = fg.long()
    expected[0, 4:6, 4:6, 5] = 0
    expected[0, 1, 1, 2] = 1
    assert torch.equal(pseudo_labels(logits, True, threshold=0.5), expected)
    assert pseudo_labels(logits, True)[0, 1, 1, 2] == 0          # argmax (ACDC) gives the tie to background
    assert int(pseudo_labels(logits, False, threshold=0.5).sum()) == 8 + 1 + 4 + 1
    assert BCP(BCP_LA, method_ctx_3d()).threshold == 0.5 and BCP(BCPConfig(), method_ctx()).threshold is None
    assert torch.equal(CML(CML_LA, method_ctx_3d()).pseudo_labels(logits), expected)


# ------------------------------------------------------------------------------------------- BCP losses
def test_bcp_la_mix_loss_weighs_the_labeled_region_1_and_the_pseudo_labelled_region_0_5():
    """Zero logits (p = 0.5) on a 2x2x2 volume, box = the first depth slice: 4 voxels of class 1 inside
    (pseudo-labelled, weight 0.5), 4 of class 0 outside (labeled, weight 1) - LA's mix 1 layout."""
    mask = box_mask((2, 2, 2), Box((0, 0, 0), (1, 2, 2)))
    outside_t = torch.zeros(1, 2, 2, 2, dtype=torch.long)
    inside_t = torch.ones(1, 2, 2, 2, dtype=torch.long)
    mix = Mix(torch.zeros(1, 1, 2, 2, 2), outside_t, inside_t, 1.0, 0.5)
    logits = torch.zeros(1, 2, 2, 2, 2)
    eps = 1e-5
    # per region (4 voxels): the present class (2 * 0.5 * 4 + eps) / (0.5 * 4 + 4 + eps), the absent eps / (2 + eps)
    region = 1 - ((4 + eps) / (6 + eps) + eps / (2 + eps)) / 2          # = 2/3
    dice, ce = mix_loss(logits, mix, mask, eps, dice="per_sample")
    assert dice.item() == pytest.approx(1.5 * region, rel=1e-6) and ce.item() == pytest.approx(1.5 * LN2, rel=1e-6)
    # ACDC's DiceLoss on the same input: squared terms, 4 / (4 * 0.25 + 4) = 0.8 for the present class
    dice_acdc, _ = mix_loss(logits, mix, mask, 1e-10)
    assert dice_acdc.item() == pytest.approx(1.5 * (1 - 0.8 / 2), rel=1e-6)
    # the reference's per-mix (Dice + CE) / 2, summed over the two mixes = the harness's (D1 + D2 + C1 + C2) / 2
    d2, c2 = mix_loss(logits, mix._replace(w_outside=0.5, w_inside=1.0), mask, eps, dice="per_sample")
    torch.testing.assert_close((dice + ce) / 2 + (d2 + c2) / 2, (dice + d2 + ce + c2) / 2)


def test_masked_per_sample_dice_is_mask_dice_loss_per_sample_on_the_masked_voxels():
    torch.manual_seed(0)
    probs = torch.randn(2, 2, 4, 4, 6).softmax(1)
    target = torch.randint(0, 2, (2, 4, 4, 6))
    torch.testing.assert_close(dice_loss_per_sample(probs, target, mask=torch.ones(2, 4, 4, 6)),
                               dice_loss_per_sample(probs, target))
    mask = torch.zeros(2, 4, 4, 6)
    mask[..., :3] = 1
    torch.testing.assert_close(dice_loss_per_sample(probs, target, mask=mask),
                               dice_loss_per_sample(probs[..., :3].contiguous(), target[..., :3].contiguous()))


def test_bcp_la_pretraining_scores_the_whole_mixed_volume():
    """LA pre-training: CE + Dice over the whole mix against the mixed label (not the two-region sum)."""
    mask = box_mask((2, 2, 2), Box((0, 0, 0), (1, 2, 2)))
    label = paste(torch.zeros(1, 2, 2, 2, dtype=torch.long), torch.ones(1, 2, 2, 2, dtype=torch.long), mask, 3)
    logits = torch.zeros(1, 2, 2, 2, 2)
    dice, ce = whole_loss(logits, label, 1e-5)
    assert dice.item() == pytest.approx(0.5, abs=1e-6) and ce.item() == pytest.approx(LN2, rel=1e-6)   # 4/8 per class
    regions = mix_loss(logits, Mix(logits[:, :1], label, label, 1.0, 1.0), mask, 1e-5, dice="per_sample")
    assert regions[0].item() == pytest.approx(4 / 3, rel=1e-4) and regions[1].item() == pytest.approx(2 * LN2)

    # the method's pre-training step computes exactly that on its own box (lr 0: the weights stay put)
    ctx = MethodContext(1, 2, 100, "vnet", lambda p: torch.optim.SGD(p, lr=0.0), SMALL,
                        {"width": 4, "has_dropout": False})
    bcp = BCP(BCP_LA, ctx)
    labeled, u = tiny_volumes(4, 4, SMALL)   # 2 + 2 labeled halves (a batch of 1 at 16^3 leaves BN one value)
    torch.manual_seed(3)
    out = bcp.train_step(labeled, u, 0)
    torch.manual_seed(3)
    box = box_mask(SMALL, sample_box(SMALL, 2 / 3))
    (a, b), (ya, yb) = labeled.image.split(2), labeled.label.split(2)
    with torch.no_grad():
        want_dice, want_ce = whole_loss(bcp.model(paste(a, b, box, 3)), paste(ya, yb, box, 3), 1e-5)
    assert out["loss_dice"].item() == pytest.approx(want_dice.item(), rel=1e-5)
    assert out["loss_ce"].item() == pytest.approx(want_ce.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx((want_dice + want_ce).item() / 2, rel=1e-5)


# -------------------------------------------------------------------------------------------------- CML
def test_cml_3d_heterogeneous_targets_follow_eq9():
    shape = (2, 3, 3)               # depth 2 = k: the mask would also read as a batched 2D mask
    inside = box_mask(shape, Box((0, 1, 1), (1, 2, 2)))
    box = inside.bool()
    p0 = torch.stack([torch.full(shape, v, dtype=torch.long) for v in (1, 2, 3, 4)])   # X_p = 1, 2; X_q = 3, 4
    p1 = p0 + 10
    t0, t1 = heterogeneous_targets(p0, p1, inside)
    # branch i: the other branch's label of X_p outside the box, its own label of X_q inside
    assert torch.equal(t0, torch.stack([torch.where(box, 3, 11), torch.where(box, 4, 12)]))
    assert torch.equal(t1, torch.stack([torch.where(box, 13, 1), torch.where(box, 14, 2)]))


def test_cml_vnet_is_two_unshared_vnets_with_19724612_parameters():
    net = build_network("cml-vnet", 1, 2)
    assert isinstance(net, CoTrainingVNet) and n_params(net) == 19_724_612
    assert n_params(net.branch(0)) == n_params(VNet(1, 2)) == 9_448_866
    assert n_params(net.branch(1)) == 7_376_896 + 2_898_850
    assert not {id(p) for p in net.branch(0).parameters()} & {id(p) for p in net.branch(1).parameters()}
    assert all(isinstance(up[0], nn.ConvTranspose3d) for up in net.branch(0).decoder.ups)
    assert all(isinstance(up, TrilinearUp) and up[0].mode == "trilinear" and up[0].align_corners
               and isinstance(up[1], nn.Conv3d) and up[1].kernel_size == (3, 3, 3) for up in net.branch(1).decoder.ups)
    spec = NETWORKS.get("cml-vnet")
    assert spec.dims == (3,) and spec.multiple == 16
    small = build_network("cml-vnet", 1, 2, width=4)
    l0, l1, f0, f1 = small(torch.rand(2, 1, 32, 32, 16))
    assert l0.shape == l1.shape == (2, 2, 32, 32, 16) and f0.shape == f1.shape == (2, 64, 2, 2, 1)
    with pytest.raises(ValueError, match="multiple of 16"):
        small(torch.rand(1, 1, 24, 32, 16))


def test_cml_3d_step_combines_l_u_and_0_2_dis_and_predicts_the_mean_logits():
    torch.manual_seed(0)
    m = CML(CML_LA, method_ctx_3d(patch=SMALL))
    assert isinstance(m.net, CoTrainingVNet) and n_params(m.net) == n_params(CoTrainingVNet(1, 2, width=4))
    labeled, u = tiny_volumes(4, 4, SMALL)
    out = m.train_step(labeled, None, 0)
    assert out["loss"].item() == pytest.approx(out["loss_sup_l"].item() + 0.2 * out["loss_dis"].item(), rel=1e-5)
    m.start_stage(m.stages()[1], 1)
    out = m.train_step(labeled, u, 0)
    assert out["loss"].item() == pytest.approx(
        out["loss_sup_l"].item() + out["loss_sup_u"].item() + 0.2 * out["loss_dis"].item(), rel=1e-5)
    m.train(False)
    x = torch.rand(1, 1, *SMALL)
    with torch.no_grad():
        l0, l1, _, _ = m.net(x)
        torch.testing.assert_close(m.predict(x), (l0 + l1) / 2)                       # LA: mean logits
        m.cfg = replace(m.cfg, ensemble="probs")
        torch.testing.assert_close(m.predict(x).softmax(1), (l0.softmax(1) + l1.softmax(1)) / 2)   # paper


# --------------------------------------------------------------------------------------- stages, hand-over
def test_la_stage_plans_pretrain_2000_at_a_constant_lr_then_self_train_15000_on_the_trainers_schedule():
    ctx = method_ctx_3d(iterations=15000)
    plan = [Stage("pretrain", 2000, lr_schedule="constant"), Stage("selftrain", 15000, "best_val")]
    assert BCP(BCP_LA, ctx).stages() == plan
    assert CML(CML_LA, ctx).stages() == plan
    assert BCP(BCPConfig(), method_ctx(iterations=30000)).stages()[0] == Stage("pretrain", 10000)   # 2D unchanged
    assert CML(CMLConfig(), method_ctx(iterations=30000)).stages()[0] == Stage("pretrain", 10000)
    la_train = replace(SMOKE_3D, batch_size=8, labeled_batch_size=4)
    for cls, cfg in ((BCP, BCP_LA), (CML, CML_LA)):
        assert cls.dims == (2, 3) and cls.networks == ("unet", "vnet")
        cls.check(cfg, SMOKE_3D, "smoke")     # 2 + 2 pairs one image with one in each half-batch
        cls.check(cfg, la_train, "la")        # the reference's 4 + 4


def test_hand_over_bcp_la_starts_a_new_optimiser_cml_la_keeps_its_momentum():
    labeled, u = tiny_volumes(4, 4, SMALL)
    bcp = BCP(BCP_LA, sgd_ctx())
    bcp.start_stage(bcp.stages()[0], 0)
    bcp.train_step(labeled, u, 0)
    before = bcp.optimizer
    assert len(before.state) > 0
    bcp.start_stage(bcp.stages()[1], 1)
    assert bcp.optimizer is not before and len(bcp.optimizer.state) == 0             # LA `load_net` + a new SGD
    assert all(torch.equal(t, s) for t, s in zip(bcp.teacher.state_dict().values(), bcp.model.state_dict().values()))

    cml = CML(CML_LA, sgd_ctx())
    cml.start_stage(cml.stages()[0], 0)
    cml.train_step(labeled, u, 0)
    before, n_state = cml.optimizer, len(cml.optimizer.state)
    cml.start_stage(cml.stages()[1], 1)
    assert cml.optimizer is before and len(before.state) == n_state > 0               # LA `load_net_opt`
    default = CML(CMLConfig(), sgd_ctx())
    old = default.optimizer
    default.start_stage(default.stages()[1], 1)
    assert default.optimizer is not old                                               # the 2D default: a new one


# ---------------------------------------------------------------------------------------- Trainer runs
@pytest.mark.parametrize("method, cfg", [("bcp", BCP_LA), ("cml", CML_LA)])
def test_la_trainer_smoke_runs_both_stages_constant_lr_then_step_decay(tmp_path, method, cfg):
    """2 pre-training + 2 self-training steps on 32x32x16 patches (half the smoke volume: CML trains two V-Nets);
    step_size 1 makes a decay visible at once: none while pre-training, x0.1 from the 2nd self-training step."""
    rec = smoke_run_3d(tmp_path, method, replace(cfg, pretrain_fraction=1.0), iterations=2, step_size=1,
                       patch_size=(32, 32, 16))
    steps = sorted(rec.train)
    assert [rec.train[s]["train/stage"] for s in steps] == [0, 0, 1, 1]
    assert [rec.train[s]["train/lr"] for s in steps] == pytest.approx([0.01, 0.01, 0.01, 0.001])
    assert "train/loss" in rec.train[4] and rec.result.summary["last"]["dice"] >= 0
