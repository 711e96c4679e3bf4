"""`bench tune`: Optuna searches and sensitivity grids over one method's hyper-parameters, run through Ray Tune.

The only module that imports optuna; Ray is imported lazily here (and in `run/`). Every sampled config is an
ordinary trial: the suite's trial with the sampled values layered on top (a method-config field goes to
`method_config`, a Trainer field such as `lr` to the train settings), trained by the same `run_trial`,
tracked in MLflow with its config hash. So a config that already FINISHED is never trained again and an
interrupted one resumes from its checkpoint.

- Objective: the best *validation* Dice of the trial (`val/dice`, the Trainer's checkpoint-selection signal);
  test Dice of the selected checkpoint is reported beside it, never optimised. The running best is reported
  to Ray Tune at each evaluation so ASHA or the median rule can stop a trial; a stopped trial's MLflow run is
  KILLED with the tag `tune.pruned=true` (and `tune.pruned_at` = its last step).
- Search: Ray Tune's `OptunaSearch` with a seeded TPE sampler; the study lives in `<work-dir>/tune/<study>/
  optuna.db`, so running the same command again continues the same study up to `--trials` in total. Optuna
  trials left RUNNING by a killed driver are marked FAIL (user attr `interrupted`) and their configs are
  evaluated again first (they resume from their checkpoints).
- Grid (`--grid`): the method's `search_grids` (or `--space name=v1,v2,...`), one factor at a time around the
  defaults as the papers' sensitivity tables do, or the full product with `--product`. What is still missing
  is computed from MLflow (finished config hashes), not from Ray.
- MLflow: experiment `<suite>/tune`, one parent run per study (tag `tune.role=study`), a child run per trial
  (`mlflow.parentRunId`, membership tag `tune_<study id>=true`). At the end: the best config (argmax of the
  objective over trials that ran to the end), a table of trials, `best.yaml` (a suite `method_config` /
  `method_train` fragment), `trials.csv` and a seaborn `sensitivity.png`, logged to the parent run.

Known limits (Ray Tune / Optuna, HARNESS-NOTES.md B4): trials stopped by ASHA reach Optuna as COMPLETE with
their truncated value (so TPE sees early-good configs as good); a resumed study starts new scheduler rungs.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from benchmark.config import ConfigError, Suite, TrainConfig, stable_hash

KINDS = ("uniform", "loguniform", "int", "choice")
#: metrics the Trainer logs on the validation split (the only allowed objectives)
OBJECTIVES = ("val/dice",)
PRUNERS = ("asha", "median", "none")


# ------------------------------------------------------------------------------------------------ spaces
def parse_value(text: str) -> Any:
    """'3' -> 3, '1e-4' -> 0.0001, 'true' -> True, 'none' -> None, anything else stays a string."""
    text = text.strip()
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None, "null": None}.get(text.lower(), text)


@dataclass(frozen=True)
class Dimension:
    """One searched hyper-parameter: uniform / loguniform / int range, or a choice of values."""

    name: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    choices: tuple[Any, ...] = ()

    @property
    def spec(self) -> str:
        if self.kind == "choice":
            return "choice:" + ",".join(str(c) for c in self.choices)
        return f"{self.kind}:{self.low}:{self.high}"

    def ends(self) -> list[Any]:
        """The extreme values (validated before any training)."""
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]

    def domain(self):
        """The Ray Tune domain (OptunaSearch turns it into the Optuna distribution; int bounds inclusive)."""
        from ray import tune

        if self.kind == "choice":
            return tune.choice(list(self.choices))
        if self.kind == "int":
            return tune.randint(int(self.low), int(self.high) + 1)
        return (tune.loguniform if self.kind == "loguniform" else tune.uniform)(float(self.low), float(self.high))


def parse_dimension(name: str, spec: str) -> Dimension:
    """'uniform:a:b' | 'loguniform:a:b' | 'int:a:b' | 'choice:a,b,c' -> Dimension (ConfigError if malformed)."""
    where = f"search space {name}={spec!r}"
    kind, _, rest = str(spec).partition(":")
    kind = kind.strip()
    if kind not in KINDS:
        raise ConfigError(f"{where}: unknown kind {kind!r}; use uniform:a:b, loguniform:a:b, int:a:b or choice:a,b,c")
    if kind == "choice":
        values = tuple(parse_value(v) for v in rest.split(",") if v.strip())
        if not values:
            raise ConfigError(f"{where}: choice needs at least one value, e.g. choice:0.1,0.5")
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"{where}: choice values repeat")
        return Dimension(name, kind, choices=values)
    parts = rest.split(":")
    if len(parts) != 2:
        raise ConfigError(f"{where}: expected {kind}:LOW:HIGH")
    cast = int if kind == "int" else float
    try:
        low, high = cast(parts[0]), cast(parts[1])
    except ValueError:
        raise ConfigError(f"{where}: bounds must be {'integers' if cast is int else 'numbers'}") from None
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise ConfigError(f"{where}: need LOW < HIGH (got {low} and {high})")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: loguniform needs LOW > 0 (got {low})")
    return Dimension(name, kind, low, high)


def _split_item(item: str, option: str) -> tuple[str, str]:
    name, sep, spec = item.partition("=")
    if not sep or not name.strip() or not spec.strip():
        raise ConfigError(f"{option} {item!r}: expected NAME=SPEC, e.g. consistency=loguniform:0.01:1")
    return name.strip(), spec.strip()


def parse_space(items: Sequence[str] | None, default: dict[str, str]) -> dict[str, Dimension]:
    """`--space` items (NAME=SPEC), else the method's `search_space`."""
    pairs = [_split_item(i, "--space") for i in items] if items else list(default.items())
    names = [n for n, _ in pairs]
    if len(set(names)) != len(names):
        raise ConfigError(f"--space names a field twice: {names}")
    return {n: parse_dimension(n, s) for n, s in pairs}


def parse_grid(items: Sequence[str] | None, default: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """`--space NAME=v1,v2,...` (or choice:v1,v2) items for a grid, else the method's `search_grids`."""
    if not items:
        return {k: list(v) for k, v in default.items()}
    grid = {}
    for item in items:
        name, spec = _split_item(item, "--space")
        if spec.startswith("choice:"):
            spec = spec[len("choice:"):]
        elif spec.partition(":")[0] in KINDS:
            raise ConfigError(f"--grid needs values, not a range: write {name}=v1,v2,... (got {spec!r})")
        grid[name] = [parse_value(v) for v in spec.split(",") if v.strip()]
        if not grid[name]:
            raise ConfigError(f"--space {item!r}: no values")
    return grid


def grid_points(grid: dict[str, list[Any]], product: bool = False) -> list[dict[str, Any]]:
    """One factor at a time (the other fields keep their defaults) or the full product. Points that resolve to
    the same config (a default value listed) train once: `run_study` keeps one per config hash."""
    if product:
        return [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
    return [{name: v} for name, values in grid.items() for v in values]


# ------------------------------------------------------------------------------------------ tunable fields
def tunable_fields(method: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(method-config field -> default, Trainer field -> default); a name in both is the method's."""
    from benchmark import catalog

    cls = catalog.method_class(method)
    cfg_fields = {f.name: getattr(cls.Config(), f.name) for f in dataclasses.fields(cls.Config)}
    train = {f.name: getattr(TrainConfig(), f.name) for f in dataclasses.fields(TrainConfig)}
    return cfg_fields, {k: v for k, v in train.items() if k not in cfg_fields}


def check_names(names: Sequence[str], method: str) -> None:
    """Every searched name must be a method-config or Trainer field; the error lists the valid ones."""
    cfg_fields, train_fields = tunable_fields(method)
    unknown = [n for n in names if n not in cfg_fields and n not in train_fields]
    if unknown:
        raise ConfigError(f"cannot tune {', '.join(unknown)} for {method}: valid fields are the method's "
                          f"({', '.join(cfg_fields) or 'none'}) and the Trainer's ({', '.join(train_fields)})")


def check_kinds(space: dict[str, Dimension], method: str) -> None:
    """A float range on an integer field (or any range on a bool/str field) would fail mid-study: refuse now."""
    cfg_fields, train_fields = tunable_fields(method)
    for name, dim in space.items():
        default = cfg_fields.get(name, train_fields.get(name))
        if dim.kind == "choice":
            continue
        if isinstance(default, bool) or isinstance(default, str):
            raise ConfigError(f"{name} is a {type(default).__name__} field: use choice:a,b")
        if isinstance(default, int) and dim.kind != "int":
            raise ConfigError(f"{name} is an integer field: use int:{int(dim.low)}:{int(dim.high)} or choice:...")


def split_values(values: dict[str, Any], method: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Sampled values -> (method_config overrides, Trainer overrides)."""
    cfg_fields, _ = tunable_fields(method)
    return ({k: v for k, v in values.items() if k in cfg_fields},
            {k: v for k, v in values.items() if k not in cfg_fields})


# ------------------------------------------------------------------------------------------------- study
@dataclass
class StudySetup:
    """Everything a trial needs to rebuild itself in a Ray worker (picklable)."""

    suite: Suite
    method: str
    labeled: int | str
    seed: int
    iterations: int | None
    data_root: str | None
    work_dir: str
    tracking_uri: str
    metric: str = "val/dice"
    device: str = "auto"
    kind: str = "search"                     # search | grid
    space: dict[str, str] = field(default_factory=dict)       # search: name -> spec ("uniform:0.1:0.9")
    grid: list[dict[str, Any]] = field(default_factory=list)   # grid: the points, each name -> value
    parent_run_id: str | None = None
    #: methods registered at run time in the driver (plugins, tests) that the Ray workers must register too
    extra_methods: dict[str, type] = field(default_factory=dict)
    _base_hash: str | None = field(default=None, repr=False)

    @property
    def experiment(self) -> str:
        return f"{self.suite.name}/tune"

    @property
    def study_id(self) -> str:
        """Identity of the study: the untuned trial's config hash (dataset, labeled setting, seed, Trainer
        settings, method defaults: change the suite and it is another study), what is searched, the objective."""
        if self._base_hash is None:
            self._base_hash = self.make_trial({}).config_hash
        return stable_hash({"suite": self.suite.name, "base": self._base_hash, "metric": self.metric,
                            "kind": self.kind, "space": self.space, "grid": self.grid}, 8)

    @property
    def study_name(self) -> str:
        return f"{self.suite.name}/{self.method}/{self.labeled}/s{self.seed}/{self.kind}-{self.study_id}"

    @property
    def study_dir(self) -> Path:
        return Path(self.work_dir) / "tune" / f"{self.suite.name}-{self.method.replace(':', '_')}-{self.study_id}"

    def make_trial(self, values: dict[str, Any]):
        """The suite's trial for (method, labeled, seed) with `values` layered on top (validated)."""
        from benchmark.run.trials import expand

        cfg_values, train_values = split_values(values, self.method)
        method_config = {**self.suite.method_config,
                         self.method: {**self.suite.method_config.get(self.method, {}), **cfg_values}}
        spec = dataclasses.replace(self.suite, labeled=(self.labeled,), method_config=method_config)
        trial = expand(spec, methods=[self.method], seeds=[self.seed], iterations=self.iterations,
                       data_root=self.data_root, train_overrides=train_values)[0]
        if not trial.card.has_val:
            raise ConfigError(f"{self.suite.path or self.suite.name}: bench tune optimises the validation Dice, and "
                              f"card {trial.card.name} has no validation split; tune on a card with one")
        return trial


@dataclass
class TrialRecord:
    """One trial of a study as MLflow has it."""

    values: dict[str, Any]
    objective: float | None
    test_dice: float | None
    status: str            # finished | pruned | failed | running
    config_hash: str
    run_id: str
    pruned_at: int | None = None


def best_record(records: Sequence[TrialRecord]) -> TrialRecord | None:
    """The argmax of the objective over trials that ran to the end (pruned ones only if none did); the
    earliest of tied trials (records come in start order)."""
    scored = [r for r in records if r.objective is not None and math.isfinite(r.objective)]
    finished = [r for r in scored if r.status == "finished"]
    pool = finished or scored
    return max(pool, key=lambda r: r.objective) if pool else None


def best_yaml(setup: StudySetup, best: TrialRecord) -> str:
    """A suite fragment: the best values as `method_config` (method fields) / `method_train` (Trainer fields)."""
    import yaml

    cfg_values, train_values = split_values(best.values, setup.method)
    body: dict[str, Any] = {}
    if cfg_values:
        body["method_config"] = {setup.method: cfg_values}
    if train_values:
        body["method_train"] = {setup.method: train_values}
    head = (f"# bench tune: study {setup.study_name}\n# best {setup.metric} {best.objective:.4f} "
            f"(trial {best.config_hash}, MLflow run {best.run_id}); merge into a suite YAML\n")
    return head + yaml.safe_dump(body, sort_keys=False)


# --------------------------------------------------------------------------------------------- the trial
def _trainable(config: dict[str, Any], setup: StudySetup) -> None:
    """One Ray Tune trial: build the trial, train it with `run_trial`, report the running best val metric."""
    from ray import tune

    from benchmark.run.local import run_trial
    from benchmark.track import Tracker, TrackedRun

    from methods import METHODS

    for name, cls in setup.extra_methods.items():
        if name not in METHODS.names():
            METHODS.add(name, cls, "registered by the bench tune driver")
    values = dict(config["point"]) if setup.kind == "grid" else {k: config[k] for k in setup.space}
    trial = setup.make_trial(values)
    state: dict[str, Any] = {"best": -math.inf, "step": 0, "run_id": None}

    class ReportingRun(TrackedRun):
        def log_metrics(self, metrics: dict[str, float], step: int) -> None:
            super().log_metrics(metrics, step)
            if setup.metric in metrics:
                state["best"], state["step"] = max(state["best"], float(metrics[setup.metric])), step
                super().log_metrics({"tune/objective": state["best"]}, step)
                tune.report({"objective": state["best"], "val": float(metrics[setup.metric]), "step": step,
                             "config_hash": trial.config_hash, "run_id": self.run_id})

    class StudyTracker(Tracker):
        def open_run(self, name, config_hash, tags, params):
            tags = {**tags, "tune.study": setup.study_name, f"tune_{setup.study_id}": "true",
                    "tune.values": json.dumps(values, sort_keys=True), "tune.role": "trial"}
            if setup.parent_run_id:
                tags["mlflow.parentRunId"] = setup.parent_run_id
            run = super().open_run(name, config_hash, tags, params)
            if "tune.pruned" in run.get().data.tags:   # a pruned config sampled again
                run.delete_tag("tune.pruned")
            state["run_id"] = run.run_id
            return ReportingRun(self.client, run.run_id, run.attempt)

    tracker = StudyTracker(setup.experiment, setup.tracking_uri)
    try:
        outcome = run_trial(trial, Path(setup.work_dir), tracker, setup.data_root, setup.device, progress=False)
    except SystemExit:   # Ray stops a trial the scheduler pruned by raising SystemExit inside tune.report
        if state["run_id"]:
            pruned = tracker.run(state["run_id"])
            pruned.set_tags({"tune.pruned": "true", "tune.pruned_at": str(state["step"])})
            pruned.kill(f"pruned at step {state['step']}")
        raise
    if outcome.status == "FAILED":
        raise RuntimeError(f"trial {trial.name} ({trial.config_hash}) failed: {outcome.detail}")
    run_id = state["run_id"] or tracker.finished_run_id(trial.config_hash)
    if run_id is None:       # skipped, not finished: another process is training this config
        raise RuntimeError(f"trial {trial.name} ({trial.config_hash}) {outcome.detail}")
    summary = outcome.summary or tracker.run(run_id).get().data.metrics
    if outcome.status == "SKIPPED":
        tracker.run(run_id).set_tags({f"tune_{setup.study_id}": "true"})
    ckpt = trial.protocol.checkpoint
    tune.report({"objective": summary["best_val_dice"], "step": trial.train.iterations, "final": 1,
                 "test_dice": summary.get(f"test/{ckpt}/dice", float("nan")), "config_hash": trial.config_hash,
                 "run_id": run_id})


# -------------------------------------------------------------------------------------------- the driver
def study_records(setup: StudySetup, tracker) -> list[TrialRecord]:
    """Every trial of the study from MLflow (the source of truth across invocations)."""
    runs = tracker.search(f"tags.tune_{setup.study_id} = 'true'", order_by=["attributes.start_time ASC"])
    ckpt = setup.make_trial({}).protocol.checkpoint
    records = []
    for r in runs:
        tags, metrics = r.data.tags, r.data.metrics
        pruned = tags.get("tune.pruned") == "true"
        status = {"FINISHED": "finished", "FAILED": "failed", "RUNNING": "running"}.get(r.info.status, "pruned")
        status = "pruned" if pruned else status
        objective = metrics.get("best_val_dice") if status == "finished" else metrics.get("tune/objective")
        records.append(TrialRecord(json.loads(tags.get("tune.values", "{}")), objective,
                                   metrics.get(f"test/{ckpt}/dice") if status == "finished" else None, status,
                                   tags.get("config_hash", ""), r.info.run_id,
                                   int(tags["tune.pruned_at"]) if pruned and "tune.pruned_at" in tags else None))
    return records


def _open_parent(setup: StudySetup, tracker) -> str:
    """The study's MLflow parent run (reused on resume)."""
    query = f"tags.`tune.study_id` = '{setup.study_id}' and tags.`tune.role` = 'study'"
    found = tracker.search(query)
    if found:
        tracker.run(found[0].info.run_id).reopen()
        return found[0].info.run_id
    tags = {"tune.role": "study", "tune.study_id": setup.study_id, "tune.study": setup.study_name,
            "tune.kind": setup.kind, "method": setup.method, "suite": setup.suite.name,
            "tune.metric": setup.metric, "tune.space": json.dumps(setup.space, sort_keys=True)}
    return tracker.create_run(setup.study_name, tags).run_id


def _resume_optuna(storage, study_name: str) -> tuple[int, int, list[dict[str, Any]]]:
    """(trials done, trials in the study, configs to redo): RUNNING trials of a killed driver become FAIL."""
    import optuna
    from optuna.trial import TrialState

    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return 0, 0, []
    done, redo = 0, []
    trials = study.get_trials(deepcopy=False)
    for t in trials:
        if t.state == TrialState.RUNNING:
            storage.set_trial_user_attr(t._trial_id, "interrupted", True)
            study.tell(t.number, state=TrialState.FAIL)
            redo.append(dict(t.params))
        elif t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
                t.state == TrialState.FAIL and not t.user_attrs.get("interrupted")):
            done += 1
    return done, len(trials), redo


def start_ray(tracking_uri: str, num_cpus: int | None = None, address: str | None = None) -> bool:
    """The executor's Ray start-up with the trials' environment; False if Ray was already running here."""
    from benchmark.run.ray_executor import start_ray as start, trial_env

    # the trials get the tracking URI through their runtime environment (trial_env), not this process's globals
    return start(address, trial_env(tracking_uri, int(os.environ.get("OMP_NUM_THREADS", "1"))), num_cpus)[0]


def make_scheduler(pruner: str, iterations: int, grace_period: int):
    """ASHA (rungs strictly before the last step, so no trial is stopped between training and test) or the
    median stopping rule, both on the training step."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule

    if pruner == "asha":
        max_t = max(grace_period, iterations - 1)
        return ASHAScheduler(time_attr="step", max_t=max_t, grace_period=grace_period, reduction_factor=2,
                             stop_last_trials=False)
    if pruner == "median":
        return MedianStoppingRule(time_attr="step", grace_period=grace_period, min_samples_required=2)
    return FIFOScheduler()


@dataclass
class StudyResult:
    setup: StudySetup
    records: list[TrialRecord]
    best: TrialRecord | None
    ran: int
    errors: list[str]
    best_file: Path | None


def run_study(setup: StudySetup, trials: int = 20, pruner: str = "asha", max_concurrent: int = 1,
              cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0, ray_address: str | None = None,
              grace_period: int | None = None, on_trial: Callable[[str], None] | None = None) -> StudyResult:
    """Validate, run the missing trials through Ray Tune, and summarise the study (see the module doc)."""
    from benchmark.run.trials import check_data
    from benchmark.track import Tracker

    if pruner not in PRUNERS:
        raise ConfigError(f"unknown pruner {pruner!r}; valid: {', '.join(PRUNERS)}")
    if setup.metric not in OBJECTIVES:
        hint = " (test metrics are reported, never optimised)" if setup.metric.startswith("test") else ""
        raise ConfigError(f"--metric {setup.metric!r} is not a validation metric{hint}; valid: {', '.join(OBJECTIVES)}")
    if trials < 1:
        raise ConfigError(f"--trials must be >= 1 (got {trials})")
    names = list(setup.space) if setup.kind == "search" else sorted({k for p in setup.grid for k in p})
    if not names:
        raise ConfigError(f"nothing to tune: {setup.method} declares no "
                          f"{'search_space' if setup.kind == 'search' else 'search_grids'}; give --space NAME=SPEC")
    check_names(names, setup.method)
    from benchmark import catalog

    cls = catalog.method_class(setup.method)
    if cls.__module__.partition(".")[0] != "methods":   # registered out of tree (a plugin, a test): ship it
        setup.extra_methods.setdefault(catalog.split_variant(setup.method)[0], cls)
    space = {n: parse_dimension(n, s) for n, s in setup.space.items()} if setup.kind == "search" else {}
    check_kinds(space, setup.method)
    # every extreme value builds a valid trial before anything trains (ConfigError names the field)
    base = setup.make_trial({})
    for probe in ({n: v} for n, d in space.items() for v in d.ends()):
        setup.make_trial(probe)
    grid_trials = [setup.make_trial(p) for p in setup.grid]
    check_data([base, *grid_trials], setup.data_root, keep=False)   # every file read before the store is opened

    tracker = Tracker(setup.experiment, setup.tracking_uri)
    setup.parent_run_id = _open_parent(setup, tracker)
    study_dir = setup.study_dir.resolve()
    study_dir.mkdir(parents=True, exist_ok=True)
    searcher, points, num_samples = None, [], 0
    if setup.kind == "search":
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = optuna.storages.RDBStorage(f"sqlite:///{study_dir / 'optuna.db'}")
        done, existing, redo = _resume_optuna(storage, setup.study_name)
        num_samples = max(0, trials - done)
        if num_samples:
            from ray.tune.search.optuna import OptunaSearch

            # seeded by the study's length too: a resumed study does not replay the first random draws
            sampler = optuna.samplers.TPESampler(seed=setup.seed * 100_003 + existing)
            # the space goes to the Tuner and metric/mode to TuneConfig only (HARNESS-NOTES B4, gotcha 1)
            searcher = OptunaSearch(sampler=sampler, study_name=setup.study_name, storage=storage,
                                    points_to_evaluate=redo[:num_samples] or None)
    else:
        seen, missing = set(), []
        for point, trial in zip(setup.grid, grid_trials):
            if trial.config_hash in seen:
                continue
            seen.add(trial.config_hash)
            run_id = tracker.finished_run_id(trial.config_hash)
            if run_id:
                tracker.run(run_id).set_tags({f"tune_{setup.study_id}": "true"})
            else:
                missing.append(point)
        points = missing
    failed: list[tuple[str, str | None]] = []
    ran = num_samples if setup.kind == "search" else len(points)
    if ran:
        try:
            failed = _fit(setup, searcher, points, num_samples, pruner, base.train.iterations,
                          grace_period or max(base.train.eval_every, base.train.iterations // 8), max_concurrent,
                          cpus_per_trial, gpus_per_trial, ray_address, on_trial)
        except BaseException:   # Ctrl-C or a crash of the driver: the study is resumable, not running
            tracker.run(setup.parent_run_id).kill()
            raise
    for reason, run_id in failed:   # a worker that died (OOM, segfault) could not mark its own run
        if run_id and tracker.run(run_id).get().info.status == "RUNNING":
            tracker.run(run_id).fail(reason)
    errors = [reason for reason, _ in failed]
    records = study_records(setup, tracker)
    best = best_record(records)
    best_file = _write_outputs(setup, tracker, records, best, space)
    tracker.run(setup.parent_run_id).finish()
    return StudyResult(setup, records, best, ran, errors, best_file)


def _fit(setup: StudySetup, searcher, points: list[dict[str, Any]], num_samples: int, pruner: str, iterations: int,
         grace_period: int, max_concurrent: int, cpus: float, gpus: float, address: str | None,
         on_trial: Callable[[str], None] | None) -> list[tuple[str, str | None]]:
    """One Tuner.fit over the missing trials; returns (error text, MLflow run id or None) of failed trials."""
    import ray
    from ray import tune

    started = start_ray(setup.tracking_uri, max(1, math.ceil(max_concurrent * cpus)), address)
    try:
        trainable = tune.with_resources(tune.with_parameters(_trainable, setup=setup), {"cpu": cpus, "gpu": gpus})
        if setup.kind == "grid":
            param_space = {"point": tune.grid_search(points)}
            tune_config = tune.TuneConfig(metric="objective", mode="max", num_samples=1,
                                          scheduler=make_scheduler(pruner, iterations, grace_period),
                                          max_concurrent_trials=max_concurrent, reuse_actors=True)
        else:
            param_space = {n: parse_dimension(n, s).domain() for n, s in setup.space.items()}
            tune_config = tune.TuneConfig(metric="objective", mode="max", num_samples=num_samples,
                                          search_alg=searcher, scheduler=make_scheduler(pruner, iterations, grace_period),
                                          max_concurrent_trials=max_concurrent, reuse_actors=True)
        run_config = tune.RunConfig(name=f"fit-{setup.study_id}", storage_path=str(setup.study_dir.resolve() / "ray"),
                                    failure_config=tune.FailureConfig(max_failures=0), verbose=0,
                                    callbacks=[_progress_callback(setup.metric, on_trial)])
        try:
            grid = tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config).fit()
        except RuntimeError as exc:   # Tune's controller gives up when a trial's actor dies (e.g. Ray's OOM killer)
            raise StudyInterrupted(
                f"Ray Tune stopped: {_first_line(exc)[:300]}\nThe study is saved; run the same command again to "
                f"resume it (lower --max-concurrent or raise --cpus-per-trial if a trial ran out of memory)") from exc
        return [(_first_line(r.error), (r.metrics or {}).get("run_id")) for r in grid if r.error is not None]
    finally:
        if started:
            ray.shutdown()


class StudyInterrupted(RuntimeError):
    """Ray Tune aborted the study (a trial's worker died); the study is saved and resumable."""


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else repr(error)


def _progress_callback(metric: str, sink: Callable[[str], None] | None):
    """A Ray Tune callback printing one line per finished, pruned or failed trial (the sink is left out when
    the Tuner pickles its callbacks: a console holds locks)."""
    from ray import tune

    class Progress(tune.Callback):
        sink: Callable[[str], None] | None = None

        def __getstate__(self) -> dict:
            return {"sink": None}

        def _say(self, line: str) -> None:
            if self.sink is not None:
                self.sink(line)

        def on_trial_complete(self, iteration, trials, trial, **info):
            r = trial.last_result or {}
            state = (f"test Dice {r.get('test_dice', float('nan')):.4f}" if r.get("final")
                     else f"pruned at step {r.get('step')}")
            self._say(f"trial {trial.trial_id} {trial.config}: {metric} {r.get('objective', float('nan')):.4f}, {state}")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._say(f"trial {trial.trial_id} {trial.config}: FAILED")

    progress = Progress()
    progress.sink = sink   # an attribute, not a closure cell: __getstate__ leaves it out
    return progress


def _write_outputs(setup: StudySetup, tracker, records: list[TrialRecord], best: TrialRecord | None,
                   space: dict[str, Dimension]) -> Path | None:
    """trials.csv, best.yaml and sensitivity.png in the study dir, logged to the parent run."""
    import pandas as pd

    study_dir = setup.study_dir.resolve()
    frame = records_frame(records)
    frame.to_csv(study_dir / "trials.csv", index=False)
    parent = tracker.run(setup.parent_run_id)
    parent.log_artifact(study_dir / "trials.csv")
    done = sum(r.status in ("finished", "pruned") for r in records)
    parent.log_metrics({"tune/trials": len(records), "tune/pruned": sum(r.status == "pruned" for r in records)}, 0)
    best_file = None
    if best is not None:
        best_file = study_dir / "best.yaml"
        best_file.write_text(best_yaml(setup, best))
        parent.log_artifact(best_file)
        parent.log_metrics({"tune/best_objective": best.objective}
                           | ({} if best.test_dice is None else {"tune/best_test_dice": best.test_dice}), 0)
        parent.set_tags({**{f"best.{k}": str(v) for k, v in best.values.items()}, "best.config_hash": best.config_hash})
    if done and not pd.isna(frame["objective"]).all():
        names = sorted({k for r in records for k in r.values})
        plot = sensitivity_plot(frame, names, space, study_dir / "sensitivity.png")
        if plot is not None:
            parent.log_artifact(plot)
    return best_file


def records_frame(records: Sequence[TrialRecord]):
    """One row per trial: the searched values, objective, test Dice, status, hash, run id."""
    import pandas as pd

    rows = [{**r.values, "objective": r.objective, "test_dice": r.test_dice, "status": r.status,
             "pruned_at": r.pruned_at, "config_hash": r.config_hash, "run_id": r.run_id} for r in records]
    return pd.DataFrame(rows)


def sensitivity_plot(frame, names: list[str], space: dict[str, Dimension], path: Path) -> Path | None:
    """Objective against each searched value: one panel per field, the trial status as marker style."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns
    from matplotlib.ticker import NullFormatter

    names = [n for n in names if n in frame]
    if not names:
        return None
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        data = frame.dropna(subset=["objective", name])   # one-at-a-time grids leave the other fields empty
        numeric = pd.to_numeric(data[name], errors="coerce")
        if not numeric.isna().any():
            data = data.assign(**{name: numeric})
        sns.scatterplot(data=data, x=name, y="objective", hue="status", style="status", ax=ax)
        if name in space and space[name].kind == "loguniform":
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel("val Dice (objective)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

