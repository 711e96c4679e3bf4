"""The Trainer and the two skeleton methods on synthetic data (CPU, small patches, few steps)."""
from dataclasses import replace

import pytest
import torch

from benchmark.config import TrainConfig
from benchmark.train import Trainer
from methods.base import Labeled, MethodContext
from methods.mean_teacher import MeanTeacher, MeanTeacherConfig
from methods.base import NoConfig
from methods.supervised import Supervised

TINY = TrainConfig(iterations=6, batch_size=4, labeled_batch_size=2, patch_size=32, eval_every=100,
                   checkpoint_every=3, log_every=1, num_workers=0)


class Recorder:
    def __init__(self, stop_after: int | None = None) -> None:
        self.losses: dict[int, float] = {}
        self.val: dict[int, float] = {}
        self.stop_after = stop_after

    def log_metrics(self, metrics, step):
        if "train/loss" in metrics:
            self.losses[step] = metrics["train/loss"]
            if self.stop_after is not None and step > self.stop_after:
                raise KeyboardInterrupt("simulated interruption")
        if "val/dice" in metrics:
            self.val[step] = metrics["val/dice"]


def make_trainer(synthetic, tmp_path, method=MeanTeacher, cfg=TINY, seed=0, logger=None, labeled=24):
    card, data = synthetic
    method_cfg = MeanTeacherConfig(consistency_start=0) if method is MeanTeacher else NoConfig()
    return Trainer(data, method, method_cfg, cfg, labeled, seed, tmp_path, card.evaluation, card.classes,
                   logger=logger, device="cpu", progress=False)


def test_same_seed_same_loss_curve_and_other_seed_differs(synthetic, tmp_path):
    curves = []
    for i, seed in enumerate((0, 0, 1)):
        rec = Recorder()
        make_trainer(synthetic, tmp_path / str(i), seed=seed, logger=rec).fit()
        curves.append(rec.losses)
    assert curves[0] == curves[1]
    assert curves[0] != curves[2]


def test_resume_continues_exactly_from_the_checkpoint(synthetic, tmp_path):
    full = Recorder()
    make_trainer(synthetic, tmp_path / "full", logger=full).fit()
    first = Recorder(stop_after=4)  # dies while logging step 5; last.pt holds step 3
    with pytest.raises(KeyboardInterrupt):
        make_trainer(synthetic, tmp_path / "cut", logger=first).fit()
    second = Recorder()
    result = make_trainer(synthetic, tmp_path / "cut", logger=second).fit()
    assert min(second.losses) == 4, "resumed at the step after the checkpoint"
    for step, loss in second.losses.items():
        assert loss == pytest.approx(full.losses[step], rel=1e-6)
    assert set(result.summary) == {"best_val", "last"}


def test_finished_checkpoint_only_reruns_the_idempotent_test(synthetic, tmp_path):
    make_trainer(synthetic, tmp_path).fit()
    rec = Recorder()
    result = make_trainer(synthetic, tmp_path, logger=rec).fit()
    assert rec.losses == {} and "dice" in result.summary["last"]


def test_mean_teacher_step_updates_the_ema_teacher(synthetic):
    ctx = MethodContext(1, 4, 100, "unet", lambda p: torch.optim.SGD(p, lr=0.1))
    torch.manual_seed(0)
    mt = MeanTeacher(MeanTeacherConfig(consistency_start=0), ctx)
    x, y, u = torch.rand(2, 1, 32, 32), torch.randint(0, 4, (2, 32, 32)), torch.rand(2, 1, 32, 32)
    mt.train_step(Labeled(x, y), u, step=0)  # alpha = 0: the teacher becomes the student
    for t, s in zip(mt.teacher.parameters(), mt.model.parameters()):
        assert torch.equal(t, s)
    before = [p.clone() for p in mt.teacher.parameters()]
    out = mt.train_step(Labeled(x, y), u, step=1)  # alpha = 0.5
    moved = sum(not torch.equal(b, p) for b, p in zip(before, mt.teacher.parameters()))
    assert moved > 0 and out["loss_cons"].item() > 0
    assert all(not p.requires_grad for p in mt.teacher.parameters())
    for b, t, s in zip(before, mt.teacher.parameters(), mt.model.parameters()):
        torch.testing.assert_close(t, 0.5 * b + 0.5 * s)


def test_mean_teacher_consistency_off_before_start(synthetic):
    ctx = MethodContext(1, 4, 100, "unet", lambda p: torch.optim.SGD(p, lr=0.1))
    mt = MeanTeacher(MeanTeacherConfig(consistency_start=1000), ctx)
    out = mt.train_step(Labeled(torch.rand(2, 1, 32, 32), torch.randint(0, 4, (2, 32, 32))), torch.rand(2, 1, 32, 32), 5)
    assert out["loss_cons"].item() == 0.0


@pytest.mark.slow
def test_supervised_learns_synthetic_cardiac_structures(synthetic, tmp_path):
    """With every training patient labeled, 150 steps must lift the test Dice far above chance.

    Chance here is ~0: an untrained net predicts background almost everywhere, and predicting one class
    everywhere scores 2|c| / (|image| + |c|) < 0.1 for these small structures. Measured: 0.46 (seed 0).
    """
    card, data = synthetic
    cfg = replace(TINY, iterations=150, batch_size=8, labeled_batch_size=8, patch_size=64, eval_every=50,
                  checkpoint_every=150, log_every=50, lr=0.03)
    result = Trainer(data, Supervised, NoConfig(), cfg, len(data.train_images), 0, tmp_path, card.evaluation,
                     card.classes, device="cpu", progress=False).fit()
    assert result.summary["best_val"]["dice"] > 0.3, result.summary["best_val"]
    assert result.best_val_dice > 0.3
    assert all(result.summary["best_val"][f"dice/{c}"] > 0.15 for c in ("RV", "Myo", "LV"))


def test_best_test_selection_is_kept_only_when_the_protocol_asks(synthetic, tmp_path):
    card, data = synthetic
    leaking = replace(card.evaluation, checkpoint="best_test")
    rec = Recorder()
    trainer = Trainer(data, Supervised, NoConfig(), replace(TINY, eval_every=3), 24, 0, tmp_path, leaking,
                      card.classes, logger=rec, device="cpu", progress=False)
    result = trainer.fit()
    assert set(result.summary) == {"best_val", "best_test", "last"}
    assert (tmp_path / "best_test.pt").exists() and (tmp_path / "cases_best_test.csv").exists()
    assert "leaks" in leaking.describe()
    plain = make_trainer(synthetic, tmp_path / "plain", method=Supervised).fit()
    assert set(plain.summary) == {"best_val", "last"}


def test_the_last_checkpoint_is_tested_with_the_last_weights_not_the_best(synthetic, tmp_path, monkeypatch):
    """Regression: the final test loaded best_val in place into the weights that `last` was about to reuse, so
    `test/last/*` repeated `test/best_val/*` on every card with a validation split."""
    import benchmark.train as train_module
    from benchmark.checkpoints import safe_load

    scores = iter([0.9, 0.5, 0.1])                    # val Dice falls: the best is the first selection (step 2)
    monkeypatch.setattr(Trainer, "validate", lambda self, split="val": next(scores))
    used = {}
    real = train_module.evaluate_cases

    def recording(predict, cases, protocol, names, inferer, device, workers, out):
        used[out.stem] = {k: v.clone() for k, v in trainer.method.model.state_dict().items()}
        return real(predict, cases, protocol, names, inferer, device, workers, out)

    monkeypatch.setattr(train_module, "evaluate_cases", recording)
    trainer = make_trainer(synthetic, tmp_path, method=Supervised, cfg=replace(TINY, eval_every=2))
    result = trainer.fit()
    assert result.best_step == 2 and set(used) == {"cases_best_val", "cases_last"}
    best = safe_load(tmp_path / "best_val.pt")["modules"]["model"]
    last = safe_load(tmp_path / "last.pt")["method"]["modules"]["model"]
    assert all(torch.equal(used["cases_best_val"][k], best[k]) for k in best)
    assert all(torch.equal(used["cases_last"][k], last[k]) for k in last)
    assert any(not torch.equal(best[k], last[k]) for k in best)     # 4 more steps of training changed them


def test_test_split_names_the_list_the_final_test_scores(synthetic, tmp_path):
    import pandas as pd

    from benchmark.config import ConfigError

    card, data = synthetic
    on_val = replace(card.evaluation, test_split="val", checkpoint="last")
    on_val.validate("card", len(card.classes), 2)
    Trainer(data, Supervised, NoConfig(), TINY, 24, 0, tmp_path, on_val, card.classes, device="cpu",
            progress=False).fit()
    scored = pd.read_csv(tmp_path / "cases_last.csv")["case"].unique().tolist()
    assert sorted(scored) == sorted(c.name for c in data.val) and not set(scored) & {c.name for c in data.test}
    for bad, field in ((replace(on_val, test_split="train"), "test_split"),
                       (replace(on_val, checkpoint="best_val"), "test_split")):
        with pytest.raises(ConfigError, match=field):
            bad.validate("card", len(card.classes), 2)


class ExplodingMethod(Supervised):
    """Supervised until step 3, then a NaN loss."""

    def train_step(self, labeled, unlabeled, step):
        out = super().train_step(labeled, unlabeled, step)
        return {"loss": out["loss"] * float("nan")} if step >= 3 else out


def test_a_nan_loss_stops_the_trial_with_a_clear_message(synthetic, tmp_path):
    from benchmark.train import NonFiniteLossError

    card, data = synthetic
    cfg = replace(TINY, iterations=50, log_every=2)
    trainer = Trainer(data, ExplodingMethod, NoConfig(), cfg, 24, 0, tmp_path, card.evaluation, card.classes,
                      device="cpu", progress=False)
    with pytest.raises(NonFiniteLossError, match=r"train/loss = nan within steps 3..4"):
        trainer.fit()
    assert trainer.step == 3  # stopped at the first log after the NaN, not after 50 steps
