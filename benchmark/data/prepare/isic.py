"""ISIC 2018 Task 1 (training set) -> the `image-folder` layout, byte-for-byte, plus our pinned split.

Raw (PROTOCOLS-3D-DATASETS.md §C.2; archive names from constantinpape/torch-em @ 30a7b56 :
`torch_em/data/datasets/medical/isic.py`): `ISIC2018_Task1-2_Training_Input.zip` (`ISIC_<id>.jpg`) and
`ISIC2018_Task1_Training_GroundTruth.zip` (`ISIC_<id>_segmentation.png`: single-channel 8-bit, same size as its
image, 0 = background, 255 = lesion), or the same two folders unzipped, in `--from`. Other members (LICENSE,
ATTRIBUTION, `__MACOSX/`) are ignored. Unzipped folders are used when both are present, else the archives.

Written: `ISIC2018_Task1-2_Training_Input/ISIC_<id>.jpg` and `ISIC2018_Task1_Training_GroundTruth/
ISIC_<id>_segmentation.png`, copies of the official bytes (no re-encoding), and `splits/train.list`,
`splits/test.list` of ids (`<id>` = the 7 digits: the card's `image_pattern` is `ISIC_{id}.jpg`).

The split is OURS (the papers' 1838 / 756 lists are not public): the sorted ids are permuted with
`numpy.random.default_rng(2018).permutation`; the first round(n * 1838 / 2594) are train (exactly 1838 of the
official 2594), the rest test. `train.list` keeps the permuted order, so its first 55 / 181 rows (SemSim's 3 % / 10 %)
are a seeded random subset; `test.list` is sorted. `--lists DIR` with `train.list` and `test.list` (both) replaces
the split and copies only the ids they name (rows `0000000` or `ISIC_0000000`; written as bare ids, in their order).
"""
from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmark.config import ConfigError
from benchmark.data.prepare.common import (Case, Plan, Preparer, Source, SplitList, Writer, bytes_writer, disjoint,
                                           list_bytes, missing_error)

IMAGES = "ISIC2018_Task1-2_Training_Input"
MASKS = "ISIC2018_Task1_Training_GroundTruth"
OFFICIAL_TRAINING = 2594           # images in the official training set (SemSim §IV-A, AdvMIM §3)
PAPER_TRAIN = 1838                 # the papers' train part; the other 756 are their evaluation set
SEED = 2018
MASK_VALUES = (0, 255)
_IMAGE = re.compile(r"(?:^|/)ISIC_(\d+)\.jpg$")
_MASK = re.compile(r"(?:^|/)ISIC_(\d+)_segmentation\.png$")


def pinned_split(ids: list[str]) -> tuple[list[str], list[str]]:
    """Our split: sorted ids permuted with default_rng(SEED); the first round(n * 1838 / 2594) train (that order),
    the rest test (sorted)."""
    order = [str(i) for i in np.random.default_rng(SEED).permutation(np.array(sorted(ids)))]
    n_train = round(len(ids) * PAPER_TRAIN / OFFICIAL_TRAINING)
    return order[:n_train], sorted(order[n_train:])


class _Store:
    """The raw files of one kind (images or masks): a folder or a zip archive; id -> member name."""

    def __init__(self, raw: Path, stem: str, pattern: re.Pattern[str]) -> None:
        folder, archive = raw / stem, raw / f"{stem}.zip"
        self.zip: zipfile.ZipFile | None = None
        if folder.is_dir():
            self.base, self.label = folder, f"{stem}/"
            names = [p.name for p in folder.iterdir() if p.is_file()]
        elif archive.is_file():
            try:
                self.zip = zipfile.ZipFile(archive)
            except (OSError, zipfile.BadZipFile) as exc:
                raise ConfigError(f"isic: {archive} cannot be opened as a zip archive ({exc}); re-download it")
            self.base, self.label = archive, f"{archive.name}:"
            names = [n for n in self.zip.namelist() if not n.startswith("__MACOSX/") and not n.endswith("/")]
        else:
            raise ConfigError(f"isic: neither {folder} nor {archive} exists; put the official training archive "
                              f"{stem}.zip (or its unzipped folder) in --from")
        self.members = {m.group(1): n for n in names if (m := pattern.search(n))}
        self.source_files = [Source.of(archive, raw)] if self.zip else []

    def source(self, ident: str, raw: Path) -> Source:
        name = self.members[ident]
        if self.zip is None:
            return Source.of(self.base / name, raw)
        info = self.zip.getinfo(name)
        return Source(f"{self.label}{name}", info.file_size, None, info.CRC)

    def where(self, ident: str) -> str:
        return f"{self.label}{self.members[ident]}"

    def read(self, ident: str) -> bytes:
        name = self.members[ident]
        return self.zip.read(name) if self.zip else (self.base / name).read_bytes()


class ISICPreparer(Preparer):
    name = "isic"
    root = "ISIC2018"
    list_files = ("train.list", "test.list")
    pinned = False

    def parameters(self) -> dict[str, Any]:
        return {"copy": "byte-for-byte", "mask_values": list(MASK_VALUES), "split_seed": SEED,
                "split": f"numpy default_rng(seed).permutation(sorted ids); first round(n * {PAPER_TRAIN} / "
                         f"{OFFICIAL_TRAINING}) train"}

    def plan(self, raw: Path, lists: dict[str, SplitList]) -> Plan:
        images, masks = _Store(raw, IMAGES, _IMAGE), _Store(raw, MASKS, _MASK)
        notes: list[str] = []
        if lists:
            if set(lists) != set(self.list_files):
                given = ", ".join(sorted(lists))
                raise ConfigError(f"isic: --lists holds only {given}; give both train.list and test.list "
                                  f"(ids like 0000000, one per line)")
            lists = {n: SplitList([r.removeprefix("ISIC_") for r in s.rows], s.content, s.path)
                     for n, s in lists.items()}
            disjoint(lists, list(self.list_files))
            train, test = lists["train.list"].rows, lists["test.list"].rows
            wanted = train + test
            missing = [f"{IMAGES}/ISIC_{i}.jpg" for i in wanted if i not in images.members]
            missing += [f"{MASKS}/ISIC_{i}_segmentation.png" for i in wanted if i not in masks.members]
            if missing:
                raise missing_error("isic", raw, missing, 2 * len(wanted), "the folder holding the two official "
                                    "training archives (or their unzipped folders)")
            split_files = {"splits/train.list": list_bytes(train), "splits/test.list": list_bytes(test)}
            notes.append(f"split from --lists: {len(train)} train / {len(test)} test")
        else:
            unmatched = sorted(set(images.members) ^ set(masks.members))
            if unmatched:
                first = unmatched[0]
                has = images.where(first) if first in images.members else masks.where(first)
                lacks = (f"{MASKS}/ISIC_{first}_segmentation.png" if first in images.members
                         else f"{IMAGES}/ISIC_{first}.jpg")
                raise ConfigError(f"isic: {len(unmatched)} id(s) have an image without a mask or a mask without "
                                  f"an image, e.g. {has} has no {lacks}; use the complete official archives")
            if not images.members:
                raise ConfigError(f"isic: no ISIC_<id>.jpg in {images.base}; is it the Task 1-2 training input?")
            wanted = sorted(images.members)
            train, test = pinned_split(wanted)
            split_files = {"splits/train.list": list_bytes(train), "splits/test.list": list_bytes(test)}
            if len(wanted) != OFFICIAL_TRAINING:
                notes.append(f"{len(wanted)} images, not the official {OFFICIAL_TRAINING}: our split gives "
                             f"{len(train)} train / {len(test)} test, not the papers' 1838 / 756")
        cases = [Case(i, [images.source(i, raw), masks.source(i, raw)],
                      [f"{IMAGES}/ISIC_{i}.jpg", f"{MASKS}/ISIC_{i}_segmentation.png"], (images, masks))
                 for i in wanted]
        return Plan(cases, split_files, notes, images.source_files + masks.source_files)

    def check(self, case: Case) -> None:
        images, masks = case.payload
        where = masks.where(case.name)
        try:
            with Image.open(io.BytesIO(images.read(case.name))) as image:
                size = image.size
            with Image.open(io.BytesIO(masks.read(case.name))) as mask:
                mode, mask_size, values = mask.mode, mask.size, np.unique(np.asarray(mask))
        except (OSError, SyntaxError, ValueError) as exc:
            raise ConfigError(f"isic: {images.where(case.name)} or {where} cannot be decoded ({exc}); "
                              f"re-download the archives") from None
        if mode != "L":
            raise ConfigError(f"isic: {where} is a {mode!r} image; masks must be single-channel 8-bit ('L')")
        if mask_size != size:
            raise ConfigError(f"isic: {where} is {mask_size[0]}x{mask_size[1]} but {images.where(case.name)} is "
                              f"{size[0]}x{size[1]}; a mask must have its image's size")
        bad = [int(v) for v in values if v not in MASK_VALUES]
        if bad:
            raise ConfigError(f"isic: {where} holds value(s) {bad[:5]}; ISIC 2018 masks hold only 0 and 255")

    def produce(self, case: Case) -> dict[str, Writer]:
        images, masks = case.payload
        image_rel, mask_rel = case.outputs
        return {image_rel: bytes_writer(images.read(case.name)), mask_rel: bytes_writer(masks.read(case.name))}
