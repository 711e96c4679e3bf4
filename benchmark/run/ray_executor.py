"""Run a suite's trials as Ray Tune trials (ray is imported here and in `tune.py`, which drives its own Tuner).

    outcomes = run_ray(trials, work_dir, tracking_uri, experiment, settings=RaySettings(cpus_per_trial=2))

Every Tune trial calls the same `run_trial` as the local executor (no second training path): it skips a
finished config hash, resumes from `run_dir/last.pt`, marks a trial that raises FAILED with its reason.
MLflow stays the source of truth, not Ray: the driver works out which trials are still missing from MLflow
(or from the run dirs with `--no-track`) and submits only those, so re-running `bench run` after a Ctrl-C
or a `kill -9` of the driver resumes the suite. `Tuner.restore` is not used: it cannot add cells, and our
run dirs already hold the checkpoints.

Where the trials write:
- MLflow with a SQLite store (the default): one writer. A Ray actor pinned to the driver's node owns the
  only connection; trials send it their runs, metrics and artifact bytes (so no trial ever holds a SQLite
  lock, and trials on other nodes need no access to the file).
- MLflow with a tracking server (`http://...`): each trial logs to the server directly.
- Checkpoints: `work_dir` (absolute). On a multi-node cluster it must be shared storage mounted at the same
  path on every node, or a trial that moves to another node restarts from step 0.

Resources: `cpus_per_trial` (default 1) and `gpus_per_trial`. The GPU default follows the dataset card's
evaluation protocol: a 2D card (`inference: slicewise`) packs 4 trials per GPU (0.25), a 3D card
(`inference: sliding_window`) takes a whole GPU (1.0), and a cluster without GPUs gets 0. Fractions are Ray
bookkeeping only: they do not isolate GPU memory.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from benchmark import REPO_ROOT
from benchmark.config import ConfigError
from benchmark.run.local import Outcome, finished_reason, run_dir_of, run_trial, supersede_finished
from benchmark.run.trials import Trial

#: GPU share per trial when --gpus-per-trial is not given, by the card's inference mode (2D vs 3D)
GPU_SHARE = {2: 0.25, 3: 1.0}   # a trial's GPU share by the card's spatial dims


def ray_available() -> bool:
    """Whether `--executor ray` can run here (the CLI's default executor then)."""
    import importlib.util

    return importlib.util.find_spec("ray") is not None and importlib.util.find_spec("ray.tune") is not None


def default_gpus_per_trial(trial: Trial, cluster_gpus: float) -> float:
    """0 without GPUs; else 0.25 for 2D cards (2D nets: slices, images), 1 for 3D cards (3D nets, sliding window)."""
    if cluster_gpus <= 0:
        return 0.0
    return min(GPU_SHARE.get(trial.card.spatial_dims, 1.0), cluster_gpus)


@dataclass
class RaySettings:
    """How trials are packed onto Ray: resources per trial, concurrency, which cluster."""

    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None   # None: default_gpus_per_trial
    max_concurrent: int | None = None     # None: as many as the resources allow
    address: str | None = None            # None: $RAY_ADDRESS, else a local Ray started for this run
    live: bool = True                     # a live table of trial states (else one line per finished trial)
    stats: dict[str, Any] = field(default_factory=dict)   # filled in: start-up time, peak concurrency, nodes


@dataclass
class _Job:
    """What every Tune trial needs (shipped once through the object store)."""

    trials: list[Trial]
    work_dir: Path
    data_root: str | None
    device: str
    eval_workers: int
    experiment: str | None
    tracking_uri: str | None
    writer: Any          # actor handle of the single MLflow writer, or None
    threads: int


# ------------------------------------------------------------------------------------------ MLflow
class _Writer:
    """The one process that writes a SQLite MLflow store (a Ray actor; calls are handled one at a time)."""

    def __init__(self, experiment: str, tracking_uri: str) -> None:
        from benchmark.track import Tracker

        self.tracker = Tracker(experiment, tracking_uri)
        self.open: dict[str, Any] = {}
        self.spool = Path(tempfile.mkdtemp(prefix="bench-artifacts-"))

    def finished_run_id(self, config_hash: str) -> str | None:
        return self.tracker.finished_run_id(config_hash)

    def open_run(self, name: str, config_hash: str, tags: dict[str, str], params: dict[str, Any]) -> str:
        run = self.tracker.open_run(name, config_hash, tags, params)
        self.open[run.run_id] = run
        return run.run_id

    def call(self, run_id: str, method: str, *args: Any) -> None:
        getattr(self.open[run_id], method)(*args)

    def log_artifact(self, run_id: str, name: str, data: bytes) -> None:
        folder = self.spool / run_id
        folder.mkdir(exist_ok=True)
        (folder / name).write_bytes(data)
        self.open[run_id].log_artifact(folder / name)

    def fail_unfinished(self, config_hash: str, reason: str) -> int:
        return self.tracker.fail_unfinished(config_hash, reason)


class _WriterClient:
    """Stands in for `Tracker` inside a trial: every call goes to the writer actor and waits for it."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    def finished_run_id(self, config_hash: str) -> str | None:
        import ray

        return ray.get(self.writer.finished_run_id.remote(config_hash))

    def open_run(self, name: str, config_hash: str, tags: dict[str, str], params: dict[str, Any]) -> "_RunClient":
        import ray

        return _RunClient(self.writer, ray.get(self.writer.open_run.remote(name, config_hash, tags, params)))


class _RunClient:
    """Stands in for `TrackedRun`; waiting on each call surfaces a failed write in the trial at once."""

    def __init__(self, writer: Any, run_id: str) -> None:
        self.writer, self.run_id = writer, run_id

    def _call(self, method: str, *args: Any) -> None:
        import ray

        ray.get(self.writer.call.remote(self.run_id, method, *args))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._call("log_metrics", {k: float(v) for k, v in metrics.items()}, step)

    def set_tags(self, tags: dict[str, str]) -> None:
        self._call("set_tags", tags)

    def log_artifact(self, path: Path) -> None:
        import ray

        path = Path(path)
        ray.get(self.writer.log_artifact.remote(self.run_id, path.name, path.read_bytes()))

    def log_attempt_seconds(self, seconds: float, force: bool = False) -> None:
        self._call("log_attempt_seconds", float(seconds), force)

    def finish(self, seconds: float | None = None) -> None:
        self._call("finish", seconds)

    def fail(self, reason: str) -> None:
        self._call("fail", reason)


# ------------------------------------------------------------------------------------------ a trial
def _trial_main(config: dict[str, Any], job: _Job) -> None:
    """The Tune trainable: one `run_trial`, its Trainer logs echoed to the driver as Tune results."""
    import ray
    import torch
    from ray import tune

    trial = job.trials[config["index"]]
    torch.set_num_threads(job.threads)
    node = ray.get_runtime_context().get_node_id()
    if job.writer is not None:
        tracker = _WriterClient(job.writer)
    elif job.tracking_uri is not None:
        from benchmark.track import Tracker

        tracker = Tracker(job.experiment, job.tracking_uri)
    else:
        tracker = None
    seen: dict[str, float] = {"step": 0}

    def observe(metrics: dict[str, float], step: int) -> None:
        seen["step"] = step
        for key, short in (("train/loss", "loss"), ("val/dice", "val_dice")):
            if key in metrics:
                seen[short] = float(metrics[key])
        tune.report({**seen, "node": node})

    outcome = run_trial(trial, job.work_dir, tracker, job.data_root, job.device, progress=False,
                        eval_workers=job.eval_workers, observer=observe,
                        extra_tags={"executor": "ray", "ray_node_id": node})
    tune.report({**seen, "node": node, "outcome": outcome.status, "detail": outcome.detail,
                 "summary": json.dumps(outcome.summary or {})})


# ------------------------------------------------------------------------------------------ the board
class _DriverOnly:
    """Holds driver-side objects (console hooks) that Tune must not pickle with its run config."""

    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)

    def __reduce__(self):
        return (_DriverOnly, ())


def _board_callback(pending: list[Trial], on_outcome: Callable[[Outcome], None] | None, stats: dict[str, Any]):
    """A Tune callback keeping each trial's state (for the live table) and announcing outcomes as they come."""
    from ray import tune

    class Board(tune.Callback):
        def __init__(self, pending, on_outcome, stats) -> None:   # no closure: Tune pickles this class
            self.hooks = _DriverOnly(pending=pending, on_outcome=on_outcome, stats=stats)
            self.rows = {i: {"state": "PENDING", "step": 0, "loss": None, "val_dice": None, "node": "", "t0": None,
                             "t1": None} for i in range(len(self.hooks.pending))}
            self.outcomes: dict[int, Outcome] = {}
            self.orphans: set[int] = set()       # trials that died without run_trial's own outcome
            self.running = 0
            self.hooks.stats["peak_running"] = 0

        def _row(self, trial) -> tuple[int, dict]:
            index = trial.config["index"]
            return index, self.rows[index]

        def on_trial_start(self, iteration, trials, trial, **info) -> None:
            _, row = self._row(trial)
            row.update(state="RUNNING", t0=time.time())
            self.running += 1
            self.hooks.stats["peak_running"] = max(self.hooks.stats["peak_running"], self.running)

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            index, row = self._row(trial)
            for key in ("step", "loss", "val_dice", "node"):
                if key in result:
                    row[key] = result[key]
            if "outcome" in result and index not in self.outcomes:
                summary = json.loads(result.get("summary") or "{}") or None
                trial = self.hooks.pending[index]
                self._settle(index, Outcome(trial, result["outcome"], result.get("detail", ""), summary))

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            self._stop(trial)

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            index, _ = self._row(trial)
            self._stop(trial)
            if index not in self.outcomes:
                self.orphans.add(index)
                self._settle(index, Outcome(self.hooks.pending[index], "FAILED", _error_text(trial)))

        def _stop(self, trial) -> None:
            _, row = self._row(trial)
            if row["t1"] is None and row["t0"] is not None:
                row["t1"] = time.time()
                self.running -= 1

        def _settle(self, index: int, outcome: Outcome) -> None:
            self.outcomes[index] = outcome
            self.rows[index]["state"] = outcome.status
            if self.hooks.on_outcome:
                self.hooks.on_outcome(outcome)

        def table(self):
            from rich.table import Table

            colours = {"PENDING": "dim", "RUNNING": "cyan", "FINISHED": "green", "SKIPPED": "yellow", "FAILED": "red"}
            t = Table(title=f"Ray trials ({sum(r['state'] == 'RUNNING' for r in self.rows.values())} running)",
                      header_style="bold")
            t.add_column("trial", no_wrap=True)
            for col in ("hash", "state", "step", "loss", "val Dice", "node", "time"):
                t.add_column(col)
            now = time.time()
            for i, row in self.rows.items():
                trial = self.hooks.pending[i]
                seconds = "" if row["t0"] is None else f"{(row['t1'] or now) - row['t0']:.0f}s"
                state = row["state"]
                if state == "RUNNING" and row["step"] >= trial.train.iterations:
                    state = "TESTING"
                t.add_row(trial.name, trial.config_hash[:6], f"[{colours.get(state, 'cyan')}]{state}[/]",
                          f"{row['step']}/{trial.train.iterations}",
                          "" if row["loss"] is None else f"{row['loss']:.4f}",
                          "" if row["val_dice"] is None else f"{row['val_dice']:.4f}",
                          str(row["node"])[:8], seconds)
            return t

    return Board(pending, on_outcome, stats)


def _error_text(trial) -> str:
    """The error a Ray trial died with (a crashed worker, a lost node), first line."""
    error = getattr(trial, "error_file", None)
    if error and Path(error).exists():
        text = Path(error).read_text().strip().splitlines()
        return "ray trial error: " + (text[-1] if text else "unknown")
    return "ray trial error (no error file)"


# ------------------------------------------------------------------------------------------ driver
def start_ray(address: str | None, env: dict[str, str], num_cpus: int | None = None) -> tuple[bool, float]:
    """Connect to `address` / $RAY_ADDRESS, or start a local Ray (with `num_cpus` if given); returns (started
    here, seconds). The one `ray.init` of the harness (`bench run` and `bench tune`)."""
    import ray

    if ray.is_initialized():
        return False, 0.0
    t0 = time.perf_counter()
    kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}, "include_dashboard": False,
                              "logging_level": "WARNING", "log_to_driver": False}
    address = address or os.environ.get("RAY_ADDRESS")
    if address is None and num_cpus is not None:
        kwargs["num_cpus"] = num_cpus
    # "local", not None: a bare ray.init() would join any cluster `ray start` left running on this machine
    ray.init(address=address or "local", **kwargs)
    return True, time.perf_counter() - t0


def trial_env(tracking_uri: str | None, threads: int) -> dict[str, str]:
    """Environment of every trial process (also on other nodes, where the driver's environment is unknown)."""
    paths = [str(REPO_ROOT), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
    env = {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)), "OMP_NUM_THREADS": str(threads)}
    for name in ("BENCH_CACHE_DIR", "BENCH_DATA_ROOT", "BENCH_REPO_ROOT"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    return env


def _check_resources(cpus: float, gpus: float) -> None:
    """Refuse requests no node can ever satisfy (Tune would wait for them forever)."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if not any(r.get("CPU", 0) >= cpus for r in nodes):
        raise ConfigError(f"--cpus-per-trial {cpus}: no Ray node has that many CPUs "
                          f"(largest: {max((r.get('CPU', 0) for r in nodes), default=0):g})")
    if gpus > 0 and not any(r.get("GPU", 0) >= gpus for r in nodes):
        raise ConfigError(f"--gpus-per-trial {gpus:g}: no Ray node has that many GPUs "
                          f"(cluster GPUs: {sum(r.get('GPU', 0) for r in nodes):g}); use --gpus-per-trial 0")


def run_ray(trials: Sequence[Trial], work_dir: Path, tracking_uri: str | None, experiment: str | None,
            data_root: str | Path | None = None, device: str = "auto", force: bool = False,
            on_outcome: Callable[[Outcome], None] | None = None, eval_workers: int = 0,
            settings: RaySettings | None = None, console=None) -> list[Outcome]:
    """Run the trials still missing (by config hash) as Ray Tune trials; returns one outcome per trial.

    `tracking_uri` None means untracked (finished trials are found through their run dirs' result.json).
    """
    settings = settings or RaySettings()
    work_dir = Path(work_dir).resolve()
    data_root = str(Path(data_root).resolve()) if data_root is not None else None
    tracker = None
    if tracking_uri is not None:
        from benchmark.track import Tracker

        tracker = Tracker(experiment, tracking_uri)   # creates the store and experiment before any trial
        tracking_uri = tracker.uri
    outcomes: dict[str, Outcome] = {}
    pending: list[Trial] = []
    for trial in trials:
        if trial.config_hash in outcomes or any(t.config_hash == trial.config_hash for t in pending):
            continue      # the same config twice in one suite trains once
        if force:
            supersede_finished(trial, work_dir, tracker)
        elif finished := finished_reason(trial, run_dir_of(trial, work_dir), tracker):
            outcomes[trial.config_hash] = Outcome(trial, "SKIPPED", finished)
        if trial.config_hash in outcomes:
            if on_outcome:
                on_outcome(outcomes[trial.config_hash])
        else:
            pending.append(trial)
    if pending:
        for outcome in _run_pending(pending, work_dir, tracker, data_root, device, on_outcome, eval_workers,
                                    settings, console):
            outcomes[outcome.trial.config_hash] = outcome
    return [outcomes[t.config_hash] for t in trials if t.config_hash in outcomes]


def _run_pending(pending: list[Trial], work_dir: Path, tracker, data_root: str | None, device: str,
                 on_outcome, eval_workers: int, settings: RaySettings, console) -> list[Outcome]:
    import ray
    from ray import tune
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    threads = max(1, int(settings.cpus_per_trial))
    uri = tracker.uri if tracker is not None else None
    env = trial_env(uri, threads)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")    # with verbose=0: Tune prints nothing, our table does
    started, startup = start_ray(settings.address, env)
    settings.stats["ray_startup_s"] = startup
    writer = None
    try:
        cluster_gpus = ray.cluster_resources().get("GPU", 0.0)
        gpus = (settings.gpus_per_trial if settings.gpus_per_trial is not None
                else default_gpus_per_trial(pending[0], cluster_gpus))
        _check_resources(settings.cpus_per_trial, gpus)
        settings.stats.update(gpus_per_trial=gpus, cpus_per_trial=settings.cpus_per_trial,
                              nodes=len([n for n in ray.nodes() if n.get("Alive")]))
        if uri is not None and not uri.startswith(("http://", "https://")):
            here = ray.get_runtime_context().get_node_id()
            writer = (ray.remote(num_cpus=0)(_Writer)
                      .options(scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False))
                      .remote(tracker.experiment, uri))
        job = _Job(pending, work_dir, data_root, device, eval_workers, tracker.experiment if tracker else None, uri,
                   writer, threads)
        board = _board_callback(pending, on_outcome, settings.stats)
        names = {i: f"{t.name}-{t.config_hash[:8]}" for i, t in enumerate(pending)}
        trainable = tune.with_resources(tune.with_parameters(_trial_main, job=job),
                                        {"cpu": settings.cpus_per_trial, "gpu": gpus})
        tuner = tune.Tuner(
            trainable,
            param_space={"index": tune.grid_search(list(range(len(pending))))},
            tune_config=tune.TuneConfig(max_concurrent_trials=settings.max_concurrent, reuse_actors=True,
                                        trial_name_creator=lambda t: names[t.config["index"]],
                                        trial_dirname_creator=lambda t: names[t.config["index"]]),
            run_config=tune.RunConfig(name=f"{pending[0].suite}-{time.strftime('%Y%m%d-%H%M%S')}",
                                      storage_path=str(work_dir / "ray_results"), verbose=0, callbacks=[board],
                                      failure_config=tune.FailureConfig(max_failures=0)))
        aborted = ""
        try:
            if settings.live and console is not None:
                from rich.live import Live

                with Live(get_renderable=board.table, console=console, refresh_per_second=2):
                    tuner.fit()
            else:
                tuner.fit()
        except RuntimeError as exc:   # Tune's controller gives up when a trial's actor dies (e.g. Ray's OOM killer)
            aborted = f"Ray Tune stopped ({str(exc).strip().splitlines()[0][:200]}); "
        outcomes = []
        for index, trial in enumerate(pending):
            outcome = board.outcomes.get(index)
            if outcome is None:       # Ctrl-C, or Tune stopped before the trial reported
                outcome = Outcome(trial, "FAILED",
                                  f"{aborted}interrupted before it finished; run the command again to resume")
                board.orphans.add(index)
            if index in board.orphans and tracker is not None:
                # run_trial could not mark its run (its process died or was stopped): do it here
                if writer is not None:
                    ray.get(writer.fail_unfinished.remote(trial.config_hash, outcome.detail))
                else:
                    tracker.fail_unfinished(trial.config_hash, outcome.detail)
            outcomes.append(outcome)
        return outcomes
    finally:
        if writer is not None:
            ray.kill(writer)
        if started:
            ray.shutdown()
