"""`bench run` -> MLflow -> `bench table` on a tiny synthetic suite (CPU, a few steps per trial)."""
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from benchmark.cli import app

runner = CliRunner()


@pytest.fixture()
def tiny_suite(tmp_path: Path, tiny_card: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tiny", "description": "test suite", "dataset": str(tiny_card), "labeled": [3],
        "methods": ["supervised", "mean-teacher"], "seeds": [0, 1],
        "train": {"iterations": 4, "batch_size": 4, "labeled_batch_size": 2, "patch_size": 32, "eval_every": 2,
                  "checkpoint_every": 2, "log_every": 2, "num_workers": 0},
    }))
    return path


def invoke(*args: str):
    result = runner.invoke(app, list(args))
    return result


def test_run_logs_to_mlflow_skips_finished_and_tables(tiny_suite, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = invoke("run", "--suite", str(tiny_suite), "--tracking-uri", uri, "--device", "cpu", "--executor", "local")
    assert first.exit_code == 0, first.output
    assert "4 finished, 0 skipped, 0 failed" in first.output

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    run = runs[0]
    for tag in ("method", "dataset", "labeled_patients", "seed", "suite", "config_hash", "git_commit",
                "harness_version", "device", "protocol"):
        assert tag in run.data.tags, tag
    assert run.data.tags["labeled_rows"] == "24"  # first 3 synthetic patients: 3 x 2 frames x 4 slices
    for key in ("test/best_val/dice", "test/last/dice", "test/best_val/hd95/RV", "val/dice", "train/loss"):
        assert key in run.data.metrics, key
    assert run.data.params["train.iterations"] == "4"
    counts = {r.data.tags["method"]: r.data.metrics["param_count"] for r in runs}
    assert counts == {"supervised": 1_813_764, "mean-teacher": 2 * 1_813_764}   # student + EMA teacher
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "cases_best_val.csv", "cases_last.csv"} <= artifacts
    for tag in ("cell_hash", "scoring_hash", "run_dir", "iterations"):
        assert tag in run.data.tags, tag
    assert len(client.get_metric_history(run.info.run_id, "val/dice")) == 2

    again = invoke("run", "--suite", str(tiny_suite), "--tracking-uri", uri, "--device", "cpu", "--executor", "local")
    assert again.exit_code == 0 and "0 finished, 4 skipped" in again.output

    evaluated = invoke("eval", "--run", run.info.run_id, "--postprocess", "largest_component",
                       "--empty-prediction", "zero_all", "--tracking-uri", uri, "--device", "cpu", "--workers", "2")
    assert evaluated.exit_code == 0, evaluated.output
    assert "postprocess=largest_component" in evaluated.output and "empty_prediction=zero_all" in evaluated.output
    after = client.get_run(run.info.run_id)
    new = [k for k in after.data.metrics if k.startswith("eval/") and k.endswith("/best_val/dice")]
    assert len(new) == 1 and after.info.status == "FINISHED"
    assert any(a.path.startswith("cases_best_val_eval-") for a in client.list_artifacts(run.info.run_id))

    table = invoke("table", "--suite", str(tiny_suite), "--format", "latex", "--tracking-uri", uri)
    assert table.exit_code == 0, table.output
    assert r"\toprule" in table.output and "supervised" in table.output and "mean-teacher" in table.output
    assert "n=2 seeds" in table.output

    unknown = invoke("eval", "--run", "0123456789abcdef", "--tracking-uri", uri)
    assert unknown.exit_code != 0 and "no MLflow run" in unknown.output


def test_a_failing_trial_is_marked_failed_with_its_reason(tiny_suite, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def boom(self):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr("benchmark.train.Trainer.fit", boom)
    result = invoke("run", "--suite", str(tiny_suite), "--methods", "supervised", "--seeds", "0",
                    "--tracking-uri", uri, "--device", "cpu", "--executor", "local")
    assert result.exit_code == 1 and "FAILED" in result.output
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert run.info.status == "FAILED"
    assert "out of memory (simulated)" in run.data.tags["failure_reason"]


def test_untracked_run_skips_via_run_dir(tiny_suite, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["run", "--suite", str(tiny_suite), "--methods", "supervised", "--seeds", "0", "--no-track",
            "--device", "cpu", "--executor", "local"]
    assert "1 finished" in invoke(*args).output
    assert "1 skipped" in invoke(*args).output
    assert not (tmp_path / "mlflow.db").exists()


def test_a_trial_locked_by_another_process_is_skipped_not_trained_twice(tiny_suite, tmp_path, monkeypatch):
    """Two `bench run` of one suite at once: the second leaves a trial whose run dir is locked alone."""
    from benchmark import catalog
    from benchmark.run.local import run_dir_of, trial_lock
    from benchmark.run.trials import expand

    monkeypatch.chdir(tmp_path)
    (trial,) = expand(catalog.get_suite(str(tiny_suite)), methods=["supervised"], seeds=[0])
    run_dir = run_dir_of(trial, tmp_path / "bench_runs")
    args = ["run", "--suite", str(tiny_suite), "--methods", "supervised", "--seeds", "0", "--no-track",
            "--device", "cpu", "--executor", "local"]
    with trial_lock(run_dir):           # what a concurrent `bench run` holds while it trains this trial
        busy = invoke(*args).output
        assert "1 skipped" in busy and "another process" in busy
        assert not (run_dir / "last.pt").exists() and not (run_dir / "result.json").exists()
    assert "1 finished" in invoke(*args).output       # released (or its holder died): trained once, here
    assert (run_dir / "result.json").exists()


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads the resident size from Linux's /proc")
def test_release_memory_returns_freed_heap_pages_to_the_os():
    """The local executor calls it between trials: freed but fragmented heap pages must leave the process."""
    import ctypes.util
    import platform

    import torch

    from benchmark.run.local import release_memory

    if platform.libc_ver()[0] != "glibc" or not ctypes.util.find_library("c"):
        pytest.skip("malloc_trim is glibc's")

    def rss() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * 4096

    blocks = [torch.ones(16_000) for _ in range(10_000)]     # 64 kB each: heap chunks, below mmap's threshold
    kept = blocks[::100]                                     # live chunks between free ones: the heap cannot shrink
    del blocks
    freed = rss()
    release_memory()
    assert rss() < freed - 400e6, "about 640 MB were freed; most should have been returned"
    assert float(kept[0].sum()) == 16_000                    # what is still referenced is untouched


def test_force_retrains_into_a_new_run_and_leaves_the_old_one_superseded(tiny_suite, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["run", "--suite", str(tiny_suite), "--methods", "supervised", "--seeds", "0", "--tracking-uri", uri,
            "--device", "cpu", "--executor", "local"]
    assert "1 finished" in invoke(*args).output
    forced = invoke(*args, "--force")
    assert forced.exit_code == 0 and "1 finished, 0 skipped" in forced.output

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id], order_by=["attributes.start_time ASC"])
    assert [r.info.status for r in runs] == ["KILLED", "FINISHED"]            # two runs: history is kept
    old, new = runs
    assert old.data.tags["superseded"] == "true" and "superseded" not in new.data.tags
    assert len(client.get_metric_history(new.info.run_id, "val/dice")) == 2    # the new run's own steps only
    assert len(client.get_metric_history(old.info.run_id, "val/dice")) == 2
