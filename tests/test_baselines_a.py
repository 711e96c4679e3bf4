"""UA-MT and entropy minimisation (SSL4MIS baselines) and the shared entropy / softmax-MSE pieces they use."""
import math
from dataclasses import replace

import pytest
import torch

from benchmark.losses import entropy_map, softmax_mse
from methods.base import METHODS
from methods.entropy_min import EntropyMin, EntropyMinConfig
from methods.ua_mt import UAMT, UAMTConfig, certainty_mask, masked_consistency, uncertainty_threshold
from method_helpers import method_ctx, smoke_run, tiny_batch

# ---- shared pieces ---------------------------------------------------------------------------------------
def test_entropy_map_zero_for_one_hot_and_max_for_uniform():
    one_hot = torch.nn.functional.one_hot(torch.randint(0, 4, (2, 5, 5)), 4).permute(0, 3, 1, 2).float()
    uniform = torch.full((2, 4, 5, 5), 0.25)
    assert entropy_map(one_hot).shape == (2, 5, 5)
    assert entropy_map(one_hot).abs().max().item() < 1e-5
    torch.testing.assert_close(entropy_map(uniform), torch.full((2, 5, 5), math.log(4)), atol=1e-5, rtol=0)
    torch.testing.assert_close(entropy_map(uniform, normalise=True), torch.ones(2, 5, 5), atol=1e-5, rtol=0)


def test_softmax_mse_map_averages_to_the_mean():
    a, b = torch.randn(2, 4, 6, 6), torch.randn(2, 4, 6, 6)
    dist = softmax_mse(a, b, reduction="none")
    assert dist.shape == a.shape
    torch.testing.assert_close(dist.mean(), softmax_mse(a, b))


# ---- UA-MT -----------------------------------------------------------------------------------------------
def test_ua_mt_threshold_schedule():
    cfg = UAMTConfig()
    assert uncertainty_threshold(0, 30000, cfg) == pytest.approx((0.75 + 0.25 * math.exp(-5)) * math.log(2))
    assert uncertainty_threshold(30000, 30000, cfg) == pytest.approx(math.log(2))


def test_ua_mt_mask_keeps_confident_pixels_only():
    probs = torch.tensor([[0.97, 0.01, 0.01, 0.01],   # entropy ~0.17: kept
                          [0.25, 0.25, 0.25, 0.25],   # ln 4 ~1.39: dropped
                          [0.40, 0.30, 0.30, 0.00],   # ~1.09 > ln 2: always dropped
                          [0.70, 0.30, 0.00, 0.00]])  # ~0.61: dropped at step 0 (0.52), kept at the end
    probs = probs.T.reshape(1, 4, 2, 2)
    start, end = uncertainty_threshold(0, 100, UAMTConfig()), uncertainty_threshold(100, 100, UAMTConfig())
    assert certainty_mask(probs, start).flatten().tolist() == [1.0, 0.0, 0.0, 0.0]
    assert certainty_mask(probs, end).flatten().tolist() == [1.0, 0.0, 0.0, 1.0]
    assert certainty_mask(probs, end).shape == (1, 1, 2, 2)


def test_ua_mt_consistency_sums_classes_and_divides_by_twice_the_kept_pixels():
    dist = torch.ones(1, 4, 2, 2)
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0]).reshape(1, 1, 2, 2)
    assert masked_consistency(dist, mask).item() == pytest.approx(4 * 2 / (2 * 2))  # 4 classes x 2 pixels
    assert masked_consistency(dist, torch.zeros_like(mask)).item() == 0.0


def test_ua_mt_teacher_passes_group_like_ssl4mis_or_all_at_once():
    """The mean over T passes is the same maths grouped 2 per forward (SSL4MIS) or 8 in one (eval-mode teacher,
    no noise: every pass is identical, so both groupings must give the teacher's own softmax)."""
    torch.manual_seed(0)
    m = UAMT(UAMTConfig(noise_std=0.0), method_ctx())
    m.teacher.eval()
    u = torch.rand(2, 1, 16, 16)
    expected = m.teacher(u).softmax(1)
    torch.testing.assert_close(m.teacher_mean_probs(u), expected, atol=1e-5, rtol=1e-4)
    m.cfg = replace(m.cfg, passes_per_forward=8)
    torch.testing.assert_close(m.teacher_mean_probs(u), expected, atol=1e-5, rtol=1e-4)


def test_ua_mt_step_updates_the_ema_teacher_and_has_consistency_from_step_0():
    torch.manual_seed(0)
    m = UAMT(UAMTConfig(threshold_start=10.0), method_ctx())  # every pixel certain: the mask keeps all
    lab, u = tiny_batch()
    m.train_step(lab, u, step=0)  # alpha = 0: the teacher becomes the student
    for t, s in zip(m.teacher.parameters(), m.model.parameters()):
        assert torch.equal(t, s)
    before = [p.clone() for p in m.teacher.parameters()]
    out = m.train_step(lab, u, step=1)
    for b, t, s in zip(before, m.teacher.parameters(), m.model.parameters()):
        torch.testing.assert_close(t, 0.5 * b + 0.5 * s)
    assert any(not torch.equal(b, t) for b, t in zip(before, m.teacher.parameters()))
    assert all(not p.requires_grad for p in m.teacher.parameters())
    assert out["loss_cons"].item() > 0, "no 1000-step zero period in UA-MT"
    assert out["mask_ratio"].item() == 1.0


# ---- entropy minimisation --------------------------------------------------------------------------------
def test_entropy_min_term_uses_the_whole_batch():
    torch.manual_seed(0)
    m = EntropyMin(EntropyMinConfig(), method_ctx())
    lab, u = tiny_batch()
    torch.manual_seed(1)  # the same dropout draws in both forwards
    with torch.no_grad():
        expected = entropy_map(m.model(torch.cat([lab.image, u])).softmax(1), normalise=True).mean()
    torch.manual_seed(1)
    out = m.train_step(lab, u, step=0)
    assert out["loss_ent"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert out["cons_weight"].item() == pytest.approx(0.1 * math.exp(-5))


# ---- both through the Trainer ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ua-mt", "entropy-min"])
def test_three_step_trainer_smoke(synthetic, tmp_path, name):
    method = METHODS.get(name)
    smoke_run(synthetic, tmp_path, method)
