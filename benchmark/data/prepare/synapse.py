"""Synapse multi-organ CT (BTCV "Abdomen") -> TransUNet's `train_npz/` + `test_vol_h5/` layout.

TransUNet did not release its preparation; its README describes it and hitachinsk/SAMed @ a00f7f0 :
`preprocess/preprocess_data.py` re-implements it. Facts taken from there (PROTOCOLS-3D-DATASETS.md §C.1):

- raw `RawData/Training/img/imgXXXX.nii.gz` + `label/labelXXXX.nii.gz`, read with nibabel (`get_fdata`);
- HU clipped to [-125, 275], then (x + 125) / 400 -> [0, 1] (computed in float32); no resampling;
- the nibabel array (i, j, k) is transposed to (k, j, i) (`np.transpose(a, (2, 1, 0))`), so slice NNN of
  `caseXXXX_sliceNNN.npz` is the nibabel volume's `[:, :, NNN].T` and the test volumes are (D, H, W) = (k, j, i);
- labels {1:1, 2:2, 3:3, 4:4, 6:5, 7:6, 8:7, 11:8} (spleen, right kidney, left kidney, gallbladder, liver, stomach,
  aorta, pancreas); 5, 9, 10, 12, 13 -> 0 (applied in sorted-key order in place there, which equals this
  simultaneous map because no target is re-mapped later).

Where we depart: labels are stored as uint8 (SAMed stores the float32 it computed; the values are the same).

Split lists (pinned: `datasets/splits/synapse/`, TransUNet @ 02ef001 `lists/lists_Synapse/`): `train.txt` (slice
names `caseXXXX_sliceNNN`, 2211 rows of 18 cases) and `test_vol.txt` (12 case names). `--lists DIR` replaces
either with a file of the same name and form. `lists/all.lst` is generated: the train cases in `train.txt` order,
then the test cases in `test_vol.txt` order, as `caseXXXX.npy.h5` (this equals TransUNet's `all.lst`).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from benchmark.config import ConfigError
from benchmark.data.prepare.common import (Case, Plan, Preparer, SplitList, Source, Writer, disjoint, h5_writer,
                                           list_bytes, missing_error, npz_writer)

CLIP = (-125.0, 275.0)
LABEL_MAP = {1: 1, 2: 2, 3: 3, 4: 4, 6: 5, 7: 6, 8: 7, 11: 8}
RAW_LABELS = 13          # raw BTCV label values are 0..13
TRAIN_LIST, TEST_LIST = "train.txt", "test_vol.txt"
_SLICE = re.compile(r"^(case\d{4})_slice(\d{3})$")
_CASE = re.compile(r"^case\d{4}$")
_LAYOUTS = (".", "Training", "RawData/Training", "Abdomen/RawData/Training")


def label_lut() -> np.ndarray:
    """Raw label value (0..13) -> the 8-organ class id."""
    lut = np.zeros(RAW_LABELS + 1, dtype=np.uint8)
    for raw, new in LABEL_MAP.items():
        lut[raw] = new
    return lut


def to_unit_range(hu: np.ndarray) -> np.ndarray:
    """Clip to CLIP and scale to [0, 1], in float32 (SAMed casts to float32 before clipping)."""
    lo, hi = CLIP
    return (np.clip(hu.astype(np.float32), lo, hi) - np.float32(lo)) / np.float32(hi - lo)


class SynapsePreparer(Preparer):
    name = "synapse"
    root = "Synapse"
    list_files = (TRAIN_LIST, TEST_LIST)

    def parameters(self) -> dict[str, Any]:
        return {"clip": list(CLIP), "scale": "(x - clip[0]) / (clip[1] - clip[0])", "label_map": LABEL_MAP,
                "axes": "nibabel (i, j, k) -> (k, j, i)", "image": "float32", "label": "uint8"}

    def plan(self, raw: Path, lists: dict[str, SplitList]) -> Plan:
        training = next((raw / d for d in _LAYOUTS if (raw / d / "img").is_dir() and (raw / d / "label").is_dir()),
                        None)
        if training is None:
            raise ConfigError(f"synapse: {raw} holds none of {', '.join(d + '/img' for d in _LAYOUTS)} (with a "
                              f"label/ folder beside it); point --from at the unpacked Abdomen download "
                              f"(Abdomen/RawData/Training/{{img,label}}/*.nii.gz)")
        train, test = self._train_slices(lists[TRAIN_LIST]), self._test_cases(lists[TEST_LIST])
        disjoint({"train": SplitList(list(train), b"", lists[TRAIN_LIST].path),
                  "test": SplitList(test, b"", lists[TEST_LIST].path)}, ["train", "test"])
        cases, missing = [], []
        for name, kind in [(c, "train") for c in train] + [(c, "test") for c in test]:
            number = name[4:]
            image, label = training / "img" / f"img{number}.nii.gz", training / "label" / f"label{number}.nii.gz"
            missing += [p.relative_to(raw).as_posix() for p in (image, label) if not p.is_file()]
            if missing:
                continue
            outputs = ([f"train_npz/{name}_slice{s:03d}.npz" for s in train[name]] if kind == "train"
                       else [f"test_vol_h5/{name}.npy.h5"])
            cases.append(Case(name, [Source.of(image, raw), Source.of(label, raw)], outputs,
                              {"image": image, "label": label, "kind": kind, "slices": train.get(name),
                               "list": lists[TRAIN_LIST].path}))
        if missing:
            raise missing_error("synapse", raw, missing, 2 * (len(train) + len(test)),
                                "the folder holding RawData/Training/{img,label}/")
        all_lst = list_bytes(f"{c}.npy.h5" for c in list(train) + test)
        return Plan(cases, {f"lists/{TRAIN_LIST}": lists[TRAIN_LIST].content,
                            f"lists/{TEST_LIST}": lists[TEST_LIST].content, "lists/all.lst": all_lst})

    @staticmethod
    def _train_slices(split: SplitList) -> dict[str, list[int]]:
        """Case name -> its slice indices, in the list's order of first appearance."""
        slices: dict[str, list[int]] = {}
        for row in split.rows:
            m = _SLICE.match(row)
            if not m:
                raise ConfigError(f"{split.path}: row {row!r} is not a slice name like case0031_slice000")
            slices.setdefault(m.group(1), []).append(int(m.group(2)))
        return slices

    @staticmethod
    def _test_cases(split: SplitList) -> list[str]:
        bad = [r for r in split.rows if not _CASE.match(r)]
        if bad:
            raise ConfigError(f"{split.path}: row {bad[0]!r} is not a case name like case0008")
        return split.rows

    def check(self, case: Case) -> None:
        p = case.payload
        image, label = nib.load(p["image"]), nib.load(p["label"])
        if image.shape != label.shape or len(image.shape) != 3:
            raise ConfigError(f"synapse: {p['image']} has shape {image.shape} but {p['label']} has {label.shape}; "
                              f"image and label must be the same 3D grid (re-download the case)")
        values = np.unique(np.asanyarray(label.dataobj))
        bad = values[(values < 0) | (values > RAW_LABELS) | (values != np.round(values))]
        if bad.size:
            raise ConfigError(f"synapse: {p['label']} holds label value(s) {bad[:5].tolist()} outside the BTCV "
                              f"organs 0..{RAW_LABELS}; re-download the label file")
        if p["kind"] == "train":
            depth = image.shape[2]
            if p["slices"] != list(range(depth)):
                raise ConfigError(f"synapse: {p['list']} lists {len(p['slices'])} slice(s) of {case.name} but "
                                  f"{p['image']} has {depth} along axis 3 (TransUNet's slices 000..{depth - 1:03d}"
                                  f", in order); the raw volume is not the one TransUNet used, or the list is wrong")

    def produce(self, case: Case) -> dict[str, Writer]:
        p = case.payload
        image = to_unit_range(nib.load(p["image"]).get_fdata()).transpose(2, 1, 0)
        raw_label = np.rint(np.asanyarray(nib.load(p["label"]).dataobj)).astype(np.int64)
        label = label_lut()[raw_label].transpose(2, 1, 0)
        if p["kind"] == "test":
            return {case.outputs[0]: h5_writer(image=np.ascontiguousarray(image),
                                               label=np.ascontiguousarray(label))}
        return {rel: npz_writer(image=np.ascontiguousarray(image[s]), label=np.ascontiguousarray(label[s]))
                for rel, s in zip(case.outputs, p["slices"])}
