"""Shared fixtures: a per-session cache for generated data, the synthetic dataset, real-data discovery."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated data goes to a per-session folder, never to the user's ~/.cache."""
    cache = tmp_path_factory.mktemp("bench-cache")
    os.environ["BENCH_CACHE_DIR"] = str(cache)
    return cache


@pytest.fixture(scope="session")
def synthetic():
    """The synthetic-acdc card's data, generated once per session and preloaded."""
    from benchmark import catalog
    from benchmark.data.dataset import load_dataset

    card = catalog.get_card("synthetic-acdc")
    return card, load_dataset(card)


@pytest.fixture(scope="session")
def tiny_card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A smaller synthetic card (64x64, 5/1/1 patients) for end-to-end tests: fast metrics on untrained nets."""
    import yaml

    from benchmark.config import DATASETS_DIR

    card = yaml.safe_load((DATASETS_DIR / "synthetic-acdc.yaml").read_text())
    card["name"] = "synthetic-tiny"
    card["generator"].update(size=64, train_patients=5, val_patients=1, test_patients=1, min_slices=4, max_slices=4)
    path = tmp_path_factory.mktemp("cards") / "synthetic-tiny.yaml"
    path.write_text(yaml.safe_dump(card))
    return path


def real_data_root(marker: str) -> Path | None:
    """$BENCH_DATA_ROOT when it holds `marker` (a dataset's list file), else None."""
    root = os.environ.get("BENCH_DATA_ROOT")
    return Path(root) if root and (Path(root) / marker).is_file() else None


def acdc_root() -> Path | None:
    return real_data_root("ACDC/train_slices.list")


requires_acdc = pytest.mark.skipif(
    acdc_root() is None,
    reason="real ACDC not found: set BENCH_DATA_ROOT to a folder containing ACDC/ (SSL4MIS layout)")


def la_root() -> Path | None:
    return real_data_root("LA/train.list")


requires_la = pytest.mark.skipif(
    la_root() is None,
    reason="real LA not found: set BENCH_DATA_ROOT to a folder containing LA/ (UA-MT layout; "
           "../shared/tools/datapack.py unpack writes one)")
