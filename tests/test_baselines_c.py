"""CCT and URPC (SSL4MIS baselines) and their UNet variants."""
import math

import pytest
import torch

from benchmark.losses import dice_ce_loss
from benchmark.nets.unet import UNet2D
from benchmark.nets.unet_variants import (UNetCCT, UNetURPC, feature_dropout, feature_dropout_elementwise,
                                          feature_noise)
from methods.cct import CCT, CCTConfig, cct_consistency
from methods.urpc import URPC, URPCConfig, rectified_consistency
from method_helpers import method_ctx, smoke_run, tiny_batch

def n_params(m):
    return sum(p.numel() for p in m.parameters())


# ---- networks --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [UNetCCT, UNetURPC])
def test_variant_outputs_four_maps_of_the_input_size(cls):
    torch.manual_seed(0)
    net = cls(1, 4)
    x = torch.rand(2, 1, 32, 48)
    for mode in (True, False):
        net.train(mode)
        outs = net(x)
        assert len(outs) == 4
        assert all(o.shape == (2, 4, 32, 48) for o in outs)


def test_parameter_counts():
    assert n_params(UNet2D(1, 4)) == 1_813_764  # unchanged plain UNet
    net = UNetCCT(1, 4)
    assert n_params(net) == n_params(net.encoder) + 4 * n_params(net.main_decoder)
    # URPC = plain UNet + three 3x3 side heads on 128, 64, 32 channels
    assert n_params(UNetURPC(1, 4)) == 1_813_764 + sum(c * 4 * 9 + 4 for c in (128, 64, 32))


def test_perturbations():
    torch.manual_seed(0)
    x = torch.rand(3, 8, 5, 5) + 0.5
    noisy = feature_noise(x)
    ratio = noisy / x - 1
    assert ratio.abs().max() <= 0.3 + 1e-6
    torch.testing.assert_close(ratio[0], ratio[1])  # one noise draw shared by the batch
    dropped = feature_dropout_elementwise(x, 0.5)
    assert set(torch.unique(dropped / x).tolist()) <= {0.0, 2.0}
    fd = feature_dropout(x)
    att = x.mean(1, keepdim=True)
    kept = (fd != 0).all(1, keepdim=True)
    gone = (fd == 0).all(1, keepdim=True)
    assert bool((kept | gone).all())
    amax = att.flatten(1).max(1).values.view(-1, 1, 1, 1)
    assert bool(gone[att == amax].all())            # the max-attention position is always dropped
    assert bool(kept[att < 0.7 * amax].all())       # below the lowest threshold always kept


def test_cct_perturbations_only_in_training_mode():
    torch.manual_seed(0)
    net = UNetCCT(1, 4)
    for d in net.aux_decoders:  # aux decoders identical to the main one: outputs equal iff features unperturbed
        d.load_state_dict(net.main_decoder.state_dict())
    x = torch.rand(2, 1, 32, 32)
    net.eval()
    outs = net(x)
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0])
    torch.testing.assert_close(net.forward_main(x), outs[0])
    net.train()
    torch.manual_seed(1)
    outs = net(x)
    assert all(not torch.allclose(o, outs[0]) for o in outs[1:])


def test_urpc_side_heads_perturbed_only_in_training_mode():
    torch.manual_seed(0)
    net = UNetURPC(1, 4)
    x = torch.rand(2, 1, 32, 32)
    net.eval()
    a, b = net(x), net(x)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v)
    net.train()
    # encoder dropout changes every output in train mode; with it off only the side heads stay random
    for m in net.encoder.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    torch.manual_seed(1)
    a = net(x)
    torch.manual_seed(2)
    b = net(x)
    torch.testing.assert_close(a[0], b[0])  # the full-resolution path is not perturbed
    assert all(not torch.allclose(u, v) for u, v in zip(a[1:], b[1:]))


# ---- CCT -------------------------------------------------------------------------------------------------
def test_cct_consistency_zero_when_aux_equals_main_and_keeps_main_gradient():
    main = torch.randn(2, 4, 8, 8, requires_grad=True)
    assert cct_consistency(main, [main.clone(), main.clone(), main.clone()]).item() == 0.0
    aux = [torch.randn(2, 4, 8, 8) for _ in range(3)]
    loss = cct_consistency(main, aux)
    expected = sum(((main.softmax(1) - a.softmax(1)) ** 2).mean() for a in aux) / 3
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert main.grad is not None and main.grad.abs().sum() > 0  # the main target is not detached


def test_cct_step_supervised_is_mean_of_the_eight_terms():
    torch.manual_seed(0)
    m = CCT(CCTConfig(), method_ctx())
    lab, u = tiny_batch()
    torch.manual_seed(1)
    with torch.no_grad():
        outs = m.model(torch.cat([lab.image, u]))
    expected = sum(dice_ce_loss(o[:2], lab.label) for o in outs) / 4
    torch.manual_seed(1)
    out = m.train_step(lab, u, step=0)
    assert out["loss_sup"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert out["cons_weight"].item() == pytest.approx(0.1 * math.exp(-5))
    m.train(False)
    with torch.no_grad():
        assert m.predict(lab.image).shape == (2, 4, 32, 32)


# ---- URPC ------------------------------------------------------------------------------------------------
def test_urpc_rectified_consistency_hand_made():
    # one pixel, two classes; outputs 1,2 predict (0.5, 0.5), outputs 3,4 predict (0.9, 0.1)
    def logit(p):
        return torch.log(torch.tensor([p, 1 - p])).view(1, 2, 1, 1)
    logits = [logit(0.5), logit(0.5), logit(0.9), logit(0.9)]
    mean = torch.tensor([0.7, 0.3])
    expected = 0.0
    for p in (0.5, 0.5, 0.9, 0.9):
        q = torch.tensor([p, 1 - p])
        kl = (mean * (mean.log() - q.log())).sum()
        w = torch.exp(-kl)
        expected += ((mean - q) ** 2 * w).mean() / (w + 1e-8) + kl   # mean over 2 classes / mean over 1 pixel
    expected /= 4
    assert rectified_consistency(logits).item() == pytest.approx(expected.item(), rel=1e-5)
    # squared error 0.04 in both classes (weight cancels on one pixel); KL(P || 0.5) = 0.0823, KL(P || 0.9) = 0.1537
    assert expected.item() == pytest.approx(0.04 + (0.0823 + 0.1537) / 2, abs=2e-4)
    same = [logit(0.8)] * 4
    assert rectified_consistency(same).item() == pytest.approx(0.0, abs=1e-7)


def test_urpc_matches_the_reference_expression():
    """Random maps: equals the SSL4MIS expression (nn.KLDivLoss on torch.log(softmax), per-output terms / 4)."""
    torch.manual_seed(0)
    logits = [torch.randn(2, 4, 6, 6) for _ in range(4)]
    loss = rectified_consistency(logits)
    probs = [lg.softmax(1) for lg in logits]
    mean = sum(probs) / 4
    ref = 0.0
    for p in probs:
        var = torch.sum(torch.nn.KLDivLoss(reduction="none")(torch.log(p), mean), dim=1, keepdim=True)
        ev = torch.exp(-var)
        ref += torch.mean((mean - p) ** 2 * ev) / (torch.mean(ev) + 1e-8) + torch.mean(var)
    torch.testing.assert_close(loss, ref / 4)


def test_urpc_step_and_predict():
    torch.manual_seed(0)
    m = URPC(URPCConfig(), method_ctx())
    lab, u = tiny_batch()
    out = m.train_step(lab, u, step=0)
    assert all(math.isfinite(v.item()) for v in out.values())
    assert out["loss_cons"].item() > 0
    m.train(False)
    with torch.no_grad():
        torch.testing.assert_close(m.predict(lab.image), m.model(lab.image)[0])


# ---- both through the Trainer ----------------------------------------------------------------------------
@pytest.mark.parametrize("method", [CCT, URPC])
def test_three_step_trainer_smoke(synthetic, tmp_path, method):
    smoke_run(synthetic, tmp_path, method)
