"""The three user-facing registries: methods, dataset cards, suites (names -> things, errors list names)."""
from __future__ import annotations

from pathlib import Path

from benchmark.config import DATASETS_DIR, SUITES_DIR, ConfigError, DatasetCard, Suite, load_card, load_suite
from benchmark.registry import Registry, UnknownNameError


def methods() -> Registry:
    from methods import METHODS

    return METHODS


def _yaml_names(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def dataset_names() -> list[str]:
    return list(_yaml_names(DATASETS_DIR))


def suite_names() -> list[str]:
    return list(_yaml_names(SUITES_DIR))


def get_card(name: str) -> DatasetCard:
    """A dataset card by name (datasets/<name>.yaml) or by path to a YAML file."""
    if name.endswith((".yaml", ".yml")):
        return load_card(Path(name))
    paths = _yaml_names(DATASETS_DIR)
    if name not in paths:
        raise UnknownNameError("dataset", name, list(paths))
    card = load_card(paths[name])
    if card.name != name:
        raise ConfigError(f"{paths[name]}: name is {card.name!r} but the file is {name}.yaml; make them agree")
    return card


def get_suite(name: str) -> Suite:
    """A suite by name (benchmark/suites/<name>.yaml) or by path to a YAML file."""
    if name.endswith((".yaml", ".yml")):
        return load_suite(Path(name))
    paths = _yaml_names(SUITES_DIR)
    if name not in paths:
        raise UnknownNameError("suite", name, list(paths))
    return load_suite(paths[name])


def describe(kind: str) -> list[tuple[str, str]]:
    """(name, one-line description) for `bench ls`."""
    if kind == "methods":
        return [(e.name, e.description) for e in methods()]
    if kind == "datasets":
        return [(n, load_card(p).description) for n, p in _yaml_names(DATASETS_DIR).items()]
    if kind == "suites":
        return [(n, load_suite(p).description) for n, p in _yaml_names(SUITES_DIR).items()]
    raise UnknownNameError("listing", kind, ["methods", "datasets", "suites"])
