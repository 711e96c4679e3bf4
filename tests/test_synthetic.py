"""Tests for the synthetic cardiac dataset generator (SSL4MIS ACDC layout)."""
from __future__ import annotations

import json
import os
import re
import threading
import time
from collections import defaultdict
from pathlib import Path

import h5py
import numpy as np
import pytest

from benchmark.data.synthetic import GENERATOR_VERSION, MARKER, SyntheticSpec, ensure_synthetic, generate

SMALL = SyntheticSpec(seed=3, size=48, train_patients=4, val_patients=2, test_patients=2, min_slices=3,
                      max_slices=5)
NAME_RE = re.compile(r"patient\d{3}_frame0[12](_slice_\d+)?")


def read_list(root: Path, name: str) -> list[str]:
    return (root / name).read_text().splitlines()


def read_h5(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(path, "r") as f:
        return f["image"][:], f["label"][:]


def train_volumes(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Restack the training slices into (S, H, W) volumes keyed by patient-frame."""
    by_frame: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for name in read_list(root, "train_slices.list"):
        frame, z = name.rsplit("_slice_", 1)
        by_frame[frame].append((int(z), name))
    out = {}
    for frame, items in by_frame.items():
        pairs = [read_h5(root / "data" / "slices" / f"{n}.h5") for _, n in sorted(items)]
        out[frame] = (np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]))
    return out


def all_volumes(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    vols = train_volumes(root)
    for split in ("val.list", "test.list"):
        for name in read_list(root, split):
            vols[name] = read_h5(root / "data" / f"{name}.h5")
    return vols


@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / "ds"
    generate(root, SMALL)
    return root


def test_layout_and_counts(small_root: Path) -> None:
    slices = read_list(small_root, "train_slices.list")
    train = read_list(small_root, "train.list")
    val, test = read_list(small_root, "val.list"), read_list(small_root, "test.list")
    assert len(train) == 2 * SMALL.train_patients
    assert len(val) == 2 * SMALL.val_patients and len(test) == 2 * SMALL.test_patients
    for name in slices + train + val + test:
        assert NAME_RE.fullmatch(name), name
    patients = [n.split("_")[0] for n in train + val + test]
    assert len(set(patients)) == SMALL.total_patients  # unique ids across splits
    per_frame: dict[str, list[int]] = defaultdict(list)
    for name in slices:
        assert (small_root / "data" / "slices" / f"{name}.h5").is_file()
        frame, z = name.rsplit("_slice_", 1)
        per_frame[frame].append(int(z))
    assert list(per_frame) == train  # same order, each frame's slices contiguous, frame01 before frame02
    for frame, zs in per_frame.items():
        assert zs == list(range(1, len(zs) + 1))
        assert SMALL.min_slices <= len(zs) <= SMALL.max_slices
        other = frame[:-1] + ("2" if frame.endswith("1") else "1")
        assert len(per_frame[other]) == len(zs)  # ED and ES share the slice count
    assert len(slices) == sum(len(zs) for zs in per_frame.values())
    for name in val + test:
        image, label = read_h5(small_root / "data" / f"{name}.h5")
        assert image.ndim == 3 and image.shape[1:] == (SMALL.size, SMALL.size)
        assert SMALL.min_slices <= image.shape[0] <= SMALL.max_slices
        assert label.shape == image.shape
    assert list((small_root / "data").glob("patient*_frame0?.h5"))
    train_ids = {n.split("_")[0] for n in train}
    assert not any(p.name.split("_")[0] in train_ids for p in (small_root / "data").glob("*.h5"))


def test_value_ranges_and_classes(small_root: Path) -> None:
    seen: set[int] = set()
    for name, (image, label) in all_volumes(small_root).items():
        assert image.dtype == np.float32 and label.dtype == np.uint8, name
        assert image.min() == 0.0 and image.max() == 1.0, name  # min-max per volume
        values = set(np.unique(label).tolist())
        assert values <= {0, 1, 2, 3}, name
        seen |= values
    assert seen == {0, 1, 2, 3}


def test_most_slices_show_every_class(small_root: Path) -> None:
    labels = np.concatenate([lab for _, lab in all_volumes(small_root).values()])
    for cls in (1, 2, 3):
        present = np.mean([(sl == cls).any() for sl in labels])
        assert present >= 0.6, (cls, present)


def test_es_lv_smaller_than_ed(small_root: Path) -> None:
    vols = all_volumes(small_root)
    ratios = []
    for name, (_, label) in vols.items():
        if name.endswith("frame01"):
            ed = int((label == 3).sum())
            es = int((vols[name[:-1] + "2"][1] == 3).sum())
            assert es < ed, name
            ratios.append(es / ed)
    assert np.mean(ratios) < 0.8


def test_deterministic(small_root: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate(again, SMALL)
    for lst in ("train_slices.list", "train.list", "val.list", "test.list"):
        assert (again / lst).read_bytes() == (small_root / lst).read_bytes()
    a, b = all_volumes(small_root), all_volumes(again)
    assert a.keys() == b.keys()
    for name in a:
        for x, y in zip(a[name], b[name]):
            assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), name


def test_other_seed_differs(small_root: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    spec = SyntheticSpec(**{**SMALL.to_dict(), "seed": SMALL.seed + 1})
    generate(other, spec)
    a, b = all_volumes(small_root), all_volumes(other)
    shared = a.keys() & b.keys()
    assert shared, "same patient count: ids are a permutation of the same range"
    assert any(a[n][0].shape != b[n][0].shape or not np.array_equal(a[n][0], b[n][0]) for n in shared)


def test_ensure_generates_once(tmp_path: Path) -> None:
    root = tmp_path / "cache" / "ds"
    assert ensure_synthetic(root, SMALL) == root
    marker = root / MARKER
    assert json.loads(marker.read_text()) == {**SMALL.to_dict(), "generator_version": GENERATOR_VERSION}
    first_slice = root / "data" / "slices" / f"{read_list(root, 'train_slices.list')[0]}.h5"
    stamps = (marker.stat().st_mtime_ns, first_slice.stat().st_mtime_ns)
    assert ensure_synthetic(root, SMALL) == root
    assert (marker.stat().st_mtime_ns, first_slice.stat().st_mtime_ns) == stamps
    assert sorted(p.name for p in root.parent.iterdir()) == ["ds"]  # no temp or old trees left


def test_ensure_regenerates_on_changed_spec(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    ensure_synthetic(root, SMALL)
    (root / "stale.txt").write_text("from the old tree")
    changed = SyntheticSpec(**{**SMALL.to_dict(), "train_patients": 2, "size": 32})
    ensure_synthetic(root, changed)
    assert json.loads((root / MARKER).read_text()) == {**changed.to_dict(), "generator_version": GENERATOR_VERSION}
    assert not (root / "stale.txt").exists()
    assert len(read_list(root, "train.list")) == 4
    assert read_h5(root / "data" / f"{read_list(root, 'val.list')[0]}.h5")[0].shape[1:] == (32, 32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_ensure_ignores_leftover_temp_dir(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    crashed = tmp_path / ".ds.tmp-crashed"
    (crashed / "data" / "slices").mkdir(parents=True)
    (crashed / "train.list").write_text("patient001_frame01\n")
    (crashed / "data" / "slices" / "patient001_frame01_slice_1.h5").write_bytes(b"truncated")
    live = tmp_path / ".ds.tmp-maybe-live"  # young: could belong to a running generator, so it is kept
    live.mkdir()
    old = time.time() - 2 * 3600
    os.utime(crashed, (old, old))
    assert ensure_synthetic(root, SMALL) == root
    assert json.loads((root / MARKER).read_text()) == {**SMALL.to_dict(), "generator_version": GENERATOR_VERSION}
    assert len(read_list(root, "train.list")) == 2 * SMALL.train_patients
    assert not crashed.exists() and live.exists()


def test_ensure_refuses_foreign_folder(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    (root / "precious.txt").write_text("not ours")
    with pytest.raises(FileExistsError):
        ensure_synthetic(root, SMALL)
    assert (root / "precious.txt").exists()


def test_ensure_concurrent_callers(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    spec = SyntheticSpec(seed=5, size=32, train_patients=2, val_patients=1, test_patients=1, min_slices=2,
                         max_slices=3)
    results: list[object] = []

    def call() -> None:
        try:
            results.append(ensure_synthetic(root, spec))
        except Exception as exc:  # noqa: BLE001 - surfaced by the assertion below
            results.append(exc)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [root] * 3
    assert json.loads((root / MARKER).read_text()) == {**spec.to_dict(), "generator_version": GENERATOR_VERSION}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_from_dict() -> None:
    assert SyntheticSpec.from_dict(SMALL.to_dict()) == SMALL
    assert SyntheticSpec.from_dict({}) == SyntheticSpec()
    with pytest.raises(ValueError, match="trian_patients") as info:
        SyntheticSpec.from_dict({"trian_patients": 3})
    assert "train_patients" in str(info.value)  # lists the valid keys
    with pytest.raises(ValueError):
        SyntheticSpec.from_dict({"size": "128"})
    with pytest.raises(ValueError):
        SyntheticSpec(min_slices=5, max_slices=4)
