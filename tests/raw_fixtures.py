"""Writers of tiny raw datasets in the official download formats, for the `bench data prepare` tests.

Each returns the arrays it wrote so that tests can compute the expected outputs on their own.
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from PIL import Image


def write_lists(folder: Path, files: dict[str, list[str]]) -> Path:
    """Split-list files (file name -> rows) in `folder`, one row a line."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in files.items():
        (folder / name).write_text("".join(f"{r}\n" for r in rows))
    return folder


def write_nifti(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))


# ------------------------------------------------------------------------------------------ Synapse
def write_synapse(raw: Path, depths: dict[str, int], seed: int = 0, shape: tuple[int, int] = (12, 10),
                  label_max: int = 13) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`raw/RawData/Training/{img,label}/{img,label}XXXX.nii.gz` for number XXXX -> depth; HU int16 in
    [-400, 600] (outside the clip range on both sides), labels 0..label_max. Returns number -> (image, label)
    as nibabel arrays (i, j, k)."""
    rng = np.random.default_rng(seed)
    out = {}
    for number, depth in depths.items():
        image = rng.integers(-400, 601, size=(*shape, depth)).astype(np.int16)
        label = rng.integers(0, label_max + 1, size=(*shape, depth)).astype(np.uint8)
        write_nifti(raw / "RawData" / "Training" / "img" / f"img{number}.nii.gz", image)
        write_nifti(raw / "RawData" / "Training" / "label" / f"label{number}.nii.gz", label)
        out[number] = (image, label)
    return out


# --------------------------------------------------------------------------------------------- ISIC
IMAGES = "ISIC2018_Task1-2_Training_Input"
MASKS = "ISIC2018_Task1_Training_GroundTruth"


def isic_files(ids: list[str], seed: int = 0, size: tuple[int, int] = (20, 16)) -> dict[str, bytes]:
    """Archive member name -> bytes: an RGB JPEG and a 0/255 'L' PNG mask per id (PIL size = (w, h))."""
    rng = np.random.default_rng(seed)
    files: dict[str, bytes] = {}
    for ident in ids:
        rgb = rng.integers(0, 256, size=(size[1], size[0], 3)).astype(np.uint8)
        mask = (rng.random((size[1], size[0])) > 0.5).astype(np.uint8) * 255
        for name, img, fmt in ((f"{IMAGES}/ISIC_{ident}.jpg", Image.fromarray(rgb), "JPEG"),
                               (f"{MASKS}/ISIC_{ident}_segmentation.png", Image.fromarray(mask, "L"), "PNG")):
            buf = io.BytesIO()
            img.save(buf, fmt)
            files[name] = buf.getvalue()
    return files


def write_isic(raw: Path, files: dict[str, bytes], zipped: bool = True) -> None:
    """The two official archives (with their LICENSE.txt, a folder entry, a __MACOSX member) or folders."""
    raw.mkdir(parents=True, exist_ok=True)
    for stem in (IMAGES, MASKS):
        members = {n: b for n, b in files.items() if n.startswith(stem + "/")}
        if zipped:
            with zipfile.ZipFile(raw / f"{stem}.zip", "w") as z:
                z.writestr(f"{stem}/", b"")
                z.writestr(f"{stem}/LICENSE.txt", b"CC-BY-NC")
                z.writestr(f"__MACOSX/{stem}/._ISIC_0000000.jpg", b"junk")
                for name, content in members.items():
                    z.writestr(name, content)
        else:
            for name, content in members.items():
                (raw / name).parent.mkdir(parents=True, exist_ok=True)
                (raw / name).write_bytes(content)
            (raw / stem / "LICENSE.txt").write_text("CC-BY-NC")


# ---------------------------------------------------------------------------------------- PROMISE12
def write_promise12(raw: Path, cases: list[str], seed: int = 0, shape: tuple[int, int, int] = (3, 10, 12)
                    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`CaseXX.mhd/.raw` (int16) and `CaseXX_segmentation.mhd/.raw` (uint8 0/1), arrays (z, y, x)."""
    rng = np.random.default_rng(seed)
    raw.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in cases:
        image = rng.integers(0, 1000, size=shape).astype(np.int16)
        mask = (rng.random(shape) > 0.6).astype(np.uint8)
        sitk.WriteImage(sitk.GetImageFromArray(image), str(raw / f"{name}.mhd"))
        sitk.WriteImage(sitk.GetImageFromArray(mask), str(raw / f"{name}_segmentation.mhd"))
        out[name] = (image, mask)
    return out


# ---------------------------------------------------------------------------------------- BraTS2019
BRAIN = (slice(2, 22), slice(2, 18), slice(1, 7))   # nibabel (i, j, k) box of the non-zero brain


def write_brats(raw: Path, cases: dict[str, str], seed: int = 0, shape: tuple[int, int, int] = (24, 20, 8)
                ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`raw/<grade>/<ID>/<ID>_flair.nii.gz` + `_seg.nii.gz` for ID -> grade. The FLAIR (int16) is 0 outside
    BRAIN, 1..1000 inside with a small zero hole and two bright outliers; seg in {0, 1, 2, 4}. Returns ID ->
    (flair, seg) as nibabel arrays (i, j, k)."""
    rng = np.random.default_rng(seed)
    out = {}
    for ident, grade in cases.items():
        flair = np.zeros(shape, dtype=np.int16)
        flair[BRAIN] = rng.integers(1, 1001, size=flair[BRAIN].shape)
        flair[10:12, 8:10, 3:5] = 0                       # a hole: zeros inside the box
        flair[5, 5, 2], flair[6, 6, 3] = 5000, 6000       # outliers above the 99.9 % point
        seg = np.zeros(shape, dtype=np.uint8)
        seg[BRAIN] = rng.choice(np.array([0, 1, 2, 4], dtype=np.uint8), size=seg[BRAIN].shape)
        folder = raw / grade / ident
        write_nifti(folder / f"{ident}_flair.nii.gz", flair)
        write_nifti(folder / f"{ident}_seg.nii.gz", seg)
        out[ident] = (flair, seg)
    return out
