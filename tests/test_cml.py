"""CML: sub-network parameter sharing per variant, L_dis on hand-made features, the CutMix box and the
heterogeneous pseudo-label, pseudo-label cleaning, stages and the best-val hand-over, Trainer smoke runs."""
import math
from dataclasses import replace

import pytest
import torch
import yaml
import torch.nn.functional as F

from benchmark import REPO_ROOT, catalog
from benchmark.config import ConfigError, load_suite, SUITES_DIR
from benchmark.losses import dice_loss_per_sample
from benchmark.mixing import box_mask, sample_box
from benchmark.nets.cml import CoTrainingUNet2D
from benchmark.nets.unet import UNet2D
from benchmark.train import Trainer
from methods.base import METHODS, Labeled
from benchmark.masks import largest_component_per_sample
from methods.cml import CML, CMLConfig, feature_discrepancy, heterogeneous_targets
from method_helpers import SMOKE, MetricRecorder, method_ctx, tiny_batch
from benchmark.checkpoints import safe_load


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------------------------- networks
def test_paper_branches_share_no_parameters_and_released_shares_all():
    paper = CoTrainingUNet2D(1, 4, shared=False)
    ids = [{id(p) for p in paper.branch(i).parameters()} for i in (0, 1)]
    assert ids[0] and ids[1] and not ids[0] & ids[1]
    assert n_params(paper.branch(0)) == n_params(UNet2D(1, 4)) == 1_813_764   # branch 0 is the plain UNet
    assert isinstance(paper.branch(1).decoder.ups[0].up, torch.nn.ConvTranspose2d)  # D1 up-samples differently
    released = CoTrainingUNet2D(1, 4, shared=True)
    assert released.branch(0) is released.branch(1) and n_params(released) == 1_813_764


def test_released_views_differ_only_by_dropout():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 32, 32)
    released, paper = CoTrainingUNet2D(1, 4, shared=True), CoTrainingUNet2D(1, 4, shared=False)
    released.train()
    out = released(x)
    assert not torch.allclose(out[0], out[1])                 # dropout draws differ in training
    released.eval(), paper.eval()
    with torch.no_grad():
        l0, l1, f0, f1 = released(x)
        p0, p1, _, _ = paper(x)
    assert torch.equal(l0, l1) and torch.equal(f0, f1)        # ... and nothing else
    assert not torch.allclose(p0, p1)
    assert f0.shape == (2, 256, 2, 2)                         # bottleneck: 256 channels at 1/16


# ---------------------------------------------------------------------------------------------- L_dis
def test_discrepancy_is_two_one_zero_for_identical_orthogonal_opposite_features():
    f = torch.zeros(2, 3, 4, 4)
    f[:, 0] = 2.0
    g = torch.zeros_like(f)
    g[:, 1] = 5.0
    assert feature_discrepancy(f, f).item() == pytest.approx(2.0)
    assert feature_discrepancy(f, g).item() == pytest.approx(1.0)
    assert feature_discrepancy(f, -3 * f).item() == pytest.approx(0.0)


def test_discrepancy_takes_no_gradient_through_the_other_branch():
    torch.manual_seed(0)
    a, b = torch.randn(2, 8, 3, 3, requires_grad=True), torch.randn(2, 8, 3, 3, requires_grad=True)
    feature_discrepancy(a, b).backward()
    assert b.grad is None and a.grad.abs().sum() > 0
    # the cosine is per position over channels, then averaged (released features_discrepancy_loss)
    expected = 1 + F.cosine_similarity(a.detach(), b.detach(), dim=1).mean()
    assert feature_discrepancy(a, b).item() == pytest.approx(expected.item())


# --------------------------------------------------------------------------------------------- mixing
@pytest.mark.parametrize("beta", [1 / 3, 1 / 2, 2 / 3, 5 / 6])
@pytest.mark.parametrize("position", ["random", "center"])
def test_box_side_is_beta_of_each_image_side(beta, position):
    torch.manual_seed(0)
    m = CML(CMLConfig(beta=beta, box_position=position), method_ctx())
    x = torch.zeros(2, 1, 48, 30)
    for _ in range(20):
        mask = m.box(x).bool()
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        assert (len(rows), len(cols)) == (int(48 * beta), int(30 * beta))     # int(beta * side) on each axis
        assert mask.sum() == len(rows) * len(cols)                             # one solid rectangle
    if position == "center":
        assert rows[0] == (48 - len(rows)) // 2 and cols[0] == (30 - len(cols)) // 2


def test_labeled_cutmix_mixes_images_and_labels_with_one_box():
    """Pairs are (first half, second half); inside the box everything comes from the second half (M = 0)."""
    torch.manual_seed(0)
    m = CML(CMLConfig(), method_ctx())
    seen = {}
    net, losses = m.net, m.branch_losses
    m.net = lambda x: seen.update(x=x) or net(x)
    m.branch_losses = lambda outputs, targets: seen.update(y=targets) or losses(outputs, targets)
    image = torch.cat([torch.full((2, 1, 32, 32), 1.0), torch.full((2, 1, 32, 32), 2.0)])
    label = torch.cat([torch.full((2, 32, 32), 1), torch.full((2, 32, 32), 3)])
    m.labeled_losses(Labeled(image, label))
    x, (y0, y1) = seen["x"], seen["y"]
    assert x.shape == (2, 1, 32, 32) and torch.equal(y0, y1)
    inside = x[0, 0] == 2.0
    assert inside.sum() == 16 * 16                                     # beta = 1/2 of 32 on each side
    assert torch.equal(y0[0] == 3, inside) and torch.equal(x[1, 0] == 2.0, inside)  # one box for all pairs


def test_heterogeneous_pseudo_label_follows_eq9():
    """Eq. 9 with M = 0 in the box: target_i = other branch's label of X_p outside, own label of X_q inside."""
    k, size = 2, 8
    inside = box_mask((size, size), sample_box((size, size), 0.5)).bool()
    # a distinct value for each (branch, image half): branch 0 labels X_p 1, X_q 2; branch 1 labels X_p 3, X_q 0
    pseudo0 = torch.cat([torch.full((k, size, size), 1), torch.full((k, size, size), 2)])
    pseudo1 = torch.cat([torch.full((k, size, size), 3), torch.full((k, size, size), 0)])
    y0, y1 = heterogeneous_targets(pseudo0, pseudo1, inside)
    assert torch.equal(y0[:, inside], torch.full((k, int(inside.sum())), 2))    # own label of X_q in the box
    assert torch.equal(y0[:, ~inside], torch.full((k, int((~inside).sum())), 3))  # other's label of X_p outside
    assert torch.equal(y1[:, inside], torch.full((k, int(inside.sum())), 0))
    assert torch.equal(y1[:, ~inside], torch.full((k, int((~inside).sum())), 1))


def test_cfl_without_cutmix_supervises_each_branch_with_the_others_argmax():
    torch.manual_seed(0)
    m = CML(CML.make_config(catalog.preset_overrides("cml:cfl"), "test"), method_ctx())
    seen = {}
    losses = m.branch_losses
    m.branch_losses = lambda outputs, targets: seen.update(out=outputs, y=targets) or losses(outputs, targets)
    _, u = tiny_batch(2, 3)
    m.unlabeled_losses(u)
    logits0, logits1 = seen["out"][:2]
    assert logits0.shape[0] == 3                                          # all unlabeled images, unmixed
    assert torch.equal(seen["y"][0], logits1.argmax(1)) and torch.equal(seen["y"][1], logits0.argmax(1))


def test_pseudo_labels_keep_the_largest_component_of_each_class():
    lab = torch.zeros(1, 10, 10, dtype=torch.long)
    lab[0, 0:2, 0:2] = 1          # small blob of class 1: removed
    lab[0, 5:9, 5:9] = 1          # large blob of class 1: kept
    lab[0, 0:3, 7:10] = 2         # the only blob of class 2: kept
    out = largest_component_per_sample(lab, 4)
    assert out[0, 0:2, 0:2].sum() == 0 and (out[0, 5:9, 5:9] == 1).all() and (out[0, 0:3, 7:10] == 2).all()
    m = CML(CMLConfig(largest_component=False), method_ctx())
    logits = F.one_hot(lab, 4).permute(0, 3, 1, 2).float()
    assert torch.equal(m.pseudo_labels(logits), lab)                     # off: plain argmax


def test_per_sample_dice_is_per_image_linear_and_zero_when_perfect():
    target = torch.tensor([[[0, 1], [1, 1]], [[0, 0], [0, 2]]])
    perfect = F.one_hot(target, 3).permute(0, 3, 1, 2).float()
    assert dice_loss_per_sample(perfect, target).item() == pytest.approx(0.0, abs=1e-5)
    half = torch.full((2, 3, 2, 2), 0.5)
    # image 0: class 0 -> 2*0.5/(2+1)=1/3, class 1 -> 2*1.5/(2+3)=3/5, class 2 (absent) -> ~0 + eps/(2+eps)
    d = [[1 / 3, 3 / 5, 0.0], [2 * 1.5 / (2 + 3), 0.0, 2 * 0.5 / (2 + 1)]]
    expected = 1 - sum(map(sum, d)) / 6
    assert dice_loss_per_sample(half, target).item() == pytest.approx(expected, abs=1e-4)


# ------------------------------------------------------------------------------------ steps and predict
def test_pretrain_step_uses_labeled_data_only_and_self_training_adds_the_unlabeled_terms():
    torch.manual_seed(0)
    m = CML(CMLConfig(), method_ctx())
    labeled, u = tiny_batch(4, 4)
    out = m.train_step(labeled, None, 0)                                 # pre-training ignores unlabeled data
    assert set(out) == {"loss", "loss_sup_l", "loss_dis"}
    assert out["loss"].item() == pytest.approx(out["loss_sup_l"].item() + 0.1 * out["loss_dis"].item(), rel=1e-5)
    m.start_stage(m.stages()[1], 1)
    out = m.train_step(labeled, u, 0)
    assert out["loss"].item() == pytest.approx(
        out["loss_sup_l"].item() + 0.5 * out["loss_sup_u"].item() + 0.1 * out["loss_dis"].item(), rel=1e-5)
    assert 0 <= out["loss_dis"].item() <= 8                                # 4 terms in [0, 2]
    with pytest.raises(ValueError, match="unlabeled"):
        m.train_step(labeled, None, 1)


def test_predict_is_the_mean_of_the_two_branches_probabilities():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 32, 32)
    m = CML(CMLConfig(), method_ctx())
    m.train(False)
    with torch.no_grad():
        l0, l1, _, _ = m.net(x)
        mean = (l0.softmax(1) + l1.softmax(1)) / 2
        torch.testing.assert_close(m.predict(x).softmax(1), mean)
        m.cfg = replace(m.cfg, ensemble="logits")
        torch.testing.assert_close(m.predict(x), (l0 + l1) / 2)


def test_config_errors_and_presets():
    with pytest.raises(ConfigError, match="variant"):
        CMLConfig(variant="both")
    with pytest.raises(ConfigError, match="beta"):
        CMLConfig(beta=1.0)
    assert METHODS.get("cml") is CML
    for preset in ("released", "sup-only", "no-unsup", "no-dis", "cps", "cfl"):
        cfg = CML.make_config(catalog.preset_overrides(f"cml:{preset}"), preset)
        assert isinstance(cfg, CMLConfig)
    assert CML.make_config(catalog.preset_overrides("cml:cps"), "x").lambda_dis == 0
    rows = yaml.safe_load((REPO_ROOT / "leaderboards" / "cml-table4.yaml").read_text())["rows"]
    for row in rows:                                   # every Table 4 row of the leaderboard is a runnable name
        assert catalog.method_class(row["method"]) is CML
        CML.make_config(catalog.preset_overrides(row["method"]), row["method"])
    assert CML.search_grids["beta"] == [1 / 3, 1 / 2, 2 / 3, 5 / 6]
    assert CML.search_space["lambda_u"] == "choice:0.1,0.2,0.5,1.0"


def test_suites_train_cml_with_12_plus_12_and_a_constant_lr():
    for name in ("acdc-3pct", "acdc-10pct"):
        entry = load_suite(SUITES_DIR / f"{name}.yaml").method_train["cml"]
        assert entry["lr_schedule"] == "constant" and entry["labeled_batch_size"] == 12 and entry["batch_size"] == 24


def test_stages_scale_pre_training_with_the_budget():
    stages = CML(CMLConfig(), method_ctx(iterations=20)).stages()
    assert [(s.name, s.iterations, s.init) for s in stages] == [("pretrain", 7, "continue"),
                                                                ("selftrain", 20, "best_val")]
    assert [s.iterations for s in CML(CMLConfig(), method_ctx(iterations=30000)).stages()] == [10000, 30000]
    assert [s.name for s in CML(CMLConfig(pretrain_fraction=0), method_ctx(iterations=20)).stages()] == ["selftrain"]


# ------------------------------------------------------------------------------------- Trainer runs
class RecordingCML(CML):
    """Keeps a copy of the weights and the optimiser when each stage starts."""

    def start_stage(self, stage, index):
        super().start_stage(stage, index)
        self.started = getattr(self, "started", [])
        self.started.append((stage.name, {k: v.clone() for k, v in self.net.state_dict().items()},
                             len(self.optimizer.state)))


def run(synthetic, tmp_path, cls, cfg, train=SMOKE) -> tuple[Trainer, MetricRecorder]:
    card, data = synthetic
    rec = MetricRecorder()
    t = Trainer(data, cls, cfg, train, 24, 0, tmp_path, card.evaluation, card.classes, logger=rec, device="cpu",
                progress=False)
    rec.result = t.fit()
    return t, rec


def test_hand_over_starts_self_training_from_the_best_pre_training_weights(synthetic, tmp_path):
    train = replace(SMOKE, iterations=2, eval_every=1)   # pre-training 2 steps (fraction 1), selection each step
    t, _ = run(synthetic, tmp_path, RecordingCML, CMLConfig(pretrain_fraction=1.0), train)
    (_, pre_start, _), (name, self_start, n_state) = t.method.started
    best = safe_load(tmp_path / "pretrain-best_val.pt")["modules"]["net"]
    assert name == "selftrain"
    assert all(torch.equal(self_start[k], best[k]) for k in best)
    assert any(not torch.equal(self_start[k], pre_start[k]) for k in best if k.endswith("weight"))  # it trained
    assert n_state == 0                                   # a fresh optimiser (no momentum) at the hand-over


@pytest.mark.parametrize("preset", [None, "released", "cfl"])
def test_trainer_smoke_runs_both_stages(synthetic, tmp_path, preset):
    cfg = CML.make_config(catalog.preset_overrides(f"cml:{preset}") if preset else {}, "test")
    _, rec = run(synthetic, tmp_path, CML, cfg)       # 3 iterations: 1 pre-training + 3 self-training steps
    assert sorted(rec.train) == [1, 2, 3, 4]
    assert [rec.train[s]["train/stage"] for s in (1, 2, 4)] == [0.0, 1.0, 1.0]
    assert "train/loss_sup_u" not in rec.train[1] and "train/loss_sup_u" in rec.train[2]
    assert all(math.isfinite(v) for m in rec.train.values() for v in m.values())
    assert (tmp_path / "pretrain-best_val.pt").exists() and "dice" in rec.result.summary["best_val"]
