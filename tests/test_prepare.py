"""`bench data prepare`: tiny raw fixtures in the official formats -> the papers' layouts, checked against values
computed here; idempotent re-runs; bad raw input gives one ConfigError and writes nothing."""
from __future__ import annotations

import hashlib
import io
import json
import math
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from benchmark.config import DATASETS_DIR, ConfigError
from benchmark.data.prepare import PREPARERS, prepare_dataset
from benchmark.data.prepare.isic import pinned_split
from benchmark.data.prepare.promise12 import nearest_indices
from benchmark.registry import UnknownNameError
from raw_fixtures import (BRAIN, IMAGES, MASKS, isic_files, write_brats, write_isic, write_lists,
                                write_nifti, write_promise12, write_synapse)

SPLITS = DATASETS_DIR / "splits"


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def prepare(name: str, raw: Path, to: Path, lists: Path | None = None, **options):
    return prepare_dataset(name, raw, to, lists=lists, progress=False, options=options or None)


def assert_rejected(name: str, raw: Path, to: Path, lists: Path | None, *needles: str) -> None:
    with pytest.raises(ConfigError) as info:
        prepare(name, raw, to, lists)
    for needle in needles:
        assert needle in str(info.value)
    assert files_under(to) == []


def assert_idempotent(name: str, raw: Path, to: Path, lists: Path | None, total: int, victim: str,
                      **options) -> None:
    """A second run writes nothing; a changed output (and only it) is rewritten back to the same bytes."""
    again = prepare(name, raw, to, lists, **options)
    assert (again.written, again.skipped) == (0, total)
    original = (to / victim).read_bytes()
    (to / victim).write_bytes(b"tampered")
    fixed = prepare(name, raw, to, lists, **options)
    assert (fixed.written, fixed.skipped) == (1, total - 1)
    if not victim.endswith((".npz", ".h5")):   # containers may embed times; their arrays are compared instead
        assert (to / victim).read_bytes() == original
    manifest = json.loads((to / "prepare.json").read_text())
    assert manifest["outputs"][victim] == hashlib.sha256((to / victim).read_bytes()).hexdigest()


def check_manifest(to: Path, dataset: str, raw: Path) -> dict:
    manifest = json.loads((to / "prepare.json").read_text())
    assert manifest["dataset"] == dataset
    assert manifest["tool"] == {"name": "ssl-medseg-bench", "version": "0.2.0"}
    assert manifest["raw"] == str(raw.resolve())
    for rel, record in manifest["sources"].items():
        if ":" not in rel:
            assert (raw / rel).stat().st_size == record["size"]
    outputs = {p.relative_to(to).as_posix() for p in files_under(to)} - {"prepare.json"}
    assert set(manifest["outputs"]) == outputs
    for rel, digest in manifest["outputs"].items():
        assert hashlib.sha256((to / rel).read_bytes()).hexdigest() == digest
    return manifest


def test_registry_and_unknown_name(tmp_path: Path) -> None:
    assert PREPARERS.names() == ["synapse", "isic", "promise12", "brats2019"]
    with pytest.raises(UnknownNameError, match="synapse, isic, promise12, brats2019"):
        prepare_dataset("acdc", tmp_path, tmp_path / "out", progress=False)


def test_default_output_is_data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = tmp_path / "raw"
    write_brats(raw, {"B1": "HGG", "B2": "LGG", "B3": "LGG"})
    lists = write_lists(tmp_path / "lists", {"train.txt": ["B1"]})
    monkeypatch.setenv("BENCH_DATA_ROOT", str(tmp_path / "root"))
    with pytest.raises(ConfigError, match="170 of 172 raw file"):   # the pinned val.txt / test.txt stay in force
        prepare_dataset("brats2019", raw, lists=lists, progress=False)
    assert not (tmp_path / "root").exists()
    write_lists(lists, {"val.txt": ["B2"], "test.txt": ["B3"]})
    result = prepare_dataset("brats2019", raw, lists=lists, progress=False)
    assert result.out == (tmp_path / "root" / "BraTS2019").resolve() and (result.out / "data" / "B1.h5").is_file()


# ------------------------------------------------------------------------------------------- Synapse
LABEL_MAP = {1: 1, 2: 2, 3: 3, 4: 4, 6: 5, 7: 6, 8: 7, 11: 8}


def synapse_lists(tmp_path: Path, slices: dict[str, int]) -> Path:
    train = [f"case{n}_slice{s:03d}" for n, d in slices.items() for s in range(d)]
    return write_lists(tmp_path / "lists", {"train.txt": train, "test_vol.txt": ["case0001"]})


@pytest.fixture()
def synapse_raw(tmp_path: Path):
    raw = tmp_path / "Abdomen"
    arrays = write_synapse(raw, {"0007": 3, "0005": 4, "0001": 3})
    return raw, arrays, synapse_lists(tmp_path, {"0007": 3, "0005": 4})


def test_synapse(tmp_path: Path, synapse_raw) -> None:
    raw, arrays, lists = synapse_raw
    to = tmp_path / "Synapse"
    result = prepare("synapse", raw, to, lists)
    assert (result.written, result.skipped, result.cases) == (3 + 4 + 1 + 3, 0, 3)

    def expected(number: str) -> tuple[np.ndarray, np.ndarray]:
        hu, lab = arrays[number]
        image = (np.clip(hu.astype(np.float64), -125, 275) + 125) / 400
        label = np.vectorize(lambda v: LABEL_MAP.get(int(v), 0))(lab)
        return image.transpose(2, 1, 0), label.transpose(2, 1, 0)   # (k, j, i)

    for number, depth in (("0007", 3), ("0005", 4)):
        image, label = expected(number)
        for k in range(depth):
            npz = np.load(to / "train_npz" / f"case{number}_slice{k:03d}.npz")
            assert npz["image"].dtype == np.float32 and npz["label"].dtype == np.uint8
            assert npz["image"].shape == (10, 12)
            np.testing.assert_allclose(npz["image"], image[k], atol=1e-6)
            np.testing.assert_array_equal(npz["label"], label[k])
            assert npz["image"].min() >= 0 and npz["image"].max() <= 1
    with h5py.File(to / "test_vol_h5" / "case0001.npy.h5") as f:
        image, label = expected("0001")
        assert f["image"].shape == (3, 10, 12) and f["label"].dtype == np.uint8
        np.testing.assert_allclose(f["image"][()], image, atol=1e-6)
        np.testing.assert_array_equal(f["label"][()], label)
    assert (to / "lists" / "train.txt").read_bytes() == (lists / "train.txt").read_bytes()
    assert (to / "lists" / "test_vol.txt").read_text() == "case0001\n"
    assert (to / "lists" / "all.lst").read_text() == "case0007.npy.h5\ncase0005.npy.h5\ncase0001.npy.h5\n"
    manifest = check_manifest(to, "synapse", raw)
    assert manifest["parameters"]["clip"] == [-125.0, 275.0]
    assert "RawData/Training/img/img0005.nii.gz" in manifest["sources"]
    assert_idempotent("synapse", raw, to, lists, 11, "train_npz/case0005_slice002.npz")
    np.testing.assert_allclose(np.load(to / "train_npz" / "case0005_slice002.npz")["image"], expected("0005")[0][2],
                               atol=1e-6)


def test_synapse_accepts_training_folder(tmp_path: Path, synapse_raw) -> None:
    raw, _, lists = synapse_raw
    result = prepare("synapse", raw / "RawData" / "Training", tmp_path / "out", lists)
    assert result.written == 11


def test_synapse_pinned_all_lst_is_train_then_test_order() -> None:
    """Our generated all.lst rule reproduces TransUNet's all.lst from its train.txt and test_vol.txt."""
    train = [r[:8] for r in (SPLITS / "synapse" / "train.txt").read_text().split()]
    cases = list(dict.fromkeys(train)) + (SPLITS / "synapse" / "test_vol.txt").read_text().split()
    assert "".join(f"{c}.npy.h5\n" for c in cases) == (SPLITS / "synapse" / "all.lst").read_text()
    assert len(train) == 2211


def test_synapse_bad_inputs(tmp_path: Path, synapse_raw) -> None:
    raw, arrays, lists = synapse_raw
    to = tmp_path / "out"
    # the pinned lists name 30 cases; we have 3
    assert_rejected("synapse", raw, to, None, "missing", "img0031.nii.gz", "more", "--lists")
    # a train case whose slice count differs from the list's
    assert_rejected("synapse", raw, to, synapse_lists(tmp_path / "l2", {"0007": 3, "0005": 5}),
                    "img0005.nii.gz", "5 slice(s)", "has 4")
    # a label value outside 0..13
    hu, lab = arrays["0005"]
    bad = lab.copy()
    bad[0, 0, 0] = 14
    write_nifti(raw / "RawData/Training/label/label0005.nii.gz", bad)
    assert_rejected("synapse", raw, to, lists, "label0005.nii.gz", "[14]")
    # image / label shape mismatch
    write_nifti(raw / "RawData/Training/label/label0005.nii.gz", lab[:, :-1])
    assert_rejected("synapse", raw, to, lists, "img0005.nii.gz", "label0005.nii.gz", "shape")
    # a missing label file
    (raw / "RawData/Training/label/label0005.nii.gz").unlink()
    assert_rejected("synapse", raw, to, lists, "1 of 6", "label0005.nii.gz")


# ---------------------------------------------------------------------------------------------- ISIC
IDS = ["0000000", "0000001", "0000003", "0000004", "0000009"]


def test_isic_pinned_split_counts_and_determinism() -> None:
    ids = [f"{i:07d}" for i in range(2594)]
    train, test = pinned_split(ids)
    assert (len(train), len(test)) == (1838, 756) and not set(train) & set(test)
    order = list(np.random.default_rng(2018).permutation(sorted(ids)))
    assert train == order[:1838] and test == sorted(order[1838:])
    assert train[:55] != sorted(train[:55])   # the labeled 3 % is a random subset, not the lowest ids
    assert pinned_split(list(reversed(ids))) == (train, test)


@pytest.mark.parametrize("zipped", [True, False])
def test_isic(tmp_path: Path, zipped: bool) -> None:
    raw, to = tmp_path / "raw", tmp_path / "ISIC2018"
    files = isic_files(IDS)
    write_isic(raw, files, zipped=zipped)
    result = prepare("isic", raw, to)
    assert (result.written, result.cases) == (2 * 5 + 2, 5)
    assert "5 images, not the official 2594" in result.summary()
    for name, content in files.items():
        assert (to / name).read_bytes() == content
    n_train = round(5 * 1838 / 2594)                      # = 4
    order = [str(i) for i in np.random.default_rng(2018).permutation(sorted(IDS))]
    assert (to / "splits" / "train.list").read_text().split() == order[:n_train]
    assert (to / "splits" / "test.list").read_text().split() == sorted(order[n_train:])
    check_manifest(to, "isic", raw)
    assert_idempotent("isic", raw, to, None, 12, f"{MASKS}/ISIC_0000003_segmentation.png")


def test_isic_lists_subset(tmp_path: Path) -> None:
    raw, to = tmp_path / "raw", tmp_path / "out"
    write_isic(raw, isic_files(IDS))
    lists = write_lists(tmp_path / "lists", {"train.list": ["0000009", "ISIC_0000001"], "test.list": ["0000000"]})
    result = prepare("isic", raw, to, lists)
    assert result.cases == 3 and len(files_under(to / IMAGES)) == 3
    assert (to / "splits" / "train.list").read_text() == "0000009\n0000001\n"
    only_train = write_lists(tmp_path / "l2", {"train.list": ["0000009"]})
    assert_rejected("isic", raw, tmp_path / "o2", only_train, "both train.list and test.list")


def _rewrite_mask(files: dict[str, bytes], ident: str, image: Image.Image) -> dict[str, bytes]:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return {**files, f"{MASKS}/ISIC_{ident}_segmentation.png": buf.getvalue()}


@pytest.mark.parametrize("case", ["rgb", "size", "value", "no_mask", "no_image"])
def test_isic_bad_inputs(tmp_path: Path, case: str) -> None:
    files = isic_files(IDS)
    mask = f"{MASKS}/ISIC_0000003_segmentation.png"
    if case == "rgb":
        files = _rewrite_mask(files, "0000003", Image.new("RGB", (20, 16)))
        needles = (mask, "'RGB'")
    elif case == "size":
        files = _rewrite_mask(files, "0000003", Image.new("L", (16, 20)))
        needles = (mask, "16x20", "20x16")
    elif case == "value":
        files = _rewrite_mask(files, "0000003", Image.new("L", (20, 16), 128))
        needles = (mask, "[128]")
    elif case == "no_mask":
        del files[mask]
        needles = ("ISIC_0000003.jpg", "has no", "ISIC_0000003_segmentation.png")
    else:
        del files[f"{IMAGES}/ISIC_0000003.jpg"]
        needles = ("ISIC_0000003_segmentation.png", "has no", "ISIC_0000003.jpg")
    write_isic(tmp_path / "raw", files)
    assert_rejected("isic", tmp_path / "raw", tmp_path / "out", None, *needles)


def test_isic_zip_member_names(tmp_path: Path) -> None:
    write_isic(tmp_path / "raw", isic_files(IDS[:1]))
    with zipfile.ZipFile(tmp_path / "raw" / f"{IMAGES}.zip") as z:
        assert f"{IMAGES}/LICENSE.txt" in z.namelist()    # ignored: not an ISIC_<id>.jpg
    assert prepare("isic", tmp_path / "raw", tmp_path / "out").cases == 1


# ----------------------------------------------------------------------------------------- PROMISE12
def expected_promise12(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ABD's steps computed here: floor(i * src / 224) nearest indices (exact for these sizes), per-slice min-max,
    SimpleITK CurvatureFlow(0.125, 5) per slice."""
    z, y, x = image.shape
    rows, cols = (np.arange(224) * y) // 224, (np.arange(224) * x) // 224
    out = np.empty((z, 224, 224), dtype=np.float32)
    for k in range(z):
        plane = image[k][rows][:, cols].astype(np.float64)
        plane = (plane - plane.min()) / (plane.max() - plane.min())
        smooth = sitk.CurvatureFlow(image1=sitk.GetImageFromArray(plane), timeStep=0.125, numberOfIterations=5)
        out[k] = sitk.GetArrayFromImage(smooth)
    return out, mask[:, rows][:, :, cols].astype(np.uint8)


def test_nearest_indices_follow_cv2_double_rule() -> None:
    np.testing.assert_array_equal(nearest_indices(448, 224), np.arange(0, 448, 2))
    np.testing.assert_array_equal(nearest_indices(10, 224), [math.floor(i * 10 / 224) for i in range(224)])
    np.testing.assert_array_equal(nearest_indices(112, 224), np.repeat(np.arange(112), 2))
    # cv2 computes floor(i * (1 / (224 / 400))) in double: at i = 70 that is 124.999..., not the exact 125
    assert nearest_indices(400, 224)[70] == 124 and 70 * 400 // 224 == 125


def promise12_lists(folder: Path) -> Path:
    return write_lists(folder, {"train.list": ["Case01", "Case00"], "val.list": ["Case02"], "test.list": ["Case03"]})


def test_promise12(tmp_path: Path) -> None:
    raw, to = tmp_path / "raw", tmp_path / "PROMISE12"
    arrays = write_promise12(raw, ["Case00", "Case01", "Case02", "Case03"])
    lists = promise12_lists(tmp_path / "lists")
    result = prepare("promise12", raw, to, lists)
    assert (result.written, result.cases) == (4 + 2 * 3 + 4, 4)
    for name, (image, mask) in arrays.items():
        exp_image, exp_label = expected_promise12(image, mask)
        with h5py.File(to / "data" / f"{name}.h5") as f:
            assert f["image"].shape == (3, 224, 224) and f["image"].dtype == np.float32
            assert f["label"].dtype == np.uint8
            np.testing.assert_allclose(f["image"][()], exp_image, atol=1e-6)
            np.testing.assert_array_equal(f["label"][()], exp_label)
        slices = sorted((to / "data" / "slices").glob(f"{name}_slice_*.h5"))
        assert len(slices) == (3 if name in ("Case00", "Case01") else 0)
        for k, path in enumerate(sorted(slices)):
            with h5py.File(to / "data" / "slices" / f"{name}_slice_{k}.h5") as f:
                np.testing.assert_allclose(f["image"][()], exp_image[k], atol=1e-6)
                np.testing.assert_array_equal(f["label"][()], exp_label[k])
    assert (to / "train_slices.list").read_text().split() == [f"Case0{c}_slice_{k}" for c in (0, 1) for k in range(3)]
    assert (to / "train.list").read_text() == "Case01\nCase00\n"
    assert (to / "val.list").read_text() == "Case02\n" and (to / "test.list").read_text() == "Case03\n"
    manifest = check_manifest(to, "promise12", raw)
    assert {"Case00.mhd", "Case00.raw", "Case00_segmentation.raw"} <= set(manifest["sources"])
    assert_idempotent("promise12", raw, to, lists, 14, "data/slices/Case01_slice_2.h5")


def test_promise12_pinned_lists() -> None:
    folder = SPLITS / "promise12"
    assert (folder / "train.list").read_text().split() == [f"Case{i:02d}" for i in range(35)]
    assert (folder / "val.list").read_text().split() == [f"Case{i}" for i in range(35, 40)]
    assert (folder / "test.list").read_text().split() == [f"Case{i}" for i in range(40, 50)]


def test_promise12_bad_inputs(tmp_path: Path) -> None:
    raw, to = tmp_path / "raw", tmp_path / "out"
    arrays = write_promise12(raw, ["Case00", "Case01", "Case02", "Case03"])
    lists = promise12_lists(tmp_path / "lists")
    assert_rejected("promise12", raw, to, None, "missing", "Case04.mhd", "--lists")
    image, mask = arrays["Case02"]
    bad = mask.copy()
    bad[0, 0, 0] = 2
    sitk.WriteImage(sitk.GetImageFromArray(bad), str(raw / "Case02_segmentation.mhd"))
    assert_rejected("promise12", raw, to, lists, "Case02_segmentation.mhd", "[2]")
    sitk.WriteImage(sitk.GetImageFromArray(mask[:, :-1]), str(raw / "Case02_segmentation.mhd"))
    assert_rejected("promise12", raw, to, lists, "Case02.mhd", "Case02_segmentation.mhd", "(3, 10, 12)")
    (raw / "Case02_segmentation.raw").unlink()
    assert_rejected("promise12", raw, to, lists, "1 of 8", "Case02_segmentation.raw")
    (raw / "Case03_segmentation.mhd").unlink()
    assert_rejected("promise12", raw, to, lists, "Case03_segmentation.mhd")


# ----------------------------------------------------------------------------------------- BraTS2019
def expected_brats(flair: np.ndarray, seg: np.ndarray, inclusive: bool = False):
    """SSL4MIS's steps computed here, on SimpleITK's (z, y, x) = nibabel (k, j, i) arrays."""
    f, s = flair.transpose(2, 1, 0), seg.transpose(2, 1, 0)
    i, j, k = BRAIN                                     # the fixture's brain box, (k, j, i) order below
    end = 0 if inclusive else 1
    box = (slice(k.start, k.stop - end), slice(j.start, j.stop - end), slice(i.start, i.stop - end))
    crop, label = f[box].astype(np.float64), s[box]
    ranked = np.sort(crop, axis=None)
    threshold = ranked[math.ceil(0.999 * ranked.size) - 1]   # smallest v with P(x <= v) >= 0.999
    crop = np.minimum(crop, threshold)
    brain = crop[crop > 0]
    return (crop - brain.mean()) / brain.std(), (label > 0).astype(np.uint8), threshold


@pytest.fixture()
def brats_raw(tmp_path: Path):
    raw = tmp_path / "MICCAI_BraTS_2019_Data_Training"
    arrays = write_brats(raw, {"BraTS19_A_1": "HGG", "BraTS19_B_1": "LGG", "BraTS19_C_1": "HGG"})
    lists = write_lists(tmp_path / "lists", {"train.txt": ["BraTS19_A_1"], "val.txt": ["BraTS19_B_1"],
                                             "test.txt": ["BraTS19_C_1"]})
    return raw, arrays, lists


@pytest.mark.parametrize("box", ["ssl4mis", "inclusive"])
def test_brats2019(tmp_path: Path, brats_raw, box: str) -> None:
    raw, arrays, lists = brats_raw
    to = tmp_path / "BraTS2019"
    result = prepare("brats2019", raw.parent, to, lists, box=box)   # --from above MICCAI_BraTS_2019_Data_Training
    assert (result.written, result.cases) == (3 + 3, 3)
    for ident, (flair, seg) in arrays.items():
        image, label, threshold = expected_brats(flair, seg, inclusive=box == "inclusive")
        assert threshold == 5000                          # the 6000 outlier is clipped, the 5000 one is not
        with h5py.File(to / "data" / f"{ident}.h5") as f:
            assert f["image"].dtype == np.float32 and f["label"].dtype == np.uint8
            assert f["image"].shape == ((5, 15, 19) if box == "ssl4mis" else (6, 16, 20))
            np.testing.assert_allclose(f["image"][()], image, atol=1e-5)
            np.testing.assert_array_equal(f["label"][()], label)
    assert (to / "train.txt").read_text() == "BraTS19_A_1\n" and (to / "test.txt").read_text() == "BraTS19_C_1\n"
    manifest = check_manifest(to, "brats2019", raw.parent)
    assert manifest["parameters"]["box"] == box
    assert_idempotent("brats2019", raw.parent, to, lists, 6, "data/BraTS19_B_1.h5", box=box)
    other = prepare("brats2019", raw.parent, to, lists, box="inclusive" if box == "ssl4mis" else "ssl4mis")
    assert (other.written, other.skipped) == (3, 3)       # new parameters: every volume again, lists unchanged


def test_brats2019_pinned_lists() -> None:
    rows = {n: (SPLITS / "brats2019" / n).read_text().split() for n in ("train.txt", "val.txt", "test.txt")}
    assert [len(r) for r in rows.values()] == [250, 25, 60]
    assert len(set().union(*rows.values())) == 335


def test_brats2019_bad_inputs(tmp_path: Path, brats_raw) -> None:
    raw, arrays, lists = brats_raw
    to = tmp_path / "out"
    assert_rejected("brats2019", raw, to, None, "missing", "_flair.nii.gz", "more", "--lists")
    flair, seg = arrays["BraTS19_B_1"]
    seg_path = raw / "LGG" / "BraTS19_B_1" / "BraTS19_B_1_seg.nii.gz"
    bad = seg.copy()
    bad[0, 0, 0] = 3
    write_nifti(seg_path, bad)
    assert_rejected("brats2019", raw, to, lists, "BraTS19_B_1_seg.nii.gz", "[3]")
    write_nifti(seg_path, seg[:-1])
    assert_rejected("brats2019", raw, to, lists, "BraTS19_B_1_flair.nii.gz", "BraTS19_B_1_seg.nii.gz")
    seg_path.unlink()
    assert_rejected("brats2019", raw, to, lists, "1 of 6", "LGG/BraTS19_B_1/BraTS19_B_1_seg.nii.gz")
    both = write_lists(tmp_path / "l2", {"train.txt": ["BraTS19_A_1"], "val.txt": ["BraTS19_A_1"]})
    assert_rejected("brats2019", raw, to, both, "both hold 'BraTS19_A_1'")
    with pytest.raises(ConfigError, match="ssl4mis, inclusive"):
        prepare("brats2019", raw, to, lists, box="tight")


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_data_prepare(tmp_path: Path, brats_raw) -> None:
    from typer.testing import CliRunner

    from benchmark.cli import app

    raw, _, lists = brats_raw
    runner = CliRunner()
    args = ["data", "prepare", "brats2019", "--from", str(raw), "--to", str(tmp_path / "o"), "--lists", str(lists)]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "brats2019: 3 case(s)" in flat(first.output) and "6 file(s) written" in flat(first.output)
    second = runner.invoke(app, args)
    assert second.exit_code == 0 and "0 file(s) written, 6 already up to date" in flat(second.output)
    bad = runner.invoke(app, ["data", "prepare", "kits", "--from", str(raw)])
    assert bad.exit_code == 2 and "valid datasets: synapse, isic, promise12, brats2019" in flat(bad.output)
    missing = runner.invoke(app, ["data", "prepare", "brats2019", "--from", str(raw), "--to", str(tmp_path / "m")])
    assert missing.exit_code == 2 and "--lists" in flat(missing.output) and not (tmp_path / "m").exists()


def flat(text: str) -> str:
    """CLI output with rich's line wrapping undone."""
    return " ".join(text.split())


# ------------------------------------------------------------------------- the readers read what we wrote
def test_readers_read_prepared_layouts(tmp_path: Path, synapse_raw) -> None:
    """The contract with the readers: each prepared layout opens with its card's reader (default options)."""
    from benchmark.data.formats import READERS, open_reader

    raw, _, lists = synapse_raw
    prepare("synapse", raw, tmp_path / "syn", lists)
    if "transunet-synapse" in READERS:
        reader = open_reader("transunet-synapse", tmp_path / "syn", None, 1, "test")
        assert reader.read_train("case0005_slice003").label.shape == (10, 12)
        assert reader.read_eval("case0001").image.shape == (1, 3, 10, 12)

    write_promise12(tmp_path / "p", ["Case00", "Case01", "Case02", "Case03"])
    prepare("promise12", tmp_path / "p", tmp_path / "pro", promise12_lists(tmp_path / "pl"))
    reader = open_reader("ssl4mis-h5", tmp_path / "pro", None, 1, "test")
    assert reader.read_train("Case00_slice_2").image.shape == (1, 224, 224)
    assert reader.read_eval("Case03").label.shape == (3, 224, 224)

    write_brats(tmp_path / "b", {"B1": "HGG", "B1v": "LGG", "B1t": "LGG"})
    prepare("brats2019", tmp_path / "b", tmp_path / "bra",
            write_lists(tmp_path / "bl", {"train.txt": ["B1"], "val.txt": ["B1v"], "test.txt": ["B1t"]}))
    assert open_reader("h5-volumes", tmp_path / "bra", None, 1, "test").read_eval("B1").image.shape == (1, 5, 15, 19)

    write_isic(tmp_path / "i", isic_files(IDS))
    prepare("isic", tmp_path / "i", tmp_path / "isic")
    options = {"images": IMAGES, "masks": MASKS, "image_pattern": "ISIC_{id}.jpg",
               "mask_pattern": "ISIC_{id}_segmentation.png", "mask_values": {0: 0, 255: 1}}
    reader = open_reader("image-folder", tmp_path / "isic", options, 3, "test")
    assert reader.split_names("train", "splits/train.list") == (tmp_path / "isic/splits/train.list").read_text().split()
    case = reader.read_train("0000003")
    assert case.image.shape == (3, 16, 20) and set(np.unique(case.label)) <= {0, 1}
