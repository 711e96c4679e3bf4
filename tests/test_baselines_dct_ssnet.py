"""DCT and SS-Net: their distinctive pieces on known inputs, one step on tiny tensors, a 3-step Trainer smoke run."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark import catalog
from benchmark.nets.unet import UNet2D
from methods.base import METHODS
from methods.dct import DCT, DCTConfig, fgsm, jensen_shannon, rotation_consistency
from methods.ssnet import SSNet, SSNetConfig, SSNetHeads, separation_loss, vat_loss, vat_perturbation
from method_helpers import method_ctx, smoke_run, tiny_batch


def test_both_methods_are_registered_with_the_ssl4mis_dct_preset():
    assert METHODS.get("dct") is DCT and METHODS.get("ss-net") is SSNet
    assert catalog.preset_overrides("dct:ssl4mis") == {"variant": "ssl4mis"}
    with pytest.raises(ValueError):
        DCTConfig(variant="rotation")


# ---------------------------------------------------------------------------------------------- DCT
def test_jensen_shannon_is_zero_for_agreement_and_ln2_for_disjoint_one_hots():
    torch.manual_seed(0)
    p = torch.rand(2, 4, 5, 5).softmax(1)
    assert jensen_shannon(p, p).item() == pytest.approx(0.0, abs=1e-6)
    q = torch.rand(2, 4, 5, 5).softmax(1)
    assert jensen_shannon(p, q).item() == pytest.approx(jensen_shannon(q, p).item())
    assert 0 < jensen_shannon(p, q).item() < math.log(2)
    a = F.one_hot(torch.zeros(1, 3, 3, dtype=torch.long), 2).permute(0, 3, 1, 2).float()
    assert jensen_shannon(a, 1 - a).item() == pytest.approx(math.log(2), abs=1e-4)


def test_fgsm_steps_epsilon_along_the_gradient_sign():
    x = torch.tensor([[0.5, 0.5, 0.5]], requires_grad=True)
    w = torch.tensor([[2.0, -3.0, 0.1]])
    adv = fgsm(x, (x * w).sum(), 0.02)
    torch.testing.assert_close(adv, torch.tensor([[0.52, 0.48, 0.52]]))
    assert not adv.requires_grad


def test_dct_each_net_sees_the_other_nets_adversarial_examples():
    """Nets in eval mode (no dropout, fixed BN): net2's second input must be net1's FGSM image and vice versa."""
    torch.manual_seed(0)
    dct = DCT(DCTConfig(epsilon=0.02), method_ctx())
    dct.train(False)
    labeled, u = tiny_batch(n=2, m=2, size=16)
    x = torch.cat([labeled.image, u])
    expected = {}
    for name, net in (("model1", dct.model1), ("model2", dct.model2)):
        xg = x.clone().requires_grad_(True)
        logits = net(xg)
        y = torch.cat([labeled.label, logits[2:].detach().argmax(1)])
        expected[name] = fgsm(xg, F.cross_entropy(logits, y), 0.02)
    seen = {"model1": [], "model2": []}
    for name in seen:
        getattr(dct, name).register_forward_pre_hook(lambda m, args, name=name: seen[name].append(args[0].detach().clone()))
    dct.train_step(labeled, u, step=0)
    assert [t.shape[0] for t in seen["model1"]] == [4, 4] and [t.shape[0] for t in seen["model2"]] == [4, 4]
    torch.testing.assert_close(seen["model2"][1], expected["model1"])   # net2 on g1(x)
    torch.testing.assert_close(seen["model1"][1], expected["model2"])   # net1 on g2(x)
    assert (seen["model2"][1] - x).abs().max().item() == pytest.approx(0.02, abs=1e-6)
    assert not torch.equal(expected["model1"], expected["model2"])


def test_dct_paper_step_combines_its_losses_with_ramped_weights_and_updates_both_nets():
    torch.manual_seed(0)
    dct = DCT(DCTConfig(), method_ctx(iterations=600))
    assert dct.ramp(0) == pytest.approx(math.exp(-5)) and dct.ramp(80) == pytest.approx(1.0)  # 80/600 of 600
    assert any(not torch.equal(p, q) for p, q in zip(dct.model1.parameters(), dct.model2.parameters()))
    before = [[p.clone() for p in m.parameters()] for m in (dct.model1, dct.model2)]
    labeled, u = tiny_batch()
    out = dct.train_step(labeled, u, step=100)
    expected = out["loss_sup1"] + out["loss_sup2"] + 10 * out["loss_cot"] + 0.5 * out["loss_dif"]
    assert out["ramp"].item() == 1.0 and out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    for b, m in zip(before, (dct.model1, dct.model2)):
        assert sum(not torch.equal(x, y) for x, y in zip(b, m.parameters())) > 0
    dct.train(False)
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(dct.predict(x), dct.model1(x))


def test_ssl4mis_rotation_consistency_value_and_half_gradient():
    torch.manual_seed(0)
    p = torch.rand(2, 4, 6, 6).softmax(1).requires_grad_(True)
    assert rotation_consistency(p, torch.rot90(p, 3, (2, 3)).detach(), 3).item() == pytest.approx(0.0)
    q = torch.rand(2, 4, 6, 6).softmax(1).requires_grad_(True)
    cons = rotation_consistency(p, q, 1)
    mse = F.mse_loss(torch.rot90(p, 1, (2, 3)), q)
    assert cons.item() == pytest.approx(mse.item())
    g_cons = torch.autograd.grad(cons, (p, q))
    g_mse = torch.autograd.grad(mse, (p, q))
    for a, b in zip(g_cons, g_mse):
        torch.testing.assert_close(a, 0.5 * b)


def test_ssl4mis_variant_is_one_net_with_the_ssl4mis_weight():
    torch.manual_seed(0)
    dct = DCT(DCTConfig(variant="ssl4mis"), method_ctx())
    assert set(dct.modules()) == {"model1"} and set(dct.optimizers()) == {"optimizer1"}
    labeled, u = tiny_batch()
    out = dct.train_step(labeled, u, step=30000)
    assert out["cons_weight"].item() == pytest.approx(0.1)
    assert out["loss"].item() == pytest.approx(out["loss_sup"].item() + 0.1 * out["loss_cons"].item(), rel=1e-5)
    assert 0 <= out["rot_k"].item() <= 3


@pytest.mark.parametrize("variant", ["paper", "ssl4mis"])
def test_dct_trainer_smoke(synthetic, tmp_path, variant):
    rec = smoke_run(synthetic, tmp_path, DCT, DCTConfig(variant=variant))
    key = "train/loss_dif" if variant == "paper" else "train/loss_cons"
    assert all(key in m for m in rec.train.values())


# ---------------------------------------------------------------------------------------------- SS-Net
def test_unet_features_forward_matches_forward_and_adds_no_parameters():
    net = UNet2D(1, 4).eval()
    assert sum(p.numel() for p in net.parameters()) == 1_813_764
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        logits, features = net.forward_with_decoder_features(x)
        torch.testing.assert_close(logits, net(x))
    assert features.shape == (2, 16, 32, 32)


def test_vat_perturbation_has_the_configured_norm_and_leaves_bn_statistics_alone():
    torch.manual_seed(0)
    net = UNet2D(1, 4).train()
    x = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        target = net(x).softmax(1)
    bn = next(m for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    mean_before, count_before = bn.running_mean.clone(), bn.num_batches_tracked.clone()
    from methods.ssnet import frozen_bn_stats
    with frozen_bn_stats(net):
        r = vat_perturbation(net, x, target, xi=10.0, epsilon=6.0)
    torch.testing.assert_close(r.flatten(1).norm(dim=1), torch.full((3,), 6.0))
    assert torch.equal(bn.running_mean, mean_before) and torch.equal(bn.num_batches_tracked, count_before)
    assert bn.track_running_stats  # restored
    assert not any(p.grad is not None for p in net.parameters())  # only d got a gradient
    loss = vat_loss(net, x, 10.0, 6.0)  # the target pass (train mode) updates the stats once, the VAT passes not
    assert bn.num_batches_tracked.item() == count_before.item() + 1
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def _flat_heads(num_classes: int = 4) -> SSNetHeads:
    """Heads whose selectors score every feature 0, so all sigmoid weights are 0.5 and rescale to 1."""
    heads = SSNetHeads(num_classes)
    for sel in (*heads.selectors, *heads.memory_selectors):
        nn.init.zeros_(sel[-1].weight)
        nn.init.zeros_(sel[-1].bias)
    return heads


def test_separation_loss_on_hand_made_prototypes():
    e = torch.eye(32)
    memory = [None, e[[0, 0, 0]] * torch.tensor([[1.0], [2.0], [3.0]]), e[[1, 1]], e[[2, 2]]]
    features = torch.stack([e[5], e[5],            # class 0: no memory, skipped
                            e[0] * 4, e[0] * 0.5,  # class 1: same direction as its prototypes -> distance 0
                            e[3], e[4] * 2,        # class 2: orthogonal to its prototypes -> 1
                            -e[2], -e[2] * 3])     # class 3: opposite -> 2
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    loss = separation_loss(features, labels, memory, _flat_heads())
    assert loss.item() == pytest.approx((0 + 1 + 2) / 4, abs=1e-5)
    # a class with a single feature (or a single memory entry) does not contribute
    assert separation_loss(features[[2, 4, 5]], labels[[2, 4, 5]], memory, _flat_heads()).item() == pytest.approx(1 / 4, abs=1e-5)
    # the gradient reaches the features, not the memory
    f = features.clone().requires_grad_(True)
    separation_loss(f, labels, memory, _flat_heads()).backward()
    assert f.grad[4:6].abs().sum() > 0 and f.grad[0:2].abs().sum() == 0


class _FirstCoordinate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1]


@pytest.mark.parametrize("keep_highest", [False, True])
def test_memory_keeps_32_per_class_lowest_scores_as_the_reference(keep_highest):
    ssnet = SSNet(SSNetConfig(memory_keep_highest=keep_highest), method_ctx())
    ssnet.heads.projection = nn.Identity()
    ssnet.heads.selectors = nn.ModuleList(_FirstCoordinate() for _ in range(4))
    feats = torch.zeros(45, 16)
    feats[:40, 0] = torch.randperm(40).float() / 10  # small scores: no ties after the sigmoid
    labels = torch.tensor([1] * 40 + [2] * 5)
    ssnet.update_memory(feats, labels)
    kept = sorted(round(v * 10) for v in ssnet.memory[1][:, 0].tolist())
    assert kept == (list(range(8, 40)) if keep_highest else list(range(32)))
    assert ssnet.memory[2].shape == (5, 16) and ssnet.memory[0] is None and ssnet.memory[3] is None
    old = ssnet.memory[1]
    ssnet.update_memory(torch.ones(3, 16), torch.tensor([2, 2, 2]))
    assert ssnet.memory[1] is old and ssnet.memory[2].shape == (3, 16)  # absent classes keep their entries


def test_ssnet_step_combines_dice_vat_and_separation_and_fills_memory():
    torch.manual_seed(0)
    ssnet = SSNet(SSNetConfig(), method_ctx())
    assert set(ssnet.modules()) == {"model", "heads"}
    opt_params = {id(p) for g in ssnet.optimizer.param_groups for p in g["params"]}
    assert {id(p) for p in ssnet.heads.parameters()} <= opt_params
    labeled, u = tiny_batch()
    ssnet.train_step(labeled, u, step=0)
    assert ssnet.memory[0] is None and any(m is not None for m in ssnet.memory[1:])  # background never stored
    selector = [p.clone() for p in ssnet.heads.selectors.parameters()]
    out = ssnet.train_step(labeled, u, step=30000)
    assert out["cons_weight"].item() == pytest.approx(0.1)
    expected = out["loss_dice"] + 0.1 * (out["loss_vat"] + 0.1 * (out["loss_sep_l"] + out["loss_sep_u"]))
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert out["loss_sep_l"].item() > 0 and out["loss_sep_u"].item() > 0
    assert any(not torch.equal(a, b) for a, b in zip(selector, ssnet.heads.selectors.parameters()))
    state = ssnet.state_dict()
    fresh = SSNet(SSNetConfig(), method_ctx())
    fresh.load_state_dict(state)
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(fresh.memory, ssnet.memory))


def test_ssnet_two_part_backward_gives_the_single_backward_gradient():
    """The step backpropagates the main loss before VAT's passes (peak memory): the gradient must be the
    reference's one backward of dice + w * (vat + 0.1 * (sep_l + sep_u)), with the same random draws."""
    import copy

    torch.manual_seed(0)
    ssnet = SSNet(SSNetConfig(), method_ctx())
    labeled, u = tiny_batch()
    ssnet.train_step(labeled, u, step=0)                 # fills the memory, so both separation terms count
    ours, reference = copy.deepcopy(ssnet), copy.deepcopy(ssnet)
    ours.optimizer.step = lambda *a, **k: None          # keep the gradient the step leaves, unapplied
    torch.manual_seed(1)
    ours.train_step(labeled, u, step=30000)

    torch.manual_seed(1)                                 # the reference: every loss first, then one backward
    cfg, n = reference.cfg, labeled.image.shape[0]
    x = torch.cat([labeled.image, u])
    logits, features = reference.model.forward_with_decoder_features(x)
    probs = logits.float().softmax(1)
    from benchmark.losses import dice_loss
    sup = dice_loss(probs[:n], labeled.label, cfg.dice_smooth)
    pred = probs.detach().argmax(1)
    pixels = features.permute(0, 2, 3, 1)
    correct = (pred[:n] == labeled.label) & (pred[:n] > 0)
    reference.update_memory(pixels[:n][correct], labeled.label[correct])
    sep_l = separation_loss(reference.heads.embed(pixels[:n].reshape(-1, 16)), labeled.label.reshape(-1),
                            reference.memory, reference.heads)
    sep_u = separation_loss(reference.heads.embed(pixels[n:].reshape(-1, 16)), pred[n:].reshape(-1),
                            reference.memory, reference.heads)
    vat = vat_loss(reference.model, x, cfg.xi, cfg.magnitude)
    reference.optimizer.zero_grad(set_to_none=True)
    (sup + cfg.consistency_weight(30000) * (vat + 0.1 * (sep_l + sep_u))).backward()

    pairs = list(zip(ours.model.parameters(), reference.model.parameters()))
    pairs += list(zip(ours.heads.parameters(), reference.heads.parameters()))
    assert all((a.grad is None) == (b.grad is None) for a, b in pairs)
    for a, b in pairs:
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)


def test_ssnet_trainer_smoke(synthetic, tmp_path):
    rec = smoke_run(synthetic, tmp_path, SSNet, SSNetConfig())
    assert all("train/loss_vat" in m and "train/loss_sep_u" in m for m in rec.train.values())
