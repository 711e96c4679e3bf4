"""The LA suites: `extends`, per-method protocols, every LA method at its reference settings, the LA tables."""
from pathlib import Path

import pytest
import yaml

from benchmark import catalog
from benchmark.config import ConfigError, load_suite
from benchmark.run.trials import expand, suite_protocol


def write(folder: Path, name: str, body: dict) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def test_extends_merges_train_protocol_and_the_per_method_tables_field_by_field(tmp_path):
    write(tmp_path, "base", {"name": "base", "dataset": "synthetic-la", "labeled": [3], "methods": ["supervised"],
                             "seeds": [0], "train": {"iterations": 10, "batch_size": 4},
                             "method_config": {"mean-teacher": {"consistency": 0.1, "ema_decay": 0.99}},
                             "method_protocol": {"mean-teacher": {"postprocess": "largest_component"}}})
    child = load_suite(write(tmp_path, "child", {
        "name": "child", "extends": "base", "labeled": [6], "train": {"iterations": 20},
        "method_config": {"mean-teacher": {"consistency": 0.3}}}))
    assert (child.name, child.labeled, child.dataset, child.seeds) == ("child", (6,), "synthetic-la", (0,))
    assert child.train == {"iterations": 20, "batch_size": 4}
    assert child.method_config == {"mean-teacher": {"consistency": 0.3, "ema_decay": 0.99}}
    assert child.method_protocol == {"mean-teacher": {"postprocess": "largest_component"}}


def test_extends_names_a_missing_base_and_a_cycle(tmp_path):
    with pytest.raises(ConfigError, match="extends 'nowhere'.*same folder"):
        load_suite(write(tmp_path, "a", {"name": "a", "extends": "nowhere"}))
    write(tmp_path, "b", {"name": "b", "extends": "c"})
    with pytest.raises(ConfigError, match="cycle"):
        load_suite(write(tmp_path, "c", {"name": "c", "extends": "b"}))


def test_method_protocol_changes_only_that_methods_evaluation():
    suite = catalog.get_suite("demo-3d")
    import dataclasses

    suite = dataclasses.replace(suite, method_protocol={"mean-teacher": {"postprocess": "largest_component"}})
    trials = {t.method: t for t in expand(suite, seeds=[0])}
    assert trials["mean-teacher"].protocol.postprocess == "largest_component"
    assert trials["supervised"].protocol.postprocess == "none"
    assert trials["mean-teacher"].protocol.scoring_hash != trials["supervised"].protocol.scoring_hash
    assert suite_protocol(suite, trials["supervised"].card, "mean-teacher").postprocess == "largest_component"
    bad = dataclasses.replace(suite, method_protocol={"mean-teacher": {"postprocess": "erode"}})
    with pytest.raises(ConfigError, match="method_protocol.mean-teacher.postprocess"):
        expand(bad, seeds=[0])


@pytest.mark.slow
def test_tables_take_each_run_under_its_methods_protocol_and_show_smoke_runs_only_when_asked(tmp_path):
    """Two methods, one with its own `method_protocol`; one step each, one test case (smoke runs)."""
    from typer.testing import CliRunner

    from benchmark.cli import app

    body = yaml.safe_load((Path(catalog.__file__).parent / "suites" / "demo-3d.yaml").read_text())
    body.update(name="demo-3d-mp", labeled=[4],   # 4 scans: fills CML Table 1's "4 (5%)" cells with --stand-in la
                method_protocol={"mean-teacher": {"postprocess": "largest_component"}})
    suite = write(tmp_path, "demo-3d-mp", body)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runner = CliRunner()
    run = runner.invoke(app, ["run", "--suite", str(suite), "--iterations", "1", "--test-cases", "1", "--executor",
                              "local", "--device", "cpu", "--tracking-uri", uri, "--work-dir", str(tmp_path / "runs")])
    assert run.exit_code == 0, run.output
    plain = runner.invoke(app, ["table", "--suite", str(suite), "--tracking-uri", uri])
    assert plain.exit_code == 1 and "2 smoke run(s)" in plain.output and "--smoke shows them" in plain.output
    smoke = runner.invoke(app, ["table", "--suite", str(suite), "--tracking-uri", uri, "--smoke"])
    assert smoke.exit_code == 0, smoke.output
    assert "SMOKE RUNS, NOT RESULTS (1 iteration(s), 1 test case(s))" in smoke.output
    assert "mean-teacher: postprocess largest_component" in smoke.output
    rows = [line for line in smoke.output.splitlines() if line.startswith("|")]
    assert any("supervised" in r for r in rows) and any("mean-teacher" in r for r in rows)
    # a layout may take several suites (LA: la-5pct, la-10pct, la-full fill one table); each states its protocol
    both = runner.invoke(app, ["table", "--layout", "cml-table1", "--stand-in", "la", "--suite", f"{suite},demo-3d",
                               "--tracking-uri", uri, "--smoke", "--no-significance"])
    assert both.exit_code == 0, both.output
    assert "no finished runs for suite 'demo-3d'" in both.output
    assert "suite demo-3d-mp on synthetic-la, protocol: SMOKE RUNS" in both.output
    assert "suite demo-3d on synthetic-la, protocol:" in both.output
    assert "W!/L!]" in both.output            # our rules by default; CML's LA code scores empty classes 0 and
    paper = runner.invoke(app, ["table", "--layout", "cml-table1", "--stand-in", "la", "--suite", str(suite),
                                "--tracking-uri", uri, "--smoke", "--no-significance", "--rules", "paper"])
    assert paper.exit_code == 0, paper.output  # selects on the test list: re-scored from the per-case rows,
    assert "Z*/L!]" in paper.output and "W!/" not in paper.output   # the checkpoint only flagged
    no_layout = runner.invoke(app, ["table", "--suite", str(suite), "--tracking-uri", uri, "--rules", "paper"])
    assert no_layout.exit_code != 0 and "--rules paper needs --layout" in no_layout.output
