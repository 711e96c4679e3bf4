"""CPS and ICT: their distinctive pieces on known inputs, one step on tiny tensors, a 3-step Trainer smoke run."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from methods.base import METHODS
from methods.cps import CPS, CPSConfig, cross_pseudo_losses
from methods.ict import ICT, ICTConfig, interpolation_target, mixup, unlabeled_halves
from method_helpers import method_ctx, smoke_run, tiny_batch




def test_both_methods_are_registered():
    assert METHODS.get("cps") is CPS and METHODS.get("ict") is ICT


# ---------------------------------------------------------------------------------------------- CPS
def test_cps_pseudo_labels_are_the_other_nets_argmax_without_gradient():
    torch.manual_seed(0)
    a = torch.randn(2, 4, 8, 8, requires_grad=True)
    b = torch.randn(2, 4, 8, 8, requires_grad=True)
    loss_a, loss_b = cross_pseudo_losses(a, b)
    torch.testing.assert_close(loss_a, F.cross_entropy(a.detach(), b.detach().argmax(1)))
    torch.testing.assert_close(loss_b, F.cross_entropy(b.detach(), a.detach().argmax(1)))
    loss_a.backward()
    assert b.grad is None and a.grad is not None and a.grad.abs().sum() > 0
    # Agreeing nets: the pseudo-labels are the argmax itself, so CE is at its minimum for these logits.
    same_a, _ = cross_pseudo_losses(a.detach(), a.detach())
    torch.testing.assert_close(same_a, F.cross_entropy(a.detach(), a.detach().argmax(1)))


def test_cps_cross_term_covers_only_the_unlabeled_part(monkeypatch):
    import methods.cps as cps_mod

    seen = []
    real = cps_mod.cross_pseudo_losses
    monkeypatch.setattr(cps_mod, "cross_pseudo_losses", lambda l1, l2: seen.append(l1.shape[0]) or real(l1, l2))
    torch.manual_seed(0)
    labeled, u = tiny_batch(n=2, m=3)
    CPS(CPSConfig(), method_ctx()).train_step(labeled, u, step=0)
    assert seen == [3]


def test_cps_step_updates_both_nets_which_start_different():
    torch.manual_seed(0)
    cps = CPS(CPSConfig(), method_ctx())
    assert any(not torch.equal(p, q) for p, q in zip(cps.model1.parameters(), cps.model2.parameters()))
    before = [[p.clone() for p in m.parameters()] for m in (cps.model1, cps.model2)]
    labeled, u = tiny_batch()
    out = cps.train_step(labeled, u, step=30000)  # full weight 0.1
    for b, m in zip(before, (cps.model1, cps.model2)):
        assert sum(not torch.equal(x, y) for x, y in zip(b, m.parameters())) > 0
    assert out["cons_weight"].item() == pytest.approx(0.1)
    assert out["loss"].item() == pytest.approx(out["loss1"].item() + out["loss2"].item(), rel=1e-5)
    assert out["loss1"].item() == pytest.approx(out["loss_sup1"].item() + 0.1 * out["loss_cps1"].item(), rel=1e-5)
    assert set(cps.modules()) == {"model1", "model2"} and set(cps.optimizers()) == {"optimizer1", "optimizer2"}
    cps.train(False)
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(cps.predict(x), cps.model1(x))  # net1 is the prediction net


def test_cps_trainer_smoke(synthetic, tmp_path):
    rec = smoke_run(synthetic, tmp_path, CPS, CPSConfig())
    assert all("train/loss_cps1" in m for m in rec.metrics.values() if "train/loss" in m)


# ---------------------------------------------------------------------------------------------- ICT
def test_ict_mixes_labeled_bs_over_two_pairs_of_unlabeled_halves():
    u = torch.arange(12.0).view(12, 1, 1, 1).expand(12, 1, 2, 2)
    u0, u1 = unlabeled_halves(u, labeled_bs=12)  # SSL4MIS default 12 + 12: 6 mixed images
    assert u0.shape[0] == u1.shape[0] == 6
    assert torch.equal(u0[:, 0, 0, 0], torch.arange(6.0)) and torch.equal(u1[:, 0, 0, 0], torch.arange(6.0, 12.0))
    u0, u1 = unlabeled_halves(u[:4], labeled_bs=2)  # more unlabeled than needed: k = 1 pair, rest unused
    assert u0.shape[0] == u1.shape[0] == 1 and u1[0, 0, 0, 0] == 1.0
    with pytest.raises(ValueError):
        unlabeled_halves(u[:3], labeled_bs=4)
    with pytest.raises(ValueError):
        unlabeled_halves(u[:3], labeled_bs=1)


def test_ict_mixed_input_and_target_are_the_lambda_combination():
    torch.manual_seed(0)
    u0, u1 = torch.rand(3, 1, 4, 4), torch.rand(3, 1, 4, 4)
    lam = torch.tensor([0.0, 0.25, 1.0]).view(3, 1, 1, 1)  # one factor per sample
    mixed = mixup(u0, u1, lam)
    torch.testing.assert_close(mixed[0], u0[0])
    torch.testing.assert_close(mixed[1], 0.75 * u0[1] + 0.25 * u1[1])
    torch.testing.assert_close(mixed[2], u1[2])

    calls = []
    teacher = nn.Conv2d(1, 4, 1)
    teacher.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    target = interpolation_target(teacher, u0, u1, lam)
    assert calls == [3, 3], "the teacher sees each half in its own pass"
    with torch.no_grad():
        p0, p1 = teacher(u0).softmax(1), teacher(u1).softmax(1)
    torch.testing.assert_close(target, p0 * (1 - lam) + p1 * lam)
    assert not target.requires_grad


def test_ict_step_feeds_labeled_plus_k_mixed_and_updates_the_teacher():
    torch.manual_seed(0)
    ict = ICT(ICTConfig(), method_ctx())
    student_in, teacher_in = [], []
    ict.model.register_forward_hook(lambda m, i, o: student_in.append(i[0].shape[0]))
    ict.teacher.register_forward_hook(lambda m, i, o: teacher_in.append(i[0].shape[0]))
    labeled, u = tiny_batch(n=4, m=4)
    lam = ict.sample_lambda(1000, u)
    assert lam.shape == (1000, 1, 1, 1) and ((lam >= 0) & (lam <= 1)).all()
    assert abs(lam.mean().item() - 0.5) < 0.05 and (lam.var().item() > 0.15)  # Beta(0.2, 0.2): U-shaped, var 0.18

    before = [p.clone() for p in ict.teacher.parameters()]
    ict.train_step(labeled, u, step=0)  # alpha = 0: the teacher becomes the student
    assert student_in == [4 + 2] and teacher_in == [2, 2]
    assert any(not torch.equal(b, t) for b, t in zip(before, ict.teacher.parameters()))
    for t, s in zip(ict.teacher.parameters(), ict.model.parameters()):
        assert torch.equal(t, s)
    before = [p.clone() for p in ict.teacher.parameters()]
    out = ict.train_step(labeled, u, step=1)  # alpha = 0.5
    for b, t, s in zip(before, ict.teacher.parameters(), ict.model.parameters()):
        torch.testing.assert_close(t, 0.5 * b + 0.5 * s)
    assert any(not torch.equal(b, t) for b, t in zip(before, ict.teacher.parameters()))
    assert out["loss_cons"].item() > 0 and all(not p.requires_grad for p in ict.teacher.parameters())


def test_ict_trainer_smoke(synthetic, tmp_path):
    rec = smoke_run(synthetic, tmp_path, ICT, ICTConfig())
    assert all(math.isfinite(m["train/loss_cons"]) for m in rec.metrics.values() if "train/loss" in m)
