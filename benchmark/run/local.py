"""Run trials in this process, one after another: the executor that needs nothing but torch.

Each trial: skip if its hash already FINISHED (MLflow, or a result.json in its run dir when untracked), or
if another process holds its run dir's lock (two `bench run` of one suite at once train each trial once);
else train (resuming from its run dir's last.pt), test, log, and mark FINISHED. A trial that raises is
marked FAILED with its reason and the others still run.
"""
from __future__ import annotations

import json
import os
import socket
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import yaml

from benchmark import catalog
from benchmark.data.dataset import load_dataset
from benchmark.run.locks import TrialBusy, trial_lock
from benchmark.run.trials import Trial
from benchmark.train import Trainer, pick_device


@dataclass
class Outcome:
    trial: Trial
    status: str          # FINISHED | SKIPPED | FAILED
    detail: str = ""
    summary: dict | None = None


def run_dir_of(trial: Trial, work_dir: Path) -> Path:
    return Path(work_dir) / trial.suite / f"{trial.name}-{trial.config_hash}"


def describe_device(device) -> str:
    """'cpu', or 'cuda:0 (NVIDIA H100 80GB HBM3)'."""
    import torch

    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def tags_of(trial: Trial, device: str) -> dict[str, str]:
    p = trial.protocol
    extra = {}
    if "pretrained" in trial.method_config:  # methods with a Swin-UNet: tables must show runs without ImageNet weights
        extra["pretrained"] = "none" if not trial.method_config["pretrained"] else Path(trial.method_config["pretrained"]).name
    return extra | {"method": trial.method, "dataset": trial.card.name, "labeled_patients": str(trial.labeled_patients),
            "labeled_rows": str(trial.labeled_rows), "seed": str(trial.seed), "suite": trial.suite,
            "config_hash": trial.config_hash, "cell_hash": trial.cell_hash, "scoring_hash": p.scoring_hash,
            "iterations": str(trial.train.iterations), "device": device, "checkpoint_rule": p.checkpoint,
            "hd_units": p.hd_units, "empty_prediction": p.empty_prediction, "protocol": p.describe()} | (
        {"smoke_test_cases": str(trial.test_cases)} if trial.test_cases else {})


class _Tee:
    """The run's logger, the attempt's clock and an observer (an executor's progress display) behind one
    `log_metrics`: each log window also logs this attempt's seconds so far (throttled by the run)."""

    def __init__(self, run, observer: Callable[[dict[str, float], int], None] | None, started: float) -> None:
        self.run, self.observer, self.started = run, observer, started

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.run is not None:
            self.run.log_metrics(metrics, step)
            self.run.log_attempt_seconds(time.perf_counter() - self.started)
        if self.observer is not None:
            self.observer(metrics, step)


def run_trial(trial: Trial, work_dir: Path, tracker=None, data_root: str | Path | None = None,
              device: str = "auto", progress: bool = True, eval_workers: int = 0,
              observer: Callable[[dict[str, float], int], None] | None = None,
              extra_tags: dict[str, str] | None = None) -> Outcome:
    """Train and test one trial (resuming when its run dir holds a checkpoint).

    Every executor calls this (the Ray executor inside its Tune trials): `observer` also receives what the
    Trainer logs (live progress), `extra_tags` are added to the MLflow run (e.g. the Ray node).
    """
    run_dir = run_dir_of(trial, work_dir)
    finished = finished_reason(trial, run_dir, tracker)
    if finished:
        return Outcome(trial, "SKIPPED", finished)
    try:
        with trial_lock(run_dir):
            finished = finished_reason(trial, run_dir, tracker)   # another process may have finished it meanwhile
            if finished:
                return Outcome(trial, "SKIPPED", finished)
            return _train_and_test(trial, run_dir, tracker, data_root, device, progress, eval_workers, observer,
                                   extra_tags)
    except TrialBusy as busy:
        return Outcome(trial, "SKIPPED", str(busy))


def finished_reason(trial: Trial, run_dir: Path, tracker) -> str:
    """Why the trial needs no training ('' if it does)."""
    if tracker is not None and tracker.finished_run_id(trial.config_hash):
        return "finished run in MLflow"
    if tracker is None and (run_dir / "result.json").exists():
        return f"finished: {run_dir / 'result.json'}"
    return ""


def _train_and_test(trial: Trial, run_dir: Path, tracker, data_root: str | Path | None, device: str,
                    progress: bool, eval_workers: int, observer: Callable[[dict[str, float], int], None] | None,
                    extra_tags: dict[str, str] | None) -> Outcome:
    result_file = run_dir / "result.json"
    dev = pick_device(device)
    run, started = None, time.perf_counter()
    try:
        if tracker is not None:
            from benchmark.track import harness_tags

            tags = {**tags_of(trial, describe_device(dev)), **harness_tags(), "run_dir": str(run_dir),
                    "worker": f"{socket.gethostname()}:{os.getpid()}", **(extra_tags or {})}
            run = tracker.open_run(trial.name, trial.config_hash, tags, trial.resolved())
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(trial.resolved(), sort_keys=False))
        data = load_dataset(trial.card, data_root)
        method_cls = catalog.method_class(trial.method)
        method_cfg = method_cls.make_config(trial.method_config, trial.name)
        trainer = Trainer(data, method_cls, method_cfg, trial.train, trial.labeled_rows, trial.seed, run_dir,
                          trial.protocol, trial.card.classes, trial.card.in_channels,
                          logger=_Tee(run, observer, started) if run or observer else None, device=str(dev),
                          progress=progress, description=trial.name, eval_workers=eval_workers,
                          test_cases=trial.test_cases)
        result = trainer.fit()
        flat = {"best_val_dice": result.best_val_dice, "best_step": float(result.best_step),
                "steps_per_second": result.steps_per_second,
                # every net the method trains (teachers, discriminators, auxiliary heads included): the cost column
                "param_count": float(sum(p.numel() for m in trainer.method.modules().values() for p in m.parameters()))}
        for ckpt, summary in result.summary.items():
            flat.update({f"test/{ckpt}/{k}": v for k, v in summary.items()})
        if run is not None:
            run.log_metrics(flat, trial.train.iterations)
            for f in ("config.yaml", *(f"cases_{c}.csv" for c in result.summary)):
                run.log_artifact(run_dir / f)
            run.finish(seconds=time.perf_counter() - started)
        result_file.write_text(json.dumps(flat, indent=1))
        return Outcome(trial, "FINISHED", summary=flat)
    except (KeyboardInterrupt, SystemExit):
        if run is not None:
            run.log_attempt_seconds(time.perf_counter() - started, force=True)
            run.fail("interrupted by the user")
        raise
    except Exception as exc:  # noqa: BLE001 - a failed trial must not stop the others
        reason = f"{type(exc).__name__}: {exc}"
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "FAILED.txt").write_text(reason + "\n\n" + traceback.format_exc())
        if run is not None:
            run.log_attempt_seconds(time.perf_counter() - started, force=True)
            run.fail(reason)
        return Outcome(trial, "FAILED", reason)


def release_memory() -> None:
    """Hand what a finished trial freed back to the OS: garbage, the CUDA cache, and the heap pages glibc keeps
    after `free` (`malloc_trim`; 1.4 GB after one SS-Net step at 12+12 x 256 on CPU, measured). The local
    executor runs every trial in one process, so without this each trial's peak stacks on the last's leftovers."""
    import ctypes
    import ctypes.util
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    libc = ctypes.util.find_library("c")
    if libc:
        try:
            ctypes.CDLL(libc).malloc_trim(0)
        except AttributeError:      # not glibc (macOS, musl): nothing to trim
            pass


def run_local(trials: Sequence[Trial], work_dir: Path, tracker=None, data_root: str | Path | None = None,
              device: str = "auto", progress: bool = True, force: bool = False,
              on_outcome: Callable[[Outcome], None] | None = None, eval_workers: int = 0) -> list[Outcome]:
    """Run trials sequentially; `force` retrains finished ones (their run dir is cleared)."""
    outcomes = []
    for trial in trials:
        if force:
            supersede_finished(trial, work_dir, tracker)
        outcome = run_trial(trial, work_dir, tracker, data_root, device, progress, eval_workers)
        release_memory()
        outcomes.append(outcome)
        if on_outcome:
            on_outcome(outcome)
    return outcomes


def supersede_finished(trial: Trial, work_dir: Path, tracker=None) -> None:
    """For --force: clear the trial's run dir and mark its FINISHED runs KILLED + superseded."""
    _clear(run_dir_of(trial, work_dir))
    if tracker is not None:
        for r in tracker.runs(trial.config_hash, "FINISHED"):
            superseded = tracker.run(r.info.run_id)
            superseded.set_tags({"superseded": "true"})
            superseded.kill()


def _clear(run_dir: Path) -> None:
    for f in (*run_dir.glob("*.pt"), *run_dir.glob("cases_*.csv"), run_dir / "result.json", run_dir / "FAILED.txt"):
        Path(f).unlink(missing_ok=True)
