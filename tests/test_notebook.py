"""A tiny suite trained once (CPU, 4 trials of 4 steps), then: `bench table --layout`, `bench plot`, and the
results notebook executed headless (its code cells run in order in one namespace, as a kernel would)."""
import json
import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from benchmark.cli import app

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "results.ipynb"
runner = CliRunner()


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_card):
    tmp = tmp_path_factory.mktemp("nb")
    suite = tmp / "tiny.yaml"
    suite.write_text(yaml.safe_dump({
        "name": "tiny-report", "description": "report test suite", "dataset": str(tiny_card), "labeled": [1, 3],
        "methods": ["supervised"], "seeds": [0, 1],
        "train": {"iterations": 4, "batch_size": 4, "labeled_batch_size": 2, "patch_size": 32, "eval_every": 2,
                  "checkpoint_every": 2, "log_every": 2, "num_workers": 0}}))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        out = runner.invoke(app, ["run", "--suite", str(suite), "--tracking-uri", uri, "--device", "cpu",
                                  "--work-dir", str(tmp / "runs")])
    finally:
        os.chdir(cwd)
    assert out.exit_code == 0, out.output
    return suite, uri, tmp


def test_table_layout_fills_the_papers_shape_from_the_store(store):
    suite, uri, _ = store
    out = runner.invoke(app, ["table", "--suite", str(suite), "--layout", "semsim-table1", "--stand-in", "acdc",
                              "--format", "markdown", "--tracking-uri", uri])
    assert out.exit_code == 0, out.output
    only_sup = next(line for line in out.output.splitlines() if line.startswith("| Only sup |"))
    cells = [c.strip() for c in only_sup.strip("|").split("|")]
    assert "(n=2)" in cells[1] and "paper 0.390" in cells[1]       # 1 patient, 2 seeds
    assert "(n=2)" in cells[3] and "paper 0.560" in cells[3]       # 3 patients
    assert cells[5] == "*0.797*"                                   # 7 patients: not run, published only
    assert "steps/s" in out.output and "standing in for acdc" in out.output
    tex = runner.invoke(app, ["table", "--suite", str(suite), "--layout", "semsim-table1", "--stand-in", "acdc",
                              "--format", "latex", "--show", "delta", "--tracking-uri", uri])
    assert tex.exit_code == 0 and r"\begin{tabular}" in tex.output and r"$\Delta$" in tex.output
    bad = runner.invoke(app, ["table", "--suite", str(suite), "--layout", "advmim-table2", "--stand-in", "la",
                              "--tracking-uri", uri])
    assert bad.exit_code == 2 and "valid: acdc, isic," in " ".join(bad.output.split())


def test_table_layout_without_a_suite_prints_the_published_table():
    out = runner.invoke(app, ["table", "--layout", "cml-table2", "--format", "csv"])
    assert out.exit_code == 0 and "88.53" in out.output
    out = runner.invoke(app, ["table", "--layout", "nope"])
    assert out.exit_code == 2 and "valid layouts" in out.output


def test_plot_kinds_write_files_and_log_them(store):
    suite, uri, tmp = store
    for kind in ("dice-vs-labeled", "seed-spread", "val-curves"):
        out = runner.invoke(app, ["plot", "--suite", str(suite), "--kind", kind, "--out-dir", str(tmp / "figs"),
                                  "--layout", "semsim-table1", "--stand-in", "acdc", "--tracking-uri", uri])
        assert out.exit_code == 0, out.output
        for ext in ("png", "pdf"):
            assert (tmp / "figs" / f"tiny-report-{kind}.{ext}").stat().st_size > 2000
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tiny-report/figures")
    assert len(client.search_runs([exp.experiment_id])) == 3
    sens = runner.invoke(app, ["plot", "--suite", str(suite), "--kind", "sensitivity", "--layout", "advmim-table3",
                               "--out-dir", str(tmp / "figs"), "--no-log", "--tracking-uri", uri])
    assert sens.exit_code == 1 and "mask_ratio" in sens.output      # no run varies it: a clear message


def test_results_notebook_executes_on_the_store(store, monkeypatch):
    suite, uri, tmp = store
    monkeypatch.setenv("BENCH_SUITE", str(suite))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("BENCH_FIG_DIR", str(tmp / "nbfigs"))
    nb = json.loads(NOTEBOOK.read_text())
    assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code")   # no outputs committed
    namespace: dict = {}
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), str(NOTEBOOK), "exec"), namespace)  # noqa: S102
    assert len(namespace["frame"]) == 4
    assert "Only sup" in namespace["layout_table"] and "(n=2)" in namespace["layout_table"]
    assert all(Path(p).stat().st_size > 2000 for p in namespace["paths"]) and len(namespace["paths"]) == 3
