"""`bench data check` (benchmark.data.check.check_dataset) and the data column of `bench ls datasets`.

Fixtures are tiny prepared layouts written in tmp_path by tests/test_promise12_brats.py's writers; every number
the report must print is computed here from what was written.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
from typer.testing import CliRunner

from benchmark.cli import app
from benchmark.config import ConfigError
from benchmark.data.check import check_dataset
from test_promise12_brats import PROMISE_TEST, PROMISE_VAL, card_copy, write_brats, write_h5, write_promise12

runner = CliRunner()


def line_of(report: str, start: str) -> str:
    """The one report line that starts with `start` (indentation included: split rows have none, the label
    values and labeled settings two spaces)."""
    (line,) = [ln for ln in report.splitlines() if ln.startswith(start)]
    return line


@pytest.fixture
def promise(tmp_path):
    slices = {"Case00": 3, "Case01": 4, "Case02": 2}
    written = write_promise12(tmp_path, slices)
    card = card_copy("promise12", tmp_path / "cards", pinned={"val": PROMISE_VAL, "test": PROMISE_TEST})
    return tmp_path, card, slices, written


def test_promise12_report_counts_shapes_labels_and_settings(promise):
    root, card, slices, written = promise
    report = check_dataset(str(card), root)
    assert report.startswith(f"dataset promise12 (ssl4mis-h5, 2D) at {root / 'PROMISE12'}")
    assert "classes: 0 background, 1 prostate" in report
    assert re.search(r"pinned lists: val = .*val.list, test = .*test.list \(equal\)", report)
    assert line_of(report, "train ").split()[:6] == ["train", "train_slices.list", "9", "3", "8", "x"]
    assert line_of(report, "val ").split()[:4] == ["val", "val.list", "5", "5"]
    assert line_of(report, "test ").split()[:4] == ["test", "test.list", "10", "10"]
    assert "2 x 8 x 8" in line_of(report, "val ")            # eval volumes (S, H, W)
    assert "the files record no spacing; the card scores HD95 / ASD in voxels" in report
    for split in ("train", "val", "test"):
        labels = list(written[split].values())
        total = sum(a.size for a in labels)
        fg = int(sum(a.sum() for a in labels))
        expected = (f"{split:<6} 0 background: {total - fg} ({100 * (total - fg) / total:.2f} %), "
                    f"1 prostate: {fg} ({100 * fg / total:.2f} %)")
        assert expected in report, (expected, report)
    rows = [name for name in written["train"]]
    fg1 = sum(bool(written["train"][n].any()) for n in rows[:3])
    fg2 = sum(bool(written["train"][n].any()) for n in rows[:7])
    assert line_of(report, "  1 patient(s) (3%)").endswith(f"3 slices (33.3 % of 9), {fg1} with foreground")
    assert line_of(report, "  2 patient(s) (7%)").endswith(f"7 slices (77.8 % of 9), {fg2} with foreground")
    assert "35 patient(s) (full): not available, the training list holds 3 patient(s)" in report


def test_brats_report_shape_ranges_per_axis_and_frequencies(tmp_path):
    shapes = {"train": {"a": (5, 6, 7), "b": (6, 6, 8), "c": (4, 9, 7)}, "val": {"v": (4, 7, 7)},
              "test": {"t": (5, 5, 5)}}
    written = write_brats(tmp_path, shapes)
    card = card_copy("brats2019", tmp_path / "cards", pinned={}, labeled={"unit": "case", "aliases": {"one": 1}})
    report = check_dataset(str(card), tmp_path)
    assert report.startswith("dataset brats2019 (h5-volumes, 3D)")
    train = line_of(report, "train ")
    assert train.split()[:4] == ["train", "train.txt", "3", "3"]
    assert "4..6 x 6..9 x 7..8" in train                       # min..max of each axis over a, b, c
    assert "4 x 7 x 7" in line_of(report, "val ") and "5 x 5 x 5" in line_of(report, "test ")
    for split, cases in written.items():
        fg = int(sum(a.sum() for a in cases.values()))
        total = sum(a.size for a in cases.values())
        assert f"1 whole tumour: {fg} ({100 * fg / total:.2f} %)" in line_of(report, f"  {split} ")
    fg_a = int(written["train"]["a"].any())
    assert line_of(report, "  1 case(s) (one)").endswith(f"1 rows (33.3 % of 3), {fg_a} with foreground")
    assert "pinned lists: none" in report


def test_a_labeled_setting_without_foreground_is_flagged(tmp_path):
    shapes = {"train": {"a": (4, 4, 4), "b": (4, 4, 4)}, "val": {"v": (4, 4, 4)}, "test": {"t": (4, 4, 4)}}
    write_brats(tmp_path, shapes)
    write_h5(tmp_path / "BraTS2019" / "data" / "a.h5", image=np.zeros((4, 4, 4), np.float32),
             label=np.zeros((4, 4, 4), np.uint8))
    card = card_copy("brats2019", tmp_path / "cards", pinned={}, labeled={"unit": "case", "aliases": {"one": 1}})
    assert "0 with foreground  NO FOREGROUND: bench run refuses this setting" in check_dataset(str(card), tmp_path)


def test_broken_layouts_raise_one_clear_error(promise):
    root, card, slices, written = promise
    with pytest.raises(ConfigError, match=r"folder .*/elsewhere/PROMISE12 not found"):
        check_dataset(str(card), root / "elsewhere")
    (root / "PROMISE12" / "val.list").unlink()
    with pytest.raises(ConfigError, match=r"splits.val: split list .*PROMISE12/val.list not found"):
        check_dataset(str(card), root)
    (root / "PROMISE12" / "val.list").write_text("\n".join(PROMISE_VAL[:4]))
    with pytest.raises(ConfigError, match=r"val list \(val.list\) differs from the pinned copy"):
        check_dataset(str(card), root)
    (root / "PROMISE12" / "val.list").write_text("\n".join(PROMISE_VAL))
    (root / "PROMISE12" / "data" / "Case41.h5").unlink()
    with pytest.raises(ConfigError, match=r"1 of 10 eval file\(s\) named by test.list are missing, e.g. .*Case41.h5"):
        check_dataset(str(card), root)
    (root / "PROMISE12" / "data" / "Case41.h5").write_bytes(b"\x89HDF truncated")
    with pytest.raises(ConfigError, match=r"Case41.h5: cannot be read as HDF5"):
        check_dataset(str(card), root)
    write_h5(root / "PROMISE12" / "data" / "Case41.h5", image=np.zeros((2, 8, 8), np.float32),
             label=np.full((2, 8, 8), 3, np.uint8))
    with pytest.raises(ConfigError, match=r"Case41.h5: label value 3 is outside the card's 2 classes"):
        check_dataset(str(card), root)


def test_a_table_the_list_contradicts_is_an_error(promise):
    root, card, slices, written = promise
    import yaml

    raw = yaml.safe_load(card.read_text())
    raw["labeled"]["table"] = {1: 4}                            # Case00 has 3 slices
    card.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"labeled.table says 1 patients = 4 slices but train_slices.list gives 3"):
        check_dataset(str(card), root)


def test_bench_data_check_prints_the_report_or_one_error_line(promise):
    root, card, slices, written = promise
    ok = runner.invoke(app, ["data", "check", "promise12", "--data-root", str(root)])   # the shipped card by name
    assert ok.exit_code == 0, ok.output
    assert "2 patient(s) (7%): 7 slices" in ok.output and "pinned lists: val = " in ok.output
    bad = runner.invoke(app, ["data", "check", "promise12", "--data-root", str(root / "nowhere")])
    assert bad.exit_code == 2                                    # the CLI's _fail code
    assert bad.output.strip().startswith("error:") and "not found" in bad.output
    unknown = runner.invoke(app, ["data", "check", "no-such-card"])
    assert unknown.exit_code == 2 and "promise12" in unknown.output   # the valid names are listed


# ----------------------------------------------------------------------------------- bench ls datasets
def test_bench_ls_datasets_says_where_the_data_is(tmp_path, monkeypatch):
    from benchmark import cli

    (tmp_path / "PROMISE12").mkdir()
    (tmp_path / "PROMISE12" / "train_slices.list").write_text("Case00_slice_0\n")
    (tmp_path / "LA").mkdir()                                   # a root without its list: incomplete
    monkeypatch.setenv("BENCH_DATA_ROOT", str(tmp_path))
    monkeypatch.setattr(cli.console, "width", 400)              # one row per line: no wrapping in the table
    out = runner.invoke(app, ["ls", "datasets"])
    assert out.exit_code == 0, out.output
    rows: dict[str, str] = {}                                   # name -> its description cell, lines joined
    current = None
    for line in out.output.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) != 4:
            continue
        current = cells[1] or current
        rows[current] = f"{rows.get(current, '')} {cells[2]}".strip()
    for name in ("acdc", "la", "synapse", "isic", "promise12", "brats2019", "synthetic-acdc", "synthetic-la",
                 "synthetic-skin"):
        assert name in rows, (name, out.output)
    assert f"data: present at {tmp_path / 'PROMISE12'}" in rows["promise12"]
    assert f"data: not found under {tmp_path} (expects BraTS2019/)" in rows["brats2019"]
    assert f"data: incomplete at {tmp_path / 'LA'} (no train.list) - `bench data check la`" in rows["la"]
    assert "README, 'Real data'" in rows["acdc"] or "bench data prepare acdc" in rows["acdc"]
    for name in ("synthetic-acdc", "synthetic-la", "synthetic-skin"):
        assert "synthetic: generated on first use" in rows[name]
