"""MLflow glue: the only module that imports mlflow.

One experiment per suite, one run per trial, tagged with the trial's config hash. A hash with a FINISHED
run is never trained again; an unfinished run with that hash is reused when the trial resumes. Every run is
also tagged with how it was trained (`training_tags`): `precision` (bf16 | fp32, resolved on its device; every
reference trains in fp32) and, when it trains a Swin-UNet, `pretrained` (imagenet | none | file name) and
`pretrained_sha256` of the file it started from.

Two rules keep the store honest after a crash:
- **Stale runs.** Opening the store (`Tracker(...)`: `bench run`, `bench table`, `bench tune`) marks each
  RUNNING run FAILED ("process died ...", host, pid, last logged step) when its run dir's lock is free and,
  for a run of this host, its process is gone (`fail_stale`). A run dir this machine cannot see is left as it
  is. The next `bench run` of that trial reuses the FAILED run and resumes from its last checkpoint.
- **Honest time.** Each attempt at a run (the first, and every resume) logs its seconds so far as the metric
  `attempt_seconds` at step = attempt number (0, 1, ...), at most every `ATTEMPT_LOG_S` seconds and at its end;
  a FINISHED run logs their sum as `run_seconds`, which `bench table` reports as hours (an attempt killed by
  SIGKILL counts up to its last log).
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark import REPO_ROOT, __version__


def default_tracking_uri(override: str | None = None) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else sqlite file mlflow.db in the working directory."""
    uri = override or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def _artifact_location(uri: str) -> str | None:
    """Artifacts beside a local sqlite store (mlartifacts/), else the server's default."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()
    return None


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def param_key(key: str) -> str:
    """An MLflow-legal parameter name: '%' becomes 'pct', other illegal characters '_'."""
    return re.sub(r"[^\w\-. :/]", "_", key.replace("%", "pct"))


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {'a.b.c': 'value'} with MLflow-legal keys."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = param_key(f"{prefix}{k}")
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)
    return out


#: the experiment tag MLflow 3's UI reads to choose its view, and the value that opens on the runs table
EXPERIMENT_KIND, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"


class Tracker:
    """An MLflow experiment (one per suite) reached through MlflowClient."""

    def __init__(self, experiment: str, tracking_uri: str | None = None) -> None:
        import logging

        from mlflow.tracking import MlflowClient

        logging.getLogger("alembic").setLevel(logging.WARNING)
        self.uri = default_tracking_uri(tracking_uri)
        self.client = MlflowClient(self.uri)
        self.experiment, self.experiment_id = experiment, self._experiment_id(experiment)
        self.stale = self.fail_stale()

    def _experiment_id(self, name: str) -> str:
        """The experiment `name`, created when missing, tagged as a model-training experiment: MLflow 3's UI
        otherwise opens an untagged experiment on its GenAI traces overview, where no run is shown."""
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            return self.client.create_experiment(name, artifact_location=_artifact_location(self.uri),
                                                 tags={EXPERIMENT_KIND: TRAINING_KIND})
        if exp.tags.get(EXPERIMENT_KIND) != TRAINING_KIND:
            self.client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND, TRAINING_KIND)
        return exp.experiment_id

    def runs(self, config_hash: str | None = None, status: str | None = None) -> list:
        filters = []
        if config_hash:
            filters.append(f"tags.config_hash = '{config_hash}'")
        if status:
            filters.append(f"attributes.status = '{status}'")
        return self.client.search_runs([self.experiment_id], filter_string=" and ".join(filters),
                                       order_by=["attributes.start_time DESC"])

    def search(self, filter_string: str = "", order_by: list[str] | None = None) -> list:
        """Runs of the experiment matching an MLflow filter (e.g. "tags.`tune.role` = 'study'")."""
        return self.client.search_runs([self.experiment_id], filter_string=filter_string, order_by=order_by)

    def run(self, run_id: str) -> "TrackedRun":
        """A handle on one run of the store (read it with `.get()`, change it with the TrackedRun methods)."""
        return TrackedRun(self.client, run_id)

    def create_run(self, name: str, tags: dict[str, str]) -> "TrackedRun":
        """A new RUNNING run in the experiment (no params; trials use `open_run`)."""
        return TrackedRun(self.client, self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id)

    def finished_run_id(self, config_hash: str) -> str | None:
        found = self.runs(config_hash, "FINISHED")
        return found[0].info.run_id if found else None

    def open_run(self, name: str, config_hash: str, tags: dict[str, str], params: dict[str, Any]) -> "TrackedRun":
        """Reuse the newest unfinished run of this hash (a resume), else create one. A run that `--force`
        superseded is history, never resumed: a forced retrain gets a run of its own. `training_tags` of the
        resolved config `params` on `tags["device"]` are added (the caller's tags win)."""
        tags = {**training_tags(params, tags.get("device", "")), **tags, "config_hash": config_hash}
        previous = [r for r in self.runs(config_hash)
                    if r.info.status != "FINISHED" and r.data.tags.get("superseded") != "true"]
        if previous:
            run_id = previous[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
        else:
            run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
            run_id = run.info.run_id
            from mlflow.entities import Param

            items = [Param(k, v[:6000]) for k, v in flatten(params).items()]
            for i in range(0, len(items), 100):
                self.client.log_batch(run_id, params=items[i:i + 100])
        for k, v in tags.items():
            self.client.set_tag(run_id, k, v)
        attempts = {m.step for m in self.client.get_metric_history(run_id, "attempt_seconds")} if previous else set()
        return TrackedRun(self.client, run_id, attempt=max(attempts, default=-1) + 1)

    def fail_stale(self) -> list[str]:
        """Mark FAILED every RUNNING run of the experiment with no process behind it: its run dir's lock is
        free and, when the run's worker is this host, its pid is gone. Returns their run ids."""
        from benchmark.run.locks import lock_is_free, pid_alive

        stale = []
        for r in self.runs(status="RUNNING"):
            tags = r.data.tags
            host, _, pid = tags.get("worker", "").rpartition(":")
            if not tags.get("run_dir") or not lock_is_free(Path(tags["run_dir"])):
                continue
            if host == socket.gethostname() and pid.isdigit() and pid_alive(int(pid)):
                continue
            steps = [m.step for m in self.client.get_metric_history(r.info.run_id, "train/loss")]
            self.run(r.info.run_id).fail(
                f"process died (pid {pid or '?'} on {host or '?'}) after step {max(steps, default=0)}; "
                f"run the same command again to resume from its last checkpoint")
            stale.append(r.info.run_id)
        return stale

    def fail_unfinished(self, config_hash: str, reason: str) -> int:
        """Mark this hash's RUNNING runs FAILED with `reason` (their process died); returns how many."""
        stuck = self.runs(config_hash, "RUNNING")
        for r in stuck:
            self.run(r.info.run_id).fail(reason)
        return len(stuck)

    def finished_frame(self) -> pd.DataFrame:
        """All FINISHED runs of the experiment: tags.*, params.*, metrics.* columns (mlflow.search_runs)."""
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        return mlflow.search_runs(experiment_ids=[self.experiment_id], filter_string="attributes.status = 'FINISHED'")


    def companion_frame(self, suffix: str) -> pd.DataFrame:
        """FINISHED runs of the companion experiment '<suite>/<suffix>' (e.g. 'tune'); empty when it does not exist."""
        import mlflow

        exp = self.client.get_experiment_by_name(f"{self.experiment}/{suffix}")
        if exp is None:
            return pd.DataFrame()
        mlflow.set_tracking_uri(self.uri)
        return mlflow.search_runs(experiment_ids=[exp.experiment_id], filter_string="attributes.status = 'FINISHED'")

    def metric_history(self, run_ids: list[str], key: str) -> pd.DataFrame:
        """run_id, step, value of metric `key` (e.g. 'val/dice') over each run's training."""
        rows = [{"run_id": rid, "step": m.step, "value": m.value}
                for rid in run_ids for m in self.client.get_metric_history(rid, key)]
        return pd.DataFrame(rows, columns=["run_id", "step", "value"])

    def log_figures(self, paths: list[Path], kind: str) -> str:
        """Log figure files to a run in the companion experiment '<suite>/figures' (kept out of the suite's
        experiment so that tables never see it); returns the run id."""
        exp_id = self._experiment_id(f"{self.experiment}/figures")
        run = self.client.create_run(exp_id, run_name=kind, tags={"kind": kind, "suite": self.experiment})
        for path in paths:
            self.client.log_artifact(run.info.run_id, str(path))
        self.client.set_terminated(run.info.run_id, "FINISHED")
        return run.info.run_id


ATTEMPT_LOG_S = 30.0   # the most seconds between two `attempt_seconds` logs of a training run


class TrackedRun:
    """One MLflow run: metrics in batches, artifacts, terminal status, and the seconds of this attempt
    (`attempt`: 0 for a new run, n for its n-th resume)."""

    def __init__(self, client, run_id: str, attempt: int = 0) -> None:
        self.client, self.run_id, self.attempt = client, run_id, attempt
        self._last_time_log = float("-inf")

    def log_attempt_seconds(self, seconds: float, force: bool = False) -> None:
        """This attempt's seconds so far, as `attempt_seconds` at step `attempt` (throttled unless `force`)."""
        now = time.monotonic()
        if force or now - self._last_time_log >= ATTEMPT_LOG_S:
            self._last_time_log = now
            self.log_metrics({"attempt_seconds": seconds}, self.attempt)

    def run_seconds(self) -> float:
        """The seconds of every attempt (the largest value logged at each attempt step), summed."""
        most: dict[int, float] = {}
        for m in self.client.get_metric_history(self.run_id, "attempt_seconds"):
            most[m.step] = max(m.value, most.get(m.step, 0.0))
        return float(sum(most.values()))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def get(self):
        """The run as the store holds it now (mlflow Run: `.info.status`, `.data.tags`, `.data.metrics`)."""
        return self.client.get_run(self.run_id)

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, v)

    def delete_tag(self, key: str) -> None:
        self.client.delete_tag(self.run_id, key)

    def reopen(self) -> None:
        """Back to RUNNING (a resumed study's parent run)."""
        self.client.update_run(self.run_id, status="RUNNING")

    def kill(self, reason: str | None = None) -> None:
        """Mark KILLED (stopped on purpose: pruned, superseded, a driver interrupted), with `reason` if given."""
        if reason:
            self.client.set_tag(self.run_id, "failure_reason", reason[:5000])
        self.client.set_terminated(self.run_id, "KILLED")

    def log_artifact(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def finish(self, seconds: float | None = None) -> None:
        """Mark FINISHED; with `seconds` (this attempt's), log it and `run_seconds`, the sum of all attempts."""
        if seconds is not None:
            self.log_attempt_seconds(seconds, force=True)
            self.log_metrics({"run_seconds": self.run_seconds()}, self.attempt)
        self.client.set_terminated(self.run_id, "FINISHED")

    def fail(self, reason: str) -> None:
        self.client.set_tag(self.run_id, "failure_reason", reason[:5000])
        self.client.set_terminated(self.run_id, "FAILED")


def open_existing_run(run_id: str, tracking_uri: str | None = None) -> tuple["TrackedRun", Path]:
    """A finished trial's run and its run dir (tag `run_dir`), for `bench eval`."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from benchmark.config import ConfigError

    client = MlflowClient(default_tracking_uri(tracking_uri))
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise ConfigError(f"no MLflow run {run_id!r} in {default_tracking_uri(tracking_uri)}: {exc.message}") from None
    run_dir = run.data.tags.get("run_dir")
    if not run_dir:
        raise ConfigError(f"run {run_id} has no run_dir tag (made by an older harness); use --checkpoint FILE")
    return TrackedRun(client, run_id), Path(run_dir)


def training_tags(resolved: dict[str, Any], device: str) -> dict[str, str]:
    """How a trial (its resolved config) trains on `device` ('cpu', 'cuda:0 (NVIDIA ...)'): `precision` as the
    Trainer resolves `train.amp` there (bf16 autocast on CUDA with amp auto, else fp32), and for a trial with
    a Swin-UNet `pretrained` (imagenet | none | the file's name) and `pretrained_sha256` (the file's digest)."""
    from benchmark.config import resolved_precision
    from benchmark import weights

    amp = str((resolved.get("train") or {}).get("amp", "auto"))
    out = {"precision": resolved_precision(amp, device.split(" ")[0] if device else "")}
    value = weights.trial_weights(resolved)
    if value is not None:
        out["pretrained"] = weights.tag_value(value)
        path = weights.locate(value)
        if path is not None and path.is_file():
            out["pretrained_sha256"] = weights.file_digest(path)
    return out


def harness_tags() -> dict[str, str]:
    return {"git_commit": git_commit(), "harness_version": __version__}


def launch_ui(tracking_uri: str | None, port: int) -> int:
    """`mlflow ui` on 127.0.0.1 for this tracking store (blocks until interrupted); first prints each suite's
    runs page (`#/experiments/<id>/runs`: MLflow 3 opens an experiment on its GenAI traces overview otherwise)."""
    import sys

    uri = default_tracking_uri(tracking_uri)
    for url in ui_run_pages(uri, port):
        print(url)

    # this interpreter's mlflow (a venv's `mlflow` script need not be on PATH)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)]
    print(f"MLflow UI for {uri} at http://127.0.0.1:{port}  (Ctrl-C to stop)")
    return subprocess.call(cmd)


def ui_run_pages(tracking_uri: str, port: int) -> list[str]:
    """'<suite>: http://127.0.0.1:<port>/#/experiments/<id>/runs' for every experiment of the store but Default."""
    from mlflow.tracking import MlflowClient

    exps = MlflowClient(tracking_uri).search_experiments()
    return [f"{e.name}: http://127.0.0.1:{port}/#/experiments/{e.experiment_id}/runs" for e in exps if e.name != "Default"]


def server_command(port: int, backend_store_uri: str | None = None, artifacts_destination: str | Path = "mlartifacts",
                   workers: int = 2, host: str = "127.0.0.1") -> list[str]:
    """`mlflow server` with a database backend and a served artifact root (artifacts go through the server)."""
    import sys

    backend = backend_store_uri or f"sqlite:///{Path.cwd().resolve() / 'mlflow-server.db'}"
    if backend.startswith(("file:", "./")) or "://" not in backend:
        from benchmark.config import ConfigError

        raise ConfigError(f"--backend-store-uri {backend!r}: give a database URI (sqlite:////abs/path.db, "
                          "postgresql://...); MLflow 3 refuses the file store")
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
            "--artifacts-destination", Path(artifacts_destination).resolve().as_uri(), "--serve-artifacts",
            "--host", host, "--port", str(port), "--workers", str(workers)]


def launch_server(port: int, backend_store_uri: str | None, artifacts_destination: str | Path, workers: int) -> int:
    """Run the tracking server in the foreground until Ctrl-C."""
    cmd = server_command(port, backend_store_uri, artifacts_destination, workers)
    print(f"MLflow tracking server: backend {cmd[cmd.index('--backend-store-uri') + 1]}, artifacts "
          f"{cmd[cmd.index('--artifacts-destination') + 1]}\n"
          f"log to it with: bench run --tracking-uri http://127.0.0.1:{port} ...  (Ctrl-C to stop)", flush=True)
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:
        return 0
