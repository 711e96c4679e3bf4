"""SemSim: affinity and refinement, prototypes with fallbacks, cross prediction and its uncertainty weight,
threshold masks, the SFM, the ablation presets, and Trainer smoke runs."""
import math

import pytest
import torch

import methods.semsim as ss
from benchmark.nets.unet import UNet2D
from methods.base import METHODS
from methods.semsim import (PlainFusion, SemSim, SemSimConfig, SpatialFusion, affinity, cross_prediction,
                            query_similarity, refine, region_grid, region_prototypes)
from method_helpers import method_ctx, smoke_run, tiny_batch

UNET_PARAMS = 1_813_764


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ------------------------------------------------------------------------------------------ intra
def test_affinity_rows_sum_to_one_and_prefer_similar_pixels():
    torch.manual_seed(0)
    feat = torch.randn(2, 8, 4, 5)
    m = affinity(feat)
    assert m.shape == (2, 20, 20)
    torch.testing.assert_close(m.sum(-1), torch.ones(2, 20))
    # a pixel is most similar to itself (cosine 1)
    assert torch.equal(m.argmax(-1), torch.arange(20).expand(2, 20))
    sharp = affinity(feat, temperature=0.01)
    assert sharp.diagonal(dim1=1, dim2=2).min() > m.diagonal(dim1=1, dim2=2).max()


def test_refined_prediction_shape_and_formula():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 3, 3)
    m = affinity(torch.randn(2, 6, 3, 3))
    p_in = refine(logits.softmax(1), m)
    assert p_in.shape == (2, 4, 3, 3)
    torch.testing.assert_close(p_in.sum(1), torch.ones(2, 3, 3))       # (p + pM) / 2 stays a distribution
    p = logits.softmax(1).flatten(2)
    k1 = 4                                                              # p_in(k1) = (p(k1) + sum_k2 M(k1,k2) p(k2)) / 2
    manual = (p[:, :, k1] + (m[:, k1, None, :] * p).sum(-1)) / 2
    torch.testing.assert_close(p_in.flatten(2)[:, :, k1], manual)
    assert refine(logits, m, on="logits").shape == (2, 4, 3, 3)


def test_intra_prediction_resizes_to_the_fused_map():
    method = SemSim(SemSimConfig(), method_ctx())
    p = method._intra(torch.randn(2, 4, 32, 32), torch.randn(2, 16, 8, 8))
    assert p.shape == (2, 4, 8, 8)


# ------------------------------------------------------------------------------------------ cross
def test_prototypes_are_masked_means_with_fallbacks():
    # two labeled 4x4 images, 2 channels, 2x2 grid of 2x2 regions, 3 classes
    feat = torch.arange(2 * 2 * 16, dtype=torch.float32).view(2, 2, 4, 4)
    labels = torch.zeros(2, 4, 4, dtype=torch.long)
    labels[0, :2, :2] = 1          # image 0: class 1 fills region 0 only
    labels[0, 0, 0] = 0            # ... except one pixel
    labels[1, 3, 3] = 2            # image 1: class 2 at one pixel of region 3; class 1 absent from image 1
    protos, present = region_prototypes(feat, labels, 3, (2, 2))
    assert protos.shape == (2, 3, 4, 2) and present.tolist() == [True, True, True]
    f = feat.flatten(2)                                     # (B, D, 16)
    region0 = torch.tensor([0, 1, 4, 5])
    # class 1 in region 0 of image 0: mean of pixels 1, 4, 5
    torch.testing.assert_close(protos[0, 1, 0], f[0][:, [1, 4, 5]].mean(1))
    # class 1 absent from region 3 of image 0 -> image 0's class-1 prototype (the same three pixels)
    torch.testing.assert_close(protos[0, 1, 3], f[0][:, [1, 4, 5]].mean(1))
    # class 0 in region 0 of image 0: the single pixel 0
    torch.testing.assert_close(protos[0, 0, 0], f[0][:, 0])
    # class 1 absent from image 1 -> the batch's class-1 prototype (image 0's pixels)
    torch.testing.assert_close(protos[1, 1, 2], f[0][:, [1, 4, 5]].mean(1))
    # class 2 of image 1: region 3 has it, other regions fall back to the image prototype (the same pixel)
    torch.testing.assert_close(protos[1, 2, 0], f[1][:, 15])
    # class 0 in region 0 of image 1: the mean of the whole region
    torch.testing.assert_close(protos[1, 0, 0], f[1][:, region0].mean(1))
    # a class absent from the whole batch is reported
    assert region_prototypes(feat, labels, 4, (2, 2))[1].tolist() == [True, True, True, False]


def test_region_grid_readings():
    assert region_grid(4) == (4, 4) and region_grid(14) == (14, 14)
    assert region_grid(4, "total") == (2, 2) and region_grid(8, "total") == (2, 4) and region_grid(14, "total") == (2, 7)


def test_query_uses_each_pixels_own_region():
    protos = torch.zeros(1, 2, 4, 2)
    protos[0, 0, :, 0] = 1.0            # class 0 points along x everywhere
    protos[0, 1, :, 1] = 1.0            # class 1 along y ...
    protos[0, 1, 3] = torch.tensor([1.0, 0.0])   # ... except in region 3, where it points along x
    feat = torch.zeros(1, 2, 4, 4)
    feat[:, 0] = 1.0                    # every unlabeled pixel points along x
    m = query_similarity(feat, protos, (2, 2))[0, 0]          # (C, P)
    region3 = [10, 11, 14, 15]
    assert torch.allclose(m[0], torch.ones(16))
    assert torch.allclose(m[1, region3], torch.ones(4)) and torch.allclose(m[1, [0, 1, 4, 5]], torch.zeros(4))


def test_cross_prediction_is_a_distribution_and_uncertainty_is_one_when_labeled_images_agree():
    torch.manual_seed(0)
    m = torch.rand(3, 5, 4, 7) * 2 - 1                      # (B_u, B_l, C, P) cosines
    present = torch.ones(4, dtype=torch.bool)
    log_p, weight = cross_prediction(m, present, temperature=0.1, r=1000.0)
    assert log_p.shape == (3, 4, 7) and weight.shape == (3, 7)
    torch.testing.assert_close(log_p.exp().sum(1), torch.ones(3, 7))
    # Eq. 9 by hand for one pixel
    e = torch.exp(m[0, :, :, 0] / 0.1).sum(0)
    torch.testing.assert_close(log_p[0, :, 0].exp(), e / e.sum())
    agree = m[:, :1].expand(3, 5, 4, 7)                     # every labeled image gives the same similarities
    torch.testing.assert_close(cross_prediction(agree, present, 0.1, 1000.0)[1], torch.ones(3, 7), atol=1e-3, rtol=0)
    assert (weight < 0.99).all() and (weight >= 0).all()
    # an absent class gets no probability and no NaN
    absent = torch.tensor([True, True, False, True])
    log_p, weight = cross_prediction(m, absent, 0.1, 1000.0)
    assert (log_p[:, 2].exp() == 0).all() and torch.isfinite(weight).all()
    torch.testing.assert_close(log_p.exp().sum(1), torch.ones(3, 7))


def test_paper_literal_temperature_cannot_pass_tau():
    """Why cross_temperature exists: with raw cosines (T = 1), max p^cr stays below 0.95."""
    m = -torch.ones(1, 8, 4, 1)
    m[:, :, 0] = 1.0                                        # the most confident case possible
    log_p, _ = cross_prediction(m, torch.ones(4, dtype=torch.bool), 1.0, 1000.0)
    assert log_p.exp().max() == pytest.approx(math.e / (math.e + 3 / math.e), rel=1e-5)
    assert log_p.exp().max() < 0.95


# ------------------------------------------------------------------------------------------ fusion
def test_sfm_preserves_shapes_and_reports_its_parameters(capsys):
    feats = [torch.randn(2, 32, 28, 28), torch.randn(2, 64, 14, 14), torch.randn(2, 128, 7, 7)]
    sfm, plain = SpatialFusion(), PlainFusion()
    assert sfm(feats).shape == (2, 128, 14, 14)       # 7 is not a multiple of 4: window gcd(7, 4) = 1
    small = [torch.randn(1, 32, 16, 16), torch.randn(1, 64, 8, 8), torch.randn(1, 128, 4, 4)]
    assert sfm(small).shape == (1, 128, 8, 8) and plain(small).shape == (1, 128, 8, 8)
    unet = UNet2D(1, 4)
    assert n_params(unet) == UNET_PARAMS               # forward_with_encoder_features added no parameters
    x = torch.randn(1, 1, 32, 32)
    unet.eval()
    logits, enc = unet.forward_with_encoder_features(x)
    torch.testing.assert_close(logits, unet(x))
    assert [f.shape[1] for f in enc] == [16, 32, 64, 128, 256]
    with capsys.disabled():
        print(f"\n[semsim params] UNet {n_params(unet):,}  SFM {n_params(sfm):,} (paper 0.79 M)  "
              f"total {n_params(unet) + n_params(sfm):,} (paper 2.60 M)  SemSim^- conv {n_params(plain):,}")
    assert 0.5e6 < n_params(sfm) < 0.9e6 and n_params(plain) < 50_000


def test_sfm_windows_match_across_scales():
    """A token only attends within its window's box: changing one stage-4 window leaves other boxes alone."""
    torch.manual_seed(0)
    sfm = SpatialFusion(window=2).eval()
    feats = [torch.randn(1, 32, 16, 16), torch.randn(1, 64, 8, 8), torch.randn(1, 128, 4, 4)]
    base = sfm(feats)
    feats[2] = feats[2].clone()
    feats[2][..., :2, :2] += 5.0                       # the top-left window at stage 4
    changed = (sfm(feats) - base).abs().sum(1)[0]      # (8, 8) at stage 3
    assert changed[:4, :4].sum() > 0
    assert changed[6:, 6:].sum() == 0                   # far from the box (beyond the 3x3 fusion conv's reach)


# ------------------------------------------------------------------------------------------ method
def _step(cfg: SemSimConfig, seed: int = 0) -> dict[str, float]:
    torch.manual_seed(seed)
    method = SemSim(cfg, method_ctx())
    labeled, u = tiny_batch(n=2, m=2, size=32, seed=seed)
    return {k: float(v) for k, v in method.train_step(labeled, u, 0).items()}


def test_threshold_masks_honour_tau():
    keep_all = _step(SemSimConfig(tau=0.0))
    assert keep_all["mask_ratio"] == 1 and keep_all["mask_ratio_intra"] == 1 and keep_all["mask_ratio_cross"] == 1
    assert keep_all["loss_u"] > 0 and keep_all["loss_intra"] > 0 and keep_all["loss_cross"] > 0
    keep_none = _step(SemSimConfig(tau=1.01))
    assert keep_none["loss_u"] == keep_none["loss_intra"] == keep_none["loss_cross"] == 0


def test_cross_mask_sources():
    """Eq. 13 as printed (mask from p^w_2) can never pass at T = 1; the default takes the decoder's mask."""
    literal = _step(SemSimConfig(tau=0.75, cross_mask="cross"))
    assert literal["mask_ratio_cross"] == 0 and literal["loss_cross"] == 0
    assert _step(SemSimConfig(tau=0.75, cross_mask="cross", cross_temperature=0.01))["mask_ratio_cross"] > 0
    decoder = _step(SemSimConfig(tau=0.0))
    assert decoder["mask_ratio_cross"] == 1 and decoder["loss_cross"] > 0
    assert _step(SemSimConfig(tau=1.01))["mask_ratio_cross"] == 0
    assert SemSim.presets["paper-literal"] == {"affinity_temperature": 1.0, "cross_mask": "cross"}


TERMS = ("loss_u", "loss_intra", "loss_cross")


@pytest.mark.parametrize("row,on", [(1, "u"), (2, "intra"), (3, "cross"), (4, "intra cross"), (5, "intra u"),
                                    (6, "cross u"), (7, "intra cross u")])
def test_table_iv_presets_drop_exactly_their_terms(row, on):
    cfg = SemSimConfig(tau=0.0, **SemSim.presets[f"t4-{row}"])
    out = _step(cfg)
    for term in TERMS:
        assert (out[term] > 0) == (term.split("_")[1] in on.split()), term
    expected = 0.5 * (out["loss_sup"] + 0.5 * out["loss_u"] + 0.25 * out["loss_intra"] + 0.25 * out["loss_cross"])
    assert out["loss"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("preset,views,intra,cross,plain", [
    ("t6-s1-s1-s1", 1, 1, 1, [1]), ("t6-s1-s1-s2", 2, 1, 1, [2]), ("t6-s1-s2-s1", 2, 1, 2, [1]),
    ("t6-s1-s2-s2", 2, 1, 2, [2]), ("t6-s1-s2-s3", 3, 1, 2, [3]), ("t6-dec-s1s2", 2, None, None, [1, 2]),
    ("t6-dec-s1s2s3", 3, None, None, [1, 2, 3])])
def test_table_vi_presets_route_the_strong_views(monkeypatch, preset, views, intra, cross, plain):
    """Record which strong view's CutMix each loss term's targets were mixed with (= the view it uses);
    L_u runs at the input size (32), L_intra at the fused map's (8), L_cross is the only CE."""
    made, used = [], {"u": [], "intra": [], "cross": []}
    real_view = ss.strong_view

    def tagged_view(weak, cfg, **kw):
        made.append(real_view(weak, cfg, **kw))
        return made[-1]

    real_dice, real_ce = ss.dice_loss, ss.masked_ce_loss
    monkeypatch.setattr(ss, "strong_view", tagged_view)
    from methods.fixmatch import StrongView
    real_targets = StrongView.targets
    last = {}
    monkeypatch.setattr(StrongView, "targets", lambda self, t: last.update(view=next(i + 1 for i, v in enumerate(made) if v is self)) or real_targets(self, t))
    monkeypatch.setattr(ss, "dice_loss", lambda p, t, mask: used["intra" if p.shape[-1] != 32 else "u"].append(last["view"]) or real_dice(p, t, mask=mask))
    monkeypatch.setattr(ss, "masked_ce_loss", lambda *a, **k: used["cross"].append(last["view"]) or real_ce(*a, **k))
    _step(SemSimConfig(tau=0.0, **SemSim.presets[preset]))
    assert len(made) == views
    assert used["u"] == plain
    assert used["intra"] == ([intra] if intra else []) and used["cross"] == ([cross] if cross else [])


def test_other_presets():
    assert {f"n{n}" for n in (1, 2, 4, 8, 14)} <= set(SemSim.presets)
    assert SemSim.presets["n14"] == {"sub_regions": 14}
    minus = SemSim(SemSimConfig(**SemSim.presets["semsim-minus"]), method_ctx())
    assert isinstance(minus.fusion, PlainFusion)
    full = SemSim(SemSimConfig(), method_ctx())
    assert isinstance(full.fusion, SpatialFusion)
    assert n_params(full.model) == UNET_PARAMS and set(full.modules()) == {"model", "fusion"}
    assert _step(SemSimConfig(tau=0.0, sub_regions=14))["loss_cross"] > 0   # more regions than 8x8 pixels... still runs
    with pytest.raises(ValueError):
        SemSim(SemSimConfig(fusion="nope"), method_ctx())


def test_step_trains_the_fusion_module_and_predicts_with_the_unet_only():
    torch.manual_seed(0)
    method = SemSim(SemSimConfig(tau=0.0), method_ctx())
    before = [p.clone() for p in method.fusion.parameters()]
    labeled, u = tiny_batch(n=2, m=2, size=32)
    method.train_step(labeled, u, 0)
    assert sum(not torch.equal(a, b) for a, b in zip(before, method.fusion.parameters())) > 0
    method.train(False)
    x = torch.rand(1, 1, 32, 32)
    torch.testing.assert_close(method.predict(x), method.model(x))


def test_registered():
    assert METHODS.get("semsim") is SemSim


@pytest.mark.parametrize("preset", [None, "semsim-minus"])
def test_semsim_smoke(synthetic, tmp_path, preset):
    cfg = SemSimConfig(**(SemSim.presets[preset] if preset else {}))
    rec = smoke_run(synthetic, tmp_path, SemSim, cfg)
    assert all({"train/loss_u", "train/loss_intra", "train/loss_cross"} <= set(m) for m in rec.train.values())
