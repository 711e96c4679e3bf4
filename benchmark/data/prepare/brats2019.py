"""BraTS 2019 (training set) -> SSL4MIS's `data/<ID>.h5` volumes (FLAIR, whole tumour), the `h5-volumes` reader.

SSL4MIS (HiLab-git/SSL4MIS @ 06df604 : `code/dataloaders/brats_proprecessing.py`; PROTOCOLS-3D-DATASETS.md §C.4),
in its order, per case:

1. `<ID>_flair.nii.gz` and `<ID>_seg.nii.gz` read with SimpleITK, arrays (z, y, x);
2. crop both to the bounding box of the FLAIR's non-zero voxels. The released `brain_bbox` slices
   `[min:max]` on every axis, so the last non-zero index of each axis is dropped: that is our default
   (`box="ssl4mis"`, the rule the distributed h5 files presumably went through); `box="inclusive"` keeps it;
3. clip to [min, t] with t = the first value at which the cumulative distribution of the cropped FLAIR reaches
   0.999 (`skimage.exposure.cumulative_distribution`: one bin per value for integer images, 256 equal bins with
   their centres for float images; re-implemented in `cdf_threshold`, scikit-image is not a dependency);
4. z-score with the mean and (population) std of the voxels > 0, as float32;
5. label > 0 -> 1 (whole tumour), uint8. Seg values other than 0, 1, 2, 4 are an error.

The h5 conversion is not in SSL4MIS (its README links the processed data); we write keys `image`, `label`.
Split lists (pinned: `datasets/splits/brats2019/`, SSL4MIS @ 06df604 `data/BraTS2019/`): `train.txt` (250),
`val.txt` (25), `test.txt` (60); `--lists DIR` replaces any of them. Raw: `HGG/<ID>/` and `LGG/<ID>/` in `--from`
or in `--from`/MICCAI_BraTS_2019_Data_Training.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from benchmark.config import ConfigError
from benchmark.data.prepare.common import (Case, Plan, Preparer, Source, SplitList, Writer, disjoint, h5_writer,
                                           missing_error, sitk_array, sitk_shape)

PERCENT = 0.999
FLOAT_BINS = 256
SEG_VALUES = (0, 1, 2, 4)
SPLITS = ("train.txt", "val.txt", "test.txt")
GRADES = ("HGG", "LGG")
BOXES = ("ssl4mis", "inclusive")


def cdf_threshold(image: np.ndarray, percent: float = PERCENT) -> float:
    """skimage's `cumulative_distribution(image)` rule: the first bin value whose CDF is >= `percent`."""
    if np.issubdtype(image.dtype, np.integer):
        values, counts = np.unique(image, return_counts=True)
    else:
        counts, edges = np.histogram(image, bins=FLOAT_BINS, range=(float(image.min()), float(image.max())))
        values = (edges[:-1] + edges[1:]) / 2
    cdf = np.cumsum(counts) / float(counts.sum())
    return values[np.argmax(cdf >= percent)].item()


def brain_box(flair: np.ndarray, inclusive: bool) -> tuple[slice, ...]:
    """The bounding box of the non-zero voxels; `inclusive=False` is SSL4MIS's `[min:max]` (drops the last)."""
    nonzero = np.nonzero(flair)
    return tuple(slice(int(ix.min()), int(ix.max()) + int(inclusive)) for ix in nonzero)


def z_score(image: np.ndarray) -> np.ndarray:
    """(x - mean) / std over the voxels > 0, float32 (SSL4MIS `itensity_normalize_one_volume`)."""
    brain = image[image > 0]
    return ((image - brain.mean()) / brain.std()).astype(np.float32)


class BraTS2019Preparer(Preparer):
    name = "brats2019"
    root = "BraTS2019"
    list_files = SPLITS

    def __init__(self, box: str = "ssl4mis") -> None:
        if box not in BOXES:
            raise ConfigError(f"prepare brats2019: box {box!r} is not one of {', '.join(BOXES)}")
        self.box = box

    def parameters(self) -> dict[str, Any]:
        return {"modality": "flair", "box": self.box, "clip_cdf": PERCENT, "float_bins": FLOAT_BINS,
                "normalise": "z-score over voxels > 0", "label": "seg > 0 -> 1", "image": "float32"}

    def plan(self, raw: Path, lists: dict[str, SplitList]) -> Plan:
        disjoint(lists, SPLITS)
        base = next((d for d in (raw, raw / "MICCAI_BraTS_2019_Data_Training")
                     if any((d / g).is_dir() for g in GRADES)), None)
        if base is None:
            raise ConfigError(f"brats2019: {raw} holds neither HGG/ nor LGG/ (nor MICCAI_BraTS_2019_Data_Training/"
                              f"HGG/); point --from at the unpacked BraTS 2019 training data")
        cases, missing, total = [], [], 0
        for split in SPLITS:
            for ident in lists[split].rows:
                total += 2
                folder = next((base / g / ident for g in GRADES if (base / g / ident).is_dir()), None)
                files = [folder / f"{ident}_{kind}.nii.gz" for kind in ("flair", "seg")] if folder else []
                absent = [p.relative_to(raw).as_posix() for p in files if not p.is_file()]
                missing += absent if folder else [f"{{HGG,LGG}}/{ident}/{ident}_{kind}.nii.gz"
                                                  for kind in ("flair", "seg")]
                if not missing:
                    cases.append(Case(ident, [Source.of(p, raw) for p in files], [f"data/{ident}.h5"],
                                      {"flair": files[0], "seg": files[1]}))
        if missing:
            raise missing_error(self.name, raw, missing, total, "the folder holding HGG/ and LGG/")
        return Plan(cases, {name: lists[name].content for name in SPLITS})

    def check(self, case: Case) -> None:
        flair, seg = case.payload["flair"], case.payload["seg"]
        shape, label = sitk_shape(flair, self.name), sitk_array(seg, self.name)
        if label.shape != shape:
            raise ConfigError(f"brats2019: {flair} has (z, y, x) {shape} but {seg} has {label.shape}; the FLAIR "
                              f"and its segmentation must be the same grid")
        bad = np.setdiff1d(np.unique(label), SEG_VALUES)
        if bad.size:
            raise ConfigError(f"brats2019: {seg} holds value(s) {bad[:5].tolist()}; BraTS labels are 0, 1 (NCR/NET),"
                              f" 2 (ED) and 4 (ET)")

    def produce(self, case: Case) -> dict[str, Writer]:
        flair = sitk_array(case.payload["flair"], self.name)
        if not flair.any():
            raise ConfigError(f"brats2019: {case.payload['flair']} is all zero: no brain to crop to")
        box = brain_box(flair, self.box == "inclusive")
        image, seg = flair[box], sitk_array(case.payload["seg"], self.name)[box]
        image = np.clip(image, image.min(), cdf_threshold(image))
        if not (image > 0).any() or image[image > 0].std() == 0:
            raise ConfigError(f"brats2019: {case.payload['flair']}: the cropped brain has no positive voxels or "
                              f"no contrast; cannot z-score it")
        return {case.outputs[0]: h5_writer(image=z_score(image), label=(seg > 0).astype(np.uint8))}
