"""The three user-facing registries: methods, dataset cards, suites (names -> things, errors list names)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from benchmark.config import DATASETS_DIR, SUITES_DIR, ConfigError, DatasetCard, Suite, load_card, load_suite
from benchmark.registry import Registry, UnknownNameError


def methods() -> Registry:
    from methods import METHODS

    return METHODS


def split_variant(name: str) -> tuple[str, str | None]:
    """'advmim:no-adv' -> ('advmim', 'no-adv'); 'cps' -> ('cps', None)."""
    base, _, preset = name.partition(":")
    return base, (preset or None)


def method_class(name: str) -> type:
    """The class behind a method name, with or without a `:preset` suffix (unknown names list the valid ones)."""
    return methods().get(split_variant(name)[0])


def preset_overrides(name: str) -> dict:
    """The config overrides a `method:preset` name stands for ({} without a preset)."""
    base, preset = split_variant(name)
    cls = methods().get(base)
    if preset is None:
        return {}
    if preset not in cls.presets:
        raise UnknownNameError(f"preset of {base}", preset, list(cls.presets))
    return dict(cls.presets[preset])


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


REPORTED_ONLY = Path(__file__).resolve().parent.parent / "methods" / "reported_only.yaml"
REPORTED_FIELDS = ("name", "display", "paper", "citation")


def reported_only(path: Path = REPORTED_ONLY) -> list[dict]:
    """Methods of the seed tables without an implementation (methods/reported_only.yaml), checked on load."""
    import yaml

    try:
        entries = yaml.safe_load(path.read_text()) or []
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the reported-only methods ({exc})") from exc
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: expected a list of entries with keys {', '.join(REPORTED_FIELDS)}")
    for i, entry in enumerate(entries):
        missing = [k for k in REPORTED_FIELDS if not isinstance(entry, dict) or not entry.get(k)]
        if missing:
            raise ConfigError(f"{path}: entry {i + 1} lacks {', '.join(missing)}")
    names = [e["name"] for e in entries]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: names repeat: {sorted({n for n in names if names.count(n) > 1})}")
    return entries


def expand_method_names(names: Sequence[str], dims: int | None = None) -> list[str]:
    """A suite's or the command line's method list with `all` replaced by every registered method (that
    trains in `dims` spatial dimensions, if given), in registry order, each name once (the order of trials
    and of table rows)."""
    registered = [e.name for e in methods() if dims is None or dims in e.obj.dims]
    return list(dict.fromkeys(n for name in names for n in (registered if name == "all" else [name])))


def describe(kind: str, reported: bool = False) -> list[tuple[str, str]]:
    """(name, one-line description) for `bench ls`; with `reported` (`bench ls methods --all`) the methods
    listing also has the reported-only ones (seed-table methods without an implementation; a name that has
    since been registered is skipped)."""
    if kind == "methods":
        rows = []
        for e in methods():
            rows.append((e.name, e.description))
            rows += [(f"{e.name}:{p}", f"preset: {_overrides_text(o)}") for p, o in e.obj.presets.items()]
        if reported:
            registered = set(methods().names())
            rows += [(r["name"], f"reported only: {r['display']}, {r['paper']} ({r['citation']})")
                     for r in reported_only() if r["name"] not in registered]
        return rows
    if kind == "datasets":
        rows = []
        for n, p in _yaml_names(DATASETS_DIR).items():
            card = load_card(p)
            rows.append((n, f"{card.description}\n{data_status(card)}"))
        return rows
    if kind == "suites":
        return [(n, load_suite(p).description) for n, p in _yaml_names(SUITES_DIR).items()]
    if kind == "networks":
        from benchmark.nets import NETWORKS

        return [(e.name, f"{'/'.join(map(str, e.obj.dims))}D, patch axes multiple of {e.obj.multiple}"
                 f"{', square' if e.obj.square else ''}{'' if e.obj.role == 'segmentation' else f', {e.obj.role} net'}: "
                 f"{e.description}") for e in NETWORKS]
    raise UnknownNameError("listing", kind, ["methods", "datasets", "suites", "networks"])


def preparable_names() -> list[str]:
    """The cards `bench data prepare` converts from the official downloads (benchmark.data.prepare.PREPARERS,
    a Registry or mapping of card names); none while that module is absent."""
    try:
        from benchmark.data.prepare import PREPARERS
    except ImportError:
        return []
    return list(PREPARERS.names() if hasattr(PREPARERS, "names") else PREPARERS)


def data_status(card: DatasetCard, root: Path | None = None) -> str:
    """One line for `bench ls datasets`: is the card's data under the data root (`root`, default
    $BENCH_DATA_ROOT)? Cheap: the root folder and its training list file are looked for, nothing is read."""
    from benchmark.config import data_root

    if card.generator is not None:
        return "synthetic: generated on first use"
    base = data_root(root)
    folder = base / str(card.root)
    if not folder.is_dir():
        how = (f"`bench data prepare {card.name} --from RAW_DIR`" if card.name in preparable_names()
               else "README, 'Real data'")
        return f"data: not found under {base} (expects {card.root}/) - {how}"
    train = card.splits.get("train")
    if isinstance(train, str) and not (folder / train).is_file():
        return f"data: incomplete at {folder} (no {train}) - `bench data check {card.name}` says what is wrong"
    return f"data: present at {folder}"


def _overrides_text(overrides: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in overrides.items()) or "(the defaults)"
