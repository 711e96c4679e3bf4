"""`bench tune`: search-space parsing, name validation, best-config selection, and Optuna searches / grids run
through a real (2-CPU, local) Ray Tune on a tiny synthetic suite, with pruning and resume."""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from benchmark import catalog
from benchmark.cli import app
from benchmark.config import ConfigError
from benchmark.tune import (StudySetup, TrialRecord, best_record, best_yaml, check_kinds, check_names, grid_points,
                            parse_dimension, parse_grid, parse_space, run_study)
from methods.base import METHODS, Method

runner = CliRunner()


# ------------------------------------------------------------------------------------ a fake method
@dataclass
class DiscConfig:
    radius: float = 0.2       # of the image side
    unused: int = 3


class Disc(Method):
    """Predicts the LV inside a centred disc: its val Dice is a smooth, deterministic function of `radius`
    (about 0.06 at 0.05, 0.18 at 0.1, 0.03 at 0.4 on the tiny synthetic card), so pruning and the argmax are
    exercised without waiting for a UNet to learn."""

    Config = DiscConfig
    uses_unlabeled = False
    search_space = {"radius": "uniform:0.03:0.45"}
    search_grids = {"radius": [0.1, 0.3], "unused": [3, 4]}

    def __init__(self, cfg: DiscConfig, ctx) -> None:
        super().__init__(cfg, ctx)
        self.net = torch.nn.Conv2d(1, 1, 1)
        self.optimizer = ctx.make_optimizer(self.net.parameters())

    def train_step(self, labeled, unlabeled, step):
        loss = self.net(labeled.image).mean() * 0.0
        self.update(loss, self.optimizer)
        return {"loss": loss.detach()}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        yy, xx = torch.meshgrid(torch.linspace(-0.5, 0.5, h), torch.linspace(-0.5, 0.5, w), indexing="ij")
        logits = torch.zeros(b, self.ctx.num_classes, h, w, device=x.device)
        logits[:, 3] = ((yy ** 2 + xx ** 2) < self.cfg.radius ** 2).float().to(x.device) * 2 - 1
        return logits


@pytest.fixture()
def disc():
    """Register `disc` here; Ray workers get the class through StudySetup.extra_methods (pickled by value)."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    METHODS.add("disc", Disc, "test-only")
    yield {"disc": Disc}
    METHODS._entries.pop("disc")
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray (2 CPUs) for the module's searches; shut down afterwards (no Ray process left)."""
    import ray

    from benchmark.tune import start_ray

    # other jobs on a shared CI box can push memory past Ray's OOM-kill threshold: keep our tiny workers alive
    old = os.environ.get("RAY_memory_monitor_refresh_ms")
    os.environ["RAY_memory_monitor_refresh_ms"] = "0"
    start_ray("sqlite:////nonexistent/unused.db", num_cpus=2)
    yield
    ray.shutdown()
    if old is None:
        os.environ.pop("RAY_memory_monitor_refresh_ms")
    else:
        os.environ["RAY_memory_monitor_refresh_ms"] = old


@pytest.fixture()
def tiny_suite(tmp_path: Path, tiny_card: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tiny", "description": "tune test suite", "dataset": str(tiny_card), "labeled": [3],
        "methods": ["mean-teacher"], "seeds": [0],
        "train": {"iterations": 4, "batch_size": 4, "labeled_batch_size": 2, "patch_size": 32, "eval_every": 1,
                  "checkpoint_every": 2, "log_every": 1, "num_workers": 0},
    }))
    return path


def make_setup(suite: Path, tmp_path: Path, method: str = "disc", **kw) -> StudySetup:
    return StudySetup(catalog.get_suite(str(suite)), method, 3, 0, None, None, str(tmp_path / "runs"),
                      f"sqlite:///{tmp_path / 'mlflow.db'}", device="cpu", **kw)


# ---------------------------------------------------------------------------------------- parsing
def test_space_specs_parse_to_dimensions():
    d = parse_dimension("lr", "loguniform:1e-4:0.1")
    assert (d.kind, d.low, d.high) == ("loguniform", 1e-4, 0.1) and d.ends() == [1e-4, 0.1]
    assert parse_dimension("n", "int:2:8").ends() == [2, 8]
    assert parse_dimension("r", "uniform:0.1:0.9").spec == "uniform:0.1:0.9"
    c = parse_dimension("net", "choice:unet, 0.5,3,true,1e-3")
    assert c.choices == ("unet", 0.5, 3, True, 1e-3)
    space = parse_space(None, {"radius": "uniform:0.03:0.45"})
    assert list(space) == ["radius"] and space["radius"].high == 0.45
    space = parse_space(["lr=loguniform:0.001:0.1", "radius=choice:0.1,0.2"], {"radius": "uniform:0:1"})
    assert space["radius"].kind == "choice" and set(space) == {"lr", "radius"}   # --space replaces the default
    assert parse_grid(["a=0.1,0.3", "b=choice:x,y"], {}) == {"a": [0.1, 0.3], "b": ["x", "y"]}
    assert parse_grid(None, {"a": [1, 2]}) == {"a": [1, 2]}
    assert grid_points({"a": [1, 2], "b": [3]}) == [{"a": 1}, {"a": 2}, {"b": 3}]
    assert grid_points({"a": [1, 2], "b": [3, 4]}, product=True) == [{"a": 1, "b": 3}, {"a": 1, "b": 4},
                                                                     {"a": 2, "b": 3}, {"a": 2, "b": 4}]


@pytest.mark.parametrize("spec, message", [
    ("normal:0:1", "unknown kind 'normal'"),
    ("uniform:0.5:0.1", "need LOW < HIGH"),
    ("uniform:0.1", "expected uniform:LOW:HIGH"),
    ("uniform:a:1", "bounds must be numbers"),
    ("loguniform:0:1", "loguniform needs LOW > 0"),
    ("int:1.5:4", "bounds must be integers"),
    ("int:3:3", "need LOW < HIGH"),
    ("choice:", "at least one value"),
    ("choice:1,1", "repeat"),
])
def test_bad_space_specs_are_refused_with_the_reason(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_dimension("x", spec)


def test_malformed_items_and_ranges_in_a_grid_are_refused():
    with pytest.raises(ConfigError, match="expected NAME=SPEC"):
        parse_space(["lr:0.1"], {})
    with pytest.raises(ConfigError, match="names a field twice"):
        parse_space(["lr=uniform:0:1", "lr=uniform:0:2"], {})
    with pytest.raises(ConfigError, match="needs values, not a range"):
        parse_grid(["lr=uniform:0:1"], {})


def test_names_must_be_method_or_trainer_fields(disc):
    check_names(["radius", "lr"], "disc")
    check_names(["consistency", "ema_decay", "lr", "batch_size"], "mean-teacher")
    with pytest.raises(ConfigError) as info:
        check_names(["radius", "mask_ratio"], "mean-teacher")
    text = str(info.value)
    assert "radius, mask_ratio" in text and "ema_decay" in text and "lr" in text and "patch_size" in text
    with pytest.raises(ConfigError, match="unused is an integer field: use int:1:5"):
        check_kinds({"unused": parse_dimension("unused", "uniform:1:5")}, "disc")
    with pytest.raises(ConfigError, match="optimizer is a str field"):
        check_kinds({"optimizer": parse_dimension("optimizer", "uniform:1:5")}, "disc")


def test_every_declared_search_space_and_grid_is_valid():
    """Methods' `search_space` / `search_grids` parse and name real fields (fails for a method that declares a
    typo, before anyone starts a study)."""
    checked = 0
    for entry in catalog.methods():
        cls = entry.obj
        if cls.search_space:
            space = parse_space(None, cls.search_space)
            check_names(list(space), entry.name)
            check_kinds(space, entry.name)
            checked += 1
        if cls.search_grids:
            check_names(list(cls.search_grids), entry.name)
            assert all(isinstance(v, list) and v for v in cls.search_grids.values()), entry.name
    assert checked >= 1   # mean-teacher declares one


def test_bad_names_fail_before_any_training_or_tracking(tiny_suite, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = runner.invoke(app, ["tune", "--suite", str(tiny_suite), "--method", "mean-teacher",
                              "--space", "mask_ratio=uniform:0.1:0.9", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    assert out.exit_code == 2 and "cannot tune mask_ratio" in out.output and "ema_decay" in out.output
    out = runner.invoke(app, ["tune", "--suite", str(tiny_suite), "--method", "mean-teacher", "--metric", "test/dice",
                              "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    assert out.exit_code == 2 and "never optimised" in out.output
    out = runner.invoke(app, ["tune", "--suite", str(tiny_suite), "--method", "mean-teacher",
                              "--space", "patch_size=choice:32,40", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    assert out.exit_code == 2 and "every patch" in out.output and "axis must be a multiple of 16" in out.output
    assert not (tmp_path / "m.db").exists() and not (tmp_path / "bench_runs").exists()


# ------------------------------------------------------------------------------------- best config
def test_best_is_the_argmax_of_the_objective_over_finished_trials(disc, tiny_suite, tmp_path):
    rec = lambda v, obj, status, test=None: TrialRecord(v, obj, test, status, f"h{v}", f"r{v}")  # noqa: E731
    records = [rec({"radius": 0.1, "lr": 0.01}, 0.30, "finished", 0.9), rec({"radius": 0.2, "lr": 0.02}, 0.45, "finished", 0.1),
               rec({"radius": 0.3, "lr": 0.03}, 0.60, "pruned"), rec({"radius": 0.4, "lr": 0.04}, None, "failed"),
               rec({"radius": 0.5, "lr": 0.05}, 0.40, "finished", 0.95)]
    best = best_record(records)
    assert best.values["radius"] == 0.2      # not the pruned (truncated) 0.60, not the best test Dice
    assert best_record([records[2], records[3]]).values["radius"] == 0.3   # nothing finished: best pruned
    assert best_record([records[3]]) is None
    text = best_yaml(make_setup(tiny_suite, tmp_path), best)
    fragment = yaml.safe_load(text)
    assert fragment == {"method_config": {"disc": {"radius": 0.2}}, "method_train": {"disc": {"lr": 0.02}}}
    # the fragment is a valid suite override: the expanded trial carries the values
    suite = yaml.safe_load(tiny_suite.read_text())
    suite.update(methods=["disc"], **fragment)
    path = tmp_path / "tuned.yaml"
    path.write_text(yaml.safe_dump(suite))
    from benchmark.run.trials import expand

    trial = expand(catalog.get_suite(str(path)))[0]
    assert trial.method_config["radius"] == 0.2 and trial.train.lr == 0.02


# --------------------------------------------------------------------------------- through Ray Tune
def _children(setup: StudySetup):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(setup.tracking_uri)
    exp = client.get_experiment_by_name(setup.experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("tune.role") == "study"]
    return client, parents, [r for r in runs if r.data.tags.get("tune.role") == "trial"]


@pytest.mark.slow
def test_search_prunes_marks_picks_the_argmax_and_resumes(disc, ray_session, tiny_suite, tmp_path):
    import optuna

    setup = make_setup(tiny_suite, tmp_path, extra_methods=disc)
    setup.space = {"radius": "uniform:0.03:0.45"}
    result = run_study(setup, trials=4, pruner="asha", grace_period=1)
    assert result.ran == 4 and not result.errors
    client, parents, children = _children(setup)
    assert len(parents) == 1 and len(children) == 4
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert all(r.data.tags["config_hash"] for r in children)
    pruned = [r for r in children if r.data.tags.get("tune.pruned") == "true"]
    finished = [r for r in children if r.info.status == "FINISHED"]
    assert pruned, "ASHA stopped no trial of four with distinct objectives"
    assert len(pruned) + len(finished) == 4
    for r in pruned:
        assert r.info.status == "KILLED" and "test/best_val/dice" not in r.data.metrics
        assert int(r.data.tags["tune.pruned_at"]) < 4   # stopped before the last step
    for r in finished:
        assert "test/best_val/dice" in r.data.metrics and r.data.metrics["best_val_dice"] > 0
    # the best config: argmax of best val Dice over finished runs, written as a suite fragment
    top_value = max(r.data.metrics["best_val_dice"] for r in finished)
    tied = [r for r in finished if r.data.metrics["best_val_dice"] == top_value]   # radii a pixel apart tie
    top = min(tied, key=lambda r: r.info.start_time)                                 # the earliest wins a tie
    assert result.best.run_id == top.info.run_id
    assert result.best.objective == pytest.approx(top.data.metrics["best_val_dice"])
    assert result.best.test_dice == pytest.approx(top.data.metrics["test/best_val/dice"])   # reported only
    best = yaml.safe_load(result.best_file.read_text())
    assert best["method_config"]["disc"]["radius"] == json.loads(top.data.tags["tune.values"])["radius"]
    assert {a.path for a in client.list_artifacts(parents[0].info.run_id)} >= {"best.yaml", "trials.csv", "sensitivity.png"}

    storage = f"sqlite:///{setup.study_dir / 'optuna.db'}"
    study = optuna.load_study(study_name=setup.study_name, storage=storage)
    first = [t.params["radius"] for t in study.trials]
    assert len(first) == 4 and len(set(first)) == 4
    # a driver killed mid-trial leaves a RUNNING Optuna trial: resume fails it and evaluates its config again
    study.enqueue_trial({"radius": 0.11})
    killed = study.ask({"radius": optuna.distributions.FloatDistribution(0.03, 0.45)})
    assert killed.params["radius"] == 0.11
    again = run_study(setup, trials=5, pruner="asha", grace_period=1)
    assert again.ran == 1 and not again.errors
    study = optuna.load_study(study_name=setup.study_name, storage=storage)
    states = [t.state.name for t in study.trials]
    assert [t.params["radius"] for t in study.trials[:4]] == first        # the same study, continued
    assert states[4] == "FAIL" and study.trials[4].user_attrs["interrupted"] is True
    assert study.trials[5].params["radius"] == 0.11 and states[5] in ("COMPLETE", "PRUNED")
    assert sum(s in ("COMPLETE", "PRUNED") for s in states) == 5
    _, parents, children = _children(setup)
    assert len(parents) == 1 and len(children) == 5 and len(again.records) == 5
    done = run_study(setup, trials=5, pruner="asha", grace_period=1)           # nothing left to do
    assert done.ran == 0 and len(done.records) == 5


@pytest.mark.slow
def test_grid_runs_the_missing_points_once_through_the_cli(disc, ray_session, tiny_suite, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["tune", "--suite", str(tiny_suite), "--method", "disc", "--grid", "--iterations", "2", "--device", "cpu",
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    out = runner.invoke(app, args)   # the method's search_grids, one field at a time: radius 0.1, 0.3; unused 3, 4
    assert out.exit_code == 0, out.output
    assert "4 trial(s), 4 run now" in out.output and "best:" in out.output
    best_files = list((tmp_path / "bench_runs" / "tune").glob("*/best.yaml"))
    assert len(best_files) == 1
    assert yaml.safe_load(best_files[0].read_text())["method_config"]["disc"] == {"radius": 0.1}
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "4 trial(s), 0 run now" in again.output
    # --space values replace the method's grid; a point equal to a finished one is not trained again
    out = runner.invoke(app, [*args, "--space", "radius=0.3,0.4"])
    assert out.exit_code == 0 and "2 trial(s), 1 run now" in out.output, out.output


def test_a_dead_trial_worker_ends_the_study_with_a_resumable_message(disc, tiny_suite, tmp_path, monkeypatch):
    """Ray Tune's controller raises RuntimeError when a trial actor dies (e.g. Ray's OOM killer): the user gets
    one clear message, not Tune's traceback."""
    import ray.tune

    from benchmark import tune as tune_module

    class DyingTuner:
        def __init__(self, *args, **kwargs) -> None:
            pass

        def fit(self):
            raise RuntimeError("Caught unexpected exception: 1 worker(s) were killed due to the node running low on memory.")

    monkeypatch.setattr(tune_module, "start_ray", lambda *a, **k: False)
    monkeypatch.setattr(ray.tune, "Tuner", DyingTuner)
    setup = make_setup(tiny_suite, tmp_path)
    with pytest.raises(tune_module.StudyInterrupted, match="run the same command again") as info:
        tune_module._fit(setup, None, [], 1, "none", 3, 1, 1, 1.0, 0.0, None, None)
    assert "running low on memory" in str(info.value)
