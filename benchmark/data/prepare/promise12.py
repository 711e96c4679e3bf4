"""PROMISE12 prostate MRI -> ABD's 2D preparation, stored in the SSL4MIS h5 layout (`ssl4mis-h5` reader).

ABD (chy-upc/ABD @ 4efd525 : `code/dataloaders/promise12.py::data_to_array`, `img_resize`, `smooth_images`;
PROTOCOLS-3D-DATASETS.md §C.3), in its order, per case read with SimpleITK as (z, y, x):

1. every axial slice (y, x) resized to 224 x 224 with `cv2.resize(..., INTER_NEAREST)`, image and mask alike
   (no CLAHE: `equalize=False`). cv2's nearest rule, implemented here with numpy: output column c reads source
   column min(floor(c * (1 / (224 / W))), W - 1) in float64, rows likewise (`nearest_indices`);
2. per-slice min-max of the resized image to [0, 1] (float64);
3. `sitk.CurvatureFlow(timeStep=0.125, numberOfIterations=5)` per 2D slice, then float32. Masks -> uint8.

Where we depart: a constant slice (max == min) becomes all zeros (ABD divides by zero and stores NaN).
ABD stacks the train slices into one `X_train.npy` in sorted case order; we write the same slices, in the same order,
as SSL4MIS files: `data/slices/CaseXX_slice_N.h5` (image float32 (224, 224), label uint8; N = z index from 0) for
the train cases and `data/CaseXX.h5` (image float32 (S, 224, 224), label uint8) for every case, with
`train_slices.list` (train cases sorted, slices in z order), `train.list`, `val.list`, `test.list`.

Split lists (pinned: `datasets/splits/promise12/`): `train.list` (ours: ABD hard-codes cases 0-34), `val.list`
(35-39) and `test.list` (40-49) from ABD @ 4efd525 `data/promise12/`. `--lists DIR` replaces any of the three.
Raw: `CaseXX.mhd` (+ its data file, e.g. `.raw`) and `CaseXX_segmentation.mhd` in `--from` or in its immediate
sub-folders (the official TrainingData_Part1..3); masks must hold only 0 and 1.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.config import ConfigError
from benchmark.data.prepare.common import (Case, Plan, Preparer, Source, SplitList, Writer, disjoint, h5_writer,
                                           list_bytes, missing_error, sitk_array, sitk_shape)

SIZE = 224
TIME_STEP, ITERATIONS = 0.125, 5
SPLITS = ("train.list", "val.list", "test.list")
_DATA_FILE = re.compile(rb"^\s*ElementDataFile\s*=\s*(.+?)\s*$", re.MULTILINE)


def nearest_indices(src: int, dst: int) -> np.ndarray:
    """cv2 INTER_NEAREST's source index of each of `dst` outputs: min(floor(i * (1 / (dst / src))), src - 1)."""
    inverse_scale = 1.0 / (dst / src)
    return np.minimum(np.floor(np.arange(dst) * inverse_scale).astype(np.int64), src - 1)


def resize_nearest(volume: np.ndarray, size: int = SIZE) -> np.ndarray:
    """Every (y, x) slice of a (z, y, x) volume resized to (size, size) with cv2's nearest rule."""
    rows, cols = nearest_indices(volume.shape[1], size), nearest_indices(volume.shape[2], size)
    return volume[:, rows[:, None], cols[None, :]]


def min_max_slices(volume: np.ndarray) -> np.ndarray:
    """Per-slice (x - min) / (max - min) in float64; a constant slice -> 0."""
    v = volume.astype(np.float64)
    lo, hi = v.min(axis=(1, 2), keepdims=True), v.max(axis=(1, 2), keepdims=True)
    span = hi - lo
    return np.where(span > 0, (v - lo) / np.where(span > 0, span, 1.0), 0.0)


def curvature_flow(volume: np.ndarray) -> np.ndarray:
    """SimpleITK CurvatureFlow on each 2D slice (float64 in, as ABD), returned as float32."""
    import SimpleITK as sitk

    out = np.empty(volume.shape, dtype=np.float32)
    for z, plane in enumerate(volume):
        smoothed = sitk.CurvatureFlow(image1=sitk.GetImageFromArray(plane), timeStep=TIME_STEP,
                                      numberOfIterations=ITERATIONS)
        out[z] = sitk.GetArrayFromImage(smoothed)
    return out


def _data_file(header: Path) -> Path | None:
    """The file a MetaImage header stores its voxels in (None: in the header itself, or a list)."""
    try:
        match = _DATA_FILE.search(header.read_bytes()[:4096])
    except OSError:
        return None
    name = match.group(1).decode(errors="replace") if match else "LOCAL"
    return None if name.upper() in ("LOCAL", "LIST") or " " in name else header.parent / name


class Promise12Preparer(Preparer):
    name = "promise12"
    root = "PROMISE12"
    list_files = SPLITS

    def parameters(self) -> dict[str, Any]:
        return {"size": SIZE, "resize": "cv2 INTER_NEAREST index rule", "normalise": "per-slice min-max",
                "curvature_flow": {"timeStep": TIME_STEP, "numberOfIterations": ITERATIONS},
                "image": "float32", "label": "uint8"}

    def plan(self, raw: Path, lists: dict[str, SplitList]) -> Plan:
        disjoint(lists, SPLITS)
        headers = {p.name: p for p in sorted(raw.glob("*.mhd")) + sorted(raw.glob("*/*.mhd"))}
        train = sorted(lists["train.list"].rows)
        cases, missing, total = [], [], 0
        for split in SPLITS:
            for name in lists[split].rows:
                files = [headers.get(f"{name}.mhd"), headers.get(f"{name}_segmentation.mhd")]
                total += 2
                missing += [f"{name}{s}.mhd" for s, f in zip(("", "_segmentation"), files) if f is None]
                data = [_data_file(f) for f in files if f is not None]
                missing += [os.path.relpath(d, raw) for d in data if d is not None and not d.is_file()]
                if missing:
                    continue
                sources = [Source.of(p, raw) for p in files + [d for d in data if d is not None]]
                slices = sitk_shape(files[0], self.name)[0] if split == "train.list" else 0
                outputs = [f"data/{name}.h5"] + [f"data/slices/{name}_slice_{z}.h5" for z in range(slices)]
                cases.append(Case(name, sources, outputs, {"image": files[0], "mask": files[1]}))
        if missing:
            raise missing_error(self.name, raw, missing, total, "the folder holding Case00.mhd ... Case49.mhd and "
                                "their _segmentation files (or the TrainingData_Part1..3 folders)")
        slice_rows = [Path(rel).stem for name in train for case in cases if case.name == name
                      for rel in case.outputs[1:]]
        files = {"train_slices.list": list_bytes(slice_rows), "train.list": lists["train.list"].content,
                 "val.list": lists["val.list"].content, "test.list": lists["test.list"].content}
        return Plan(cases, files)

    def check(self, case: Case) -> None:
        image, mask = case.payload["image"], case.payload["mask"]
        shape = sitk_shape(image, self.name)
        label = sitk_array(mask, self.name)
        if label.shape != shape or len(shape) != 3:
            raise ConfigError(f"promise12: {image} has (z, y, x) {shape} but {mask} has {label.shape}; image and "
                              f"mask must be the same 3D grid")
        bad = np.setdiff1d(np.unique(label), [0, 1])
        if bad.size:
            raise ConfigError(f"promise12: {mask} holds value(s) {bad[:5].tolist()}; PROMISE12 masks hold only "
                              f"0 (background) and 1 (prostate)")

    def produce(self, case: Case) -> dict[str, Writer]:
        image = curvature_flow(min_max_slices(resize_nearest(sitk_array(case.payload["image"], self.name))))
        label = resize_nearest(sitk_array(case.payload["mask"], self.name)).astype(np.uint8)
        writers = {case.outputs[0]: h5_writer(image=image, label=label)}
        for z, rel in enumerate(case.outputs[1:]):
            writers[rel] = h5_writer(image=image[z], label=label[z])
        return writers
