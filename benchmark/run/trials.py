"""Expand a suite into trials, each with a resolved config and a stable hash (its identity)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from benchmark import catalog
from benchmark.config import (HARNESS_VERSION, ConfigError, DatasetCard, EvaluationProtocol, Suite, TrainConfig,
                              build_dataclass, stable_hash)
from benchmark.data.augment import AUGMENTATIONS
from benchmark.data.dataset import generator_of, open_splits
from benchmark.nets import NETWORKS, check_network
from benchmark.weights import method_overrides_with_weights, train_values_with_weights


@dataclass(frozen=True)
class Trial:
    """One cell of a suite: method x labeled setting x seed, fully resolved."""

    suite: str
    card: DatasetCard
    protocol: EvaluationProtocol
    labeled_patients: int
    labeled_rows: int
    split_fingerprint: str
    method: str
    method_config: dict[str, Any]
    train: TrainConfig
    seed: int
    test_cases: int | None = None   # smoke runs: score only the first N test cases (tagged, kept out of tables)

    @property
    def name(self) -> str:
        unit = "p" if self.card.labeled.unit == "patient" else "c"   # 3 patients: 3p; 4 scans / images: 4c
        return f"{self.method}-{self.labeled_patients}{unit}-s{self.seed}"

    def resolved(self) -> dict[str, Any]:
        """Everything that defines the result (no machine paths, no suite name): hashed into the identity."""
        dataset = {**self.card.as_dict(), "evaluation": dataclasses.asdict(self.protocol),
                   "split_fingerprint": self.split_fingerprint}
        if self.card.generator is not None:
            dataset["generator_version"] = generator_of(self.card).version
        smoke = {"test_cases": self.test_cases} if self.test_cases else {}
        return smoke | {
            "harness_version": HARNESS_VERSION,
            "dataset": dataset,
            "labeled": {"patients": self.labeled_patients, "rows": self.labeled_rows},
            "method": {"name": self.method, **self.method_config},
            "train": dataclasses.asdict(self.train),
            "seed": self.seed,
        }

    @property
    def config_hash(self) -> str:
        return stable_hash(self.resolved())

    @property
    def cell_hash(self) -> str:
        """Identity of the table cell: the resolved config without the seed (seeds of one cell aggregate)."""
        return stable_hash({k: v for k, v in self.resolved().items() if k != "seed"})


def expand(suite: Suite, methods: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
           iterations: int | None = None, data_root: str | Path | None = None,
           train_overrides: dict[str, Any] | None = None, test_cases: int | None = None) -> list[Trial]:
    """Resolve and validate everything a suite names, before any training starts: method names and configs,
    the Trainer's settings against the card (patch dims, network, augmentation) and each method's needs."""
    where = str(suite.path or suite.name)
    card = catalog.get_card(suite.dataset)
    requested = list(methods) if methods else (["all"] if suite.methods == "all" else list(suite.methods))
    chosen = catalog.expand_method_names(requested, card.spatial_dims)
    classes = {m: catalog.method_class(m) for m in chosen}  # unknown names raise with the valid list
    if not classes:
        raise ConfigError(f"{where}: no registered method trains in {card.spatial_dims}D (card {card.name})")
    if test_cases is not None and test_cases < 1:
        raise ConfigError(f"--test-cases must be >= 1 (got {test_cases})")
    presets = {m: catalog.preset_overrides(m) for m in chosen}
    for name in (*suite.method_config, *suite.method_train, *suite.method_protocol):
        catalog.method_class(name)

    def train_for(method: str) -> TrainConfig:
        """Suite `train`, then the method's `method_train`, then the command line (which wins)."""
        values = {**suite.train, **method_overrides(suite.method_train, method), **(train_overrides or {})}
        if iterations is not None:
            values["iterations"] = iterations
        label = f"{where}: train" if method not in suite.method_train else f"{where}: train + method_train.{method}"
        values = train_values_with_weights(values, suite.pretrained, label)   # missing weights stop here
        cfg = build_dataclass(TrainConfig, values, label)
        cfg.validate(label, card.spatial_dims)
        check_trainable(method, classes[method], cfg, card.spatial_dims, label)
        return cfg

    # the suite's `pretrained` for the methods with a Swin-UNet of their own; missing weights stop here
    overrides = {m: method_overrides_with_weights(cls, method_overrides(suite.method_config, m, presets[m]),
                                                  suite.pretrained, f"{where}: {m}")
                 for m, cls in classes.items()}
    trains = {m: train_for(m) for m in classes}
    protocols = {m: suite_protocol(suite, card, m) for m in classes}
    splits = open_splits(card, data_root)
    trials = []
    for setting in suite.labeled:
        patients = card.labeled.patients(setting, f"{where}: labeled")
        rows = splits.labeled_rows(patients)
        for method, cls in classes.items():
            cfg = cls.make_config(overrides[method], f"{where}: method_config.{method}")
            cls.check(cfg, trains[method], f"{where}: {method}")
            if cls.draws_unlabeled(cfg) and rows == len(splits.train):
                raise ConfigError(f"{where}: {method} needs unlabeled data but {setting!r} labels all "
                                  f"{rows} training rows; drop that setting or use supervised")
            for seed in (seeds if seeds is not None else suite.seeds):
                trials.append(Trial(suite.name, card, protocols[method], patients, rows, splits.fingerprint, method,
                                    cls.config_dict(cfg), trains[method], int(seed), test_cases))
    return trials


def check_data(trials: Sequence[Trial], data_root: str | Path | None = None, keep: bool = True) -> None:
    """Read every case the trials use, before any run is opened: a bad file (unreadable, wrong keys or shape,
    non-finite pixels, labels outside the classes) or a setting whose labeled rows hold no foreground raises
    ConfigError naming it. `keep` leaves the data in the per-process cache, for trials run in this process."""
    from benchmark.data import dataset

    for card in {t.card.name: t.card for t in trials}.values():
        data = dataset.load_dataset(card, data_root)
        for rows in sorted({t.labeled_rows for t in trials if t.card.name == card.name}):
            dataset.check_labeled_rows(data, rows, str(card.path or card.name))
    if not keep:
        dataset.clear_cache()


def method_overrides(table: dict[str, dict[str, Any]], method: str, preset: dict[str, Any] | None = None
                     ) -> dict[str, Any]:
    """A suite table's entry for `method`: `advmim:no-adv` takes the entry for `advmim`, then the preset's
    values, then its own entry."""
    base = catalog.split_variant(method)[0]
    return {**table.get(base, {}), **(preset or {}), **(table.get(method, {}) if method != base else {})}


def suite_protocol(suite: Suite, card: DatasetCard, method: str | None = None) -> EvaluationProtocol:
    """The card's evaluation, then the suite's `protocol`, then (for `method`) its `method_protocol` entry."""
    where = str(suite.path or suite.name)
    own = method_overrides(suite.method_protocol, method) if method else {}
    label = f"{where}: protocol" + (f" + method_protocol.{method}" if own else "")
    protocol = build_dataclass(EvaluationProtocol, {**dataclasses.asdict(card.evaluation), **suite.protocol, **own},
                               label)
    protocol.validate(label, card.num_classes, card.spatial_dims)
    return protocol


def check_trainable(method: str, cls: type, train: TrainConfig, dims: int, where: str) -> None:
    """ConfigError, naming the field, when `method` cannot train on a `dims`-D card with these settings."""
    if dims not in cls.dims:
        raise ConfigError(f"{where}: {method} trains in {'/'.join(map(str, cls.dims))}D only and the card is {dims}D; "
                          f"drop it from the suite ('all' skips it)")
    if cls.networks is not None and train.network not in cls.networks:
        raise ConfigError(f"{where}.network: {method} builds its own network and accepts network "
                          f"{' or '.join(map(repr, cls.networks))} only (got {train.network!r})")
    role = NETWORKS.get(train.network).role
    if role != "segmentation":
        what = "a method's own variant, built by that method" if role == "method" else f"a {role}"
        raise ConfigError(f"{where}.network: {train.network!r} is {what}, not a segmentation network to train "
                          f"(bench ls networks: the ones without a role)")
    for net in (train.network, *cls.also_builds):
        check_network(net, train.patch_size, method, where)
    rule = AUGMENTATIONS.get(train.augmentation)
    if dims not in rule.dims:
        raise ConfigError(f"{where}.augmentation: {train.augmentation!r} is a {'/'.join(map(str, rule.dims))}D rule and "
                          f"the card is {dims}D; valid for {dims}D: "
                          f"{', '.join(e.name for e in AUGMENTATIONS if dims in e.obj.dims)}")
