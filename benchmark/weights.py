"""Pretrained weights: where they live, how a suite names them, and the one command that downloads them.

A Swin-UNet method (CTCT, AdvMIM, or any method on `train.network: swin-unet`) takes `pretrained`:
  imagenet  the ImageNet-1k Swin-T checkpoint (swin_tiny_patch4_window7_224), as SSL4MIS's CTCT and AdvMIM's
            released code load it (`load_from`; PROTOCOLS.md §3.1, §7.7), read from the weights folder;
  none      from scratch;
  FILE      a local Swin-T checkpoint (timm's key layout, or Microsoft's original with a `model` entry).
The weights folder is `$BENCH_WEIGHTS_DIR`, else `<cache>/weights` (`$BENCH_CACHE_DIR`, else
~/.cache/ssl-medseg-bench). Nothing downloads during a run: `bench weights fetch swin-tiny` writes the file
once (through huggingface_hub, timm's hub copy of Microsoft's release), and a run whose file is missing stops
when its suite is expanded, before any data is read, with `MissingWeights` naming the file, the fetch command
and `--pretrained none`.

Precedence of the value a trial gets: the method's Config default (none) < the suite's `pretrained` field <
its `method_config.<method>.pretrained` (or `network_options.pretrained`) < `--pretrained` on the command line
(`override_suite`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from benchmark.config import ConfigError, Suite, cache_root

WEIGHTS_ENV = "BENCH_WEIGHTS_DIR"
NONE = "none"
CHOICES = "imagenet | none | FILE"


@dataclass(frozen=True)
class WeightsSpec:
    """A checkpoint `bench weights fetch NAME` can download, and the `pretrained` value that names it."""

    name: str           # fetch name
    value: str          # the `pretrained` value it stands for
    filename: str       # in the weights folder (SSL4MIS's pretrained_ckpt/ name, so a copy of theirs fits)
    hf_repo: str        # huggingface hub repository (timm's copy, timm key layout)
    hf_file: str
    origin_url: str     # Microsoft's original release (the file SSL4MIS's readme links to), for manual download
    label: str          # in messages
    description: str


SWIN_TINY = WeightsSpec(
    "swin-tiny", "imagenet", "swin_tiny_patch4_window7_224.pth",
    "timm/swin_tiny_patch4_window7_224.ms_in1k", "model.safetensors",
    "https://github.com/SwinTransformer/storage/releases/download/v1.0.0/swin_tiny_patch4_window7_224.pth",
    "ImageNet-1k Swin-T", "Swin-T, ImageNet-1k, patch 4, window 7, 224 (28.3 M parameters; Liu et al. 2021)")
KNOWN = {SWIN_TINY.name: SWIN_TINY}
BY_VALUE = {s.value: s for s in KNOWN.values()}


class MissingWeights(ConfigError):
    """A trial names weights that are not on this machine (raised before training)."""


class FetchError(RuntimeError):
    """`bench weights fetch` could not download (offline, hub unreachable)."""


def weights_dir() -> Path:
    """$BENCH_WEIGHTS_DIR, else <cache>/weights."""
    env = os.environ.get(WEIGHTS_ENV)
    return Path(env).expanduser() if env else cache_root() / "weights"


def normalise(value: Any) -> str:
    """The canonical spelling of a `pretrained` value: None, '' and 'none' -> 'none'; names lower-case."""
    if value is None or value is False or str(value).strip() == "":
        return NONE
    text = str(value).strip()
    return text.lower() if text.lower() in (NONE, *BY_VALUE) else text


def locate(value: Any) -> Path | None:
    """Where a `pretrained` value's file is (whether it exists or not); None for 'none'."""
    value = normalise(value)
    if value == NONE:
        return None
    if value in BY_VALUE:
        return weights_dir() / BY_VALUE[value].filename
    return Path(value).expanduser()


def resolve(value: Any, where: str = "pretrained") -> Path | None:
    """The existing file of a `pretrained` value (None for 'none'); MissingWeights if it is not there."""
    path = locate(value)
    if path is None or path.is_file():
        return path
    value = normalise(value)
    if value in BY_VALUE:
        spec = BY_VALUE[value]
        raise MissingWeights(
            f"{where}: {value!r} needs the {spec.label} weights at {path}, which does not exist. Fetch them "
            f"once (needs internet): `bench weights fetch {spec.name}` (${WEIGHTS_ENV} sets the folder), or "
            f"train from scratch with `--pretrained none`.")
    raise MissingWeights(f"{where}: the weights file {path} does not exist; give an existing Swin-T checkpoint, "
                         f"`--pretrained imagenet` (after `bench weights fetch swin-tiny`), or `--pretrained none` "
                         f"to train from scratch.")


def tag_value(value: Any) -> str:
    """What a run's `pretrained` tag says: imagenet, none, or the file's name."""
    value = normalise(value)
    return value if value == NONE or value in BY_VALUE else Path(value).name


def file_digest(path: Path, length: int = 12) -> str:
    """The first `length` hex digits of the file's sha256 (which weights a run really started from)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]


# ----------------------------------------------------------------------------- suites and trials
def takes_weights(method_cls: type) -> bool:
    """Whether a method's Config has a `pretrained` field (it builds a Swin-UNet of its own)."""
    return dataclasses.is_dataclass(method_cls.Config) and any(
        f.name == "pretrained" for f in dataclasses.fields(method_cls.Config))


def network_takes_weights(network: str) -> bool:
    """Whether a registered network's factory takes `pretrained` (the Swin-UNet)."""
    from benchmark.nets import NETWORKS

    return "pretrained" in inspect.signature(NETWORKS.get(network).factory).parameters


def method_overrides_with_weights(method_cls: type, overrides: dict[str, Any], suite_value: str | None,
                                  where: str) -> dict[str, Any]:
    """A method's config overrides with the suite's `pretrained` filled in (where the method takes weights
    and its own entry does not say), checked: MissingWeights before anything is trained or read."""
    if not takes_weights(method_cls):
        return overrides
    out = dict(overrides)
    if "pretrained" not in out and suite_value is not None:
        out["pretrained"] = suite_value
    if "pretrained" in out:
        out["pretrained"] = normalise(out["pretrained"])
        resolve(out["pretrained"], f"{where}.pretrained")
    return out


def train_values_with_weights(values: dict[str, Any], suite_value: str | None, where: str) -> dict[str, Any]:
    """The Trainer's values with the suite's `pretrained` put into `network_options` when `train.network`
    takes weights (a Swin-UNet trained by any method), checked like a method's."""
    network = values.get("network", "unet")
    try:
        takes = network_takes_weights(network)
    except Exception:   # noqa: BLE001 - an unknown network is reported by the Trainer-settings check
        return values
    options = dict(values.get("network_options") or {})
    if not takes:
        return values
    if "pretrained" not in options and suite_value is not None:
        options["pretrained"] = suite_value
    if "pretrained" in options:
        options["pretrained"] = normalise(options["pretrained"])
        resolve(options["pretrained"], f"{where}.network_options.pretrained")
        return {**values, "network_options": options}
    return values


def override_suite(suite: Suite, value: str) -> Suite:
    """`--pretrained VALUE`: the suite with `pretrained: VALUE` and every more specific entry (method_config,
    network_options) removed, so the command line wins for every trial."""
    value = normalise(value)

    def without(entry: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in entry.items() if k != "pretrained"}

    def train_without(entry: dict[str, Any]) -> dict[str, Any]:
        if "network_options" not in entry:
            return entry
        return {**entry, "network_options": without(dict(entry["network_options"] or {}))}

    return dataclasses.replace(
        suite, pretrained=value,
        method_config={m: without(dict(e or {})) for m, e in suite.method_config.items()},
        train=train_without(dict(suite.train)),
        method_train={m: train_without(dict(e or {})) for m, e in suite.method_train.items()})


def trial_weights(resolved: dict[str, Any]) -> str | None:
    """The `pretrained` value a resolved trial config uses (method field or network option), None if it
    trains no net that takes weights."""
    method = resolved.get("method") or {}
    if "pretrained" in method:
        return normalise(method["pretrained"])
    options = (resolved.get("train") or {}).get("network_options") or {}
    return normalise(options["pretrained"]) if "pretrained" in options else None


# ----------------------------------------------------------------------------------------- fetch
def _download_hf(spec: WeightsSpec) -> dict[str, Any]:
    """The checkpoint's state dict from the huggingface hub (network; honours HF_HUB_OFFLINE, HF_ENDPOINT)."""
    from huggingface_hub import hf_hub_download
    from safetensors.torch import load_file

    return load_file(hf_hub_download(spec.hf_repo, spec.hf_file))


def fetch(name: str, directory: Path | None = None, force: bool = False,
          download: Callable[[WeightsSpec], dict[str, Any]] = _download_hf) -> tuple[Path, bool]:
    """Download weights `name` into the weights folder (once); returns (path, downloaded now)."""
    import torch

    if name not in KNOWN:
        raise ConfigError(f"unknown weights {name!r}; valid: {', '.join(KNOWN)}")
    spec = KNOWN[name]
    dest = Path(directory or weights_dir()).expanduser() / spec.filename
    if dest.is_file() and not force:
        return dest, False
    try:
        state = download(spec)
    except Exception as exc:  # noqa: BLE001 - offline, DNS, proxy, hub errors: all end in the same advice
        raise FetchError(
            f"could not download {spec.name} from the huggingface hub ({spec.hf_repo}): {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}\nThis needs internet access (HF_ENDPOINT for a mirror). "
            f"Without it, download {spec.origin_url} (Microsoft's original release, the file SSL4MIS links to) on "
            f"another machine and copy it to {dest}; or train from scratch with `--pretrained none`.") from None
    if "patch_embed.proj.weight" not in state:
        raise FetchError(f"{spec.hf_repo}/{spec.hf_file} holds no patch_embed.proj.weight: not a Swin checkpoint")
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    torch.save(dict(state), partial)
    partial.replace(dest)
    return dest, True
