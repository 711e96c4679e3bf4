"""Resolve a dataset card to files, check them, and preload the splits into memory.

The card's `format` names the reader (benchmark.data.formats.READERS) and its `reader:` mapping the reader's
options; the card's `generator` (benchmark.data.generators.GENERATORS) writes synthetic data once instead.
Everything is read and checked here, before any training starts: lists against the files, the root's lists
against the repo's pinned copies, labels against the class count.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmark.config import DATASETS_DIR, ConfigError, DatasetCard, cache_root, data_root, stable_hash
from benchmark.data.formats import Case, Reader, open_reader, read_list


def generator_of(card: DatasetCard):
    """The card's registered generator (benchmark.data.generators), or None for real data."""
    if card.generator is None:
        return None
    from benchmark.data.generators import GENERATORS

    name = card.generator.get("name", "synthetic-cardiac")
    if name not in GENERATORS:
        raise ConfigError(f"{card.path}: generator.name {name!r} is unknown; valid: {', '.join(GENERATORS.names())}")
    return GENERATORS.get(name)


def resolve_root(card: DatasetCard, root_override: str | Path | None = None) -> Path:
    """The folder holding the card's data; generated data is written on first use."""
    generator = generator_of(card)
    if generator is not None:
        spec = generator.build_spec(card.generator, str(card.path))
        key = stable_hash([card.generator, generator.version], 8)
        return generator.ensure(cache_root() / f"{card.name}-{key}", spec)
    root = data_root(root_override) / str(card.root)
    if not root.is_dir():
        layout = open_reader(card.format, root, card.reader, card.in_channels, str(card.path)).layout("train")
        raise ConfigError(
            f"dataset {card.name!r}: folder {root} not found. Point BENCH_DATA_ROOT (or --data-root) at the folder "
            f"that contains {card.root}/ in the {card.format} layout ({layout}); see README, 'Real data'")
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
    """The splits of a card, read and checked against the files on disk (no pixels loaded yet); a card
    without a validation split has `val == []`."""

    card: DatasetCard
    root: Path
    train: list[str]
    val: list[str]
    test: list[str]
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        self.fingerprint = stable_hash([self.train, self.val, self.test])

    def labeled_rows(self, count: int) -> int:
        """Rows of the training list that are labeled for `count` patients (unit patient) or cases (unit
        case), checked against the card's table."""
        rule = self.card.labeled
        if rule.unit == "case":
            if not 0 < count <= len(self.train):
                raise ConfigError(f"asked for {count} labeled cases but the training list has {len(self.train)}")
            rows = count
        else:
            rows = rows_for_patients(self.train, count, rule.patient_pattern)
        expected = rule.table.get(count)
        if expected is not None and expected != rows:
            rows_are = "slices" if rule.unit == "patient" else "rows"
            raise ConfigError(f"{self.card.path}: labeled.table says {count} {rule.unit}s = {expected} {rows_are} but "
                              f"{self.card.splits['train']} gives {rows}; the list or the table is wrong")
        return rows


def card_reader(card: DatasetCard, root: Path) -> Reader:
    return open_reader(card.format, root, card.reader, card.in_channels, str(card.path))


def open_splits(card: DatasetCard, root_override: str | Path | None = None) -> SplitFiles:
    """Resolve the root, read the splits and check that every file they name exists."""
    return _open_splits(card, resolve_root(card, root_override))


def _check_pinned(card: DatasetCard, split: str, names: list[str]) -> None:
    """The root's list must equal the copy pinned in the repo (e.g. datasets/splits/la/train.list)."""
    pinned_path = (Path(card.path).parent if card.path else DATASETS_DIR) / card.pinned_lists[split]
    pinned = read_list(pinned_path)
    if pinned != names:
        diff = next((f"row {i + 1}: {a!r} vs {b!r}" for i, (a, b) in enumerate(zip(names, pinned)) if a != b),
                    f"{len(names)} vs {len(pinned)} rows")
        raise ConfigError(f"{card.path}: the data root's {split} list ({card.splits[split]}) differs from the pinned "
                          f"copy {pinned_path} ({diff}); restore the public list, or the results are not comparable")


def _open_splits(card: DatasetCard, root: Path) -> SplitFiles:
    reader = card_reader(card, root)
    names: dict[str, list[str]] = {}
    for split in ("train", "val", "test"):
        spec = card.splits.get(split)
        if spec is None:
            names[split] = []
            continue
        names[split] = reader.split_names(split, spec)
        if split in card.pinned_lists:
            _check_pinned(card, split, names[split])
        reader.check_files(names[split], "train" if split == "train" else "eval", str(spec))
    _check_lists(card, names)
    return SplitFiles(card, root, names["train"], names["val"], names["test"])


def _check_lists(card: DatasetCard, names: dict[str, list[str]]) -> None:
    """No name twice in one list; no patient (unit patient: `patient_pattern`; else the name) in two splits."""
    for split, items in names.items():
        twice = next((n for n, count in Counter(items).items() if count > 1), None)
        if twice is not None:
            raise ConfigError(f"{card.path}: the {split} list ({card.splits[split]}) names {twice!r} more than once; "
                              f"each case is listed once (remove the duplicate row)")
    rule = card.labeled
    pattern = re.compile(rule.patient_pattern) if rule.unit == "patient" else None

    def owner(name: str) -> str:
        m = pattern.match(name) if pattern else None
        return m.group(1) if m else name

    unit = "patient" if pattern else "case"
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        shared = sorted({owner(n) for n in names[a]} & {owner(n) for n in names[b]})
        if shared:
            raise ConfigError(f"{card.path}: the {a} ({card.splits[a]}) and {b} ({card.splits[b]}) lists share "
                              f"{len(shared)} {unit}(s), e.g. {shared[0]!r}; a {unit} belongs to one split only, "
                              f"or the {b} scores leak")


@dataclass
class InMemoryDataset:
    """A card's data preloaded: training samples (C, *spatial) at native sizes, val/test cases."""

    splits: SplitFiles
    train_images: list[np.ndarray]
    train_labels: list[np.ndarray]
    val: list[Case]
    test: list[Case]

    @property
    def in_channels(self) -> int:
        return int(self.train_images[0].shape[0])

    def eval_cases(self, split: str) -> list[Case]:
        """The cases of an evaluation split: 'val' or 'test' (EvaluationProtocol.test_split)."""
        return self.val if split == "val" else self.test


def _check_labels(label: np.ndarray, num_classes: int, where: str) -> None:
    top = int(label.max(initial=0))
    if top >= num_classes:
        raise ConfigError(f"{where}: label value {top} is outside the card's {num_classes} classes (0..{num_classes - 1})")


_CACHE: dict[str, InMemoryDataset] = {}


def _preload(card: DatasetCard, root: Path) -> InMemoryDataset:
    splits = _open_splits(card, root)
    reader = card_reader(card, splits.root)
    images, labels = [], []
    for name in splits.train:
        case = reader.read_train(name)
        _check_labels(case.label, card.num_classes, str(reader.path_of(name, "train")))
        images.append(case.image)
        labels.append(case.label)
    cases = {}
    for split in ("val", "test"):
        cases[split] = [reader.read_eval(n) for n in getattr(splits, split)]
        for c in cases[split]:
            _check_labels(c.label, card.num_classes, str(reader.path_of(c.name, "eval")))
    return InMemoryDataset(splits, images, labels, cases["val"], cases["test"])


def check_labeled_rows(data: InMemoryDataset, rows: int, where: str) -> None:
    """ConfigError when the first `rows` training labels (a setting's labeled rows) are all background."""
    if not any(label.any() for label in data.train_labels[:rows]):
        names = data.splits.train[:rows]
        raise ConfigError(f"{where}: the {rows} labeled row(s) ({names[0]} .. {names[-1]} of "
                          f"{data.splits.card.splits['train']}) hold no foreground pixel: nothing to learn from; "
                          f"check the label files or pick another labeled setting")


def load_dataset(card: DatasetCard, root_override: str | Path | None = None) -> InMemoryDataset:
    """Preload a card's splits into memory (cached per process: trials of one suite share it)."""
    root = resolve_root(card, root_override)
    key = stable_hash([card.as_dict(), str(root)])
    if key not in _CACHE:
        _CACHE.clear()  # keep one dataset in memory at a time
        _CACHE[key] = _preload(card, root)
    return _CACHE[key]


def clear_cache() -> None:
    """Drop the preloaded dataset (e.g. in a driver that only checked it)."""
    _CACHE.clear()
