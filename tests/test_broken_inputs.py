"""A catalogue of broken inputs fed to `bench run`: each stops with one clear error naming the file or field,
before any training, with nothing written to the MLflow store or the run folders. The reader-level checks
behind some of them are tested per format in test_readers.py; here the whole command is."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from benchmark.cli import app

runner = CliRunner()
TRAIN = {"iterations": 1, "batch_size": 2, "labeled_batch_size": 1, "patch_size": 32, "eval_every": 1,
         "checkpoint_every": 1, "log_every": 1, "num_workers": 0}


def _h5(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)


def _label(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    label = np.zeros(shape, np.uint8)
    label[..., 8:20, 8:20] = rng.integers(1, 4)
    return label


def write_dataset(tmp: Path) -> tuple[Path, Path]:
    """A valid tiny SSL4MIS-layout dataset (3 training patients x 2 slices, 1 val and 1 test volume of 32 px),
    its card and a 1-iteration suite; returns (card, suite)."""
    rng = np.random.default_rng(0)
    root = tmp / "data"
    train = [f"patient00{p}_frame01_slice_{s}" for p in (1, 2, 3) for s in (1, 2)]
    for name in train:
        _h5(root / "data" / "slices" / f"{name}.h5", image=rng.random((32, 32), np.float32), label=_label(rng, (32, 32)))
    for name in ("patient004_frame01", "patient005_frame01"):
        _h5(root / "data" / f"{name}.h5", image=rng.random((3, 32, 32), np.float32), label=_label(rng, (3, 32, 32)))
    (root / "train_slices.list").write_text("\n".join(train) + "\n")
    (root / "val.list").write_text("patient004_frame01\n")
    (root / "test.list").write_text("patient005_frame01\n")
    card = {"name": "broken-test", "description": "tiny", "format": "ssl4mis-h5", "root": str(root), "in_channels": 1,
            "classes": ["background", "a", "b", "c"],
            "splits": {"train": "train_slices.list", "val": "val.list", "test": "test.list"},
            "labeled": {"unit": "patient", "patient_pattern": r"^(patient\d+)_"},
            "evaluation": {"inference": "slicewise", "resize": "nearest", "classes": [1, 2, 3], "hd_units": "voxel",
                           "spacing": None, "empty_prediction": "worst", "postprocess": "none",
                           "checkpoint": "best_val", "val_split": "val", "test_split": "test"}}
    card_path = tmp / "broken-test.yaml"
    card_path.write_text(yaml.safe_dump(card, sort_keys=False))
    suite = {"name": "broken-suite", "description": "tiny", "dataset": str(card_path), "labeled": [1],
             "methods": ["supervised"], "seeds": [0], "train": TRAIN}
    suite_path = tmp / "broken-suite.yaml"
    suite_path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return card_path, suite_path


def _edit_yaml(path: Path, change: Callable[[dict], None]) -> None:
    spec = yaml.safe_load(path.read_text())
    change(spec)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))


def _rewrite(path: Path, **arrays: np.ndarray) -> None:
    path.unlink()
    _h5(path, **arrays)


SLICE = "data/data/slices/patient002_frame01_slice_1.h5"


def _nan_pixels(tmp: Path) -> None:
    image = np.zeros((32, 32), np.float32)
    image[3, 4] = np.nan
    _rewrite(tmp / SLICE, image=image, label=np.ones((32, 32), np.uint8))


def _labels_out_of_range(tmp: Path) -> None:
    _rewrite(tmp / "data/data/patient005_frame01.h5", image=np.zeros((3, 32, 32), np.float32),
             label=np.full((3, 32, 32), 7, np.uint8))


def _empty_labeled_rows(tmp: Path) -> None:
    for s in (1, 2):
        _rewrite(tmp / f"data/data/slices/patient001_frame01_slice_{s}.h5", image=np.zeros((32, 32), np.float32),
                 label=np.zeros((32, 32), np.uint8))


def _overlap(tmp: Path) -> None:
    """Patient 3 is a training patient and now a test volume too (a file that exists: only the lists are wrong)."""
    (tmp / "data/data/patient003_frame01.h5").write_bytes((tmp / "data/data/patient005_frame01.h5").read_bytes())
    (tmp / "data/test.list").write_text("patient003_frame01\n")


# (what is broken, how to break it, what the one error must say)
CATALOGUE: list[tuple[str, Callable[[Path], None], list[str]]] = [
    ("malformed suite YAML", lambda t: (t / "broken-suite.yaml").write_text("name: x\nmethods: [supervised\n"),
     ["broken-suite.yaml"]),
    ("unknown suite field", lambda t: _edit_yaml(t / "broken-suite.yaml", lambda s: s.update(trian={})),
     ["broken-suite.yaml", "trian"]),
    ("wrong type", lambda t: _edit_yaml(t / "broken-suite.yaml", lambda s: s["train"].update(iterations="many")),
     ["iterations"]),
    ("unknown card field", lambda t: _edit_yaml(t / "broken-test.yaml", lambda c: c.update(clases=["x"])),
     ["broken-test.yaml", "clases"]),
    ("truncated h5", lambda t: (t / SLICE).write_bytes((t / SLICE).read_bytes()[:40]),
     ["patient002_frame01_slice_1.h5", "HDF5"]),
    ("wrong keys", lambda t: _rewrite(t / SLICE, img=np.zeros((32, 32), np.float32), label=np.zeros((32, 32), np.uint8)),
     ["patient002_frame01_slice_1.h5", "missing dataset 'image'"]),
    ("labels out of range", _labels_out_of_range, ["patient005_frame01.h5", "label value 7"]),
    ("NaN pixels", _nan_pixels, ["patient002_frame01_slice_1.h5", "1 non-finite pixel"]),
    ("missing split file", lambda t: (t / "data/val.list").unlink(), ["val.list"]),
    ("duplicate names in a list",
     lambda t: (t / "data/test.list").write_text("patient005_frame01\npatient005_frame01\n"),
     ["test.list", "'patient005_frame01' more than once"]),
    ("train and test lists overlap", _overlap, ["train_slices.list", "test.list", "'patient003'"]),
    ("all-empty labels on the labeled rows", _empty_labeled_rows, ["broken-test.yaml", "no foreground"]),
]


def bench_run(tmp: Path, suite: Path):
    return runner.invoke(app, ["run", "--suite", str(suite), "--executor", "local", "--device", "cpu",
                               "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}", "--work-dir", str(tmp / "runs")])


def test_the_intact_dataset_trains(tmp_path):
    """The catalogue's baseline: unbroken, the same dataset and suite train, test and write their results."""
    _, suite = write_dataset(tmp_path)
    result = bench_run(tmp_path, suite)
    assert result.exit_code == 0, result.output
    assert "1 finished, 0 skipped, 0 failed" in result.output
    assert (tmp_path / "mlflow.db").exists() and list((tmp_path / "runs").glob("*/*/result.json"))


@pytest.mark.parametrize("what, breaks, says", CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_a_broken_input_stops_with_one_clear_error_and_writes_nothing(tmp_path, what, breaks, says):
    _, suite = write_dataset(tmp_path)
    breaks(tmp_path)
    result = bench_run(tmp_path, suite)
    text = "".join(result.output.split())        # the terminal wraps long paths anywhere
    assert result.exit_code == 2, f"{what}: {result.output}"
    assert text.count("error:") == 1 and "Traceback" not in text, result.output
    for phrase in says:
        assert "".join(phrase.split()) in text, f"{what}: {phrase!r} not in {result.output}"
    assert not (tmp_path / "mlflow.db").exists(), f"{what}: the store was written"
    assert not (tmp_path / "runs").exists(), f"{what}: a run folder was written"
