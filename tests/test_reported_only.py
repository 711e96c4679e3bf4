"""`bench ls methods --all`: the seed-table methods without an implementation, listed as "reported only"."""
import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from benchmark import REPO_ROOT, catalog
from benchmark.cli import app
from benchmark.config import ConfigError

# the seed papers' markdown copies: $BENCH_PAPERS_DIR, else ../shared/papers beside the repository
PAPERS = Path(os.environ.get("BENCH_PAPERS_DIR") or Path(REPO_ROOT).parent / "shared" / "papers")
ISSUE_NAMES = {"s4cvnet", "medfct", "cnt-b", "diffrect", "cpc-sam", "m-cnt"}


def test_the_file_is_complete_and_names_no_implemented_method():
    entries = catalog.reported_only()
    names = {e["name"] for e in entries}
    assert ISSUE_NAMES <= names
    stale = names & set(catalog.methods().names())
    assert not stale, f"implemented now, delete from methods/reported_only.yaml: {sorted(stale)}"
    for e in entries:
        assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", e["name"]), e["name"]
        assert e["paper"] and e["citation"] and e["tables"]


@pytest.mark.skipif(not PAPERS.is_dir(), reason="the seed papers' markdown copies are not on this machine")
def test_every_entry_appears_in_a_seed_table():
    text = "\n".join(p.read_text() for p in PAPERS.glob("*.md")).lower().replace("-", "")
    for e in catalog.reported_only():
        assert e["display"].lower().replace("-", "") in text, e["display"]


def test_describe_lists_them_only_when_asked():
    plain = dict(catalog.describe("methods"))
    full = dict(catalog.describe("methods", reported=True))
    assert "medfct" not in plain and full["medfct"].startswith("reported only: MedFCT")
    assert set(plain) < set(full) and "bcp" in full and not full["bcp"].startswith("reported only")


def test_cli_all_flag():
    runner = CliRunner()
    wide = {"COLUMNS": "200"}
    plain = runner.invoke(app, ["ls", "methods"], env=wide)
    full = runner.invoke(app, ["ls", "methods", "--all"], env=wide)
    assert plain.exit_code == 0 and full.exit_code == 0, full.output
    assert "m-cnt" not in plain.output and "m-cnt" in full.output and "reported only: M-CnT" in full.output


def test_bad_files_get_a_message_naming_the_file(tmp_path):
    bad = tmp_path / "reported_only.yaml"
    bad.write_text("- name: x\n  display: X\n  paper: P\n")
    with pytest.raises(ConfigError, match="entry 1 lacks citation"):
        catalog.reported_only(bad)
    bad.write_text("- {name: x, display: X, paper: P, citation: C}\n- {name: x, display: Y, paper: P, citation: C}\n")
    with pytest.raises(ConfigError, match="names repeat"):
        catalog.reported_only(bad)
