"""The Ray executor: concurrent trials into one SQLite store, failure isolation, kill -9 resume, a tracking
server over HTTP, and a real 2-node Ray cluster on loopback.

All trials are tiny (64 px synthetic card, 32 px patches, a few steps) and Ray is started with fractional
CPUs, so the suite stays a couple of minutes on 2 cores. Every test that starts Ray processes of its own
kills exactly those (by process group) in a `finally`; none uses `ray stop`, which would end other users'
Ray sessions on the machine.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from benchmark import REPO_ROOT
from benchmark.cli import app

pytest.importorskip("ray")
runner = CliRunner()

TRAIN = {"iterations": 4, "batch_size": 4, "labeled_batch_size": 2, "patch_size": 32, "eval_every": 2,
         "checkpoint_every": 2, "log_every": 1, "num_workers": 0}


def write_suite(tmp_path: Path, card: Path, name: str, methods: list[str], seeds: list[int], **extra) -> Path:
    spec = {"name": name, "description": "ray test suite", "dataset": str(card), "labeled": [3], "methods": methods,
            "seeds": seeds, "train": {**TRAIN, **extra.pop("train", {})}, **extra}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def client_for(uri: str, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    return client, client.get_experiment_by_name(experiment).experiment_id


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, wait: float = 15.0) -> None:
    """End a process started with start_new_session=True, then every process left in its session (Ray's
    workers make their own process groups, and its agents outlive a SIGKILLed driver, but keep the session)."""
    try:
        proc.send_signal(sig)
        proc.wait(timeout=wait)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    for _ in range(3):
        left = session_pids(proc.pid)
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)


def session_pids(sid: int) -> list[int]:
    """Live (non-zombie) processes of session `sid`."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,sid=,stat="], capture_output=True, text=True).stdout
    return [int(p) for p, s, stat in (line.split()[:3] for line in out.splitlines() if line.strip())
            if int(s) == sid and not stat.startswith("Z")]


def pids_mentioning(text: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", text], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split() if int(p) != os.getpid()]


# --------------------------------------------------------------------------------------------- units
def test_gpu_share_follows_the_card_2d_vs_3d(tiny_card):
    import dataclasses

    from benchmark import catalog
    from benchmark.run.ray_executor import default_gpus_per_trial
    from benchmark.run.trials import expand

    suite = catalog.get_suite("demo")
    (trial, *_) = expand(dataclasses.replace(suite, dataset=str(tiny_card)), seeds=[0], methods=["supervised"])
    assert default_gpus_per_trial(trial, cluster_gpus=0) == 0.0
    assert default_gpus_per_trial(trial, cluster_gpus=8) == 0.25
    volumetric = dataclasses.replace(trial, card=dataclasses.replace(trial.card, spatial_dims=3))
    assert default_gpus_per_trial(volumetric, cluster_gpus=8) == 1.0
    assert default_gpus_per_trial(volumetric, cluster_gpus=0.5) == 0.5


def test_server_command_binds_loopback_with_a_database_and_refuses_the_file_store(tmp_path):
    from benchmark.config import ConfigError
    from benchmark.track import server_command

    cmd = server_command(5055, f"sqlite:///{tmp_path / 's.db'}", tmp_path / "art")
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "5055"
    assert cmd[cmd.index("--artifacts-destination") + 1] == (tmp_path / "art").as_uri()
    with pytest.raises(ConfigError, match="database URI"):
        server_command(5055, "./mlruns")


def test_impossible_resources_are_refused_before_training(tiny_card, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    suite = write_suite(tmp_path, tiny_card, "tiny-res", ["supervised"], [0])
    result = runner.invoke(app, ["run", "--suite", str(suite), "--executor", "ray", "--no-track",
                                 "--gpus-per-trial", "0.5", "--device", "cpu"])
    assert result.exit_code == 2 and "no Ray node has that many GPUs" in result.output
    assert not list(tmp_path.glob("bench_runs/tiny-res/*/last.pt"))


def test_tune_giving_up_on_a_dead_worker_fails_the_trials_with_the_reason(tiny_card, tmp_path, monkeypatch):
    """Ray Tune's controller raises RuntimeError when a trial actor dies (e.g. Ray's OOM killer): the run ends
    with each unfinished trial FAILED, the reason and how to resume, and exit 1 (no Tune traceback)."""
    import ray.tune

    class DyingTuner:
        def __init__(self, *args, **kwargs) -> None:
            pass

        def fit(self):
            raise RuntimeError("Caught unexpected exception: 1 worker(s) were killed due to the node running low on memory.")

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray.tune, "Tuner", DyingTuner)
    suite = write_suite(tmp_path, tiny_card, "tiny-dead", ["supervised"], [0])
    result = runner.invoke(app, ["run", "--suite", str(suite), "--executor", "ray", "--no-track", "--device", "cpu"])
    assert result.exit_code == 1, result.output
    assert "0 finished, 0 skipped, 1 failed" in result.output
    assert "running low on memory" in result.output and "run the command again" in result.output


# --------------------------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_nine_concurrent_trials_lose_no_metric_and_a_nan_trial_fails_alone(tiny_card, tmp_path, monkeypatch):
    """9 trials at once on a local Ray, all logging every step to the default SQLite store (through the one
    writer); the 3 of a method with an absurd lr hit a NaN loss and fail alone, with their reason."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    suite = write_suite(tmp_path, tiny_card, "tiny-ray", ["supervised", "mean-teacher", "entropy-min"], [0, 1, 2],
                        method_train={"entropy-min": {"lr": 1.0e+30}})
    result = runner.invoke(app, ["run", "--suite", str(suite), "--executor", "ray", "--cpus-per-trial", "0.2",
                                 "--device", "cpu"])
    assert result.exit_code == 1, result.output
    assert "6 finished, 0 skipped, 3 failed" in result.output and "NonFiniteLossError" in result.output
    assert "at most 9 at once" in result.output            # all 9 were running together
    client, exp = client_for(f"sqlite:///{tmp_path / 'mlflow.db'}", "tiny-ray")   # the default store
    runs = client.search_runs([exp])
    assert len(runs) == 9 and len({r.data.tags["config_hash"] for r in runs}) == 9
    for run in runs:
        rid = run.info.run_id
        assert run.data.tags["executor"] == "ray" and run.data.tags["ray_node_id"]
        losses = [m.step for m in client.get_metric_history(rid, "train/loss")]
        if run.data.tags["method"] == "entropy-min":
            assert run.info.status == "FAILED"
            assert "NonFiniteLossError" in run.data.tags["failure_reason"]
            assert "within steps" in run.data.tags["failure_reason"]
            assert losses == list(range(1, len(losses) + 1)) and len(losses) < 4   # stopped at once
            continue
        assert run.info.status == "FINISHED"
        assert losses == [1, 2, 3, 4]
        assert [m.step for m in client.get_metric_history(rid, "val/dice")] == [2, 4]
        assert "test/best_val/dice" in run.data.metrics and "test/last/hd95" in run.data.metrics
        assert {a.path for a in client.list_artifacts(rid)} == {"config.yaml", "cases_best_val.csv", "cases_last.csv"}
    spans = [(r.info.start_time, r.info.end_time) for r in runs]
    overlap = max(sum(s <= t < e for s, e in spans) for t, _ in spans)
    print(f"MLflow runs open at the same time: up to {overlap} of 9")

    again = runner.invoke(app, ["run", "--suite", str(suite), "--executor", "ray", "--device", "cpu",
                                "--methods", "supervised,mean-teacher"])
    assert again.exit_code == 0 and "0 finished, 6 skipped" in again.output
    assert "per trial" not in again.output      # nothing left to run: Ray is not even started


def bench_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "benchmark.cli", *args]


def child_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", **extra}
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.mark.slow
def test_kill_9_of_the_driver_then_rerun_resumes(tiny_card, tmp_path):
    """SIGKILL a real `bench run` mid-suite: the re-run skips the finished trial and resumes the other."""
    suite = write_suite(tmp_path, tiny_card, "tiny-kill", ["supervised"], [0, 1],
                        train={"iterations": 60, "checkpoint_every": 4, "eval_every": 60, "log_every": 1})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = bench_cmd("run", "--suite", str(suite), "--executor", "ray", "--cpus-per-trial", "0.5",
                     "--max-concurrent", "1", "--tracking-uri", uri, "--device", "cpu")
    runs_dir = tmp_path / "bench_runs" / "tiny-kill"
    proc = subprocess.Popen(args, cwd=tmp_path, env=child_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:   # one trial done, the other past a checkpoint
            done = list(runs_dir.glob("*/result.json"))
            partial = [p for p in runs_dir.glob("*/last.pt") if not (p.parent / "result.json").exists()]
            if done and partial and partial[0].stat().st_size and _saved_step(partial[0]) >= 4:
                break
            time.sleep(0.3)
        assert proc.poll() is None, "bench run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        stop_group(proc, signal.SIGKILL)
    state = {p.parent.name: sorted(f.name for f in p.parent.iterdir()) for p in runs_dir.glob("*/config.yaml")}
    partials = [p for p in runs_dir.glob("*/last.pt") if not (p.parent / "result.json").exists()]
    assert len(partials) == 1, state
    (partial,) = partials
    saved_step = _saved_step(partial)

    rerun_started = time.time() * 1000
    rerun = subprocess.Popen(args, cwd=tmp_path, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
    try:
        output, _ = rerun.communicate(timeout=300)
    finally:
        stop_group(rerun, signal.SIGKILL, wait=1)
    assert rerun.returncode == 0, output
    assert "1 finished, 1 skipped, 0 failed" in output
    client, exp = client_for(uri, "tiny-kill")
    runs = client.search_runs([exp])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}     # one run per hash, no duplicates
    resumed = next(r for r in runs if r.data.tags["run_dir"] == str(partial.parent))
    history = client.get_metric_history(resumed.info.run_id, "train/loss")
    after = [m.step for m in history if m.timestamp >= rerun_started]
    assert after and min(after) == saved_step + 2          # continued after the checkpoint, not from step 1
    assert saved_step + 2 > 5 and {m.step for m in history} == set(range(1, 61))
    assert not session_pids(proc.pid), "processes of the killed run are still alive"


def _saved_step(last_pt: Path) -> int:
    from benchmark.checkpoints import safe_load

    for _ in range(20):
        try:
            return int(safe_load(last_pt, map_location="cpu")["step"])
        except (EOFError, RuntimeError, ValueError):       # being replaced right now
            time.sleep(0.1)
    raise AssertionError(f"could not read {last_pt}")


@pytest.mark.slow
def test_two_node_cluster_with_a_tracking_server(tiny_card, tmp_path, monkeypatch):
    """A real head + worker Ray cluster on loopback and a real `bench server`: trials run on both nodes and
    log over HTTP; the cluster and the server are shut down whatever happens."""
    token = secrets.token_hex(16)
    env = child_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    gcs, mlflow_port = free_port(), free_port()
    common = ["--num-gpus", "0", "--num-cpus", "1", "--block",
              "--disable-usage-stats"]

    def node_ports() -> list[str]:
        return ["--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
                "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
                "--metrics-export-port", str(free_port()), "--runtime-env-agent-port", str(free_port())]

    ray_bin = str(Path(sys.executable).parent / "ray")
    head_tmp, worker_tmp = Path(f"/tmp/rh{gcs}"), Path(f"/tmp/rw{gcs}")   # short: Ray's socket paths have a limit
    procs = []
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("head", "worker", "server")}
    try:
        server = subprocess.Popen(bench_cmd("server", "--port", str(mlflow_port), "--workers", "1",
                                            "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                                            "--artifacts-destination", str(tmp_path / "artifacts")),
                                  cwd=tmp_path, env=env, stdout=logs["server"], stderr=subprocess.STDOUT,
                                  start_new_session=True)
        procs.append(server)
        procs.append(subprocess.Popen(
            [ray_bin, "start", "--head", "--port", str(gcs), "--temp-dir", str(head_tmp), "--include-dashboard",
             "false", *common, *node_ports()],
            cwd=tmp_path, env=env, stdout=logs["head"], stderr=subprocess.STDOUT, start_new_session=True))
        _wait_for(lambda: _alive_nodes(f"127.0.0.1:{gcs}", env) >= 1, 120, "head node", tmp_path / "head.log")
        procs.append(subprocess.Popen(
            [ray_bin, "start", "--address", f"127.0.0.1:{gcs}", "--temp-dir", str(worker_tmp),
             "--resources", json.dumps({"second_node": 1}), *common, *node_ports()],
            cwd=tmp_path, env=env, stdout=logs["worker"], stderr=subprocess.STDOUT, start_new_session=True))
        _wait_for(lambda: _alive_nodes(f"127.0.0.1:{gcs}", env) >= 2, 120, "worker node", tmp_path / "worker.log")
        _wait_for(lambda: _healthy(mlflow_port), 120, "mlflow server", tmp_path / "server.log")

        suite = write_suite(tmp_path, tiny_card, "tiny-cluster", ["supervised", "mean-teacher"], [0, 1])
        uri = f"http://127.0.0.1:{mlflow_port}"
        result = subprocess.run(bench_cmd("run", "--suite", str(suite), "--executor", "ray", "--ray-address",
                                          f"127.0.0.1:{gcs}", "--cpus-per-trial", "1", "--tracking-uri", uri,
                                          "--device", "cpu"),
                                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "4 finished" in result.stdout and "ray: 2 node(s)" in result.stdout
        client, exp = client_for(uri, "tiny-cluster")
        runs = client.search_runs([exp])
        assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
        per_node: dict[str, int] = {}
        for r in runs:
            per_node[r.data.tags["ray_node_id"]] = per_node.get(r.data.tags["ray_node_id"], 0) + 1
        print(f"trials per node: {sorted(per_node.values())}")
        assert len(per_node) == 2                                   # both nodes trained
        artifacts = client.list_artifacts(runs[0].info.run_id)
        assert "cases_last.csv" in {a.path for a in artifacts}
        assert list((tmp_path / "artifacts").rglob("cases_last.csv"))   # uploaded through the server
        assert (tmp_path / "server.db").stat().st_size > 0
    finally:
        for proc in reversed(procs):
            stop_group(proc)
        for f in logs.values():
            f.close()
    time.sleep(1)
    assert not pids_mentioning(str(head_tmp)) and not pids_mentioning(str(worker_tmp)), "Ray processes left"
    for folder in (head_tmp, worker_tmp):
        shutil.rmtree(folder, ignore_errors=True)


def _alive_nodes(address: str, env: dict[str, str]) -> int:
    code = ("import ray; ray.init(address=%r, logging_level='ERROR', log_to_driver=False); "
            "print(sum(n['Alive'] for n in ray.nodes()))" % address)
    try:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return 0
    try:
        return int(out.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return 0


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _wait_for(check, seconds: float, what: str, log: Path) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if check():
            return
        time.sleep(1)
    raise AssertionError(f"{what} did not come up within {seconds:.0f} s; its log:\n{log.read_text()[-3000:]}")
