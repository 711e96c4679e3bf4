"""Reading checkpoints and weights files without running code: every `.pt` / `.pth` the harness opens goes
through `safe_load`, i.e. `torch.load(weights_only=True)`.

A weights-only load rebuilds tensors, plain containers and numbers only. Our own checkpoints hold nothing
else: the Trainer stores numpy's RNG state as a tensor (`numpy_rng_state` / `set_numpy_rng_state`). Checkpoints
written before that held the numpy state as arrays; the four numpy names that rebuild them are allow-listed,
nothing more. Any other object in the pickle (a class to import, a function to call: a file that would run code)
is refused with a `ConfigError` naming the file, before anything of it is used.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.config import ConfigError

# what numpy's RNG state (a uint32 key array) pickles to, in checkpoints written before it was stored as a tensor
_LEGACY_NUMPY = [np.dtype, np.ndarray, np.dtypes.UInt32DType, np._core.multiarray._reconstruct]


def safe_load(path: str | Path, map_location: Any = "cpu") -> Any:
    """`torch.load(path, weights_only=True)`; a file holding anything but tensors, containers and numbers is
    refused with ConfigError (it could run code when unpickled)."""
    try:
        with torch.serialization.safe_globals(_LEGACY_NUMPY):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = next((line.strip() for line in str(exc).splitlines() if "got <" in line or "Unsupported" in line), "")
        raise ConfigError(f"{path}: refused to load: it holds Python objects beyond tensors, containers and numbers "
                          f"(unpickling it could run code{'; ' + found if found else ''}). Load only files you trust, "
                          f"saved as a plain state dict (torch.save(model.state_dict(), FILE)).") from None


def numpy_rng_state() -> dict[str, Any]:
    """numpy's global RNG state in a form a weights-only load accepts (the key array as an int64 tensor)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def set_numpy_rng_state(state: Any) -> None:
    """Restore what `numpy_rng_state` saved (or the plain tuple of an older checkpoint)."""
    if isinstance(state, dict):
        state = (state["name"], state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"],
                 state["cached_gaussian"])
    np.random.set_state(state)
