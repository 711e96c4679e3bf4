"""Dataset generators a card can name under `generator: {name: ..., <spec keys>}`.

Each entry bundles a spec dataclass (with `from_dict`), an `ensure(root, spec) -> root` that writes the data
once, atomically, into a cache folder, the generator's version (part of the cache key) and a description.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.config import ConfigError
from benchmark.data import synthetic, synthetic_images, synthetic_volumes
from benchmark.registry import Registry


@dataclass(frozen=True)
class Generator:
    spec: type                          # a frozen dataclass with from_dict(mapping) and to_dict()
    ensure: Callable[[Path, Any], Path]  # ensure(root, spec) -> root, generating once
    version: int                        # bump = new data: part of the cache key
    description: str

    def build_spec(self, params: Mapping[str, Any], where: str) -> Any:
        """The spec from a card's generator mapping (its `name` key ignored); a bad key is a ConfigError."""
        try:
            return self.spec.from_dict({k: v for k, v in params.items() if k != "name"})
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: generator: {exc}") from None


GENERATORS: Registry[Generator] = Registry("generator")


def _add(name: str, generator: Generator) -> None:
    GENERATORS.add(name, generator, generator.description)


_add("synthetic-cardiac", Generator(
    synthetic.SyntheticSpec, synthetic.ensure_synthetic, synthetic.GENERATOR_VERSION,
    "cardiac short-axis cine-MRI-like slices and volumes (RV, Myo, LV), SSL4MIS ACDC layout (ssl4mis-h5)"))
_add("synthetic-la", Generator(
    synthetic_volumes.VolumeSpec, synthetic_volumes.ensure_volumes, synthetic_volumes.GENERATOR_VERSION,
    "left-atrium-MRI-like 3D volumes (atrium vs background), UA-MT LA layout (la-h5)"))
_add("synthetic-skin", Generator(
    synthetic_images.ImageSpec, synthetic_images.ensure_images, synthetic_images.GENERATOR_VERSION,
    "dermoscopy-like RGB images with one lesion each, ISIC-like image-folder layout (image-folder)"))
