"""Readers for on-disk dataset layouts.

A format is one `Reader` subclass registered in `READERS`; its registered name is what a dataset card's
`format:` says, and its `Options` dataclass is what the card's `reader:` mapping may hold. A reader turns
the names of a split into `Case`s (image (C, *spatial) float32, label (*spatial) uint8) and checks what it
reads, raising one `ConfigError` that names the file and the fix. Label values >= the card's class count
are checked by the caller.

    ssl4mis-h5    SSL4MIS ACDC layout: data/slices/<name>.h5 training slices, data/<name>.h5 volumes
    la-h5         UA-MT LA layout: 2018LA_Seg_Training Set/<ID>/mri_norm2.h5 volumes
    h5-volumes    one HDF5 file per volume in a folder (SSL4MIS BraTS2019: data/<ID>.h5), named by the card
    image-folder  plain 2D images (PNG/JPG/BMP/TIFF) with masks in a sibling folder, described by the card
    transunet-synapse  TransUNet Synapse layout: train_npz/<slice>.npz (H, W) slices, test_vol_h5/<case>.npy.h5 volumes
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, ClassVar

import h5py
import numpy as np

from benchmark.config import ConfigError, build_dataclass
from benchmark.registry import Registry

KINDS = ("train", "eval")


@dataclass
class Case:
    """A training sample or an evaluation case."""

    name: str
    image: np.ndarray  # (C, *spatial) float32
    label: np.ndarray  # (*spatial) uint8
    spacing: tuple[float, ...] | None = None


Volume = Case  # old name, still imported elsewhere


@dataclass(frozen=True)
class NoOptions:
    """A reader without settings: the card's `reader:` mapping must be empty or absent."""


def read_list(path: Path) -> list[str]:
    """Read a split list: one name per line, blank lines ignored."""
    if not path.is_file():
        raise ConfigError(f"split list {path} not found")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise ConfigError(f"split list {path} is empty")
    return names


# ------------------------------------------------------------------------------------------- protocol


class Reader(ABC):
    """One on-disk layout. A new format is one subclass, registered in READERS."""

    #: The card's `reader:` mapping, validated by `benchmark.config.build_dataclass`.
    Options: ClassVar[type] = NoOptions

    def __init__(self, root: Path, options: Any = None, in_channels: int = 1, where: str = "dataset card") -> None:
        self.root = Path(root)
        self.where = str(where)
        self.in_channels = int(in_channels)
        if options is None:
            options = {}
        if isinstance(options, Mapping):
            options = build_dataclass(self.Options, options, f"{self.where}: reader")
        elif not (is_dataclass(options) and isinstance(options, self.Options)):
            raise ConfigError(f"{self.where}: reader: expected a mapping of {self.Options.__name__} fields, "
                              f"got {options!r}")
        self.options = options
        if self.in_channels < 1:
            raise ConfigError(f"{self.where}: in_channels must be >= 1, got {self.in_channels}")

    # ----------------------------------------------------------------------------------- splits & files

    def split_names(self, split: str, spec: Any) -> list[str]:
        """The names of `split`; `spec` is the card's splits[split]: here a list file under root."""
        if not isinstance(spec, str) or not spec:
            raise ConfigError(f"{self.where}: splits.{split}: expected the name of a list file under {self.root} "
                              f"(one name per line), got {spec!r}")
        return self._read_list(split, spec)

    def _read_list(self, split: str, spec: str) -> list[str]:
        try:
            return read_list(self.root / spec)
        except ConfigError as exc:
            raise ConfigError(f"{self.where}: splits.{split}: {exc}") from None

    def path_of(self, name: str, kind: str) -> Path:
        """The file holding sample `name` of `kind` ("train" or "eval"), for checks and error messages."""
        raise NotImplementedError(f"{type(self).__name__} does not implement path_of")

    def layout(self, kind: str) -> str:
        """Where files of `kind` are expected, in words, for error messages."""
        return str(self.path_of("<name>", kind))

    def check_files(self, names: list[str], kind: str, list_name: str) -> None:
        """Fail before training, naming the count and the first missing file, if a split names absent files."""
        _check_kind(kind)
        missing = [p for p in (self.path_of(n, kind) for n in names) if not p.is_file()]
        if missing:
            raise ConfigError(
                f"{self.where}: {len(missing)} of {len(names)} {kind} file(s) named by {list_name} are missing, "
                f"e.g. {missing[0]}; the {self.format_name()} reader expects {self.layout(kind)}. Is the dataset "
                f"root {self.root} complete, and do the card's root / reader settings point at it?")

    @abstractmethod
    def read_train(self, name: str) -> Case:
        """A training sample."""

    @abstractmethod
    def read_eval(self, name: str) -> Case:
        """An evaluation case."""

    # ------------------------------------------------------------------------------------------ helpers

    @classmethod
    def format_name(cls) -> str:
        for entry in READERS:
            if entry.obj is cls:
                return entry.name
        return cls.__name__

    def _require_file(self, path: Path) -> None:
        if not path.is_file():
            raise ConfigError(f"{path}: file not found; the {self.format_name()} reader of {self.where} expects it "
                              f"there (check the card's root and split lists, and that the download is complete)")

    def _case(self, name: str, path: Path, image: np.ndarray, label: np.ndarray, spatial: str) -> Case:
        """Check an image read without or with a leading channel axis against its label; build the Case."""
        dims = len(spatial.split(","))
        if label.ndim != dims:
            raise ConfigError(f"{path}: label has shape {label.shape}, expected {dims} dims ({spatial}); "
                              f"is this the right file for the {self.format_name()} format?")
        if image.ndim == dims:
            image = image[None]
        elif image.ndim != dims + 1:
            raise ConfigError(f"{path}: image has shape {image.shape}, expected ({spatial}) or (C, {spatial}); "
                              f"is this the right file for the {self.format_name()} format?")
        if image.shape[0] != self.in_channels:
            raise ConfigError(f"{path}: image of shape {tuple(image.shape)} read as (C, {spatial}) has "
                              f"{image.shape[0]} channel(s) but {self.where} says in_channels: {self.in_channels}; "
                              f"fix in_channels in the card, or the file if it is not a (C, {spatial}) image")
        if image.shape[1:] != label.shape:
            raise ConfigError(f"{path}: image spatial shape {image.shape[1:]} differs from label shape "
                              f"{label.shape}; image and label must cover the same pixels")
        return Case(name, _finite(image, path), _as_label(label, path))


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")


def _finite(image: np.ndarray, path: Path) -> np.ndarray:
    image = np.ascontiguousarray(image, dtype=np.float32)
    if not np.isfinite(image).all():
        bad = int(image.size - np.count_nonzero(np.isfinite(image)))
        raise ConfigError(f"{path}: image has {bad} non-finite pixel(s) (NaN or inf); fix or drop the file "
                          f"(e.g. np.nan_to_num before saving)")
    return image


def _as_label(label: np.ndarray, path: Path) -> np.ndarray:
    """uint8 class ids; a label that is not integral in 0..255 is an error rather than a silent cast."""
    if label.dtype == np.uint8:
        return np.ascontiguousarray(label)
    if label.dtype.kind not in "biuf":
        raise ConfigError(f"{path}: label has dtype {label.dtype}; expected integer class ids")
    if label.size:
        lo, hi = label.min(), label.max()
        integral = label.dtype.kind != "f" or bool(np.all(np.isfinite(label)) and np.all(label == np.round(label)))
        if not integral or lo < 0 or hi > 255:
            raise ConfigError(f"{path}: label values must be integer class ids in 0..255, found range "
                              f"[{lo}, {hi}] in dtype {label.dtype}")
    return np.ascontiguousarray(label, dtype=np.uint8)


def _read_h5(path: Path, keys: tuple[str, ...], fmt: str) -> list[np.ndarray]:
    """Read datasets `keys` of an HDF5 file, with one ConfigError per problem."""
    if not path.is_file():
        raise ConfigError(f"{path}: file not found; the {fmt} reader expects it there (check the card's root "
                          f"and split lists, and that the download is complete)")
    try:
        with h5py.File(path, "r") as f:
            out = []
            for key in keys:
                if key not in f or not isinstance(f[key], h5py.Dataset):
                    raise ConfigError(f"{path}: missing dataset {key!r} (found {sorted(f.keys())}); {fmt} files "
                                      f"need datasets {', '.join(map(repr, keys))}")
                out.append(np.asarray(f[key][()]))
            return out
    except ConfigError:
        raise
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: cannot be read as HDF5 ({exc}); re-download or regenerate the file") from None


# -------------------------------------------------------------------------------------------- readers


READERS: Registry[type[Reader]] = Registry("format")


@READERS.register("ssl4mis-h5", "SSL4MIS layout: data/slices/<name>.h5 2D training slices, data/<name>.h5 "
                                "(S, H, W) volumes; keys image, label")
class SSL4MISH5(Reader):
    """The SSL4MIS layout: `data/slices/<name>.h5` training slices, `data/<name>.h5` volumes (keys image, label)."""

    def path_of(self, name: str, kind: str) -> Path:
        _check_kind(kind)
        if kind == "train":
            return self.root / "data" / "slices" / f"{name}.h5"
        return self.root / "data" / f"{name}.h5"

    def read_train(self, name: str) -> Case:
        path = self.path_of(name, "train")
        image, label = _read_h5(path, ("image", "label"), "ssl4mis-h5")
        return self._case(name, path, image, label, "H, W")

    def read_eval(self, name: str) -> Case:
        path = self.path_of(name, "eval")
        image, label = _read_h5(path, ("image", "label"), "ssl4mis-h5")
        return self._case(name, path, image, label, "S, H, W")


@dataclass(frozen=True)
class LAOptions:
    folder: str = "2018LA_Seg_Training Set"  # under root: one sub-folder per case id
    file: str = "mri_norm2.h5"              # in each case folder


@READERS.register("la-h5", "UA-MT LA layout: 2018LA_Seg_Training Set/<ID>/mri_norm2.h5 (X, Y, Z) volumes; "
                           "keys image, label")
class LAH5(Reader):
    """The UA-MT Left Atrium layout: `<root>/<folder>/<ID>/<file>` with image float32 (X, Y, Z), label uint8.

    Training and evaluation samples are both whole volumes. The files record no spacing (~0.625 mm isotropic).
    """

    Options = LAOptions

    def path_of(self, name: str, kind: str) -> Path:
        _check_kind(kind)
        return self.root / self.options.folder / name / self.options.file

    def _read(self, name: str) -> Case:
        path = self.path_of(name, "eval")
        image, label = _read_h5(path, ("image", "label"), "la-h5")
        return self._case(name, path, image, label, "X, Y, Z")

    def read_train(self, name: str) -> Case:
        return self._read(name)

    def read_eval(self, name: str) -> Case:
        return self._read(name)


@dataclass(frozen=True)
class H5VolumesOptions:
    folder: str = "data"       # under root, holding every volume
    file: str = "{id}.h5"      # file name (may hold sub-folders) of a volume; {id} is the name in the split list
    image_key: str = "image"   # HDF5 dataset of the image: (*axes) or (C, *axes)
    label_key: str = "label"   # HDF5 dataset of the label: (*axes)
    axes: str = "Z, Y, X"      # names of the stored spatial axes, comma-separated (2 or 3): shapes are checked


@READERS.register("h5-volumes", "one HDF5 file per volume in a folder (SSL4MIS BraTS2019: data/<ID>.h5); folder, "
                                "file pattern, keys and axis names set in the card's reader:")
class H5Volumes(Reader):
    """`<root>/<folder>/<file with {id} = name>`: one HDF5 file per volume, training samples and evaluation cases
    alike (SSL4MIS BraTS2019: `data/<ID>.h5`, image float32 (z, y, x), label uint8). The files record no spacing."""

    Options = H5VolumesOptions

    def __init__(self, root: Path, options: Any = None, in_channels: int = 1, where: str = "dataset card") -> None:
        super().__init__(root, options, in_channels, where)
        o = self.options
        rest = o.file.replace("{id}", "", 1)
        if o.file.count("{id}") != 1 or "{" in rest or "}" in rest or ".." in Path(o.file).parts \
                or Path(o.file).is_absolute():
            raise ConfigError(f"{self.where}: reader.file {o.file!r} must be a relative file name containing {{id}} "
                              f"exactly once and no other braces, e.g. '{{id}}.h5' or '{{id}}/volume.h5'")
        if not o.folder or Path(o.folder).is_absolute() or ".." in Path(o.folder).parts:
            raise ConfigError(f"{self.where}: reader.folder {o.folder!r} must be a folder under the dataset root "
                              f"(e.g. data), not absolute and without '..'")
        names = [a.strip() for a in o.axes.split(",")]
        if len(names) not in (2, 3) or not all(names):
            raise ConfigError(f"{self.where}: reader.axes {o.axes!r} must name 2 or 3 spatial axes, comma-separated "
                              f"(e.g. 'Z, Y, X')")
        if not o.image_key or not o.label_key or o.image_key == o.label_key:
            raise ConfigError(f"{self.where}: reader.image_key and reader.label_key must be two different HDF5 "
                              f"dataset names (got {o.image_key!r}, {o.label_key!r})")
        self.spatial = ", ".join(names)

    def path_of(self, name: str, kind: str) -> Path:
        _check_kind(kind)
        return self.root / self.options.folder / self.options.file.replace("{id}", name)

    def _read(self, name: str) -> Case:
        path = self.path_of(name, "eval")
        image, label = _read_h5(path, (self.options.image_key, self.options.label_key), "h5-volumes")
        return self._case(name, path, image, label, self.spatial)

    def read_train(self, name: str) -> Case:
        return self._read(name)

    def read_eval(self, name: str) -> Case:
        return self._read(name)


@dataclass(frozen=True)
class ImageFolderOptions:
    """`images`, `masks` and `mask_values` are required (empty defaults only so the dataclass builds bare)."""

    images: str = ""                  # folder under root holding the images
    masks: str = ""                   # folder under root holding the masks
    image_pattern: str = "{id}.png"   # file name of an image; the {id} part is the sample's name
    mask_pattern: str = "{id}.png"    # file name of its mask
    mask_values: dict[int, int] = field(default_factory=dict)  # raw mask value -> class id, e.g. {0: 0, 255: 1}


_SPLIT_FORMS = ("a list file name under the root (one id per line), or {from: a, to: b} over the sorted ids "
                "with a, b ints (positions, b exclusive) or floats in [0, 1] (fractions of the count)")


@READERS.register("image-folder", "2D images (PNG/JPG/BMP/TIFF, grey or RGB) with masks in a sibling folder; "
                                  "folders, file patterns and mask values set in the card's reader:")
class ImageFolder(Reader):
    """Plain 2D images with masks in a sibling folder, described entirely by the card's `reader:` mapping.

    Images are read with PIL, converted to "L" (in_channels 1) or "RGB" (in_channels 3) and scaled to [0, 1]
    (8-bit / 255, 16-bit / 65535; 32-bit float images are taken as they are). Masks map every raw value
    through `mask_values`. Training samples and evaluation cases are the same read.
    """

    Options = ImageFolderOptions

    def __init__(self, root: Path, options: Any = None, in_channels: int = 1, where: str = "dataset card") -> None:
        super().__init__(root, options, in_channels, where)
        o = self.options
        for key in ("images", "masks"):
            if not getattr(o, key):
                raise ConfigError(f"{self.where}: reader.{key} is required: the folder under the root holding the "
                                  f"{key} (e.g. reader: {{images: images, masks: masks, ...}})")
        self.image_affixes = self._affixes("image_pattern", o.image_pattern)
        self.mask_affixes = self._affixes("mask_pattern", o.mask_pattern)
        if not o.mask_values:
            raise ConfigError(f"{self.where}: reader.mask_values is required: raw mask value -> class id, "
                              f"e.g. {{0: 0, 255: 1}}")
        try:
            self.mask_values = {int(k): int(v) for k, v in o.mask_values.items()}
        except (TypeError, ValueError):
            raise ConfigError(f"{self.where}: reader.mask_values must map integers to integers "
                              f"(raw mask value -> class id), got {o.mask_values!r}") from None
        if any(v < 0 or v > 255 for v in self.mask_values.values()) or any(k < 0 for k in self.mask_values):
            raise ConfigError(f"{self.where}: reader.mask_values: raw values must be >= 0 and classes in 0..255, "
                              f"got {o.mask_values!r}")
        if self.in_channels not in (1, 3):
            raise ConfigError(f"{self.where}: image-folder reads grey (in_channels: 1) or RGB (in_channels: 3) "
                              f"images; the card says in_channels: {self.in_channels}")
        self._ids: list[str] | None = None

    def _affixes(self, key: str, pattern: str) -> tuple[str, str]:
        prefix, sep, suffix = pattern.partition("{id}")
        rest = prefix + suffix
        if not sep or "{" in rest or "}" in rest or "/" in rest or os.sep in rest:
            raise ConfigError(f"{self.where}: reader.{key} {pattern!r} must be a file name containing {{id}} "
                              f"exactly once and no other braces or slashes, e.g. 'ISIC_{{id}}.jpg'")
        return prefix, suffix

    @property
    def images_dir(self) -> Path:
        return self.root / self.options.images

    @property
    def masks_dir(self) -> Path:
        return self.root / self.options.masks

    def ids(self) -> list[str]:
        """The sorted ids discovered in the images folder (files matching image_pattern)."""
        if self._ids is None:
            folder, pattern = self.images_dir, self.options.image_pattern
            if not folder.is_dir():
                raise ConfigError(f"{self.where}: images folder {folder} not found; set reader.images to the "
                                  f"folder under {self.root} that holds files named {pattern!r}")
            prefix, suffix = self.image_affixes
            ids = []
            with os.scandir(folder) as entries:
                for entry in entries:
                    n = entry.name
                    if (len(n) > len(prefix) + len(suffix) and n.startswith(prefix) and n.endswith(suffix)
                            and entry.is_file()):
                        ids.append(n[len(prefix):len(n) - len(suffix)])
            if not ids:
                raise ConfigError(f"{self.where}: no file in the images folder {folder} matches image_pattern "
                                  f"{pattern!r}; fix reader.images or reader.image_pattern (case matters: "
                                  f"'.jpg' is not '.JPG')")
            self._ids = sorted(ids)
        return self._ids

    def split_names(self, split: str, spec: Any) -> list[str]:
        """`spec` is a list file name under root, or {from: a, to: b} over the sorted discovered ids."""
        if isinstance(spec, str) and spec:
            return self._read_list(split, spec)
        if isinstance(spec, Mapping) and set(spec) == {"from", "to"}:
            ids = self.ids()
            a, b = (self._position(split, k, spec[k], len(ids)) for k in ("from", "to"))
            if not a < b:
                raise ConfigError(f"{self.where}: splits.{split}: {{from: {spec['from']}, to: {spec['to']}}} selects "
                                  f"ids [{a}, {b}) of {len(ids)}: an empty split; 'to' must be after 'from'")
            return ids[a:b]
        raise ConfigError(f"{self.where}: splits.{split}: expected {_SPLIT_FORMS}; got {spec!r}")

    def _position(self, split: str, key: str, value: Any, count: int) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{self.where}: splits.{split}.{key}: expected an int position or a float fraction "
                              f"in [0, 1], got {value!r}; accepted forms: {_SPLIT_FORMS}")
        if isinstance(value, float):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{self.where}: splits.{split}.{key}: a float is a fraction of the {count} ids "
                                  f"and must be in [0, 1], got {value!r}; use an int for a position")
            return round(value * count)
        if not 0 <= value <= count:
            raise ConfigError(f"{self.where}: splits.{split}.{key}: position {value} is outside 0..{count} "
                              f"(the images folder {self.images_dir} has {count} ids matching "
                              f"{self.options.image_pattern!r})")
        return value

    def path_of(self, name: str, kind: str) -> Path:
        _check_kind(kind)
        return self.images_dir / self.options.image_pattern.replace("{id}", name)

    def mask_path(self, name: str) -> Path:
        return self.masks_dir / self.options.mask_pattern.replace("{id}", name)

    def layout(self, kind: str) -> str:
        return f"images {self.path_of('<id>', kind)} with masks {self.mask_path('<id>')}"

    def check_files(self, names: list[str], kind: str, list_name: str) -> None:
        super().check_files(names, kind, list_name)
        missing = [p for p in map(self.mask_path, names) if not p.is_file()]
        if missing:
            raise ConfigError(f"{self.where}: {len(missing)} of {len(names)} mask(s) of the ids in {list_name} are "
                              f"missing, e.g. {missing[0]}; fix reader.masks / reader.mask_pattern "
                              f"(now {self.options.masks!r} / {self.options.mask_pattern!r}) or add the masks")

    def read_train(self, name: str) -> Case:
        return self._read(name)

    def read_eval(self, name: str) -> Case:
        return self._read(name)

    def _read(self, name: str) -> Case:
        image_path, mask_path = self.path_of(name, "eval"), self.mask_path(name)
        image = self._read_image(image_path)
        mask = self._read_mask(mask_path)
        if image.shape[1:] != mask.shape:
            raise ConfigError(f"{image_path}: image is {image.shape[2]}x{image.shape[1]} (WxH) but its mask "
                              f"{mask_path} is {mask.shape[1]}x{mask.shape[0]}; image and mask must have one size")
        return Case(name, _finite(image, image_path), mask)

    def _open(self, path: Path):
        from PIL import Image, UnidentifiedImageError

        self._require_file(path)
        try:
            with Image.open(path) as img:  # closed here: thousands of files must not leak handles
                img.load()
                return img.copy()
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
            raise ConfigError(f"{path}: cannot be read as an image ({exc}); re-download or re-save the file as "
                              f"PNG / JPG / BMP / TIFF") from None

    def _read_image(self, path: Path) -> np.ndarray:
        img = self._open(path)
        mode = img.mode
        if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
            arr = np.asarray(img)
            if mode == "F":
                grey = arr.astype(np.float32)
            else:
                if arr.size and (arr.min() < 0 or arr.max() > 65535):
                    raise ConfigError(f"{path}: 32-bit integer image with values outside 0..65535; save it as "
                                      f"8- or 16-bit")
                grey = arr.astype(np.float32) / 65535.0
            return np.repeat(grey[None], self.in_channels, axis=0)
        arr = np.asarray(img.convert("L" if self.in_channels == 1 else "RGB"), dtype=np.float32) / 255.0
        return arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)

    def _read_mask(self, path: Path) -> np.ndarray:
        img = self._open(path)
        if img.mode == "1":
            img = img.convert("L")
        raw = np.asarray(img)
        if raw.ndim == 3:  # RGB(A) / LA masks: accepted only when the colour channels agree
            colour = raw[..., :3] if raw.shape[-1] >= 3 else raw[..., :1]
            if not (colour == colour[..., :1]).all():
                raise ConfigError(f"{path}: mask is a colour image ({img.mode}) whose channels differ; save masks "
                                  f"as grey or palette images of raw values listed in reader.mask_values")
            raw = colour[..., 0]
        if raw.dtype.kind not in "iu":
            raise ConfigError(f"{path}: mask mode {img.mode} does not hold integer values; save masks as grey "
                              f"or palette PNGs")
        values = np.unique(raw)
        unexpected = [int(v) for v in values if int(v) not in self.mask_values]
        if unexpected:
            shown = ", ".join(map(str, unexpected[:10])) + (", ..." if len(unexpected) > 10 else "")
            raise ConfigError(f"{path}: mask values {shown} are not in reader.mask_values "
                              f"{sorted(self.mask_values)} of {self.where}; add them (raw value -> class) or fix "
                              f"the mask (a JPEG-compressed mask has such stray values: masks must be lossless)")
        lut = np.zeros(int(values.max()) + 1, dtype=np.uint8)
        for raw_value, cls in self.mask_values.items():
            if raw_value < lut.size:
                lut[raw_value] = cls
        return lut[raw.astype(np.int64)]


@dataclass(frozen=True)
class TransUNetSynapseOptions:
    train_dir: str = "train_npz"     # under root: <slice name>.npz, keys image (H, W) float32, label (H, W)
    test_dir: str = "test_vol_h5"    # under root: <case name>.npy.h5, datasets image (D, H, W) float32, label


def _read_npz(path: Path, keys: tuple[str, ...], fmt: str) -> list[np.ndarray]:
    """Read arrays `keys` of an .npz archive, with one ConfigError per problem (missing, not an npz, a key)."""
    if not path.is_file():
        raise ConfigError(f"{path}: file not found; the {fmt} reader expects it there (check the card's root "
                          f"and split lists, and that the preparation finished: bench data prepare)")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ConfigError(f"{path}: cannot be read as a numpy .npz archive ({exc}); prepare it again") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ConfigError(f"{path}: holds a single array, not an .npz archive with arrays "
                          f"{', '.join(map(repr, keys))}; save it with np.savez(path, image=..., label=...)")
    with archive:
        missing = [k for k in keys if k not in archive.files]
        if missing:
            raise ConfigError(f"{path}: missing array(s) {', '.join(map(repr, missing))} (found {archive.files}); "
                              f"{fmt} slices need arrays {', '.join(map(repr, keys))}")
        try:
            return [np.asarray(archive[k]) for k in keys]
        except (OSError, ValueError, EOFError) as exc:  # a truncated member
            raise ConfigError(f"{path}: cannot be read ({exc}); the file is damaged, prepare it again") from None


@READERS.register("transunet-synapse", "TransUNet Synapse layout: train_npz/<slice>.npz (H, W) training slices, "
                                       "test_vol_h5/<case>.npy.h5 (D, H, W) volumes; keys image, label")
class TransUNetSynapse(Reader):
    """The Synapse layout TransUNet's code reads (Beckschen/TransUNet@ee8acce `datasets/dataset_synapse.py`):
    training slices `<root>/<train_dir>/<name>.npz` (arrays image (H, W) float32 in [0, 1], label (H, W)) and
    evaluation volumes `<root>/<test_dir>/<name>.npy.h5` (datasets image (D, H, W), label (D, H, W)). The list
    files name slices (`case0031_slice000`) and cases (`case0008`) without extension. No spacing is recorded.
    """

    Options = TransUNetSynapseOptions

    def path_of(self, name: str, kind: str) -> Path:
        _check_kind(kind)
        if kind == "train":
            return self.root / self.options.train_dir / f"{name}.npz"
        return self.root / self.options.test_dir / f"{name}.npy.h5"

    def read_train(self, name: str) -> Case:
        path = self.path_of(name, "train")
        image, label = _read_npz(path, ("image", "label"), "transunet-synapse")
        return self._case(name, path, image, label, "H, W")

    def read_eval(self, name: str) -> Case:
        path = self.path_of(name, "eval")
        image, label = _read_h5(path, ("image", "label"), "transunet-synapse")
        return self._case(name, path, image, label, "D, H, W")


def open_reader(fmt: str, root: Path, options: Any, in_channels: int, where: str) -> Reader:
    """The reader of format `fmt` for `root`; an unknown format is a ConfigError listing the valid ones."""
    try:
        cls = READERS.get(fmt)
    except ValueError as exc:
        raise ConfigError(f"{where}: format: {exc}") from None
    return cls(root, options, in_channels, where)
