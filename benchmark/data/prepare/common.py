"""The machinery every `bench data prepare` step shares, written once.

A preparer (one per dataset) only says what to read and how to turn it into outputs:

1. `plan(raw, lists)` finds the raw files the split lists name and returns the cases, each with its source files
   and the relative paths it will write, plus the small list files of the layout;
2. `check(case)` reads what must be validated (headers, label values) and raises one ConfigError naming the file;
3. `produce(case)` computes a case and returns one writer per output path.

`run_prepare` validates EVERYTHING first (missing files, every case's check) and only then creates `to` and
writes. Each file is written to a temporary file in its own folder and moved into place with `os.replace`, so no
reader ever sees half a file. `prepare.json` (written last, atomically) records the tool version, the raw folder,
each source file's relative path, size and mtime, the parameters and the sha256 of every output. A re-run with the
same parameters skips every output whose file exists with the recorded sha256 (and whose case's sources are
unchanged), rewrites the missing or changed ones, and counts both.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator, Sequence

import h5py
import numpy as np

from benchmark.config import DATASETS_DIR, ConfigError

DISTRIBUTION = "ssl-medseg-bench"    # pyproject.toml [project] name
MANIFEST = "prepare.json"
SPLITS_DIR = DATASETS_DIR / "splits"
SHOW_MISSING = 5                     # how many missing files an error names before it counts the rest

Writer = Callable[[Path], None]      # writes one output file at the (temporary) path it is given


# ----------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Source:
    """One raw file a case reads: its path relative to the raw folder, size and modification time (a member of
    a zip archive: `archive.zip:member`, its size and CRC-32; the archive's own mtime is recorded by the plan)."""

    rel: str
    size: int
    mtime: float | None
    crc: int | None = None

    @classmethod
    def of(cls, path: Path, raw: Path) -> Source:
        stat = path.stat()
        return cls(Path(os.path.relpath(path, raw)).as_posix(), stat.st_size, round(stat.st_mtime, 6))

    def record(self) -> dict[str, Any]:
        if self.crc is not None:
            return {"size": self.size, "crc32": self.crc}
        return {"size": self.size, "mtime": self.mtime}


@dataclass
class Case:
    """One unit of work: the raw files it reads, the outputs it writes (relative to `to`), reader data."""

    name: str
    sources: list[Source]
    outputs: list[str]
    payload: Any = None


@dataclass
class Plan:
    """What a run will write: the cases, the small list files (relative path -> bytes), notes for the summary."""

    cases: list[Case]
    lists: dict[str, bytes]
    notes: list[str] = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)  # raw files read by the plan itself (e.g. archives)


@dataclass(frozen=True)
class SplitList:
    """A split list as read: its rows (stripped, blank lines dropped), its bytes and where it came from."""

    rows: list[str]
    content: bytes
    path: Path


@dataclass
class PrepareResult:
    """What `prepare_dataset` did."""

    dataset: str
    out: Path
    written: int
    skipped: int
    cases: int
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for people."""
        line = (f"{self.dataset}: {self.cases} case(s) -> {self.out}: {self.written} file(s) written, "
                f"{self.skipped} already up to date")
        return line + "".join(f"; {note}" for note in self.notes)


# ------------------------------------------------------------------------------------------ preparer
class Preparer(ABC):
    """One dataset's preparation. Subclasses set the class attributes and implement plan / check / produce."""

    name: ClassVar[str]                    # the CLI name: synapse, isic, promise12, brats2019
    root: ClassVar[str]                    # default folder under the data root (the card's root)
    list_files: ClassVar[tuple[str, ...]]  # split-list file names it reads (pinned, or from --lists)
    pinned: ClassVar[bool] = True          # False: no pinned lists (ISIC computes its split)

    def __init__(self, **options: Any) -> None:
        if options:
            raise ConfigError(f"prepare {self.name}: unknown option(s) {', '.join(sorted(options))}; "
                              f"this dataset takes none")

    def parameters(self) -> dict[str, Any]:
        """Everything that changes the bytes of an output; recorded in prepare.json, compared on re-runs."""
        return {}

    @abstractmethod
    def plan(self, raw: Path, lists: dict[str, SplitList]) -> Plan:
        """Resolve the raw layout and the cases; raise ConfigError (use `missing_error`) when files are absent."""

    @abstractmethod
    def check(self, case: Case) -> None:
        """Read and validate what can be wrong in a case; raise one ConfigError naming the file."""

    @abstractmethod
    def produce(self, case: Case) -> dict[str, Writer]:
        """Compute the case: one writer per relative output path (the keys must be `case.outputs`)."""

    def pinned_dir(self) -> Path:
        return SPLITS_DIR / self.name


# ------------------------------------------------------------------------------------------ helpers
def read_split_list(path: Path) -> SplitList:
    """A split list: one name per line; blank lines and surrounding spaces (and `\\r`) ignored; no duplicates."""
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"split list {path}: cannot be read ({exc})") from None
    rows = [line.strip() for line in content.decode("utf-8", errors="replace").splitlines() if line.strip()]
    if not rows:
        raise ConfigError(f"split list {path} is empty; give one name per line")
    seen: set[str] = set()
    twice = [r for r in rows if r in seen or seen.add(r)]
    if twice:
        raise ConfigError(f"split list {path}: {twice[0]!r} is listed twice; each name once")
    return SplitList(rows, content, path)


def load_lists(preparer: Preparer, override: Path | None) -> dict[str, SplitList]:
    """The preparer's split lists: the pinned ones, each replaced by a file of the same name in `override`."""
    names = preparer.list_files
    chosen: dict[str, Path] = {}
    if preparer.pinned:
        chosen = {n: preparer.pinned_dir() / n for n in names}
    if override is not None:
        override = Path(override).expanduser()
        if not override.is_dir():
            raise ConfigError(f"--lists {override}: not a folder; give a folder holding any of "
                              f"{', '.join(names)} (one name per line) to replace the pinned lists")
        given = {n: override / n for n in names if (override / n).is_file()}
        if not given:
            raise ConfigError(f"--lists {override}: holds none of {', '.join(names)}; {preparer.name} reads "
                              f"those file names (one name per line)")
        chosen.update(given)
    return {n: read_split_list(p) for n, p in chosen.items()}


def disjoint(lists: dict[str, SplitList], names: Sequence[str]) -> None:
    """A case in two of the split lists `names` is an error naming both files."""
    owner: dict[str, str] = {}
    for n in names:
        for row in lists[n].rows:
            if row in owner:
                raise ConfigError(f"split lists {lists[owner[row]].path} and {lists[n].path} both hold {row!r}; "
                                  f"train / val / test must be disjoint")
            owner[row] = n


def missing_error(dataset: str, raw: Path, missing: Sequence[str], total: int, expected: str) -> ConfigError:
    """One error for raw files the lists name but the raw folder lacks: the first few, a count and the fix."""
    shown = ", ".join(missing[:SHOW_MISSING]) + (f" (+{len(missing) - SHOW_MISSING} more)"
                                                 if len(missing) > SHOW_MISSING else "")
    return ConfigError(f"{dataset}: {len(missing)} of {total} raw file(s) named by the split lists are missing "
                       f"under {raw}: {shown}. Point --from at {expected}, or pass --lists DIR with split lists "
                       f"naming only the cases you have")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(path: Path, writer: Writer) -> str:
    """Write `path` through a temporary file in the same folder and `os.replace`; return its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer(tmp)
        digest = sha256_of(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return digest


def bytes_writer(content: bytes) -> Writer:
    return lambda tmp: tmp.write_bytes(content)


def h5_writer(**arrays: np.ndarray) -> Writer:
    """An HDF5 file with one dataset per keyword (SSL4MIS / TransUNet layout: no compression, no attributes)."""
    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            for key, value in arrays.items():
                f.create_dataset(key, data=value)
    return write


def npz_writer(**arrays: np.ndarray) -> Writer:
    """An uncompressed .npz (np.savez, as TransUNet's train_npz); written through a file object so that numpy
    does not append a second `.npz` to the temporary name."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return write


def list_bytes(rows: Iterable[str]) -> bytes:
    """A list file we generate: one name per line, `\\n` endings, a final newline."""
    return "".join(f"{r}\n" for r in rows).encode()


def tool_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown (not installed)"


# ------------------------------------------------------------------------------------------- the run
def _progress(enabled: bool, items: Sequence[Case], label: str) -> Iterator[Case]:
    """Iterate with a transient rich progress bar over cases when `enabled`."""
    if not enabled or not items:
        yield from items
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(label, total=len(items))
        for item in items:
            yield item
            bar.advance(task)


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _matches(path: Path, recorded: str | None) -> bool:
    return recorded is not None and path.is_file() and sha256_of(path) == recorded


def run_prepare(preparer: Preparer, raw: Path, to: Path, lists: Path | None = None,
                progress: bool = True) -> PrepareResult:
    """Validate everything, then write what is missing or changed, then prepare.json. See the module docstring."""
    raw = Path(raw).expanduser().resolve()
    to = Path(to).expanduser().resolve()
    if not raw.is_dir():
        raise ConfigError(f"--from {raw}: not a folder; give the folder of the official {preparer.name} download")
    if to.exists() and not to.is_dir():
        raise ConfigError(f"--to {to}: exists and is not a folder; choose an output folder")
    if to == raw:
        raise ConfigError(f"--to {to}: must differ from --from {raw}")
    split_lists = load_lists(preparer, lists)
    plan = preparer.plan(raw, split_lists)
    names = [rel for case in plan.cases for rel in case.outputs] + list(plan.lists)
    if len(set(names)) != len(names) or MANIFEST in names:
        raise AssertionError(f"{preparer.name}: the plan writes an output path twice")  # a preparer bug
    for case in _progress(progress, plan.cases, f"checking {preparer.name}"):
        preparer.check(case)

    # --- validation passed: from here on we write
    params = preparer.parameters()
    old = _read_manifest(to / MANIFEST)
    same = old is not None and old.get("dataset") == preparer.name and old.get("parameters") == _jsonable(params)
    old_outputs: dict[str, str] = old.get("outputs", {}) if same else {}
    old_cases: dict[str, Any] = old.get("cases", {}) if same else {}
    to.mkdir(parents=True, exist_ok=True)
    outputs: dict[str, str] = {}
    written = skipped = 0
    for case in _progress(progress, plan.cases, f"writing {preparer.name}"):
        fingerprint = {s.rel: s.record() for s in case.sources}
        unchanged = old_cases.get(case.name, {}).get("sources") == fingerprint
        todo = [rel for rel in case.outputs if not (unchanged and _matches(to / rel, old_outputs.get(rel)))]
        for rel in case.outputs:
            if rel not in todo:
                outputs[rel] = old_outputs[rel]
        skipped += len(case.outputs) - len(todo)
        if not todo:
            continue
        writers = preparer.produce(case)
        if sorted(writers) != sorted(case.outputs):
            raise AssertionError(f"{preparer.name}: case {case.name} produced {sorted(writers)[:3]}..., "
                                 f"planned {case.outputs[:3]}...")  # a preparer bug, not user input
        for rel in todo:
            outputs[rel] = atomic_write(to / rel, writers[rel])
            written += 1
    for rel, content in plan.lists.items():
        digest = hashlib.sha256(content).hexdigest()
        path = to / rel
        if path.is_file() and sha256_of(path) == digest:
            skipped += 1
        else:
            atomic_write(path, bytes_writer(content))
            written += 1
        outputs[rel] = digest

    manifest = {
        "dataset": preparer.name,
        "tool": {"name": DISTRIBUTION, "version": tool_version()},
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "raw": str(raw),
        "split_lists": {n: str(s.path) for n, s in split_lists.items()},
        "parameters": _jsonable(params),
        "sources": {s.rel: s.record() for s in plan.sources}
                   | {s.rel: s.record() for case in plan.cases for s in case.sources},
        "cases": {case.name: {"sources": {s.rel: s.record() for s in case.sources}, "outputs": case.outputs}
                  for case in plan.cases},
        "outputs": dict(sorted(outputs.items())),
    }
    if written or old is None or _strip_time(old) != _strip_time(_jsonable(manifest)):
        atomic_write(to / MANIFEST, bytes_writer(json.dumps(manifest, indent=1).encode() + b"\n"))
    return PrepareResult(preparer.name, to, written, skipped, len(plan.cases), plan.notes)


def _jsonable(value: Any) -> Any:
    """`value` as it reads back from JSON (tuples -> lists, int keys -> str), so that runs compare equal."""
    return json.loads(json.dumps(value))


def _strip_time(manifest: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in manifest.items() if k != "created_utc"}


# ------------------------------------------------------------------------------------ SimpleITK reads
def sitk_shape(path: Path, dataset: str) -> tuple[int, ...]:
    """The array shape SimpleITK gives for `path`, in (z, y, x) order, from the header only."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ConfigError(f"{dataset}: {path} cannot be read by SimpleITK ({_first_line(exc)}); re-download it") \
            from None
    return tuple(reversed(reader.GetSize()))


def sitk_array(path: Path, dataset: str) -> np.ndarray:
    """The voxel array of `path` as SimpleITK reads it: (z, y, x), the file's dtype, no reorientation."""
    import SimpleITK as sitk

    try:
        return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    except RuntimeError as exc:
        raise ConfigError(f"{dataset}: {path} cannot be read by SimpleITK ({_first_line(exc)}); re-download it") \
            from None


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
