"""ICT-Med: reference defaults, the per-pair Beta(0.2, 0.2) mixing coefficient, the consistency target of a whole
step on known coefficients, and a 3-step Trainer smoke run."""
import math

import pytest
import torch
from scipy import stats

from methods.base import METHODS
from methods.ict import ICT, ICTConfig
from methods.ict_med import ICTMed, ICTMedConfig
from method_helpers import method_ctx, smoke_run, tiny_batch


def test_registered_with_the_reference_defaults():
    assert METHODS.get("ict-med") is ICTMed
    cfg = ICTMedConfig()
    assert (cfg.ict_alpha, cfg.ema_decay, cfg.consistency, cfg.consistency_rampup, cfg.rampup_unit) == \
        (0.2, 0.99, 0.1, 200.0, 150)


def test_mixing_coefficient_is_one_beta_draw_per_pair():
    torch.manual_seed(0)
    method = ICTMed(ICTMedConfig(), method_ctx())
    lam = method.sample_lambda(4000, torch.zeros(1))
    assert lam.shape == (4000, 1, 1, 1) and ((lam >= 0) & (lam <= 1)).all()
    beta = stats.beta(0.2, 0.2)
    for q in (0.05, 0.3, 0.5, 0.9):  # the empirical CDF matches Beta(0.2, 0.2) (U-shaped: most mass near 0 and 1)
        assert (lam <= q).float().mean().item() == pytest.approx(beta.cdf(q), abs=0.03)


def test_consistency_target_is_the_teachers_softmax_mixed_with_the_same_coefficients(monkeypatch):
    torch.manual_seed(0)
    method = ICTMed(ICTMedConfig(), method_ctx())
    method.train(False)  # deterministic passes (no dropout, BN running statistics) so the step can be replayed
    labeled, u = tiny_batch(n=4, m=4)
    lam = torch.tensor([0.25, 1.0]).view(2, 1, 1, 1)  # k = labeled_bs // 2 = 2 pairs: (u0, u2) and (u1, u3)
    monkeypatch.setattr(method, "sample_lambda", lambda k, like: lam)
    with torch.no_grad():
        mixed = torch.stack([0.75 * u[0] + 0.25 * u[2], u[3]])
        student = method.model(torch.cat([labeled.image, mixed]))[4:].softmax(1)
        t = method.teacher(u).softmax(1)
        target = torch.stack([0.75 * t[0] + 0.25 * t[2], t[3]])
    out = method.train_step(labeled, u, step=30000)  # full weight 0.1
    assert out["loss_cons"].item() == pytest.approx(torch.mean((student - target) ** 2).item(), rel=1e-5)
    assert out["cons_weight"].item() == pytest.approx(0.1)


def test_same_seed_same_step_as_ict():
    """The released ICT-Med code is SSL4MIS's ICT: with one seed both classes take the same step."""
    labeled, u = tiny_batch(n=4, m=4)
    outs = []
    for cls, cfg in ((ICT, ICTConfig()), (ICTMed, ICTMedConfig())):
        torch.manual_seed(0)
        outs.append(cls(cfg, method_ctx()).train_step(labeled, u, step=100))
    for key in outs[0]:
        torch.testing.assert_close(outs[0][key], outs[1][key])


def test_trainer_smoke(synthetic, tmp_path):
    rec = smoke_run(synthetic, tmp_path, ICTMed, ICTMedConfig())
    assert all(math.isfinite(m["train/loss_cons"]) for m in rec.train.values())
