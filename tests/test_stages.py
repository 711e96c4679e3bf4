"""Multi-stage training (pre-train -> self-train) in the one Trainer: stage-local steps and lr, hand-over of the
previous stage's best weights, and resume across a stage boundary."""
from dataclasses import dataclass, replace

import pytest
import torch

from benchmark.config import TrainConfig
from benchmark.losses import dice_ce_loss
from benchmark.train import Trainer
from methods.base import Labeled, Method, MethodContext, Stage
from benchmark.checkpoints import safe_load

CFG = TrainConfig(iterations=4, batch_size=4, labeled_batch_size=2, patch_size=32, eval_every=100,
                  checkpoint_every=100, log_every=1, num_workers=0, lr=0.05)


@dataclass
class TwoStageConfig:
    pretrain_iterations: int = 3
    init: str = "best_val"
    pretrain_lr_schedule: str | None = None


class TwoStage(Method):
    """Pre-train on labeled data, then train again; records what the Trainer hands it."""

    Config = TwoStageConfig

    def __init__(self, cfg: TwoStageConfig, ctx: MethodContext) -> None:
        super().__init__(cfg, ctx)
        self.model = ctx.build_network()
        self.optimizer = ctx.make_optimizer(self.model.parameters())
        self.calls: list[tuple[int, int, float]] = []     # (stage index, local step, lr)
        self.started: list[tuple[int, torch.Tensor]] = []  # (stage index, a weight at stage start)
        self.stage_index = 0

    def stages(self) -> list[Stage]:
        return [Stage("pretrain", self.cfg.pretrain_iterations, lr_schedule=self.cfg.pretrain_lr_schedule),
                Stage("selftrain", self.ctx.iterations, self.cfg.init)]

    def start_stage(self, stage: Stage, index: int) -> None:
        self.stage_index = index
        self.started.append((index, next(self.model.parameters()).detach().clone()))

    def train_step(self, labeled: Labeled, unlabeled, step: int):
        self.calls.append((self.stage_index, step, self.optimizer.param_groups[0]["lr"]))
        loss = dice_ce_loss(self.model(labeled.image), labeled.label)
        self.update(loss, self.optimizer)
        return {"loss": loss.detach()}

    def predict(self, x):
        return self.model(x)


def trainer(synthetic, run_dir, cfg=CFG, method_cfg=None, logger=None) -> Trainer:
    card, data = synthetic
    return Trainer(data, TwoStage, method_cfg or TwoStageConfig(), cfg, 24, 0, run_dir, card.evaluation,
                   card.classes, logger=logger, device="cpu", progress=False)


def test_steps_and_lr_restart_in_each_stage(synthetic, tmp_path):
    t = trainer(synthetic, tmp_path)
    t.fit()
    calls = t.method.calls
    assert [(s, k) for s, k, _ in calls] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (1, 3)]
    lrs = {(s, k): lr for s, k, lr in calls}
    assert lrs[(0, 0)] == lrs[(1, 0)] == pytest.approx(0.05), "poly restarts at the base lr"
    assert lrs[(0, 2)] == pytest.approx(0.05 * (1 - 2 / 3) ** 0.9)
    assert lrs[(1, 3)] == pytest.approx(0.05 * (1 - 3 / 4) ** 0.9)
    assert (tmp_path / "pretrain-best_val.pt").exists() and (tmp_path / "best_val.pt").exists()


def test_next_stage_starts_from_the_previous_stages_best_val_weights(synthetic, tmp_path):
    cfg = replace(CFG, eval_every=1)  # selection after every step: the best is usually not the last
    t = trainer(synthetic, tmp_path, cfg)
    t.fit()
    best = safe_load(tmp_path / "pretrain-best_val.pt")["modules"]["model"]
    start_weight = dict(t.method.started)[1]
    assert torch.equal(start_weight, next(iter(best.values())))

    cont = trainer(synthetic, tmp_path / "continue", cfg, TwoStageConfig(init="continue"))
    cont.fit()
    assert len(cont.method.started) == 2  # start_stage is called for the second stage without loading weights


def test_resume_at_a_stage_boundary_matches_an_uninterrupted_run(synthetic, tmp_path):
    class Stop:
        def __init__(self, after: int | None = None) -> None:
            self.losses: dict[int, float] = {}
            self.after = after

        def log_metrics(self, metrics, step):
            if "train/loss" in metrics:
                self.losses[step] = metrics["train/loss"]
                if self.after is not None and step > self.after:
                    raise KeyboardInterrupt

    full = Stop()
    trainer(synthetic, tmp_path / "full", logger=full).fit()
    cut = Stop(after=3)  # stage 1 ends at step 3: last.pt holds the hand-over; dies while logging step 4
    with pytest.raises(KeyboardInterrupt):
        trainer(synthetic, tmp_path / "cut", logger=cut).fit()
    assert safe_load(tmp_path / "cut" / "last.pt")["stage"] == 1
    again = Stop()
    resumed = trainer(synthetic, tmp_path / "cut", logger=again)
    resumed.fit()
    assert min(again.losses) == 4 and resumed.method.calls[0][:2] == (1, 0)
    for step, loss in again.losses.items():
        assert loss == pytest.approx(full.losses[step], rel=1e-6)


def test_invalid_stages_are_refused_before_training(synthetic, tmp_path):
    with pytest.raises(ValueError, match="0 iterations"):
        trainer(synthetic, tmp_path, method_cfg=TwoStageConfig(pretrain_iterations=0))
    with pytest.raises(ValueError, match="init must be"):
        trainer(synthetic, tmp_path, method_cfg=TwoStageConfig(init="best"))


def test_a_stage_can_keep_a_constant_lr_while_the_next_follows_the_trainers_schedule(synthetic, tmp_path):
    """BCP / CML on LA: no decay while pre-training, x0.1 every step_size while self-training."""
    cfg = replace(CFG, lr_schedule="step", step_size=2)
    t = trainer(synthetic, tmp_path, cfg, TwoStageConfig(pretrain_iterations=3, pretrain_lr_schedule="constant"))
    t.fit()
    assert [(s, k, pytest.approx(lr)) for s, k, lr in t.method.calls] == [
        (0, 0, 0.05), (0, 1, 0.05), (0, 2, 0.05),                     # constant: no drop at local step 2
        (1, 0, 0.05), (1, 1, 0.05), (1, 2, 0.005), (1, 3, 0.005)]     # step: x0.1 from local step 2


def test_a_bad_stage_lr_schedule_is_refused_before_training(synthetic, tmp_path):
    with pytest.raises(ValueError, match="lr_schedule must be poly, constant or step"):
        trainer(synthetic, tmp_path, method_cfg=TwoStageConfig(pretrain_lr_schedule="cosine"))


def test_without_val_the_next_stage_starts_from_the_best_on_test_where_the_protocol_selects_on_test(synthetic, tmp_path):
    """LA has no val split: BCP / CML's reference hands over its best-on-test pre-training weights, reproduced
    only under checkpoint best_test; under last the weights simply continue."""
    card, data = synthetic
    no_val = replace(data, val=[])
    for rule in ("best_test", "last"):
        protocol = replace(card.evaluation, val_split=None, checkpoint=rule)
        t = Trainer(no_val, TwoStage, TwoStageConfig(), replace(CFG, eval_every=1), 24, 0, tmp_path / rule,
                    protocol, card.classes, device="cpu", progress=False)
        t.fit()
        handed = t.method.started[1][1]
        saved = (tmp_path / rule / "pretrain-best_test.pt")
        assert saved.exists() == (rule == "best_test")
        if rule == "best_test":
            best = safe_load(saved)["modules"]["model"]
            assert torch.equal(handed, next(iter(best.values())))
