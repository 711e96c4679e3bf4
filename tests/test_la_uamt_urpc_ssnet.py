"""UA-MT, URPC and SS-Net on LA (3D): the n-D pieces on hand-made inputs (the uncertainty mask and the teacher's
pass grouping, the LA foreground Dice, the URPC heads' shapes and a zero consistency when all heads agree, the
SS-Net binary Dice, features after the pre-head dropout, the VAT perturbation norm per 3D sample), the parameter
counts of vnet-urpc and vnet-ssnet at full width, one 3D step each, and a 3-step Trainer run of each method."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.config import ConfigError, TrainConfig
from benchmark.losses import dice_ce_loss
from benchmark.nets import NETWORKS, build_network
from benchmark.nets.vnet import VNet
from benchmark.nets.vnet_variants import VNetSSNet, VNetURPC
from benchmark.run.trials import check_trainable
from benchmark.schedules import sigmoid_rampup
from methods.base import METHODS
from methods.ssnet import SSNet, SSNetConfig, binary_dice_loss, vat_perturbation
from methods.ua_mt import UAMT, UAMTConfig, certainty_mask, masked_consistency, supervised_loss
from methods.urpc import URPC, URPCConfig, rectified_consistency
from method_helpers import method_ctx_3d, smoke_run_3d, tiny_volumes

LA_UAMT = UAMTConfig(consistency=0.1, consistency_rampup=40, dice_classes="foreground")
LA_URPC = URPCConfig(consistency=0.1, consistency_rampup=40)
LA_SSNET = SSNetConfig(consistency=1.0, consistency_rampup=40, magnitude=10.0, supervised_dice="binary",
                       vat_distance="binary", rampup_step_offset=1)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------------------------- registration
def test_registered_3d_with_their_nets():
    assert METHODS.get("ua-mt") is UAMT and METHODS.get("urpc") is URPC and METHODS.get("ss-net") is SSNet
    assert all(3 in cls.dims and 2 in cls.dims for cls in (UAMT, URPC, SSNet))
    assert NETWORKS.get("vnet-urpc").factory is VNetURPC and NETWORKS.get("vnet-ssnet").factory is VNetSSNet
    train = TrainConfig(patch_size=(112, 112, 80), network="vnet", augmentation="la-rotflip-crop")
    for name, cls in (("ua-mt", UAMT), ("urpc", URPC), ("ss-net", SSNet)):
        check_trainable(name, cls, train, 3, "suite")   # no ConfigError


def test_full_width_parameter_counts():
    """PROTOCOLS-3D-DATASETS.md §0 item 2 / §A.1: SS-Net's V-Net with its heads 9,457,318; vnet-urpc = the
    9,448,866 V-Net + three 1x1x1 heads (128, 64, 32 -> 2 channels: 258 + 130 + 66) = 9,449,320."""
    assert n_params(build_network("vnet-ssnet", 1, 2)) == 9_457_318
    assert n_params(build_network("vnet-urpc", 1, 2)) == 9_449_320
    assert n_params(build_network("vnet", 1, 2)) == 9_448_866


# -------------------------------------------------------------------------------------------------- UA-MT
def test_uncertainty_mask_in_3d():
    """Entropy of [0.99, 0.01] = 0.056 < 0.75 ln 2 = 0.520 (kept); of [0.5, 0.5] = ln 2 (dropped); of [0.8, 0.2]
    = 0.500 (kept at 0.75 ln 2, dropped at a threshold of 0.45)."""
    fg = torch.tensor([0.01, 0.5, 0.2, 0.01, 0.5, 0.5, 0.01, 0.2]).view(1, 1, 2, 2, 2)
    probs = torch.cat([1 - fg, fg], 1)
    mask = certainty_mask(probs, 0.75 * math.log(2))
    assert mask.shape == (1, 1, 2, 2, 2)
    assert mask.flatten().tolist() == [1, 0, 1, 1, 0, 0, 1, 1]
    assert certainty_mask(probs, 0.45).flatten().tolist() == [1, 0, 0, 1, 0, 0, 1, 0]
    dist = torch.full((1, 2, 2, 2, 2), 0.25)
    # 5 kept voxels, 2 classes each 0.25: 2.5 / (2 * 5)
    assert masked_consistency(dist, mask).item() == pytest.approx(0.25)


class _RecordingTeacher(nn.Module):
    """Logits [0, x] per voxel, recording the batch shapes it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape))
        return torch.cat([torch.zeros_like(x), x], 1)


def test_teacher_passes_repeat_the_unlabeled_volumes_and_average_per_sample():
    """LA script L152-161: 4 forwards of the 2 unlabeled volumes repeated twice; the mean over the 8 noisy copies
    of each volume (noise clamped to +-0.2, so sample 1's huge logit keeps p = 1)."""
    method = UAMT(UAMTConfig(), method_ctx_3d())
    method.teacher = _RecordingTeacher()
    u = torch.stack([torch.zeros(1, 4, 4, 4), torch.full((1, 4, 4, 4), 50.0)])
    torch.manual_seed(0)
    mean = method.teacher_mean_probs(u)
    assert method.teacher.shapes == [(4, 1, 4, 4, 4)] * 4
    assert mean.shape == (2, 2, 4, 4, 4)
    assert torch.allclose(mean.sum(1), torch.ones(2, 4, 4, 4))
    assert torch.allclose(mean[1, 1], torch.ones(4, 4, 4))
    assert (mean[0, 1] - 0.5).abs().max().item() < 0.05      # sigmoid of noise in [-0.2, 0.2], averaged


def test_la_foreground_dice_is_the_la_scripts_dice_loss():
    """UA-MT losses.dice_loss(softmax[:, 1], label == 1): 1 - (2 sum(p t) + 1e-5) / (sum p^2 + sum t^2 + 1e-5)."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 2, 4, 4, 4, generator=g)
    target = torch.randint(0, 2, (2, 4, 4, 4), generator=g)
    p, t = logits.softmax(1)[:, 1], (target == 1).float()
    dice = 1 - (2 * (p * t).sum() + 1e-5) / ((p * p).sum() + (t * t).sum() + 1e-5)
    want = 0.5 * (F.cross_entropy(logits, target) + dice)
    assert supervised_loss(logits, target, "foreground").item() == pytest.approx(want.item(), rel=1e-6)
    assert supervised_loss(logits, target, "all").item() == dice_ce_loss(logits, target).item()
    assert supervised_loss(logits, target, "foreground").item() != pytest.approx(dice_ce_loss(logits, target).item())
    with pytest.raises(ConfigError, match="dice_classes"):
        UAMTConfig(dice_classes="background")


def test_uamt_3d_step_counts_only_the_unlabeled_part():
    labeled, u = tiny_volumes(n=2, m=2, shape=(16, 16, 16))
    method = UAMT(LA_UAMT, method_ctx_3d(iterations=6000))
    assert isinstance(method.model, VNet) and method.teacher.training
    out = method.train_step(labeled, u, step=300)
    assert out["cons_weight"].item() == pytest.approx(0.1 * sigmoid_rampup(2, 40))
    assert 0.0 <= out["mask_ratio"].item() <= 1.0
    assert out["loss"].item() == pytest.approx(out["loss_sup"].item() + out["cons_weight"].item()
                                               * out["loss_cons"].item(), rel=1e-5)


# --------------------------------------------------------------------------------------------------- URPC
def test_urpc_heads_shapes_and_full_resolution_head_is_the_vnet_path():
    torch.manual_seed(0)
    net = VNetURPC(1, 2, width=4)
    torch.manual_seed(0)
    plain = VNet(1, 2, width=4)                                 # the trunk is initialised as the plain V-Net
    trunk = {k: v for k, v in net.state_dict().items() if not k.startswith("side_")}
    assert trunk.keys() == plain.state_dict().keys()
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in trunk.items())
    x = torch.randn(2, 1, 32, 32, 16)
    outs = net(x)
    assert [tuple(o.shape) for o in outs] == [(2, 2, 32, 32, 16)] * 4
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x)[0], net.full_resolution(x))   # the full-resolution head is the V-Net's own
        assert torch.equal(net(x)[0], VNet.forward(net, x))
    # side heads read the stage outputs at 1/8, 1/4, 1/2 (width 32, 16, 8 at width 4)
    assert [h.in_channels for h in net.side_heads] == [32, 16, 8]
    assert [d.p for d in net.side_dropout] == [0.5, 0.3, 0.2]
    assert all(isinstance(d, nn.Identity) for d in VNetURPC(1, 2, width=4, has_dropout=False).side_dropout)


def test_rectified_consistency_is_zero_when_all_3d_heads_agree_and_positive_otherwise():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 2, 4, 4, 4, generator=g)
    assert rectified_consistency([logits.clone() for _ in range(4)]).item() == pytest.approx(0.0, abs=1e-7)
    other = [logits, logits, logits, logits + torch.randn(logits.shape, generator=g)]
    assert rectified_consistency(other).item() > 0


def test_urpc_3d_builds_vnet_urpc_with_the_suite_options_and_steps():
    method = URPC(LA_URPC, method_ctx_3d())
    assert isinstance(method.model, VNetURPC) and method.model.side_heads[0].in_channels == 32   # width 4
    labeled, u = tiny_volumes(n=2, m=2, shape=(16, 16, 16))
    out = method.train_step(labeled, u, step=150)
    assert out["cons_weight"].item() == pytest.approx(0.1 * sigmoid_rampup(1, 40))
    method.train(False)
    with torch.no_grad():
        assert torch.equal(method.predict(u), method.model(u)[0])


# ------------------------------------------------------------------------------------------------- SS-Net
def test_binary_dice_loss_has_linear_denominators():
    p, t = torch.tensor([0.5, 1.0, 0.0]), torch.tensor([1.0, 1.0, 0.0])
    assert binary_dice_loss(p, t, 0.0).item() == pytest.approx(1 - 3 / 3.5)
    # VAT3d's use on two softmax maps: the sums run over both channels together
    a = torch.tensor([[0.2, 0.8], [0.6, 0.4]]).T.reshape(1, 2, 2)
    b = torch.tensor([[0.5, 0.5], [1.0, 0.0]]).T.reshape(1, 2, 2)
    inter = 0.2 * 0.5 + 0.8 * 0.5 + 0.6 * 1.0 + 0.4 * 0.0
    assert binary_dice_loss(a, b).item() == pytest.approx(1 - 2 * inter / 4, rel=1e-6)
    with pytest.raises(ConfigError, match="vat_distance"):
        SSNetConfig(vat_distance="kl")


def test_vnet_ssnet_features_are_taken_after_the_pre_head_dropout():
    torch.manual_seed(0)
    net = VNetSSNet(1, 2, width=4)
    x = torch.randn(2, 1, 16, 16, 16)
    net.train()
    logits, feats = net.forward_with_decoder_features(x)
    assert feats.shape == (2, 4, 16, 16, 16) and torch.allclose(logits, net.decoder.head(feats))
    assert (feats.flatten(2).abs().sum(2) == 0).any()            # Dropout3d(0.5) zeroed some channels (seed 0)
    net.eval()
    with torch.no_grad():
        logits, feats = net.forward_with_decoder_features(x)
        assert torch.equal(feats, net.decoder.last_features(net.encode(x)))
        assert torch.equal(logits, net(x))
    assert net.heads.projection[0].in_features == 4


def test_vat_perturbation_norm_is_the_magnitude_per_3d_sample():
    torch.manual_seed(0)
    net = nn.Conv3d(1, 2, 3, padding=1)
    with torch.no_grad():
        net.weight.mul_(10)       # a gradient far above the normaliser's +1e-8, so the norm is epsilon to 1e-5
    x = torch.randn(3, 1, 8, 6, 4)
    x[1] *= 100                   # a different scale per sample: the norm is still per sample
    with torch.no_grad():
        target = net(x).softmax(1)
    r = vat_perturbation(net, x, target, xi=10.0, epsilon=10.0, distance=lambda p, t: binary_dice_loss(p, t))
    assert r.shape == x.shape
    assert r.flatten(1).norm(dim=1).tolist() == pytest.approx([10.0, 10.0, 10.0], rel=1e-5)


def test_ssnet_3d_step_uses_the_la_losses_and_the_weight_after_the_increment():
    torch.manual_seed(0)
    method = SSNet(LA_SSNET, method_ctx_3d(iterations=15000))
    assert set(method.modules()) == {"model"} and method.ssnet_heads is method.model.heads
    opt = {id(p) for g in method.optimizer.param_groups for p in g["params"]}
    assert {id(p) for p in method.model.heads.parameters()} <= opt
    labeled, u = tiny_volumes(n=2, m=2, shape=(16, 16, 16))
    method.train_step(labeled, u, step=0)
    out = method.train_step(labeled, u, step=149)   # the 3D script: iter 150 // 150 = 1
    assert out["cons_weight"].item() == pytest.approx(sigmoid_rampup(1, 40))
    expected = out["loss_dice"] + out["cons_weight"] * (out["loss_vat"] + 0.1 * (out["loss_sep_l"] + out["loss_sep_u"]))
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert method.memory[0] is None                  # background never stored; 2 classes
    assert len(method.memory) == 2
    with pytest.raises(ConfigError, match="2 classes"):
        SSNet(LA_SSNET, method_ctx_3d(num_classes=3))


# ------------------------------------------------------------------------------------------------ Trainer
@pytest.mark.parametrize("method,cfg", [("ua-mt", LA_UAMT), ("urpc", LA_URPC), ("ss-net", LA_SSNET)])
def test_smoke_run_3d(tmp_path, method, cfg):
    rec = smoke_run_3d(tmp_path, method, cfg)
    assert "train/cons_weight" in rec.train[1]
