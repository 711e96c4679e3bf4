"""PROMISE12 and BraTS2019: the h5-volumes reader, the two cards, their suites, a 2-iteration BraTS training.

Every fixture is written here, in tmp_path, in the prepared layouts the cards read (datasets/promise12.yaml:
the SSL4MIS h5 layout; datasets/brats2019.yaml: data/<ID>.h5). `write_promise12` / `write_brats` are also used
by tests/test_data_check.py.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from benchmark import catalog
from benchmark.config import DATASETS_DIR, ConfigError, load_card
from benchmark.data.formats import READERS, H5Volumes, open_reader

PROMISE_VAL = [f"Case{i:02d}" for i in range(35, 40)]    # chy-upc/ABD@4efd525 data/promise12/val.list
PROMISE_TEST = [f"Case{i:02d}" for i in range(40, 50)]   # ... test.list


def write_h5(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)


def card_copy(name: str, folder: Path, pinned: dict[str, list[str]] | None = None, **changes) -> Path:
    """The repo's card `name` as a YAML in `folder`, with `changes`; `pinned` writes the pinned lists it names
    beside the copy (pinned paths are relative to the card's folder), `pinned={}` drops them."""
    raw = yaml.safe_load((DATASETS_DIR / f"{name}.yaml").read_text())
    raw.update(changes)
    if pinned is not None:
        for split, names in pinned.items():
            target = folder / raw["pinned_lists"][split]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("\n".join(names))   # ABD's lists have no trailing newline
        raw["pinned_lists"] = {s: raw["pinned_lists"][s] for s in pinned}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def write_promise12(data_root: Path, slices: dict[str, int], size: int = 8, seed: int = 0,
                    train_cases: list[str] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """The PROMISE12 layout under data_root/PROMISE12: train cases `slices` (name -> slice count) as slice files,
    every case (train, PROMISE_VAL, PROMISE_TEST; eval cases 2 slices) as a volume. Returns what was written:
    {"train": {slice name: label}, "val": {case: label}, "test": {case: label}}."""
    rng = np.random.default_rng(seed)
    root = data_root / "PROMISE12"
    written: dict[str, dict[str, np.ndarray]] = {"train": {}, "val": {}, "test": {}}
    rows = []
    for case, count in slices.items():
        image = rng.random((count, size, size), dtype=np.float32)
        label = (rng.random((count, size, size)) > 0.7).astype(np.uint8)
        write_h5(root / "data" / f"{case}.h5", image=image, label=label)
        for z in range(count):
            name = f"{case}_slice_{z}"
            write_h5(root / "data" / "slices" / f"{name}.h5", image=image[z], label=label[z])
            written["train"][name] = label[z]
            rows.append(name)
    for split, cases in (("val", PROMISE_VAL), ("test", PROMISE_TEST)):
        for case in cases:
            image = rng.random((2, size, size), dtype=np.float32)
            label = (rng.random((2, size, size)) > 0.5).astype(np.uint8)
            write_h5(root / "data" / f"{case}.h5", image=image, label=label)
            written[split][case] = label
    (root / "train_slices.list").write_text("\n".join(rows) + "\n")
    (root / "train.list").write_text("\n".join(train_cases or list(slices)) + "\n")
    (root / "val.list").write_text("\n".join(PROMISE_VAL))
    (root / "test.list").write_text("\n".join(PROMISE_TEST))
    return written


def write_brats(data_root: Path, shapes: dict[str, dict[str, tuple[int, int, int]]], seed: int = 0,
                blob: bool = False) -> dict[str, dict[str, np.ndarray]]:
    """The BraTS2019 layout under data_root/BraTS2019: split -> {ID: (z, y, x)}; labels random {0, 1}, or with
    `blob` a bright cube that is the tumour. Returns split -> {ID: label}."""
    rng = np.random.default_rng(seed)
    root = data_root / "BraTS2019"
    written: dict[str, dict[str, np.ndarray]] = {}
    for split, cases in shapes.items():
        written[split] = {}
        for case, shape in cases.items():
            if blob:
                label = np.zeros(shape, np.uint8)
                label[tuple(slice(s // 4, s // 4 + s // 2) for s in shape)] = 1
                image = (label * 2.0 + rng.normal(0, 0.3, shape)).astype(np.float32)
            else:
                label = (rng.random(shape) > 0.6).astype(np.uint8)
                image = rng.normal(size=shape).astype(np.float32)
            write_h5(root / "data" / f"{case}.h5", image=image, label=label)
            written[split][case] = label
        (root / f"{split}.txt").write_text("\n".join(cases) + "\n")
    return written


def touch_brats(data_root: Path, counts: dict[str, int]) -> dict[str, list[str]]:
    """Empty files named by BraTS-style lists of `counts` rows: enough for expanding suites (no pixel is read)."""
    root = data_root / "BraTS2019"
    (root / "data").mkdir(parents=True, exist_ok=True)
    lists = {}
    for split, n in counts.items():
        lists[split] = [f"BraTS19_{split}_{i:03d}_1" for i in range(n)]
        for name in lists[split]:
            (root / "data" / f"{name}.h5").touch()
        (root / f"{split}.txt").write_text("\n".join(lists[split]) + "\n")
    return lists


# ------------------------------------------------------------------------------------------ the reader
def test_h5_volumes_is_registered_after_la_h5():
    names = READERS.names()
    assert names.index("h5-volumes") == names.index("la-h5") + 1
    assert READERS.get("h5-volumes") is H5Volumes


def test_h5_volumes_reads_volumes_with_their_shapes_and_dtypes(tmp_path):
    image = np.arange(3 * 4 * 5, dtype=np.float64).reshape(3, 4, 5)
    label = (image % 2).astype(np.int64)                        # stored as float64 / int64: read as float32 / uint8
    write_h5(tmp_path / "vols" / "c1" / "scan.h5", img=image, seg=label)
    reader = open_reader("h5-volumes", tmp_path, {"folder": "vols", "file": "{id}/scan.h5", "image_key": "img",
                                                  "label_key": "seg", "axes": "Z, Y, X"}, 1, "card.yaml")
    for case in (reader.read_train("c1"), reader.read_eval("c1")):
        assert case.name == "c1" and case.spacing is None
        assert case.image.dtype == np.float32 and case.image.shape == (1, 3, 4, 5)
        assert case.label.dtype == np.uint8 and case.label.shape == (3, 4, 5)
        np.testing.assert_array_equal(case.image[0], image.astype(np.float32))
        np.testing.assert_array_equal(case.label, label)
    assert reader.path_of("c1", "train") == tmp_path / "vols" / "c1" / "scan.h5"
    # two axes: (H, W) files
    write_h5(tmp_path / "data" / "s.h5", image=np.zeros((4, 6), np.float32), label=np.zeros((4, 6), np.uint8))
    flat = open_reader("h5-volumes", tmp_path, {"axes": "H, W"}, 1, "card.yaml")
    assert flat.read_eval("s").image.shape == (1, 4, 6)


def test_h5_volumes_errors_name_the_file(tmp_path):
    reader = open_reader("h5-volumes", tmp_path, {}, 1, "card.yaml")
    missing = tmp_path / "data" / "nope.h5"
    with pytest.raises(ConfigError, match=f"{missing}: file not found"):
        reader.read_eval("nope")
    write_h5(tmp_path / "data" / "k.h5", image=np.zeros((2, 3, 4), np.float32), mask=np.zeros((2, 3, 4), np.uint8))
    with pytest.raises(ConfigError, match=r"k\.h5: missing dataset 'label' \(found \['image', 'mask'\]\)"):
        reader.read_eval("k")
    write_h5(tmp_path / "data" / "neg.h5", image=np.zeros((2, 3, 4), np.float32),
             label=np.full((2, 3, 4), -1, np.int16))
    with pytest.raises(ConfigError, match=r"neg\.h5: label values must be integer class ids in 0\.\.255"):
        reader.read_eval("neg")
    write_h5(tmp_path / "data" / "flat.h5", image=np.zeros((3, 4), np.float32), label=np.zeros((3, 4), np.uint8))
    with pytest.raises(ConfigError, match=r"flat\.h5: label has shape \(3, 4\), expected 3 dims \(Z, Y, X\)"):
        reader.read_eval("flat")
    (tmp_path / "data" / "junk.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(ConfigError, match=r"junk\.h5: cannot be read as HDF5"):
        reader.read_eval("junk")


def test_label_values_outside_the_card_classes_name_the_file(tmp_path):
    from benchmark.data.dataset import load_dataset

    shapes = {"train": {"a": (4, 4, 4), "b": (4, 4, 4)}, "val": {"v": (4, 4, 4)}, "test": {"t": (4, 4, 4)}}
    write_brats(tmp_path, shapes)
    write_h5(tmp_path / "BraTS2019" / "data" / "t.h5", image=np.zeros((4, 4, 4), np.float32),
             label=np.full((4, 4, 4), 2, np.uint8))           # a BraTS ED label left unmapped
    card = load_card(card_copy("brats2019", tmp_path / "cards", pinned={}))
    with pytest.raises(ConfigError, match=r"BraTS2019/data/t\.h5: label value 2 is outside the card's 2 classes"):
        load_dataset(card, tmp_path)


@pytest.mark.parametrize("options, field", [
    ({"file": "scan.h5"}, "reader.file"), ({"file": "{id}_{id}.h5"}, "reader.file"),
    ({"file": "../{id}.h5"}, "reader.file"), ({"folder": "/abs"}, "reader.folder"),
    ({"axes": "A, B, C, D"}, "reader.axes"), ({"image_key": "x", "label_key": "x"}, "reader.image_key"),
    ({"colour": 1}, "colour"),
])
def test_h5_volumes_options_are_checked_by_name(tmp_path, options, field):
    with pytest.raises(ConfigError, match=f"card.yaml: .*{field}"):
        open_reader("h5-volumes", tmp_path, options, 1, "card.yaml")


# ----------------------------------------------------------------------------------------- the cards
def test_promise12_card():
    card = catalog.get_card("promise12")
    assert (card.format, card.root, card.spatial_dims, card.in_channels) == ("ssl4mis-h5", "PROMISE12", 2, 1)
    assert card.classes == ("background", "prostate")
    assert card.splits == {"train": "train_slices.list", "val": "val.list", "test": "test.list"}
    assert card.pinned_lists == {"val": "splits/promise12/val.list", "test": "splits/promise12/test.list"}
    rule = card.labeled
    assert rule.unit == "patient" and rule.table == {}
    assert {k: rule.patients(k, "t") for k in ("3%", "7%", "full")} == {"3%": 1, "7%": 2, "full": 35}
    # the pinned counts are the whole cases nearest to 3 % and 7 % of the 35 training cases
    assert [round(p * 35) for p in (0.03, 0.07)] == [rule.aliases["3%"], rule.aliases["7%"]]
    ev = card.evaluation
    assert (ev.inference, ev.patch, ev.classes, ev.hd_units, ev.spacing) == ("slicewise", (224, 224), (1,), "voxel", None)
    assert (ev.checkpoint, ev.val_split, ev.test_split) == ("best_val", "val", "test")
    assert "Litjens" in card.citation and "Licence" in card.citation
    text = Path(card.path).read_text()
    assert "OURS: the papers' lists are not public" in text and "Your own labeled set" in text


def test_brats2019_card():
    card = catalog.get_card("brats2019")
    assert (card.format, card.root, card.spatial_dims) == ("h5-volumes", "BraTS2019", 3)
    assert card.reader == {"folder": "data", "file": "{id}.h5", "axes": "Z, Y, X"}
    assert card.classes == ("background", "whole tumour")
    assert card.splits == {"train": "train.txt", "val": "val.txt", "test": "test.txt"}
    assert card.pinned_lists == {s: f"splits/brats2019/{s}.txt" for s in ("train", "val", "test")}
    assert card.labeled.unit == "case" and card.labeled.aliases == {"10%": 25, "20%": 50, "full": 250}
    ev = card.evaluation
    assert (ev.inference, ev.patch, ev.stride) == ("sliding_window", (96, 96, 96), (64, 64, 64))
    assert (ev.classes, ev.hd_units, ev.checkpoint, ev.val_split) == ((1,), "voxel", "best_val", "val")
    assert "Menze" in card.citation and "Bakas" in card.citation and "Licence" in card.citation


@pytest.mark.parametrize("name, counts", [("promise12", {"val.list": 5, "test.list": 10}),
                                          ("brats2019", {"train.txt": 250, "val.txt": 25, "test.txt": 60})])
def test_pinned_copies_when_present(name, counts):
    folder = DATASETS_DIR / "splits" / name
    if not folder.is_dir():
        pytest.skip(f"{folder} not copied from ../shared/splits yet")
    for file, n in counts.items():
        assert len((folder / file).read_text().split()) == n
    if name == "promise12":
        assert (folder / "val.list").read_text().split() == PROMISE_VAL
        assert (folder / "test.list").read_text().split() == PROMISE_TEST


# ---------------------------------------------------------------------------------------- the suites
def _expand(suite_name: str, card_path: Path, data_root: Path):
    from benchmark.run.trials import expand

    suite = dataclasses.replace(catalog.get_suite(suite_name), dataset=str(card_path))
    return suite, expand(suite, seeds=[0], data_root=data_root)


def test_promise12_suites_expand_with_semsims_protocol(tmp_path):
    slices = {"Case00": 3, "Case01": 4, "Case02": 2}
    write_promise12(tmp_path, slices)
    card = card_copy("promise12", tmp_path / "cards", pinned={"val": PROMISE_VAL, "test": PROMISE_TEST})
    expected_methods = ["supervised", "mean-teacher", "ua-mt", "cct", "urpc", "ss-net", "fixmatch", "bcp", "semsim"]
    for name, cases, rows in (("promise12-3pct", 1, 3), ("promise12-7pct", 2, 7)):
        suite, trials = _expand(name, card, tmp_path)
        assert [t.method for t in trials] == expected_methods
        for t in trials:
            assert (t.labeled_patients, t.labeled_rows) == (cases, rows)   # the first `cases` cases, all their slices
            assert (t.train.batch_size, t.train.labeled_batch_size, t.train.patch_size) == (16, 8, (224, 224))
            assert (t.train.lr, t.train.lr_schedule, t.train.iterations) == (0.01, "poly", 30000)
            assert t.protocol.checkpoint == "best_val" and t.protocol.inference == "slicewise"
    text = (Path(catalog.SUITES_DIR) / "promise12-7pct.yaml").read_text()
    for reported in ("scp-net", "s4cvnet", "cnt-b", "medfct"):
        assert reported in text and reported in {r["name"] for r in catalog.reported_only()}
    suite, trials = _expand("semsim-ablation-promise12", card, tmp_path)
    assert [t.method for t in trials] == ["semsim", "semsim:n1", "semsim:n2", "semsim:n8", "semsim:n14"]
    assert [t.method_config["sub_regions"] for t in trials] == [4, 1, 2, 8, 14]


def test_brats_suites_expand_with_the_3d_methods_of_cml_table3(tmp_path):
    lists = touch_brats(tmp_path, {"train": 250, "val": 25, "test": 60})
    card = card_copy("brats2019", tmp_path / "cards", pinned=lists)
    for name, count in (("brats-10pct", 25), ("brats-20pct", 50)):
        suite, trials = _expand(name, card, tmp_path)
        assert [t.method for t in trials] == ["supervised", "mean-teacher", "ua-mt", "urpc", "mcf", "cml"]
        for t in trials:
            assert t.labeled_patients == t.labeled_rows == count
            assert t.train.patch_size == (96, 96, 96) and t.train.iterations == 30000
            assert (t.protocol.patch, t.protocol.stride) == ((96, 96, 96), (64, 64, 64))
        by = {t.method: t for t in trials}
        assert (by["cml"].train.batch_size, by["cml"].train.labeled_batch_size) == (8, 4)
        assert (by["mean-teacher"].train.batch_size, by["mean-teacher"].train.labeled_batch_size) == (4, 2)
        assert by["cml"].method_config["lambda_dis"] == 0.2 and by["urpc"].method_config["consistency_rampup"] == 400
        assert by["mean-teacher"].method_config["consistency_start"] == 0   # SSL4MIS's 3D MT has no 1000-step gate
    suite, trials = _expand("brats-full", card, tmp_path)
    assert [(t.method, t.labeled_rows) for t in trials] == [("supervised", 250)]
    # the rows of CML Table 3 without a 3D implementation are named in the suite as reported only, and are 2D only
    text = (Path(catalog.SUITES_DIR) / "brats-10pct.yaml").read_text()
    for method in ("entropy-min", "ict", "dan"):
        assert method in text and 3 not in catalog.method_class(method).dims
    from benchmark.report.leaderboard import load

    board_methods = {r.method for r in load("cml-table3").rows}
    assert board_methods == {"supervised", "mean-teacher", "ua-mt", "urpc", "mcf", "cml", "entropy-min", "ict", "dan"}


def test_leaderboards_carry_the_pinned_promise12_counts():
    from benchmark.report.leaderboard import load

    card = catalog.get_card("promise12")
    t3 = {s.id: s.count for s in load("semsim-table3").settings}
    t5 = {s.id: s.count for s in load("semsim-table5").settings}
    assert t3 == {"promise12-3": card.labeled.aliases["3%"], "promise12-7": card.labeled.aliases["7%"]}
    assert t5["promise12-7"] == card.labeled.aliases["7%"]
    assert all(s.dataset != "promise12" for s in load("semsim-table6").settings)   # no PROMISE12 ablation there


# ------------------------------------------------------------------------------- 2-iteration training
def test_supervised_trains_two_iterations_on_a_brats_layout_and_scores_the_test_split(tmp_path, monkeypatch):
    """3 training volumes (20^3) and one val / test volume, a narrow V-Net at 16^3: the card's protocol with the
    patch / stride overridden by the suite (`protocol:`), as the card's 96^3 windows do not fit 20^3 volumes."""
    from typer.testing import CliRunner

    from benchmark.cli import app

    shapes = {"train": {f"tr{i}": (20, 20, 20) for i in range(3)}, "val": {"va0": (20, 20, 20)},
              "test": {"te0": (20, 18, 20)}}
    write_brats(tmp_path / "data", shapes, blob=True)
    card = card_copy("brats2019", tmp_path / "cards", pinned={})   # the pinned 250 / 25 / 60 lists do not fit
    suite = tmp_path / "brats-mini.yaml"
    suite.write_text(yaml.safe_dump({
        "name": "brats-mini", "dataset": str(card), "labeled": [2], "methods": ["supervised"], "seeds": [0],
        "protocol": {"patch": [16, 16, 16], "stride": [8, 8, 8]},
        "train": {"iterations": 2, "batch_size": 2, "labeled_batch_size": 2, "patch_size": [16, 16, 16],
                  "network": "vnet", "network_options": {"width": 2}, "augmentation": "la-rotflip-crop",
                  "eval_every": 2, "checkpoint_every": 2, "log_every": 1, "num_workers": 0}}))
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(app, ["run", "--suite", str(suite), "--data-root", str(tmp_path / "data"), "--no-track",
                                   "--executor", "local", "--device", "cpu"])
    assert out.exit_code == 0, out.output
    assert "1 finished, 0 skipped, 0 failed" in out.output
    import json

    import pandas as pd

    (result,) = list(tmp_path.glob("bench_runs/**/result.json"))
    flat = json.loads(result.read_text())
    assert {"test/best_val/dice", "test/last/dice"} <= set(flat)
    (row,) = pd.read_csv(result.parent / "cases_best_val.csv").to_dict("records")
    assert (row["case"], row["class"]) == ("te0", 1)             # the test split (not val), class 1 only
    truth = write_brats(tmp_path / "again", shapes, blob=True)["test"]["te0"]   # the same seed: the same label
    assert row["ref_voxels"] == int(truth.sum()) == 10 * 9 * 10   # scored on the whole volume at its own size
    assert row["diagonal"] == pytest.approx(np.sqrt(20 ** 2 + 18 ** 2 + 20 ** 2))
    assert 0.0 <= row["dice"] <= 1.0 and row["jaccard"] == pytest.approx(row["dice"] / (2 - row["dice"]))
    assert flat["test/best_val/dice"] == pytest.approx(row["dice"])
    evaluation = yaml.safe_load((result.parent / "config.yaml").read_text())["dataset"]["evaluation"]
    assert (evaluation["inference"], evaluation["patch"], evaluation["stride"]) == ("sliding_window", [16] * 3, [8] * 3)
    assert (evaluation["checkpoint"], evaluation["classes"], evaluation["hd_units"]) == ("best_val", [1], "voxel")


def test_supervised_trains_two_iterations_on_a_promise12_layout_and_scores_the_test_cases(tmp_path, monkeypatch):
    """The shipped promise12 card's protocol (slice-wise, best on the 5 val cases, class 1) on 32x32 slices; the
    suite's `protocol: {patch: 32}` replaces the card's 224 as these slices are 32x32."""
    from typer.testing import CliRunner

    from benchmark.cli import app

    written = write_promise12(tmp_path / "data", {"Case00": 3, "Case01": 3, "Case02": 2}, size=32)
    suite = tmp_path / "promise12-mini.yaml"
    suite.write_text(yaml.safe_dump({
        "name": "promise12-mini", "dataset": "promise12", "labeled": ["7%"], "methods": ["supervised"], "seeds": [0],
        "protocol": {"patch": 32},
        "train": {"iterations": 2, "batch_size": 2, "labeled_batch_size": 2, "patch_size": 32, "eval_every": 2,
                  "checkpoint_every": 2, "log_every": 1, "num_workers": 0}}))
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(app, ["run", "--suite", str(suite), "--data-root", str(tmp_path / "data"), "--no-track",
                                   "--executor", "local", "--device", "cpu"])
    assert out.exit_code == 0, out.output
    assert "1 finished, 0 skipped, 0 failed" in out.output
    import pandas as pd

    (cases_csv,) = list(tmp_path.glob("bench_runs/**/cases_best_val.csv"))
    cases = pd.read_csv(cases_csv)
    assert sorted(cases["case"]) == PROMISE_TEST and set(cases["class"]) == {1}   # the 10 test cases, class 1
    refs = dict(zip(cases["case"], cases["ref_voxels"]))
    assert refs == {c: int(label.sum()) for c, label in written["test"].items()}  # on the stored grid, unresized
