"""The one Trainer: iteration loop, lr schedule, AMP, logging, checkpoint/resume, validation, final test.

    trainer = Trainer(dataset, method, train_cfg, labeled_rows, seed, run_dir, protocol, class_names)
    result = trainer.fit()     # resumes from run_dir/last.pt when it exists

Checkpoints: `last.pt` (full state: step, nets, optimisers, RNG, selection bookkeeping) every
`checkpoint_every` steps and at the end; `best_val.pt` (weights) whenever the val Dice improves, and
`best_test.pt` likewise on the test Dice only when the protocol asks for that leaking rule. At the end the
test split is evaluated for every kept checkpoint and the last weights, per-case rows streamed to CSV.

Stages: a method may train in phases (`Method.stages()`, e.g. pre-train then self-train). The Trainer runs
them one after the other in one loop over a global step: each stage restarts its lr schedule and its
best-on-val selection, may start from the previous stage's best weights (`<stage>-best_val.pt`), and the
final test scores the last stage. A checkpoint always describes the state *before* step `step + 1`, so a
run killed at a stage boundary resumes in the next stage with that stage's starting weights.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch

from benchmark.checkpoints import numpy_rng_state, safe_load, set_numpy_rng_state
from benchmark.config import EvaluationProtocol, TrainConfig
from benchmark.data.dataset import InMemoryDataset
from benchmark.data.loader import StepBatches, step_loader
from benchmark.data.sampling import TwoStreamSchedule
from benchmark.evaluate import evaluate_cases, make_inferer, summarize, validation_dice
from benchmark.schedules import lr_factor
from methods.base import Labeled, Method, MethodContext, Stage

#: selection rule -> the split whose Dice it follows
SELECTION_SPLITS = {"best_val": "val", "best_test": "test"}


class NonFiniteLossError(FloatingPointError):
    """A training loss became NaN or inf: the trial stops instead of wasting the rest of its budget."""


class RunLogger(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...


class NullLogger:
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass


@dataclass
class TrainResult:
    """What a finished training returns: per-case test tables and their summaries per checkpoint."""

    cases: dict[str, pd.DataFrame]
    summary: dict[str, dict[str, float]]
    best_val_dice: float
    best_step: int
    steps_per_second: float
    wall_seconds: float
    val_history: list[tuple[int, float]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_optimizer_factory(cfg: TrainConfig):
    def make(params) -> torch.optim.Optimizer:
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
        return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return make


def build_method(method_cls: type[Method], method_cfg: Any, cfg: TrainConfig, in_channels: int,
                 num_classes: int) -> Method:
    """Instantiate a method with its networks and optimisers (the Trainer's and `bench eval`'s one way)."""
    ctx = MethodContext(in_channels, num_classes, cfg.iterations, cfg.network, make_optimizer_factory(cfg),
                        tuple(cfg.patch_size), dict(cfg.network_options))
    return method_cls(method_cfg, ctx)


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class Trainer:
    def __init__(self, data: InMemoryDataset, method_cls: type[Method], method_cfg: Any, cfg: TrainConfig,
                 labeled_rows: int, seed: int, run_dir: Path, protocol: EvaluationProtocol,
                 class_names: tuple[str, ...], in_channels: int | None = None, logger: RunLogger | None = None,
                 device: str = "auto", progress: bool = True, description: str = "train",
                 eval_workers: int = 0, test_cases: int | None = None) -> None:
        self.data, self.cfg, self.seed, self.protocol = data, cfg, seed, protocol
        self.class_names = class_names
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.logger = logger or NullLogger()
        self.device = pick_device(device)
        self.progress, self.description, self.eval_workers = progress, description, eval_workers
        n_total = len(data.train_images)
        if not 0 < labeled_rows <= n_total:
            raise ValueError(f"labeled_rows must be in 1..{n_total} (got {labeled_rows})")
        self.labeled_rows = labeled_rows
        tested = data.eval_cases(protocol.test_split)
        self.test_cases = tested[:test_cases] if test_cases else tested   # a smoke run scores fewer
        self.inferer = make_inferer(protocol, cfg.patch_size)
        seed_everything(seed)
        self.method = build_method(method_cls, method_cfg, cfg, in_channels or data.in_channels,
                                   len(class_names)).to(self.device)
        if method_cls.draws_unlabeled(method_cfg):
            if labeled_rows == n_total:
                raise ValueError(f"{method_cls.__name__} needs unlabeled data but all {n_total} training rows are labeled")
            lbs, ubs = cfg.labeled_batch_size, cfg.batch_size - cfg.labeled_batch_size
        else:  # SSL4MIS's supervised script fills the whole batch with labeled slices
            lbs, ubs = cfg.batch_size, 0
        self.labeled_bs = lbs
        self.schedule = TwoStreamSchedule(labeled_rows, n_total - labeled_rows, lbs, ubs, seed)
        self.step = 0
        self.stages = self._check_stages(self.method.stages())
        self.stage_starts = list(np.cumsum([0] + [st.iterations for st in self.stages[:-1]]).tolist())
        self.total_iterations = sum(st.iterations for st in self.stages)
        self.stage_index = 0
        # no validation split (LA): no best-on-val selection; best_test only where a protocol reproduces it
        has_val = bool(protocol.val_split) and len(data.val) > 0
        self.selections = (["best_val"] if has_val else []) + (["best_test"] if protocol.checkpoint == "best_test" else [])
        self.best: dict[str, tuple[float, int]] = {k: (-1.0, -1) for k in self.selections}
        self.val_history: list[tuple[int, float]] = []
        self.base_lrs = {k: [g["lr"] for g in o.param_groups] for k, o in self.method.optimizers().items()}
        self.use_bf16 = cfg.precision(self.device.type) == "bf16"   # the rule the run's `precision` tag uses
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    # ----------------------------------------------------------------------------------------- stages
    @staticmethod
    def _check_stages(stages: list[Stage]) -> list[Stage]:
        names = [st.name for st in stages]
        problems = []
        if not stages:
            problems.append("no stages")
        if len(set(names)) != len(names):
            problems.append(f"stage names repeat ({names})")
        problems += [f"stage {st.name!r} has {st.iterations} iterations" for st in stages if st.iterations < 1]
        problems += [f"stage {st.name!r}: init must be continue or best_val (got {st.init!r})"
                     for st in stages if st.init not in ("continue", "best_val")]
        problems += [f"stage {st.name!r}: lr_schedule must be poly, constant or step (got {st.lr_schedule!r})"
                     for st in stages if st.lr_schedule not in (None, "poly", "constant", "step")]
        if stages and stages[0].init != "continue":
            problems.append(f"the first stage ({stages[0].name!r}) has no previous stage to take weights from")
        if problems:
            raise ValueError("invalid method stages: " + "; ".join(problems))
        return stages

    def stage_of(self, step: int) -> int:
        """Index of the stage that global `step` belongs to (the last stage for steps past the end)."""
        return max(k for k, start in enumerate(self.stage_starts) if start <= step)

    def _enter_stage(self, index: int) -> None:
        """Start stage `index`: reset selection, load the previous stage's best weights if asked, tell the method."""
        self.stage_index = index
        stage = self.stages[index]
        self.best = {k: (-1.0, -1) for k in self.selections}
        # the previous stage's best on val; without val, its best on test where the protocol selects so; else continue
        chosen = next((k for k in ("best_val", "best_test") if k in self.selections), None)
        if stage.init == "best_val" and chosen is not None:
            weights = safe_load(self.weights_path(chosen, index - 1), self.device)
            self.method.load_state_dict(weights, weights_only=True)
        self.method.start_stage(stage, index)
        for key, opt in self.method.optimizers().items():  # optimisers a stage (re)creates start at their own lr
            self.base_lrs.setdefault(key, [g["lr"] for g in opt.param_groups])

    # ------------------------------------------------------------------------------------ checkpoints
    @property
    def last_path(self) -> Path:
        return self.run_dir / "last.pt"

    def weights_path(self, selection: str, stage_index: int | None = None) -> Path:
        """`<selection>.pt` for the last stage (what the final test scores), `<stage>-<selection>.pt` before it."""
        index = len(self.stages) - 1 if stage_index is None else stage_index
        prefix = "" if index == len(self.stages) - 1 else f"{self.stages[index].name}-"
        return self.run_dir / f"{prefix}{selection}.pt"

    def save_checkpoint(self) -> None:
        state = {"step": self.step, "stage": self.stage_index, "method": self.method.state_dict(), "best": self.best,
                 "val_history": self.val_history,
                 "rng": {"torch": torch.get_rng_state(), "numpy": numpy_rng_state(), "python": random.getstate(),
                         "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}}
        _save_atomic(state, self.last_path)

    def load_checkpoint(self) -> bool:
        """Resume from last.pt if present (entering the stage of the next step first); returns whether it did."""
        if not self.last_path.exists():
            self._enter_stage(0)
            return False
        state = safe_load(self.last_path, self.device)
        self._enter_stage(self.stage_of(state["step"] + 1))
        self.method.load_state_dict(state["method"])
        self.step, self.best = state["step"], dict(state["best"])
        self.val_history = list(state["val_history"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"].cpu())
        set_numpy_rng_state(rng["numpy"])
        random.setstate(rng["python"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        return True

    # ----------------------------------------------------------------------------------------- loop
    def _set_lr(self, step: int) -> None:
        """lr for `step` counted within the current stage (each stage restarts its schedule)."""
        stage = self.stages[self.stage_index]
        cfg = self.cfg if stage.lr_schedule is None else dataclasses.replace(self.cfg, lr_schedule=stage.lr_schedule)
        factor = lr_factor(step, cfg, stage.iterations)
        for key, opt in self.method.optimizers().items():
            for group, base in zip(opt.param_groups, self.base_lrs[key]):
                group["lr"] = base * factor

    def _autocast(self):
        if self.use_bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.method.predict(x).float()

    def validate(self, split: str = "val") -> float:
        """Mean Dice on `split` (the checkpoint-selection signal)."""
        self.method.train(False)
        volumes = self.data.val if split == "val" else self.test_cases
        dice = validation_dice(self._predict, volumes, self.protocol, self.inferer, self.device)
        self.method.train(True)
        return dice

    def _select(self, step: int) -> float:
        """Evaluate each selection rule's split; keep the weights that improve it. Returns the val Dice
        (NaN without a validation split)."""
        dices = {}
        for selection in self.selections:
            split = SELECTION_SPLITS[selection]
            dices[split] = self.validate(split)
            self.logger.log_metrics({f"{split}/dice": dices[split]}, step)
            if dices[split] > self.best[selection][0]:
                self.best[selection] = (dices[split], step)
                _save_atomic({"modules": self.method.state_dict()["modules"], "step": step},
                             self.weights_path(selection, self.stage_index))
        if "val" in dices:
            self.val_history.append((step, dices["val"]))
        return dices.get("val", float("nan"))

    def fit(self) -> TrainResult:
        resumed = self.load_checkpoint()
        start = self.step + 1 if resumed else 0
        cfg = self.cfg
        batches = StepBatches(self.data.train_images, self.data.train_labels, self.schedule, cfg.augmentation,
                              cfg.patch_size, self.seed)
        total = self.total_iterations
        loader = step_loader(batches, start, total, cfg.num_workers, self.device.type == "cuda")
        self.method.train(True)
        sums: dict[str, torch.Tensor] = {}
        window, t0, n_steps = 0, time.perf_counter(), 0
        watched = next((SELECTION_SPLITS[k] for k in self.selections), None)   # the split a bar shows, if any
        with _progress(self.progress, self.description, total, start, watched) as bar:
            for step, batch in zip(range(start, total), loader):
                self.step = step
                local = step - self.stage_starts[self.stage_index]
                stage_last = local == self.stages[self.stage_index].iterations - 1
                self._set_lr(local)
                image = batch["image"].to(self.device, non_blocking=True)
                label = batch["label"].to(self.device, non_blocking=True)
                n = self.labeled_bs
                with self._autocast():
                    out = self.method.train_step(Labeled(image[:n], label[:n]), image[n:] if n < len(image) else None, local)
                for k, v in out.items():
                    sums[k] = sums[k] + v.float() if k in sums else v.float()
                window += 1
                n_steps += 1
                if (step + 1) % cfg.log_every == 0 or stage_last:
                    metrics = {f"train/{k}": float(v) / window for k, v in sums.items()}
                    bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
                    if bad:  # checked once per log window: no per-step host sync
                        raise NonFiniteLossError(
                            f"{', '.join(f'{k} = {v}' for k, v in bad.items())} within steps {step + 2 - window}.."
                            f"{step + 1}; stopping this trial (too high a learning rate? bad input data?)")
                    metrics["train/lr"] = next(iter(self.method.optimizers().values())).param_groups[0]["lr"]
                    if len(self.stages) > 1:
                        metrics["train/stage"] = float(self.stage_index)
                    self.logger.log_metrics(metrics, step + 1)
                    bar.update(step + 1, loss=metrics.get("train/loss", float("nan")))
                    sums, window = {}, 0
                if self.selections and ((step + 1) % cfg.eval_every == 0 or stage_last):
                    val = self._select(step + 1)
                    bar.update(step + 1, val=val if "best_val" in self.selections else self.best["best_test"][0])
                if stage_last and self.stage_index + 1 < len(self.stages):
                    self._enter_stage(self.stage_index + 1)   # before saving: last.pt resumes in the new stage
                if (step + 1) % cfg.checkpoint_every == 0 or stage_last:
                    self.save_checkpoint()
                bar.update(step + 1)
        elapsed = time.perf_counter() - t0
        return self._final_test(steps_per_second=n_steps / elapsed if n_steps else float("nan"), wall=elapsed)

    def _final_test(self, steps_per_second: float, wall: float) -> TrainResult:
        """Test metrics for every kept checkpoint and the last weights (idempotent: runs after the loop, also
        on resume). Rows stream to `cases_<checkpoint>.csv` in the run dir."""
        cases, summary = {}, {}
        # a copy: state_dict() shares storage with the live weights, which loading a selection overwrites in place
        last_state = copy.deepcopy({"modules": self.method.state_dict()["modules"]})
        for ckpt in [*self.selections, "last"]:
            if ckpt == "last":
                self.method.load_state_dict(last_state, weights_only=True)
            else:
                weights = safe_load(self.weights_path(ckpt), self.device)
                self.method.load_state_dict(weights, weights_only=True)
            self.method.train(False)
            cases[ckpt] = evaluate_cases(self._predict, self.test_cases, self.protocol, self.class_names,
                                         self.inferer, self.device, self.eval_workers,
                                         self.run_dir / f"cases_{ckpt}.csv")
            summary[ckpt] = summarize(cases[ckpt])
        self.method.train(True)
        best_dice, best_step = self.best.get("best_val", (float("nan"), -1))
        return TrainResult(cases, summary, best_dice, best_step, steps_per_second, wall, self.val_history)


class _NoBar:
    def update(self, step: int, **fields: float) -> None:
        pass


@contextlib.contextmanager
def _progress(enabled: bool, description: str, total: int, start: int, watched: str | None = "val"):
    """A rich progress bar (step/total, loss, the Dice of the `watched` selection split if any, ETA), or nothing."""
    if not enabled:
        yield _NoBar()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.4f}" + (f"  {watched} Dice {{task.fields[val]:.4f}}" if watched else "")),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(description, total=total, completed=start, loss=float("nan"), val=float("nan"))

        class Bar:
            def update(self, step: int, **fields: float) -> None:
                progress.update(task, completed=step, **fields)

        yield Bar()
