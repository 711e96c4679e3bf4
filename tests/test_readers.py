"""Reader contract tests (every registered format), image-folder split rules, and the synthetic generators."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest
from PIL import Image

from benchmark.config import ConfigError
from benchmark.data import synthetic, synthetic_images, synthetic_volumes
from benchmark.data.formats import (READERS, Case, H5Volumes, ImageFolder, LAH5, Reader, SSL4MISH5, TransUNetSynapse, Volume,
                                    open_reader, read_list)
from benchmark.data.generators import GENERATORS, Generator

CARD = "datasets/test-card.yaml"


# ------------------------------------------------------------------------------------- fixture writers
# One per registered format: how to write a valid tiny sample, and which file a sample lives in.


def _write_h5(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)


@dataclass
class Layout:
    """How to write samples of one format. `write(root, name, kind, image, label)` takes on-disk arrays."""

    options: dict
    in_channels: int
    spatial: dict[str, tuple[int, ...]]                       # kind -> spatial shape
    write: Callable[[Path, str, str, np.ndarray, np.ndarray], None]
    sample: Callable[[np.random.Generator, tuple[int, ...]], tuple[np.ndarray, np.ndarray]]  # on-disk image, label
    expect: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]              # -> Case image, label
    cls: type = Reader
    h5: bool = False

    def reader(self, root: Path, **overrides) -> Reader:
        args = {"options": self.options, "in_channels": self.in_channels, **overrides}
        return self.cls(root, args["options"], args["in_channels"], CARD)


def _h5_sample(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    return rng.normal(size=shape).astype(np.float32), rng.integers(0, 3, size=shape).astype(np.uint8)


def _h5_expect(image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return image[None], label


def _ssl4mis_write(root: Path, name: str, kind: str, image: np.ndarray, label: np.ndarray) -> None:
    sub = root / "data" / "slices" if kind == "train" else root / "data"
    _write_h5(sub / f"{name}.h5", image=image, label=label)


def _la_write(root: Path, name: str, kind: str, image: np.ndarray, label: np.ndarray) -> None:
    _write_h5(root / "2018LA_Seg_Training Set" / name / "mri_norm2.h5", image=image, label=label)


def _h5v_write(root: Path, name: str, kind: str, image: np.ndarray, label: np.ndarray) -> None:
    _write_h5(root / "data" / f"{name}.h5", image=image, label=label)


def _synapse_write(root: Path, name: str, kind: str, image: np.ndarray, label: np.ndarray) -> None:
    if kind == "train":
        (root / "train_npz").mkdir(parents=True, exist_ok=True)
        np.savez(root / "train_npz" / f"{name}.npz", image=image, label=label)
    else:
        _write_h5(root / "test_vol_h5" / f"{name}.npy.h5", image=image, label=label)


IF_OPTIONS = {"images": "imgs", "masks": "gt", "image_pattern": "img_{id}.tif",
              "mask_pattern": "{id}_mask.png", "mask_values": {0: 0, 128: 1, 255: 2}}


def _if_sample(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    image = rng.integers(0, 256, size=(*shape, 3)).astype(np.uint8)
    mask = rng.choice(np.array([0, 128, 255], dtype=np.uint8), size=shape)
    return image, mask


def _if_expect(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lut = np.zeros(256, np.uint8)
    lut[[0, 128, 255]] = [0, 1, 2]
    return np.moveaxis(image, -1, 0).astype(np.float32) / 255, lut[mask]


def _if_write(root: Path, name: str, kind: str, image: np.ndarray, mask: np.ndarray) -> None:
    """uint8 (H, W, 3) images as RGB TIFF; float images (any NaN tests) as a grey 32-bit float TIFF."""
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    (root / "gt").mkdir(parents=True, exist_ok=True)
    if image.dtype == np.uint8:
        Image.fromarray(image, "RGB").save(root / "imgs" / f"img_{name}.tif")
    else:
        Image.fromarray(np.asarray(image[..., 0] if image.ndim == 3 else image, np.float32), "F").save(
            root / "imgs" / f"img_{name}.tif")
    Image.fromarray(mask, "L").save(root / "gt" / f"{name}_mask.png")


LAYOUTS: dict[str, Layout] = {
    "ssl4mis-h5": Layout({}, 1, {"train": (6, 5), "eval": (3, 6, 5)}, _ssl4mis_write, _h5_sample, _h5_expect,
                         h5=True, cls=SSL4MISH5),
    "la-h5": Layout({}, 1, {"train": (6, 5, 4), "eval": (6, 5, 4)}, _la_write, _h5_sample, _h5_expect,
                    h5=True, cls=LAH5),
    "h5-volumes": Layout({}, 1, {"train": (6, 5, 4), "eval": (6, 5, 4)}, _h5v_write, _h5_sample, _h5_expect,
                         h5=True, cls=H5Volumes),
    "transunet-synapse": Layout({}, 1, {"train": (6, 5), "eval": (3, 6, 5)}, _synapse_write, _h5_sample,
                                _h5_expect, h5=True, cls=TransUNetSynapse),
    "image-folder": Layout(IF_OPTIONS, 3, {"train": (6, 5), "eval": (6, 5)}, _if_write, _if_sample, _if_expect,
                           cls=ImageFolder),
}
FORMATS = READERS.names()
KINDS = ("train", "eval")


def layout_of(fmt: str) -> Layout:
    assert fmt in LAYOUTS, f"reader {fmt!r} is registered but tests/test_readers.py has no fixture writer for it"
    return LAYOUTS[fmt]


def read(reader: Reader, name: str, kind: str) -> Case:
    return reader.read_train(name) if kind == "train" else reader.read_eval(name)


def valid_root(tmp_path: Path, fmt: str, kind: str, names=("a01", "a02")) -> tuple[Layout, dict]:
    lay = layout_of(fmt)
    rng = np.random.default_rng(0)
    written = {}
    for name in names:
        image, label = lay.sample(rng, lay.spatial[kind])
        lay.write(tmp_path, name, kind, image, label)
        written[name] = (image, label)
    return lay, written


def test_every_registered_reader_has_a_fixture_and_is_a_reader() -> None:
    assert FORMATS == ["ssl4mis-h5", "la-h5", "h5-volumes", "image-folder", "transunet-synapse"]
    for entry in READERS:
        assert issubclass(entry.obj, Reader) and entry.description
        layout_of(entry.name)
        assert entry.obj.format_name() == entry.name
    assert Volume is Case


# ------------------------------------------------------------------------------------- reader contract


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_valid_root_reads_cases(tmp_path: Path, fmt: str, kind: str) -> None:
    lay, written = valid_root(tmp_path, fmt, kind)
    reader = lay.reader(tmp_path)
    reader.check_files(list(written), kind, "some.list")
    for name, (image, label) in written.items():
        case = read(reader, name, kind)
        want_image, want_label = lay.expect(image, label)
        assert case.name == name and case.spacing is None
        assert case.image.dtype == np.float32 and case.label.dtype == np.uint8
        assert case.image.shape == (lay.in_channels, *lay.spatial[kind])
        assert case.label.shape == lay.spatial[kind]
        np.testing.assert_array_equal(case.image, want_image)
        np.testing.assert_array_equal(case.label, want_label)
        assert reader.path_of(name, kind).is_file()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_missing_file(tmp_path: Path, fmt: str, kind: str) -> None:
    lay, written = valid_root(tmp_path, fmt, kind)
    reader = lay.reader(tmp_path)
    gone = reader.path_of("a02", kind)
    gone.unlink()
    with pytest.raises(ConfigError, match="2 of 3"):
        reader.check_files(["a01", "a02", "zz9"], kind, "train.list")
    with pytest.raises(ConfigError) as exc:
        reader.check_files(["a01", "a02"], kind, "train.list")
    msg = str(exc.value)
    assert str(gone) in msg and "1 of 2" in msg and "train.list" in msg and str(tmp_path) in msg
    with pytest.raises(ConfigError, match="not found") as exc:
        read(reader, "a02", kind)
    assert str(gone) in str(exc.value)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_unreadable_file(tmp_path: Path, fmt: str, kind: str) -> None:
    lay, _ = valid_root(tmp_path, fmt, kind)
    reader = lay.reader(tmp_path)
    path = reader.path_of("a01", kind)
    path.write_bytes(b"this is not a " + path.suffix.encode() + b" file\x00\x01")
    with pytest.raises(ConfigError, match="cannot be read") as exc:
        read(reader, "a01", kind)
    assert str(path) in str(exc.value)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_missing_key(tmp_path: Path, fmt: str, kind: str) -> None:
    lay = layout_of(fmt)
    if not lay.h5:
        pytest.skip(f"{fmt} has no keys (see test_unreadable_file)")
    lay, _ = valid_root(tmp_path, fmt, kind)
    reader = lay.reader(tmp_path)
    path = reader.path_of("a01", kind)
    image, label = lay.sample(np.random.default_rng(1), lay.spatial[kind])
    if path.suffix == ".npz":
        np.savez(path, img=image, label=label)
    else:
        _write_h5(path, img=image, label=label)
    with pytest.raises(ConfigError, match=r"missing (dataset|array\(s\)) 'image'") as exc:
        read(reader, "a01", kind)
    assert str(path) in str(exc.value) and "'img'" in str(exc.value)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_shape_mismatch(tmp_path: Path, fmt: str, kind: str) -> None:
    lay = layout_of(fmt)
    image, label = lay.sample(np.random.default_rng(2), lay.spatial[kind])
    lay.write(tmp_path, "a01", kind, image, label[:-1])
    reader = lay.reader(tmp_path)
    with pytest.raises(ConfigError, match="differs|must have one size") as exc:
        read(reader, "a01", kind)
    assert str(reader.path_of("a01", kind)) in str(exc.value)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_non_finite_pixels(tmp_path: Path, fmt: str, kind: str) -> None:
    lay = layout_of(fmt)
    image, label = lay.sample(np.random.default_rng(3), lay.spatial[kind])
    image = image.astype(np.float32) / (255 if image.dtype == np.uint8 else 1)
    image.flat[3] = np.nan
    image.flat[0] = np.inf
    lay.write(tmp_path, "a01", kind, image, label)
    reader = lay.reader(tmp_path)
    with pytest.raises(ConfigError, match="non-finite") as exc:
        read(reader, "a01", kind)
    assert str(reader.path_of("a01", kind)) in str(exc.value)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_wrong_number_of_dims(tmp_path: Path, fmt: str, kind: str) -> None:
    lay = layout_of(fmt)
    if not lay.h5:
        pytest.skip(f"{fmt} images are always 2D")
    spatial = lay.spatial[kind]
    image, label = lay.sample(np.random.default_rng(4), spatial[1:])  # one dim short
    lay.write(tmp_path, "a01", kind, image, label)
    reader = lay.reader(tmp_path)
    with pytest.raises(ConfigError, match="dims") as exc:
        read(reader, "a01", kind)
    assert str(reader.path_of("a01", kind)) in str(exc.value)


@pytest.mark.parametrize("fmt", FORMATS)
def test_wrong_channel_count(tmp_path: Path, fmt: str) -> None:
    lay, _ = valid_root(tmp_path, fmt, "eval")
    if lay.h5:  # a stored channel axis that disagrees with the card
        spatial = lay.spatial["eval"]
        image, label = lay.sample(np.random.default_rng(5), spatial)
        lay.write(tmp_path, "a01", "eval", np.stack([image, image, image]), label)
        reader = lay.reader(tmp_path)
        with pytest.raises(ConfigError, match="3 channel") as exc:
            reader.read_eval("a01")
        assert str(reader.path_of("a01", "eval")) in str(exc.value) and "in_channels: 1" in str(exc.value)
        with pytest.raises(ConfigError, match="1 channel"):
            lay.reader(tmp_path, in_channels=2).read_eval("a02")
    else:  # image-folder reads grey or RGB only
        for channels in (2, 4):
            with pytest.raises(ConfigError, match=f"in_channels: {channels}") as exc:
                lay.reader(tmp_path, in_channels=channels)
            assert CARD in str(exc.value)


@pytest.mark.parametrize("fmt", FORMATS)
def test_options_are_validated(tmp_path: Path, fmt: str) -> None:
    lay = layout_of(fmt)
    with pytest.raises(ConfigError, match="unknown field") as exc:
        lay.reader(tmp_path, options={**lay.options, "bogus": 1})
    assert CARD in str(exc.value)
    built = lay.cls.Options(**lay.options) if lay.options else lay.cls.Options()
    assert lay.reader(tmp_path, options=built).options == built


@pytest.mark.parametrize("fmt", FORMATS)
def test_open_reader(tmp_path: Path, fmt: str) -> None:
    lay = layout_of(fmt)
    assert type(open_reader(fmt, tmp_path, lay.options, lay.in_channels, CARD)) is lay.cls
    with pytest.raises(ConfigError, match="valid formats: ssl4mis-h5, la-h5, h5-volumes, image-folder, transunet-synapse"):
        open_reader("nifti", tmp_path, {}, 1, CARD)


@pytest.mark.parametrize("fmt", ["ssl4mis-h5", "la-h5", "h5-volumes"])
def test_list_file_splits(tmp_path: Path, fmt: str) -> None:
    (tmp_path / "train.list").write_text("a01\n\n a02 \n")
    reader = layout_of(fmt).reader(tmp_path)
    assert reader.split_names("train", "train.list") == ["a01", "a02"]
    with pytest.raises(ConfigError, match="splits.val: expected the name of a list file"):
        reader.split_names("val", {"from": 0, "to": 1})
    with pytest.raises(ConfigError, match="not found"):
        reader.split_names("test", "test.list")


def test_non_integral_labels_are_refused(tmp_path: Path) -> None:
    _ssl4mis_write(tmp_path, "a01", "train", np.zeros((4, 4), np.float32), np.full((4, 4), 0.5))
    with pytest.raises(ConfigError, match="integer class ids"):
        SSL4MISH5(tmp_path, {}, 1, CARD).read_train("a01")
    _ssl4mis_write(tmp_path, "a02", "train", np.zeros((4, 4), np.float32), np.full((4, 4), 2.0))
    assert SSL4MISH5(tmp_path, {}, 1, CARD).read_train("a02").label.max() == 2


def test_la_options_move_the_files(tmp_path: Path) -> None:
    _write_h5(tmp_path / "LA" / "C1" / "vol.h5", image=np.ones((5, 5, 5), np.float32),
              label=np.zeros((5, 5, 5), np.uint8))
    reader = LAH5(tmp_path, {"folder": "LA", "file": "vol.h5"}, 1, CARD)
    assert reader.path_of("C1", "train") == tmp_path / "LA" / "C1" / "vol.h5"
    assert reader.read_train("C1").image.shape == (1, 5, 5, 5)


# ---------------------------------------------------------------------------------------- image-folder


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3)).astype(np.uint8)


def _pair(root: Path, name: str, image: Image.Image, mask: np.ndarray, img_pat: str = "{id}.png",
          mask_pat: str = "{id}.png") -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    image.save(root / "images" / img_pat.format(id=name))
    Image.fromarray(mask).save(root / "masks" / mask_pat.format(id=name))


def _folder(root: Path, in_channels: int = 1, **options) -> ImageFolder:
    opts = {"images": "images", "masks": "masks", "mask_values": {0: 0, 255: 1}, **options}
    return ImageFolder(root, opts, in_channels, CARD)


def test_image_modes_and_scaling(tmp_path: Path) -> None:
    mask = np.zeros((4, 6), np.uint8)
    mask[1:3, 2:5] = 255
    rgb = _rgb(4, 6)
    _pair(tmp_path, "rgb", Image.fromarray(rgb, "RGB"), mask)
    grey16 = (np.arange(24, dtype=np.uint16).reshape(4, 6) * 2700)
    _pair(tmp_path, "g16", Image.fromarray(grey16), mask)
    grey = np.arange(24, dtype=np.uint8).reshape(4, 6) * 10
    _pair(tmp_path, "bmp", Image.fromarray(grey, "L"), mask, img_pat="{id}.png")

    rgb_reader = _folder(tmp_path, in_channels=3)
    case = rgb_reader.read_train("rgb")
    assert case.image.shape == (3, 4, 6) and case.image.dtype == np.float32
    np.testing.assert_allclose(case.image, np.moveaxis(rgb, -1, 0) / 255.0, atol=1e-7)
    np.testing.assert_array_equal(case.label, mask // 255)
    grey_case = _folder(tmp_path, in_channels=1).read_eval("rgb")  # RGB read as "L"
    assert grey_case.image.shape == (1, 4, 6)
    want = np.asarray(Image.fromarray(rgb, "RGB").convert("L"), np.float32) / 255
    np.testing.assert_allclose(grey_case.image[0], want, atol=1e-7)

    g16 = _folder(tmp_path).read_train("g16")
    assert Image.open(tmp_path / "images" / "g16.png").mode.startswith("I")
    np.testing.assert_allclose(g16.image[0], grey16 / 65535.0, atol=1e-6)
    g16_rgb = rgb_reader.read_train("g16")
    assert g16_rgb.image.shape == (3, 4, 6) and np.allclose(g16_rgb.image[2], grey16 / 65535.0, atol=1e-6)
    g8_rgb = rgb_reader.read_train("bmp")
    np.testing.assert_allclose(g8_rgb.image, np.repeat(grey[None] / 255.0, 3, 0), atol=1e-7)


@pytest.mark.parametrize("ext", ["jpg", "bmp", "tiff"])
def test_other_image_formats(tmp_path: Path, ext: str) -> None:
    rgb = _rgb(8, 8, seed=1)
    mask = np.zeros((8, 8), np.uint8)
    mask[2:6, 2:6] = 255
    _pair(tmp_path, "x1", Image.fromarray(rgb, "RGB"), mask, img_pat=f"{{id}}.{ext}")
    case = _folder(tmp_path, 3, image_pattern=f"{{id}}.{ext}").read_train("x1")
    assert case.image.shape == (3, 8, 8) and 0.0 <= case.image.min() and case.image.max() <= 1.0
    if ext != "jpg":
        np.testing.assert_allclose(case.image, np.moveaxis(rgb, -1, 0) / 255.0, atol=1e-7)


def test_mask_modes(tmp_path: Path) -> None:
    img = Image.fromarray(_rgb(4, 4), "RGB")
    raw = np.array([[0, 1, 2, 2]] * 4, np.uint8)
    pal = Image.fromarray(raw, "P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    img.save(tmp_path / "images" / "p.png")
    pal.save(tmp_path / "masks" / "p.png")
    rgb_mask = np.repeat((raw * 100)[..., None], 3, -1)
    img.save(tmp_path / "images" / "c.png")
    Image.fromarray(rgb_mask, "RGB").save(tmp_path / "masks" / "c.png")
    palette = _folder(tmp_path, 3, mask_values={0: 0, 1: 1, 2: 2}).read_train("p")
    np.testing.assert_array_equal(palette.label, raw)
    grey_rgb = _folder(tmp_path, 3, mask_values={0: 0, 100: 1, 200: 1}).read_train("c")
    np.testing.assert_array_equal(grey_rgb.label, (raw > 0).astype(np.uint8))
    colour = rgb_mask.copy()
    colour[0, 0] = (255, 0, 0)
    Image.fromarray(colour, "RGB").save(tmp_path / "masks" / "c.png")
    with pytest.raises(ConfigError, match="colour image") as exc:
        _folder(tmp_path, 3, mask_values={0: 0, 100: 1, 200: 1, 255: 1}).read_train("c")
    assert str(tmp_path / "masks" / "c.png") in str(exc.value)


def test_unexpected_mask_values(tmp_path: Path) -> None:
    mask = np.zeros((5, 5), np.uint8)
    mask[1, 1], mask[2, 2] = 128, 7
    _pair(tmp_path, "m1", Image.fromarray(_rgb(5, 5), "RGB"), mask)
    with pytest.raises(ConfigError, match="mask values 7, 128 are not in reader.mask_values") as exc:
        _folder(tmp_path, 3).read_eval("m1")
    assert str(tmp_path / "masks" / "m1.png") in str(exc.value) and "[0, 255]" in str(exc.value)


def test_mask_missing_and_mask_size(tmp_path: Path) -> None:
    _pair(tmp_path, "m1", Image.fromarray(_rgb(5, 5), "RGB"), np.zeros((5, 5), np.uint8))
    _pair(tmp_path, "m2", Image.fromarray(_rgb(5, 5), "RGB"), np.zeros((5, 4), np.uint8))
    reader = _folder(tmp_path, 3)
    with pytest.raises(ConfigError, match=r"image is 5x5 \(WxH\) but its mask .* is 4x5") as exc:
        reader.read_train("m2")
    assert str(tmp_path / "images" / "m2.png") in str(exc.value)
    (tmp_path / "masks" / "m1.png").unlink()
    with pytest.raises(ConfigError, match="1 of 2 mask") as exc:
        reader.check_files(["m1", "m2"], "train", "train.list")
    assert str(tmp_path / "masks" / "m1.png") in str(exc.value)
    with pytest.raises(ConfigError, match="not found") as exc:
        reader.read_train("m1")
    assert str(tmp_path / "masks" / "m1.png") in str(exc.value)


def test_required_options_and_patterns(tmp_path: Path) -> None:
    for missing in ("images", "masks", "mask_values"):
        opts = {"images": "images", "masks": "masks", "mask_values": {0: 0, 255: 1}}
        del opts[missing]
        with pytest.raises(ConfigError, match=f"reader.{missing} is required"):
            ImageFolder(tmp_path, opts, 1, CARD)
    for bad in ("x.png", "{id}_{id}.png", "{name}.png", "sub/{id}.png"):
        with pytest.raises(ConfigError, match="image_pattern"):
            _folder(tmp_path, image_pattern=bad)
    with pytest.raises(ConfigError, match="map integers to integers"):
        _folder(tmp_path, mask_values={"zero": 0})
    assert _folder(tmp_path, mask_values={"0": "0", "255": 1}).mask_values == {0: 0, 255: 1}


def test_empty_or_absent_images_folder(tmp_path: Path) -> None:
    reader = _folder(tmp_path, image_pattern="ISIC_{id}.jpg")
    with pytest.raises(ConfigError, match="images folder .* not found"):
        reader.split_names("train", {"from": 0, "to": 1})
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "LICENSE.txt").write_text("x")
    (tmp_path / "images" / "ISIC_1.JPG").write_text("x")
    with pytest.raises(ConfigError) as exc:
        _folder(tmp_path, image_pattern="ISIC_{id}.jpg").split_names("train", {"from": 0, "to": 1})
    assert str(tmp_path / "images") in str(exc.value) and "'ISIC_{id}.jpg'" in str(exc.value)


@pytest.fixture
def isic_root(tmp_path: Path) -> Path:
    """The ISIC 2018 Task 1 download layout, 10 cases (ids 0000000..0000009), plus its stray text files."""
    images, masks = tmp_path / "ISIC2018_Task1-2_Training_Input", tmp_path / "ISIC2018_Task1_Training_GroundTruth"
    images.mkdir()
    masks.mkdir()
    for i in range(10):
        Image.fromarray(_rgb(6, 7, seed=i), "RGB").save(images / f"ISIC_{i:07d}.jpg", quality=95)
        mask = np.zeros((6, 7), np.uint8)
        mask[1:4, 2:5] = 255
        Image.fromarray(mask, "L").save(masks / f"ISIC_{i:07d}_segmentation.png")
    (images / "ATTRIBUTION.txt").write_text("x")
    (images / "LICENSE.txt").write_text("x")
    (masks / "LICENSE.txt").write_text("x")
    return tmp_path


ISIC_OPTIONS = {"images": "ISIC2018_Task1-2_Training_Input", "masks": "ISIC2018_Task1_Training_GroundTruth",
                "image_pattern": "ISIC_{id}.jpg", "mask_pattern": "ISIC_{id}_segmentation.png",
                "mask_values": {0: 0, 255: 1}}


def test_isic_layout_and_split_rules(isic_root: Path) -> None:
    reader = ImageFolder(isic_root, ISIC_OPTIONS, 3, CARD)
    ids = [f"{i:07d}" for i in range(10)]
    assert reader.ids() == ids
    train = reader.split_names("train", {"from": 0, "to": 7})
    test = reader.split_names("test", {"from": 7, "to": 10})
    assert train == ids[:7] and test == ids[7:]
    assert reader.split_names("train", {"from": 0.0, "to": 0.75}) == ids[:round(7.5)]
    assert reader.split_names("val", {"from": 0.75, "to": 1.0}) == ids[round(7.5):]
    assert reader.split_names("mixed", {"from": 2, "to": 0.5}) == ids[2:5]
    reader.check_files(train, "train", "splits.train")
    case = reader.read_train(train[0])
    assert case.image.shape == (3, 6, 7) and case.label.sum() == 9 and set(np.unique(case.label)) == {0, 1}
    (isic_root / "fold.list").write_text("0000003\n0000001\n")
    assert reader.split_names("fold", "fold.list") == ["0000003", "0000001"]


@pytest.mark.parametrize("spec, match", [
    ({"from": 0}, "expected a list file name"),
    ({"from": 0, "to": 3, "step": 1}, "expected a list file name"),
    (["0000001"], "expected a list file name"),
    ("", "expected a list file name"),
    (5, "expected a list file name"),
    ({"from": 0, "to": 11}, "outside 0..10"),
    ({"from": -1, "to": 3}, "outside 0..10"),
    ({"from": 0.0, "to": 1.5}, "must be in \\[0, 1\\]"),
    ({"from": 5, "to": 5}, "empty split"),
    ({"from": 0.9, "to": 0.1}, "empty split"),
    ({"from": "0", "to": 3}, "expected an int position or a float fraction"),
    ({"from": True, "to": 3}, "expected an int position or a float fraction"),
])
def test_bad_split_specs(isic_root: Path, spec, match: str) -> None:
    reader = ImageFolder(isic_root, ISIC_OPTIONS, 3, CARD)
    with pytest.raises(ConfigError, match=match) as exc:
        reader.split_names("train", spec)
    msg = str(exc.value)
    assert "splits.train" in msg and CARD in msg
    if "list file" in match:  # the general message shows both accepted forms
        assert "{from: a, to: b}" in msg and "fractions" in msg


def test_read_list_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        read_list(tmp_path / "x.list")
    (tmp_path / "x.list").write_text("\n \n")
    with pytest.raises(ConfigError, match="empty"):
        read_list(tmp_path / "x.list")


# ------------------------------------------------------------------------------------------ generators


LA_SMALL = synthetic_volumes.VolumeSpec(seed=5, shape=(24, 20, 16), train_cases=2, val_cases=1, test_cases=2)
SKIN_SMALL = synthetic_images.ImageSpec(seed=5, size=32, images=6)
SKIN_CARD_OPTIONS = {"images": "images", "masks": "masks", "image_pattern": "SKIN_{id}.jpg",
                     "mask_pattern": "SKIN_{id}_segmentation.png", "mask_values": {0: 0, 255: 1}}


def test_generator_registry() -> None:
    assert GENERATORS.names() == ["synthetic-cardiac", "synthetic-la", "synthetic-skin"]
    cardiac = GENERATORS.get("synthetic-cardiac")
    assert cardiac == Generator(synthetic.SyntheticSpec, synthetic.ensure_synthetic, synthetic.GENERATOR_VERSION,
                                cardiac.description)
    for entry in GENERATORS:
        gen = entry.obj
        assert isinstance(gen.version, int) and gen.description and entry.description == gen.description
        assert gen.build_spec({"name": entry.name}, CARD) == gen.spec()
        with pytest.raises(ValueError, match="unknown .* key.*'bogus'.*valid keys: seed"):
            gen.spec.from_dict({"bogus": 1})
        with pytest.raises(ConfigError, match=f"{CARD}: generator: unknown"):
            gen.build_spec({"name": entry.name, "bogus": 1}, CARD)
    assert GENERATORS.get("synthetic-la").build_spec({"shape": [32, 32, 16]}, CARD).shape == (32, 32, 16)


@pytest.mark.parametrize("bad", [{"shape": (48, 48)}, {"shape": (8, 48, 48)}, {"shape": (48.0, 48, 32)},
                                 {"train_cases": 0}, {"test_cases": -1}, {"seed": "0"}, {"train_cases": 1000}])
def test_volume_spec_validation(bad: dict) -> None:
    with pytest.raises(ValueError, match="VolumeSpec"):
        synthetic_volumes.VolumeSpec.from_dict(bad)


@pytest.mark.parametrize("bad", [{"size": 8}, {"images": 0}, {"seed": 1.5}, {"images": 10000}])
def test_image_spec_validation(bad: dict) -> None:
    with pytest.raises(ValueError, match="ImageSpec"):
        synthetic_images.ImageSpec.from_dict(bad)


def _la_cases(root: Path) -> dict[str, Case]:
    reader = LAH5(root, {}, 1, CARD)
    out = {}
    for split in ("train.list", "val.list", "test.list"):
        if not (root / split).exists():
            continue
        names = reader.split_names(split, split)
        reader.check_files(names, "train", split)
        out.update({n: reader.read_eval(n) for n in names})
    return out


def test_synthetic_la(tmp_path: Path) -> None:
    root_a = synthetic_volumes.ensure_volumes(tmp_path / "a", LA_SMALL)
    root_b = synthetic_volumes.ensure_volumes(tmp_path / "b", LA_SMALL)
    assert read_list(root_a / "train.list") == ["SYN001", "SYN002"]
    assert read_list(root_a / "val.list") == ["SYN003"] and read_list(root_a / "test.list") == ["SYN004", "SYN005"]
    a, b = _la_cases(root_a), _la_cases(root_b)
    assert list(a) == [f"SYN{i:03d}" for i in range(1, 6)]
    for name, case in a.items():
        np.testing.assert_array_equal(case.image, b[name].image)
        np.testing.assert_array_equal(case.label, b[name].label)
        assert case.image.shape == (1, 24, 20, 16) and case.label.shape == (24, 20, 16)
        assert case.image.dtype == np.float32 and case.label.dtype == np.uint8
        assert set(np.unique(case.label)) == {0, 1}
        assert 0.005 < case.label.mean() < 0.5
        assert abs(case.image.mean()) < 1e-3 and abs(case.image.std() - 1) < 1e-3  # z-scored per volume
        assert case.image[0][case.label == 1].mean() > case.image[0][case.label == 0].mean() + 1
    assert not np.array_equal(a["SYN001"].label, a["SYN002"].label)
    with h5py.File(root_a / "2018LA_Seg_Training Set" / "SYN001" / "mri_norm2.h5") as f:
        assert f["image"].dtype == np.float32 and f["label"].dtype == np.uint8 and f["image"].shape == (24, 20, 16)
    # the marker reads back equal (shape is a tuple in the spec): a second call reuses the tree
    stamp = (root_a / synthetic.MARKER).stat().st_mtime_ns
    assert synthetic_volumes.ensure_volumes(tmp_path / "a", LA_SMALL) == root_a
    assert (root_a / synthetic.MARKER).stat().st_mtime_ns == stamp
    other = synthetic_volumes.VolumeSpec(seed=6, shape=(24, 20, 16), train_cases=2, val_cases=0, test_cases=2)
    synthetic_volumes.ensure_volumes(tmp_path / "a", other)
    assert not (root_a / "val.list").exists()
    assert not np.array_equal(_la_cases(root_a)["SYN001"].image, a["SYN001"].image)


def test_synthetic_la_default_is_fast_and_distractors_are_bright(tmp_path: Path) -> None:
    spec = synthetic_volumes.VolumeSpec()
    start = time.process_time()
    synthetic_volumes.generate(tmp_path, spec)
    assert time.process_time() - start < 2.0  # CPU seconds, so a busy machine does not fail it
    image, label = synthetic_volumes.render(spec, 0)
    assert image.shape == (48, 48, 32)
    threshold = image[label == 1].mean() - image[label == 1].std()
    assert (image[label == 0] > threshold).sum() > 100  # distractors: a threshold alone is not enough


def test_synthetic_skin(tmp_path: Path) -> None:
    root_a = synthetic_images.ensure_images(tmp_path / "a", SKIN_SMALL)
    root_b = synthetic_images.ensure_images(tmp_path / "b", SKIN_SMALL)
    assert sorted(p.name for p in (root_a / "images").iterdir())[0] == "SKIN_0001.jpg"
    assert sorted(p.name for p in (root_a / "masks").iterdir())[-1] == "SKIN_0006_segmentation.png"
    assert not list(root_a.glob("*.list"))
    ra, rb = (ImageFolder(r, SKIN_CARD_OPTIONS, 3, CARD) for r in (root_a, root_b))
    train = ra.split_names("train", {"from": 0, "to": 0.5})
    test = ra.split_names("test", {"from": 0.5, "to": 1.0})
    assert train == ["0001", "0002", "0003"] and test == ["0004", "0005", "0006"]
    ra.check_files(train + test, "eval", "splits")
    for name in train + test:
        ca, cb = ra.read_train(name), rb.read_eval(name)
        np.testing.assert_array_equal(ca.image, cb.image)
        np.testing.assert_array_equal(ca.label, cb.label)
        assert ca.image.shape == (3, 32, 32) and ca.label.shape == (32, 32)
        assert set(np.unique(ca.label)) == {0, 1} and 0.02 < ca.label.mean() < 0.6
        lesion, skin = ca.image[:, ca.label == 1].mean(), ca.image[:, ca.label == 0].mean()
        assert lesion < skin  # darker
        red, blue = ca.image[0][ca.label == 0].mean(), ca.image[2][ca.label == 0].mean()
        assert red > blue  # skin-coloured
    with Image.open(root_a / "images" / "SKIN_0001.jpg") as im:
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == (32, 32)
    assert (root_a / "images" / "SKIN_0001.jpg").read_bytes() == (root_b / "images" / "SKIN_0001.jpg").read_bytes()
    assert not np.array_equal(ra.read_train("0001").label, ra.read_train("0002").label)


def test_generated_roots_are_readable_through_the_registries(tmp_path: Path) -> None:
    """Each non-cardiac generator's layout is read by the reader its description names."""
    pairs = {"synthetic-la": ("la-h5", {}, 1, "train.list"),
             "synthetic-skin": ("image-folder", SKIN_CARD_OPTIONS, 3, {"from": 0, "to": 1.0})}
    small = {"synthetic-la": {"shape": [16, 16, 16], "train_cases": 1, "test_cases": 1},
             "synthetic-skin": {"size": 16, "images": 2}}
    for gen_name, (fmt, options, channels, split) in pairs.items():
        gen = GENERATORS.get(gen_name)
        assert fmt in gen.description
        root = gen.ensure(tmp_path / gen_name, gen.build_spec({"name": gen_name, **small[gen_name]}, CARD))
        reader = open_reader(fmt, root, options, channels, CARD)
        names = reader.split_names("train", split)
        reader.check_files(names, "train", "train")
        assert reader.read_train(names[0]).label.any()
