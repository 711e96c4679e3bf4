"""Expand a suite into trials, each with a resolved config and a stable hash (its identity)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from benchmark import catalog
from benchmark.config import (HARNESS_VERSION, ConfigError, DatasetCard, EvaluationProtocol, Suite, TrainConfig,
                              build_dataclass, stable_hash)
from benchmark.data.dataset import open_splits


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

    @property
    def name(self) -> str:
        return f"{self.method}-{self.labeled_patients}p-s{self.seed}"

    def resolved(self) -> dict[str, Any]:
        """Everything that defines the result (no machine paths, no suite name): hashed into the identity."""
        dataset = {**self.card.as_dict(), "evaluation": dataclasses.asdict(self.protocol),
                   "split_fingerprint": self.split_fingerprint}
        if self.card.generator is not None:
            from benchmark.data.synthetic import GENERATOR_VERSION

            dataset["generator_version"] = GENERATOR_VERSION
        return {
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
           train_overrides: dict[str, Any] | None = None) -> list[Trial]:
    """Resolve and validate everything a suite names, before any training starts."""
    where = str(suite.path or suite.name)
    card = catalog.get_card(suite.dataset)
    requested = list(methods) if methods else (["all"] if suite.methods == "all" else list(suite.methods))
    chosen = catalog.expand_method_names(requested)
    classes = {m: catalog.method_class(m) for m in chosen}  # unknown names raise with the valid list
    presets = {m: catalog.preset_overrides(m) for m in chosen}
    for name in (*suite.method_config, *suite.method_train):
        catalog.method_class(name)

    def layered(table: dict[str, dict[str, Any]], method: str, preset: dict[str, Any] | None = None) -> dict[str, Any]:
        """`advmim:no-adv` takes the suite's entry for `advmim`, then the preset's values, then its own entry."""
        base = catalog.split_variant(method)[0]
        return {**table.get(base, {}), **(preset or {}), **(table.get(method, {}) if method != base else {})}

    def train_for(method: str) -> TrainConfig:
        """Suite `train`, then the method's `method_train`, then the command line (which wins)."""
        values = {**suite.train, **layered(suite.method_train, method), **(train_overrides or {})}
        if iterations is not None:
            values["iterations"] = iterations
        label = f"{where}: train" if method not in suite.method_train else f"{where}: train + method_train.{method}"
        cfg = build_dataclass(TrainConfig, values, label)
        cfg.validate(label)
        return cfg

    trains = {m: train_for(m) for m in classes}
    ev = dataclasses.asdict(card.evaluation)
    protocol = build_dataclass(EvaluationProtocol, {**ev, **suite.protocol}, f"{where}: protocol")
    protocol.validate(f"{where}: protocol", card.num_classes)
    splits = open_splits(card, data_root)
    trials = []
    for setting in suite.labeled:
        patients = card.labeled.patients(setting, f"{where}: labeled")
        rows = splits.labeled_rows(patients)
        for method, cls in classes.items():
            cfg = cls.make_config(layered(suite.method_config, method, presets[method]),
                                  f"{where}: method_config.{method}")
            if cls.uses_unlabeled and rows == len(splits.train):
                raise ConfigError(f"{where}: {method} needs unlabeled data but {setting!r} labels all "
                                  f"{rows} training rows; drop that setting or use supervised")
            for seed in (seeds if seeds is not None else suite.seeds):
                trials.append(Trial(suite.name, card, protocol, patients, rows, splits.fingerprint, method,
                                    cls.config_dict(cfg), trains[method], int(seed)))
    return trials
