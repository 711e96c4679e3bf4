"""Resolve a dataset card to files, check them, and preload the splits into memory."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmark.config import ConfigError, DatasetCard, cache_root, data_root, stable_hash
from benchmark.data.formats import READERS, Volume, read_list


def resolve_root(card: DatasetCard, root_override: str | Path | None = None) -> Path:
    """The folder holding the card's data; generated data is written on first use."""
    if card.generator is not None:
        from benchmark.data.synthetic import GENERATOR_VERSION, SyntheticSpec, ensure_synthetic

        params = {k: v for k, v in card.generator.items() if k != "name"}
        try:
            spec = SyntheticSpec.from_dict(params)
        except ValueError as exc:
            raise ConfigError(f"{card.path}: generator: {exc}") from None
        key = stable_hash([card.generator, GENERATOR_VERSION], 8)
        return ensure_synthetic(cache_root() / f"{card.name}-{key}", spec)
    root = data_root(root_override) / str(card.root)
    if not root.is_dir():
        raise ConfigError(
            f"dataset {card.name!r}: folder {root} not found. Point BENCH_DATA_ROOT (or --data-root) at the folder "
            f"that contains {card.root}/, laid out as {card.root}/{card.splits['train']} and "
            f"{card.root}/data/slices/*.h5 (see README, 'Real data')")
    return root


def patient_of(name: str, pattern: str) -> str:
    m = re.match(pattern, name)
    if not m:
        raise ConfigError(f"row {name!r} does not match the card's labeled.patient_pattern {pattern!r}")
    return m.group(1)


def rows_for_patients(names: list[str], patients: int, pattern: str) -> int:
    """How many leading rows of the training list cover the first `patients` distinct patients."""
    seen: list[str] = []
    for i, name in enumerate(names):
        pid = patient_of(name, pattern)
        if pid not in seen:
            if len(seen) == patients:
                return i
            seen.append(pid)
    if len(seen) < patients:
        raise ConfigError(f"asked for {patients} labeled patients but the training list has only {len(seen)}")
    return len(names)


@dataclass
class SplitFiles:
    """The lists of a card, read and checked against the files on disk (no pixels loaded yet)."""

    card: DatasetCard
    root: Path
    train: list[str]
    val: list[str]
    test: list[str]
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        self.fingerprint = stable_hash([self.train, self.val, self.test])

    def labeled_rows(self, patients: int) -> int:
        """Rows of the training list that are labeled for `patients` patients (checked against the card's table)."""
        rule = self.card.labeled
        rows = rows_for_patients(self.train, patients, rule.patient_pattern)
        expected = rule.table.get(patients)
        if expected is not None and expected != rows:
            raise ConfigError(f"{self.card.path}: labeled.table says {patients} patients = {expected} slices but "
                              f"{self.card.splits['train']} gives {rows}; the list or the table is wrong")
        return rows


def open_splits(card: DatasetCard, root_override: str | Path | None = None) -> SplitFiles:
    """Resolve the root, read the three lists and check that every file they name exists."""
    return _open_splits(card, resolve_root(card, root_override))


def _open_splits(card: DatasetCard, root: Path) -> SplitFiles:
    lists = {k: read_list(root / card.splits[k]) for k in ("train", "val", "test")}
    reader = READERS[card.format](root)
    reader.check_files(lists["train"], volumes=False, list_name=card.splits["train"])
    for split in ("val", "test"):
        reader.check_files(lists[split], volumes=True, list_name=card.splits[split])
    return SplitFiles(card, root, lists["train"], lists["val"], lists["test"])


@dataclass
class InMemoryDataset:
    """A card's data preloaded: training slices (native sizes) and val/test volumes."""

    splits: SplitFiles
    train_images: list[np.ndarray]
    train_labels: list[np.ndarray]
    val: list[Volume]
    test: list[Volume]


def _check_labels(label: np.ndarray, num_classes: int, where: str) -> None:
    top = int(label.max(initial=0))
    if top >= num_classes:
        raise ConfigError(f"{where}: label value {top} is outside the card's {num_classes} classes (0..{num_classes - 1})")


_CACHE: dict[str, InMemoryDataset] = {}


def _preload(card: DatasetCard, root: Path) -> InMemoryDataset:
    splits = _open_splits(card, root)
    reader = READERS[card.format](splits.root)
    images, labels = [], []
    for name in splits.train:
        image, label = reader.read_slice(name)
        _check_labels(label, card.num_classes, str(reader.slice_path(name)))
        images.append(image)
        labels.append(label)
    volumes = {}
    for split in ("val", "test"):
        volumes[split] = [reader.read_volume(n) for n in getattr(splits, split)]
        for v in volumes[split]:
            _check_labels(v.label, card.num_classes, str(reader.volume_path(v.name)))
    return InMemoryDataset(splits, images, labels, volumes["val"], volumes["test"])


def load_dataset(card: DatasetCard, root_override: str | Path | None = None) -> InMemoryDataset:
    """Preload a card's splits into memory (cached per process: trials of one suite share it)."""
    root = resolve_root(card, root_override)
    key = stable_hash([card.as_dict(), str(root)])
    if key not in _CACHE:
        _CACHE.clear()  # keep one dataset in memory at a time
        _CACHE[key] = _preload(card, root)
    return _CACHE[key]
