"""`bench data prepare NAME --from RAW [--to DIR] [--lists DIR]`: the preprocessed layouts the seed papers'
code trained on, written from the official downloads (one module per dataset; the shared run in `common`).

| name | default `to` | split-list files read (pinned in `datasets/splits/<name>/`, replaced by `--lists`) |
|---|---|---|
| `synapse` | `Synapse` | `train.txt` (slice names), `test_vol.txt` (case names) |
| `isic` | `ISIC2018` | none pinned (our seeded split is computed); `--lists`: `train.list` and `test.list` (ids) |
| `promise12` | `PROMISE12` | `train.list`, `val.list`, `test.list` (case names) |
| `brats2019` | `BraTS2019` | `train.txt`, `val.txt`, `test.txt` (case ids) |
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmark.config import ConfigError, data_root
from benchmark.data.prepare.brats2019 import BraTS2019Preparer
from benchmark.data.prepare.common import Preparer, PrepareResult, run_prepare
from benchmark.data.prepare.isic import ISICPreparer
from benchmark.data.prepare.promise12 import Promise12Preparer
from benchmark.data.prepare.synapse import SynapsePreparer
from benchmark.registry import Registry

PREPARERS: Registry[type[Preparer]] = Registry("dataset")
for _cls, _what in ((SynapsePreparer, "Synapse CT: TransUNet train_npz/ + test_vol_h5/"),
                    (ISICPreparer, "ISIC 2018 Task 1: image folders (byte copies) + our seeded 1838/756 split"),
                    (Promise12Preparer, "PROMISE12: ABD's 224 2D preparation in the SSL4MIS h5 layout"),
                    (BraTS2019Preparer, "BraTS 2019: SSL4MIS FLAIR h5 volumes, whole tumour")):
    PREPARERS.add(_cls.name, _cls, _what)

__all__ = ["PREPARERS", "PrepareResult", "prepare_dataset"]


def prepare_dataset(name: str, raw: Path, to: Path | None = None, lists: Path | None = None,
                    progress: bool = True, options: dict[str, Any] | None = None) -> PrepareResult:
    """Prepare dataset `name` from the raw folder `raw` into `to` (default: the data root / the dataset's root).

    `lists` is a folder of split lists replacing the pinned ones of the same names (see the module table);
    `options` go to the preparer (brats2019: `box`). Unknown names raise UnknownNameError listing the valid ones.
    """
    cls = PREPARERS.get(name)
    try:
        preparer = cls(**(options or {}))
    except TypeError as exc:
        raise ConfigError(f"prepare {name}: bad option(s) {sorted(options or {})} ({exc})") from None
    target = Path(to) if to is not None else data_root() / cls.root
    return run_prepare(preparer, Path(raw), target, lists=lists, progress=progress)
