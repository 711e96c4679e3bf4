"""A crash leaves no stale run and no inflated hours: opening the store fails RUNNING runs with no process
behind them (lock free, pid gone), a resumed run counts its attempts' seconds, not the downtime between them,
and a real `kill -9` of a local `bench run` shows both."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from benchmark import REPO_ROOT
from benchmark.checkpoints import safe_load
from benchmark.report.stats import cost_fields
from benchmark.run.locks import lock_is_free, trial_lock
from benchmark.track import Tracker

pytest.importorskip("mlflow")
HOST = socket.gethostname()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def running_run(tracker: Tracker, name: str, run_dir: Path | None, worker: str, lock_file: bool = True) -> str:
    tags = {"worker": worker, **({"run_dir": str(run_dir)} if run_dir else {})}
    run = tracker.open_run(name, f"hash-{name}", tags, {"seed": 0})
    run.log_metrics({"train/loss": 1.0}, 3)
    if run_dir is not None and lock_file:
        run_dir.mkdir(parents=True)
        (run_dir / ".lock").write_text("pid ? on ?")
    return run.run_id


def test_opening_the_store_fails_only_runs_with_no_process_behind_them(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker("stale", uri)
    dead = dead_pid()
    ids = {"dead": running_run(tracker, "dead", tmp_path / "dead", f"{HOST}:{dead}"),
           "held": running_run(tracker, "held", tmp_path / "held", f"{HOST}:{dead}"),
           "no-dir": running_run(tracker, "no-dir", None, f"{HOST}:{dead}"),
           "elsewhere": running_run(tracker, "elsewhere", tmp_path / "elsewhere", f"{HOST}:{dead}", lock_file=False),
           "alive": running_run(tracker, "alive", tmp_path / "alive", f"{HOST}:{os.getpid()}"),
           "other-host": running_run(tracker, "other-host", tmp_path / "other-host", "node-b:1")}
    with trial_lock(tmp_path / "held"):            # a live trainer holds its lock
        assert not lock_is_free(tmp_path / "held")
        reopened = Tracker("stale", uri)
    assert sorted(reopened.stale) == sorted([ids["dead"], ids["other-host"]])
    status = {k: reopened.client.get_run(v).info.status for k, v in ids.items()}
    assert status == {"dead": "FAILED", "held": "RUNNING", "no-dir": "RUNNING", "elsewhere": "RUNNING",
                      "alive": "RUNNING", "other-host": "FAILED"}
    reason = reopened.client.get_run(ids["dead"]).data.tags["failure_reason"]
    assert reason.startswith(f"process died (pid {dead} on {HOST}) after step 3")
    assert Tracker("stale", uri).stale == [ids["held"]]   # its holder let go and its pid is gone
    assert Tracker("stale", uri).stale == []              # once only


def test_a_resumed_run_sums_its_attempts_and_the_table_hours_leave_the_downtime_out(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = Tracker("attempts", uri).open_run("t", "h", {}, {"seed": 0})
    assert first.attempt == 0
    first.log_attempt_seconds(40.0, force=True)
    first.log_attempt_seconds(50.0)               # throttled: within ATTEMPT_LOG_S of the last log
    first.log_attempt_seconds(70.0, force=True)    # then the process dies
    again = Tracker("attempts", uri).open_run("t", "h", {}, {"seed": 0})
    assert again.run_id == first.run_id and again.attempt == 1
    again.finish(seconds=20.0)
    tracker = Tracker("attempts", uri)
    history = tracker.client.get_metric_history(first.run_id, "attempt_seconds")
    assert sorted((m.step, m.value) for m in history) == [(0, 40.0), (0, 70.0), (1, 20.0)]
    frame = tracker.finished_frame()
    assert frame["metrics.run_seconds"].tolist() == [90.0]
    cost = cost_fields(frame)
    span = (frame["end_time"] - frame["start_time"]).dt.total_seconds().iloc[0]
    assert cost["wall_s"].tolist() == [90.0] and span < 90.0     # not end minus start


def _saved_step(last_pt: Path) -> int:
    for _ in range(20):
        try:
            return int(safe_load(last_pt)["step"])
        except (EOFError, RuntimeError, ValueError):   # being replaced right now
            time.sleep(0.1)
    raise AssertionError(f"could not read {last_pt}")


@pytest.mark.slow
def test_kill_9_of_a_local_run_leaves_a_failed_run_that_the_rerun_resumes(tiny_card, tmp_path):
    spec = {"name": "tiny-stale", "description": "stale-run test", "dataset": str(tiny_card), "labeled": [3],
            "methods": ["supervised"], "seeds": [0],
            "train": {"iterations": 40, "batch_size": 4, "labeled_batch_size": 2, "patch_size": 32,
                      "eval_every": 40, "checkpoint_every": 4, "log_every": 1, "num_workers": 0}}
    suite = tmp_path / "tiny-stale.yaml"
    suite.write_text(yaml.safe_dump(spec))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [sys.executable, "-m", "benchmark.cli", "run", "--suite", str(suite), "--executor", "local",
            "--tracking-uri", uri, "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        last = None
        while time.time() < deadline and proc.poll() is None:
            last = next((tmp_path / "bench_runs" / "tiny-stale").glob("*/last.pt"), None)
            if last is not None and last.stat().st_size and _saved_step(last) >= 4:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "bench run ended before it could be killed"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    tracker = Tracker("tiny-stale", uri)           # what any command opening the store does
    (run,) = tracker.runs()
    assert tracker.stale == [run.info.run_id] and run.info.status == "FAILED"
    reason = run.data.tags["failure_reason"]
    assert reason.startswith(f"process died (pid {proc.pid} on {HOST}) after step ")
    assert int(reason.split("after step ")[1].split(";")[0]) >= 4

    rerun = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    (done,) = Tracker("tiny-stale", uri).runs()
    assert done.info.run_id == run.info.run_id and done.info.status == "FINISHED"
    history = tracker.client.get_metric_history(done.info.run_id, "attempt_seconds")
    assert {m.step for m in history} == {0, 1}
    per_attempt = {s: max(m.value for m in history if m.step == s) for s in (0, 1)}
    assert done.data.metrics["run_seconds"] == pytest.approx(sum(per_attempt.values()))
    assert all(v > 0 for v in per_attempt.values())
