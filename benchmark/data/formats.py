"""Readers for on-disk formats. A new format is one reader class with the same three methods."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from benchmark.config import ConfigError


@dataclass
class Volume:
    """One evaluation case: image (S, H, W) float32 and label (S, H, W) uint8."""

    name: str
    image: np.ndarray
    label: np.ndarray


def read_list(path: Path) -> list[str]:
    """Read a split list: one name per line, blank lines ignored."""
    if not path.is_file():
        raise ConfigError(f"split list {path} not found")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise ConfigError(f"split list {path} is empty")
    return names


class SSL4MISH5:
    """The SSL4MIS layout: `data/slices/<name>.h5` training slices, `data/<name>.h5` volumes (keys image, label)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def slice_path(self, name: str) -> Path:
        return self.root / "data" / "slices" / f"{name}.h5"

    def volume_path(self, name: str) -> Path:
        return self.root / "data" / f"{name}.h5"

    def check_files(self, names: list[str], volumes: bool, list_name: str) -> None:
        """Fail before training, naming the first missing files, if the list points at absent files."""
        path_of = self.volume_path if volumes else self.slice_path
        missing = [str(path_of(n)) for n in names if not path_of(n).is_file()]
        if missing:
            raise ConfigError(f"{len(missing)} file(s) named in {list_name} are missing, e.g. {missing[0]}; "
                              f"is the dataset root {self.root} complete?")

    def read(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        try:
            with h5py.File(path, "r") as f:
                return np.asarray(f["image"][:], dtype=np.float32), np.asarray(f["label"][:], dtype=np.uint8)
        except KeyError as exc:
            raise ConfigError(f"{path}: missing key {exc}; SSL4MIS h5 files need 'image' and 'label'") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot be read as HDF5 ({exc})") from None

    def read_slice(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        image, label = self.read(self.slice_path(name))
        if image.ndim != 2 or image.shape != label.shape:
            raise ConfigError(f"{self.slice_path(name)}: expected 2D image and label of one shape, "
                              f"got {image.shape} and {label.shape}")
        return image, label

    def read_volume(self, name: str) -> Volume:
        image, label = self.read(self.volume_path(name))
        if image.ndim != 3 or image.shape != label.shape:
            raise ConfigError(f"{self.volume_path(name)}: expected (slices, H, W) image and label of one shape, "
                              f"got {image.shape} and {label.shape}")
        return Volume(name, image, label)


READERS = {"ssl4mis-h5": SSL4MISH5}
