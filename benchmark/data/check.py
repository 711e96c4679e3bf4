"""`bench data check NAME`: what a prepared dataset holds, read once, in words.

The report gives, per split, the list file, its names, distinct cases (training rows grouped by the card's
`labeled.patient_pattern` when rows are slices), the spatial shape range per axis, channels and intensity
range; the spacing or voxel units; the label values with their voxel counts and shares; and, for every
labeled setting of the card (its `labeled.aliases` and `labeled.table`), the rows it labels and how many of
them hold foreground. A wrong layout (root or list missing, a list different from the pinned copy, a missing,
unreadable or mis-shaped file, labels outside the card's classes, a `labeled.table` the list contradicts)
raises the same `ConfigError` `bench run` would, naming the file.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmark.catalog import get_card
from benchmark.config import DATASETS_DIR, ConfigError, DatasetCard
from benchmark.data.dataset import SplitFiles, card_reader, open_splits

#: above this many files a progress bar (on stderr) shows the reading
PROGRESS_FROM = 50


@dataclass
class SplitStats:
    """What one split's files hold, accumulated file by file (no pixels kept)."""

    files: int = 0
    shape_min: list[int] = field(default_factory=list)
    shape_max: list[int] = field(default_factory=list)
    channels: set[int] = field(default_factory=set)
    low: float = float("inf")
    high: float = float("-inf")
    labels: Counter = field(default_factory=Counter)
    spacings: set[tuple[float, ...]] = field(default_factory=set)
    foreground: list[bool] = field(default_factory=list)   # per file, in list order

    def add(self, image: np.ndarray, label: np.ndarray, spacing: tuple[float, ...] | None) -> None:
        shape = list(label.shape)
        self.shape_min = shape if not self.files else [min(a, b) for a, b in zip(self.shape_min, shape)]
        self.shape_max = shape if not self.files else [max(a, b) for a, b in zip(self.shape_max, shape)]
        self.files += 1
        self.channels.add(int(image.shape[0]))
        if image.size:
            self.low, self.high = min(self.low, float(image.min())), max(self.high, float(image.max()))
        values, counts = np.unique(label, return_counts=True)
        self.labels.update(dict(zip(values.tolist(), counts.tolist())))
        if spacing is not None:
            self.spacings.add(tuple(float(s) for s in spacing))
        self.foreground.append(bool(label.any()))


def check_dataset(name: str, data_root: Path | None = None) -> str:
    """A human report of the prepared dataset of card `name` (or a card's YAML path) under `data_root`
    (default $BENCH_DATA_ROOT); ConfigError naming the file when the layout is wrong."""
    card = get_card(name)
    splits = open_splits(card, data_root)   # root, lists, pinned copies, files present, no case in two splits
    stats = _read_all(card, splits)
    lines = [f"dataset {card.name} ({card.format}, {card.spatial_dims}D) at {splits.root}",
             f"classes: {', '.join(f'{i} {c}' for i, c in enumerate(card.classes))}"]
    lines += _pinned_lines(card)
    lines += ["", "split   list                      names   cases   shape (min..max per axis)        "
                  "channels  intensity"]
    for split in ("train", "val", "test"):
        lines.append(_split_line(card, splits, split, stats.get(split)))
    lines += ["", _spacing_line(card, stats), "", "label values (voxels, share of the split):"]
    for split, s in stats.items():
        total = sum(s.labels.values()) or 1
        values = ", ".join(f"{v} {card.classes[v]}: {n} ({100 * n / total:.2f} %)" for v, n in sorted(s.labels.items()))
        lines.append(f"  {split:<6} {values}")
    lines += ["", *_labeled_lines(card, splits, stats["train"])]
    return "\n".join(lines)


def _read_all(card: DatasetCard, splits: SplitFiles) -> dict[str, SplitStats]:
    """Read every file of every split once, checking labels against the classes; a bar when there are many."""
    reader = card_reader(card, splits.root)
    jobs = [(split, name) for split in ("train", "val", "test") for name in getattr(splits, split)]
    stats = {split: SplitStats() for split in ("train", "val", "test") if getattr(splits, split)}
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True, disable=len(jobs) < PROGRESS_FROM) as bar:
        task = bar.add_task(f"reading {card.name}", total=len(jobs))
        for split, name in jobs:
            kind = "train" if split == "train" else "eval"
            case = reader.read_train(name) if kind == "train" else reader.read_eval(name)
            top = int(case.label.max(initial=0))
            if top >= card.num_classes:
                raise ConfigError(f"{reader.path_of(name, kind)}: label value {top} is outside the card's "
                                  f"{card.num_classes} classes (0..{card.num_classes - 1}) of {card.path}; fix the "
                                  f"file (or the card's classes)")
            stats[split].add(case.image, case.label, case.spacing)
            bar.advance(task)
    return stats


def _pinned_lines(card: DatasetCard) -> list[str]:
    if not card.pinned_lists:
        return ["pinned lists: none (the card pins no public list)"]
    folder = Path(card.path).parent if card.path else DATASETS_DIR
    return [f"pinned lists: {', '.join(f'{s} = {folder / p}' for s, p in card.pinned_lists.items())} (equal)"]


def _cases(card: DatasetCard, names: list[str]) -> int:
    """Distinct cases among a list's names: grouped by patient_pattern when rows are slices (unit patient)."""
    if card.labeled.unit != "patient":
        return len(names)
    pattern = re.compile(card.labeled.patient_pattern)
    return len({(m.group(1) if (m := pattern.match(n)) else n) for n in names})


def _split_line(card: DatasetCard, splits: SplitFiles, split: str, s: SplitStats | None) -> str:
    spec = card.splits.get(split)
    if s is None:
        return f"{split:<7} {'(none)' if spec is None else str(spec):<25} 0"
    axes = " x ".join(f"{a}..{b}" if a != b else str(a) for a, b in zip(s.shape_min, s.shape_max))
    channels = "/".join(map(str, sorted(s.channels)))
    intensity = f"[{s.low:.3g}, {s.high:.3g}]"
    names = getattr(splits, split)
    return (f"{split:<7} {str(spec)[:25]:<25} {len(names):<7} {_cases(card, names):<7} {axes:<32} "
            f"{channels:<9} {intensity}")


def _spacing_line(card: DatasetCard, stats: dict[str, SplitStats]) -> str:
    recorded = set().union(*(s.spacings for s in stats.values()))
    ev = card.evaluation
    files = (f"the files record spacing {', '.join(map(str, sorted(recorded)))}" if recorded
             else "the files record no spacing")
    used = f"spacing {list(ev.spacing)}" if ev.spacing else "no spacing"
    return f"spacing: {files}; the card scores HD95 / ASD in {ev.hd_units}s ({used})"


def _labeled_lines(card: DatasetCard, splits: SplitFiles, train: SplitStats | None) -> list[str]:
    """Rows labeled by each of the card's settings (aliases, then table keys), with their foreground."""
    rule = card.labeled
    unit = rule.unit
    rows_are = "slices" if unit == "patient" else "rows"
    settings: dict[int, list[str]] = {}
    for alias, count in rule.aliases.items():
        settings.setdefault(count, []).append(alias)
    for count in rule.table:
        settings.setdefault(count, [])
    if not settings:
        return [f"labeled settings: none named in the card (any {unit} count works: labeled: [K])"]
    available = _cases(card, splits.train)
    lines = [f"labeled settings (the first training rows covering K {unit}s):"]
    for count in sorted(settings):
        names = f" ({', '.join(settings[count])})" if settings[count] else ""
        head = f"  {count} {unit}(s){names}"
        if count > available:
            lines.append(f"{head}: not available, the training list holds {available} {unit}(s)")
            continue
        rows = splits.labeled_rows(count)   # ConfigError when the card's table contradicts the list
        with_fg = sum(train.foreground[:rows]) if train else 0
        flag = "" if with_fg else "  NO FOREGROUND: bench run refuses this setting"
        lines.append(f"{head}: {rows} {rows_are} ({100 * rows / len(splits.train):.1f} % of {len(splits.train)}), "
                     f"{with_fg} with foreground{flag}")
    return lines
