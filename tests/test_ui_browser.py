"""`bench ui` in a real browser: a tiny tracked suite, the MLflow UI on a free port of 127.0.0.1, the pages
headless Chromium renders (after their scripts ran) list the suite's runs and a run's tags. Skips where no
Chromium is found (`.ci/run` installs Debian's)."""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from benchmark.cli import app

BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chromium here (Debian: apt-get install chromium; "
                                                        ".ci/run installs it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rendered_text(url: str, profile: Path) -> str:
    """The page's text after its scripts ran (--dump-dom with a virtual time budget)."""
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=20000", "--dump-dom", url]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text))


def test_the_ui_shows_the_suites_runs_and_their_tags(tmp_path, tiny_card, monkeypatch):
    monkeypatch.chdir(tmp_path)
    suite = tmp_path / "uisuite.yaml"
    suite.write_text(yaml.safe_dump({
        "name": "uisuite", "description": "browser test", "dataset": str(tiny_card), "labeled": [3],
        "methods": ["supervised"], "seeds": [0],
        "train": {"iterations": 2, "batch_size": 4, "labeled_batch_size": 2, "patch_size": 32, "eval_every": 2,
                  "checkpoint_every": 2, "log_every": 1, "num_workers": 0}}))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ran = CliRunner().invoke(app, ["run", "--suite", str(suite), "--tracking-uri", uri, "--device", "cpu",
                                   "--executor", "local"])
    assert ran.exit_code == 0, ran.output
    from mlflow.tracking import MlflowClient

    run = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("uisuite").experiment_id])[0]

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "benchmark.cli", "ui", "--port", str(port), "--tracking-uri", uri],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        printed = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:        # the printed runs page, then the server answering
            line = server.stdout.readline()
            printed.append(line)
            if "Uvicorn running" in line or "Listening at" in line or server.poll() is not None:
                break
        page = next((l.split(": ", 1)[1].strip() for l in printed if l.startswith("uisuite: http")), None)
        assert page == f"http://127.0.0.1:{port}/#/experiments/{run.info.experiment_id}/runs", printed
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(1)
        listing = rendered_text(page, tmp_path / "profile")
        assert "uisuite" in listing and run.info.run_name in listing, listing[:2000]
        assert run.info.run_name == "supervised-3p-s0"        # trial name = method, labeled patients, seed
        detail = rendered_text(f"{page}/{run.info.run_id}", tmp_path / "profile2")
        for shown in ("config_hash", run.data.tags["config_hash"], "labeled_patients", "method", "seed"):
            assert shown in detail, (shown, detail[:3000])
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
