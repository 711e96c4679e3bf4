"""Typed configuration: dataset cards, suites, the Trainer's settings, and the stable trial hash.

Everything a user writes (YAML cards and suites, CLI overrides) is validated here, before any training
starts, and every error names the file, the field and the fix.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from benchmark import REPO_ROOT, __version__


class ConfigError(ValueError):
    """A user-facing configuration problem: one message that names the file, the field and the fix."""


# --------------------------------------------------------------------------------------------- helpers
def read_yaml(path: Path) -> dict[str, Any]:
    """Parse a YAML mapping, turning syntax errors into a ConfigError that names the file."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: malformed YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a YAML mapping at the top level, got {type(data).__name__}")
    return data


def build_dataclass(cls: type, values: Mapping[str, Any], where: str) -> Any:
    """Instantiate dataclass `cls` from `values`, rejecting unknown keys and wrong types by name."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}; valid fields: {', '.join(fields)}")
    kwargs = {}
    for key, value in values.items():
        kind = type(getattr(cls(), key)) if _has_default(fields[key]) else None
        kwargs[key] = _coerce(value, kind, f"{where}.{key}")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _has_default(f: dataclasses.Field) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def _coerce(value: Any, kind: type | None, where: str) -> Any:
    if kind is None or kind is type(None) or value is None or isinstance(value, kind):
        return value
    if kind is tuple and isinstance(value, list):
        return tuple(value)
    if kind is tuple and isinstance(value, int) and not isinstance(value, bool):
        return value  # a shape written as one int (a 2D square): the dataclass expands it
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    raise ConfigError(f"{where}: expected {kind.__name__}, got {value!r}")


def stable_hash(obj: Any, length: int = 12) -> str:
    """A short sha256 of a JSON-able object with sorted keys: the identity of a resolved config."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def _choice(value: str, valid: tuple[str, ...], where: str) -> str:
    if value not in valid:
        raise ConfigError(f"{where}: must be one of {', '.join(valid)} (got {value!r})")
    return value


# ---------------------------------------------------------------------------------------- dataset card
EMPTY_POLICIES = ("worst", "zero_all", "dice0_hd0", "error", "transunet")  # = benchmark.metrics.EMPTY_POLICIES
CHECKPOINT_RULES = ("best_val", "last", "best_test")
HD_UNITS = ("voxel", "mm")
RESIZE = ("nearest", "bilinear_logits", "cubic")  # = benchmark.inference.RESIZE_MODES
#: inference protocol -> the spatial dims of the net it feeds (slicewise: a 2D net on volumes)
INFERENCE_DIMS = {"slicewise": 2, "whole_image": 2, "sliding_window": None}
POSTPROCESS = ("none", "largest_component")


def _ints(value: Any) -> tuple[int, ...] | None:
    return None if value is None else tuple(int(v) for v in (value if isinstance(value, (list, tuple)) else [value]))


def as_patch(value: int | Sequence[int]) -> tuple[int, ...]:
    """A patch as a tuple; one int (a suite's shorthand) is a 2D square."""
    return (value, value) if isinstance(value, int) else tuple(int(v) for v in value)


def as_shape(value: Sequence[int], dims: int, where: str) -> tuple[int, ...]:
    """`value` checked as a spatial shape of `dims` positive ints (a suite's single int is already a 2D square)."""
    shape = tuple(int(v) for v in value)
    if len(shape) != dims or any(v < 1 for v in shape):
        raise ConfigError(f"{where}: expected {dims} positive integers for a {dims}D card (got {list(shape)}; "
                          f"a single integer stands for a 2D square)")
    return shape


@dataclass(frozen=True)
class EvaluationProtocol:
    """How a card's test metrics are computed; every field is printed with the results.

    empty_prediction (a class absent from the prediction; see benchmark.metrics):
      worst      Dice = Jaccard = 0, HD95 = ASD = the image diagonal: honest, our default
      zero_all   all four metrics 0 (SS-Net / BCP / CML test_ACDC.py)
      dice0_hd0  Dice 0, HD95 0 (SSL4MIS val_2D.py; Jaccard and ASD 0 as well)
      error      raise, like medpy in SSL4MIS test_2D_fully.py
      transunet  TransUNet's Synapse test: prediction on a class absent from the reference Dice 1 / HD95 0,
                 empty prediction 0 / 0 (Jaccard as Dice, ASD as HD95)
    resize (slicewise, whole_image): nearest (zoom order 0 in and out; SSL4MIS), bilinear_logits (UniMatch),
      cubic (zoom order 3 of the image in, argmax, order 0 of the label map out; TransUNet's Synapse test)
    checkpoint `best_test` selects on the test split: it exists only to reproduce papers that did so, and
    tables mark it as leaking.
    """

    inference: str = "slicewise"        # slicewise (2D nets on 3D volumes) | sliding_window (n-D) | whole_image (2D images)
    resize: str = "nearest"             # slicewise: nearest (SSL4MIS) | bilinear_logits (UniMatch) | cubic (TransUNet)
    patch: tuple[int, ...] | None = None   # inference patch; slicewise default = the training patch
    stride: tuple[int, ...] | None = None  # sliding_window only (LA: 18, 18, 4)
    classes: tuple[int, ...] = (1, 2, 3)  # foreground classes scored, mean over them
    hd_units: str = "voxel"             # every reference script passes no spacing (PROTOCOLS.md §5.4)
    spacing: tuple[float, ...] | None = None
    empty_prediction: str = "worst"
    postprocess: str = "none"           # none | largest_component (per class; SS-Net LA `--nms 1`)
    checkpoint: str = "best_val"        # which checkpoint the table reports (best_val and last are always tested)
    val_split: str | None = "val"       # None: the card has no validation split (no best-on-val selection)
    test_split: str = "test"            # the list the final test scores: test | val (dev runs; checkpoint last)

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", _ints(self.classes))
        patch = _ints(self.patch)
        object.__setattr__(self, "patch", patch * 2 if patch is not None and len(patch) == 1 else patch)  # int: square
        object.__setattr__(self, "stride", _ints(self.stride))
        if self.spacing is not None:
            object.__setattr__(self, "spacing", tuple(float(v) for v in self.spacing))

    def validate(self, where: str, num_classes: int, spatial_dims: int = 2) -> None:
        """Check every field against the card: classes, units, and the inference protocol's shapes."""
        _choice(self.inference, tuple(INFERENCE_DIMS), f"{where}.inference")
        _choice(self.resize, RESIZE, f"{where}.resize")
        _choice(self.hd_units, HD_UNITS, f"{where}.hd_units")
        _choice(self.empty_prediction, EMPTY_POLICIES, f"{where}.empty_prediction")
        _choice(self.postprocess, POSTPROCESS, f"{where}.postprocess")
        _choice(self.checkpoint, CHECKPOINT_RULES, f"{where}.checkpoint")
        bad = [c for c in self.classes if not 0 < int(c) < num_classes]
        if bad or not self.classes:
            raise ConfigError(f"{where}.classes: foreground classes must lie in 1..{num_classes - 1} (got {list(self.classes)})")
        if self.hd_units == "mm" and not self.spacing:
            raise ConfigError(f"{where}: hd_units is 'mm' but no spacing is given; set evaluation.spacing or use hd_units: voxel")
        _choice(self.test_split, ("test", "val"), f"{where}.test_split")
        if self.test_split == "val" and (self.checkpoint == "best_val" or not self.val_split):
            raise ConfigError(f"{where}.test_split: 'val' tests on the validation list, which needs val_split and "
                              f"a checkpoint not selected on it (checkpoint: last); got val_split "
                              f"{self.val_split!r}, checkpoint {self.checkpoint!r}")
        if self.checkpoint == "best_val" and not self.val_split:
            raise ConfigError(f"{where}.checkpoint: best_val needs a validation split but val_split is null; "
                              f"use checkpoint: last (or best_test to reproduce a paper that selected on test)")
        net_dims = INFERENCE_DIMS[self.inference]
        if net_dims is not None and net_dims != spatial_dims:
            raise ConfigError(f"{where}.inference: {self.inference} feeds a {net_dims}D network but the card's "
                              f"spatial_dims is {spatial_dims}; use sliding_window for {spatial_dims}D networks")
        if self.patch is not None:
            as_shape(self.patch, spatial_dims, f"{where}.patch")
        if self.inference == "sliding_window":
            example = "LA: patch [112, 112, 80], stride [18, 18, 4]"
            if not (self.patch and self.stride):
                raise ConfigError(f"{where}: sliding_window needs patch and stride of {spatial_dims} integers each ({example})")
            as_shape(self.stride, spatial_dims, f"{where}.stride")
            if any(not 0 < s <= p for s, p in zip(self.stride, self.patch)):
                raise ConfigError(f"{where}: stride larger than the patch (or < 1) leaves voxels unseen: "
                                  f"patch {list(self.patch)}, stride {list(self.stride)}")

    @property
    def scoring_hash(self) -> str:
        """Identity of how test metrics are computed, whichever checkpoint a table shows."""
        return stable_hash({k: v for k, v in dataclasses.asdict(self).items() if k != "checkpoint"}, 8)

    @property
    def leaks_test(self) -> bool:
        return self.checkpoint == "best_test"

    def describe(self) -> str:
        inference = (f"sliding window {self.patch} stride {self.stride}" if self.inference == "sliding_window"
                     else f"{self.inference.replace('_', ' ')} {self.resize} resize")
        ckpt = "best_test (selected ON THE TEST SET: leaks)" if self.leaks_test else self.checkpoint
        return (f"checkpoint={ckpt}, HD95/ASD in {self.hd_units}s, empty prediction -> {self.empty_prediction}, "
                f"{inference}, post-processing {self.postprocess}, split={self.test_split}")


LABELED_UNITS = ("patient", "case")


@dataclass(frozen=True)
class LabeledRule:
    """How 'K labeled' maps to rows of the training list: the first rows covering K patients (unit patient:
    rows are slices named by `patient_pattern`), or the first K rows (unit case: a row is a scan or an image)."""

    unit: str = "patient"
    patient_pattern: str = r"^(patient\d+)_"
    table: dict[int, int] = field(default_factory=dict)   # patients -> slices, checked against the list
    aliases: dict[str, int] = field(default_factory=dict)  # paper names ("3%", "5%") -> patients

    def patients(self, setting: int | str, where: str) -> int:
        """Resolve a labeled setting (a count of `unit`s or a paper alias) to that count."""
        if isinstance(setting, int) and not isinstance(setting, bool):
            return setting
        text = str(setting).strip()
        if text.isdigit():
            return int(text)
        if text in self.aliases:
            return self.aliases[text]
        raise ConfigError(f"{where}: unknown labeled setting {setting!r}; use a {self.unit} count or one of "
                          f"{', '.join(f'{k} (= {v} {self.unit}s)' for k, v in self.aliases.items()) or 'no aliases'}")


@dataclass(frozen=True)
class DatasetCard:
    name: str
    description: str
    path: Path
    format: str
    root: str | None
    classes: tuple[str, ...]
    splits: dict[str, str]
    labeled: LabeledRule
    evaluation: EvaluationProtocol
    in_channels: int = 1
    spatial_dims: int = 2          # of the training samples and the nets: 2 (ACDC slices, ISIC images) or 3 (LA)
    reader: dict[str, Any] = field(default_factory=dict)        # the format's options (e.g. image-folder's folders)
    pinned_lists: dict[str, str] = field(default_factory=dict)  # split -> a list in the repo the root's must equal
    citation: str = ""
    generator: dict[str, Any] | None = None

    @property
    def has_val(self) -> bool:
        return self.splits.get("val") is not None and bool(self.evaluation.val_split)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def as_dict(self) -> dict[str, Any]:
        """The card's content for hashing and logging (no machine paths)."""
        d = dataclasses.asdict(self)
        d.pop("path")
        return d


def load_card(path: Path) -> DatasetCard:
    """Read and validate a dataset card."""
    path = Path(path)
    return parse_card(read_yaml(path), path)


def parse_card(raw: dict[str, Any], path: Path) -> DatasetCard:
    """Validate a card's mapping (from its YAML, or from a run's resolved config); `path` names it in errors."""
    raw = {k: v for k, v in raw.items() if k not in ("split_fingerprint", "generator_version")}
    where = str(path)
    required = ("name", "format", "classes", "splits", "evaluation")
    missing = [k for k in required if k not in raw]
    if missing:
        raise ConfigError(f"{where}: missing required field(s) {', '.join(missing)}; see datasets/acdc.yaml for a complete card")
    known = {"name", "description", "citation", "format", "root", "generator", "in_channels", "spatial_dims",
             "reader", "pinned_lists", "classes", "splits", "labeled", "evaluation"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}; valid fields: {', '.join(sorted(known))}")
    from benchmark.data.formats import READERS

    _choice(raw["format"], tuple(READERS.names()), f"{where}: format")
    reader_options = raw.get("reader") or {}
    if not isinstance(reader_options, dict):
        raise ConfigError(f"{where}: reader must be a mapping of {raw['format']} options (got {reader_options!r})")
    READERS.get(raw["format"])(Path("."), reader_options, int(raw.get("in_channels", 1)), where)  # options checked now
    dims = raw.get("spatial_dims", 2)
    if dims not in (2, 3):
        raise ConfigError(f"{where}: spatial_dims must be 2 or 3 (got {dims!r})")
    classes = raw["classes"]
    if not isinstance(classes, list) or len(classes) < 2:
        raise ConfigError(f"{where}: classes must be a list of at least 2 names, background first (got {classes!r})")
    if raw.get("root") is None and raw.get("generator") is None:
        raise ConfigError(f"{where}: give either root (a folder under BENCH_DATA_ROOT) or generator (synthetic data)")
    splits = raw["splits"]
    if not isinstance(splits, dict) or not {"train", "test"} <= set(splits) or set(splits) - {"train", "val", "test"}:
        raise ConfigError(f"{where}: splits must map train, test and optionally val to list files or rules "
                          f"(got {splits!r}); a card without a validation split sets val: null or leaves it out")
    splits = {"val": None, **splits}
    lab = dict(raw.get("labeled") or {})
    lab["table"] = {int(k): int(v) for k, v in (lab.get("table") or {}).items()}
    lab["aliases"] = {str(k): int(v) for k, v in (lab.get("aliases") or {}).items()}
    labeled = build_dataclass(LabeledRule, lab, f"{where}: labeled")
    _choice(labeled.unit, LABELED_UNITS, f"{where}: labeled.unit")
    ev = dict(raw["evaluation"] or {})
    if splits["val"] is None:
        ev.setdefault("val_split", None)
    evaluation = build_dataclass(EvaluationProtocol, ev, f"{where}: evaluation")
    evaluation.validate(f"{where}: evaluation", len(classes), dims)
    if evaluation.val_split and splits["val"] is None:
        raise ConfigError(f"{where}: evaluation.val_split is {evaluation.val_split!r} but splits has no val; "
                          f"set evaluation.val_split: null (and checkpoint: last)")
    pinned = raw.get("pinned_lists") or {}
    if not isinstance(pinned, dict) or set(pinned) - set(splits):
        raise ConfigError(f"{where}: pinned_lists must map split names to list files in the repo (got {pinned!r})")
    return DatasetCard(
        name=str(raw["name"]), description=str(raw.get("description", "")).strip(), path=path,
        format=raw["format"], root=raw.get("root"), classes=tuple(map(str, classes)),
        splits={k: (str(v) if isinstance(v, str) else v) for k, v in splits.items()}, labeled=labeled,
        evaluation=evaluation, in_channels=int(raw.get("in_channels", 1)), spatial_dims=int(dims),
        reader=dict(reader_options), pinned_lists={k: str(v) for k, v in pinned.items()},
        citation=str(raw.get("citation", "")).strip(),
        generator=raw.get("generator"),
    )


def data_root(override: str | Path | None = None) -> Path:
    """Where real datasets live: --data-root, else $BENCH_DATA_ROOT, else ./data."""
    return Path(override or os.environ.get("BENCH_DATA_ROOT") or "data").expanduser().resolve()


def cache_root() -> Path:
    """Where generated data is written once: $BENCH_CACHE_DIR, else ~/.cache/ssl-medseg-bench."""
    return Path(os.environ.get("BENCH_CACHE_DIR") or Path.home() / ".cache" / "ssl-medseg-bench").expanduser()


# ----------------------------------------------------------------------------------- training settings
@dataclass(frozen=True)
class TrainConfig:
    """The Trainer's settings. Defaults are SSL4MIS's ACDC defaults (PROTOCOLS.md §0.6, §3.1)."""

    iterations: int = 30000
    batch_size: int = 24
    labeled_batch_size: int = 12
    patch_size: tuple[int, ...] = (256, 256)   # one int in a suite = a 2D square
    network: str = "unet"
    network_options: dict[str, Any] = field(default_factory=dict)  # to the default network (e.g. vnet width)
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_schedule: str = "poly"        # poly (SSL4MIS, UniMatch) | constant (BCP, SS-Net, CML) | step
    poly_power: float = 0.9
    step_size: int = 2500            # for lr_schedule=step (LA protocol: x0.1 every 2500)
    augmentation: str = "ssl4mis-2021"
    eval_every: int = 200
    checkpoint_every: int = 1000
    log_every: int = 50
    num_workers: int = 2
    amp: str = "auto"                # auto: bf16 autocast on CUDA, fp32 on CPU | off (every reference: fp32)

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", as_patch(self.patch_size))

    def precision(self, device_type: str) -> str:
        """What the Trainer trains in on a device of this type: 'bf16' (autocast) or 'fp32'."""
        return resolved_precision(self.amp, device_type)

    @property
    def spatial_dims(self) -> int:
        return len(self.patch_size)

    def validate(self, where: str, spatial_dims: int | None = None) -> None:
        if self.iterations < 1:
            raise ConfigError(f"{where}.iterations must be >= 1 (got {self.iterations})")
        if not 0 < self.labeled_batch_size <= self.batch_size:
            raise ConfigError(f"{where}: need 0 < labeled_batch_size <= batch_size "
                              f"(got {self.labeled_batch_size} and {self.batch_size})")
        as_shape(self.patch_size, spatial_dims or self.spatial_dims, f"{where}.patch_size")
        _choice(self.optimizer, ("sgd", "adam", "adamw"), f"{where}.optimizer")
        _choice(self.lr_schedule, ("poly", "constant", "step"), f"{where}.lr_schedule")
        _choice(self.amp, ("auto", "off"), f"{where}.amp")
        for name in ("eval_every", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}.{name} must be >= 1")


def resolved_precision(amp: str, device_type: str) -> str:
    """`train.amp` resolved on a device type ('cuda', 'cpu', 'mps'): auto = bf16 autocast on CUDA only."""
    return "bf16" if amp == "auto" and device_type.split(":")[0] == "cuda" else "fp32"


# ------------------------------------------------------------------------------------------------ suite
@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    dataset: str
    labeled: tuple[int | str, ...]
    methods: tuple[str, ...] | str
    seeds: tuple[int, ...]
    train: dict[str, Any]
    method_config: dict[str, dict[str, Any]]
    method_train: dict[str, dict[str, Any]]   # per-method Trainer overrides (e.g. a reference's lr schedule)
    protocol: dict[str, Any]
    path: Path | None = None
    # per-method evaluation overrides where a reference tests differently (LA: largest component on or off)
    method_protocol: dict[str, dict[str, Any]] = field(default_factory=dict)
    # start of every Swin-UNet the suite trains: imagenet | none | FILE (benchmark/weights.py); None: each
    # method's default (none). A method_config / network_options entry, then --pretrained, override it.
    pretrained: str | None = None


#: suite tables whose entries are merged one level deeper by `extends` (per method: field by field)
PER_METHOD_TABLES = ("method_config", "method_train", "method_protocol")


def read_suite_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A suite's mapping with its `extends: <suite>` resolved (a suite file in the same folder): the base's
    fields, then this file's; `train` and `protocol` merge field by field, and the per-method tables method by
    method and field by field."""
    raw = read_yaml(path)
    if "extends" not in raw:
        return raw
    base_path = Path(path).parent / f"{raw['extends']}.yaml"
    if not base_path.is_file():
        raise ConfigError(f"{path}: extends {raw['extends']!r}, but there is no {base_path}; name a suite of "
                          f"the same folder")
    if base_path.resolve() in seen:
        raise ConfigError(f"{path}: extends forms a cycle ({' -> '.join(p.name for p in seen)})")
    base = read_suite_yaml(base_path, (*seen, Path(path).resolve()))
    merged = {**base, **{k: v for k, v in raw.items() if k != "extends"}}
    for key in ("train", "protocol"):
        merged[key] = {**(base.get(key) or {}), **(raw.get(key) or {})}
    for key in PER_METHOD_TABLES:
        table = {m: dict(v or {}) for m, v in (base.get(key) or {}).items()}
        for m, v in (raw.get(key) or {}).items():
            table[m] = {**table.get(m, {}), **(v or {})}
        merged[key] = table
    return merged


def load_suite(path: Path) -> Suite:
    """Read a suite YAML (resolving `extends`); names inside are resolved later (registry), values validated at
    expansion."""
    raw = read_suite_yaml(path)
    where = str(path)
    known = {"name", "description", "dataset", "labeled", "methods", "seeds", "train", "method_config",
             "method_train", "method_protocol", "protocol", "pretrained"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}; valid fields: {', '.join(sorted(known))}")
    missing = [k for k in ("name", "dataset", "labeled", "methods", "seeds") if k not in raw]
    if missing:
        raise ConfigError(f"{where}: missing required field(s) {', '.join(missing)}")
    methods = raw["methods"]
    if methods != "all" and not (isinstance(methods, list) and methods):
        raise ConfigError(f"{where}: methods must be 'all' or a non-empty list of method names")
    seeds = raw["seeds"]
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) for s in seeds)):
        raise ConfigError(f"{where}: seeds must be a non-empty list of integers (got {seeds!r})")
    labeled = raw["labeled"] if isinstance(raw["labeled"], list) else [raw["labeled"]]
    pretrained = raw.get("pretrained")
    if pretrained is not None and not isinstance(pretrained, str):
        raise ConfigError(f"{where}: pretrained must be imagenet, none or the path of a weights file "
                          f"(got {pretrained!r})")
    return Suite(
        name=str(raw["name"]), description=str(raw.get("description", "")).strip(), dataset=str(raw["dataset"]),
        labeled=tuple(labeled), methods=methods if methods == "all" else tuple(methods), seeds=tuple(seeds),
        train=dict(raw.get("train") or {}), method_config=dict(raw.get("method_config") or {}),
        method_train=dict(raw.get("method_train") or {}),
        protocol=dict(raw.get("protocol") or {}), path=Path(path),
        method_protocol=dict(raw.get("method_protocol") or {}), pretrained=pretrained,
    )


HARNESS_VERSION = __version__
DATASETS_DIR = REPO_ROOT / "datasets"
SUITES_DIR = Path(__file__).resolve().parent / "suites"
