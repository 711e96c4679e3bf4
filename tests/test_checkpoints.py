"""Safe loading (robustness issue, item 3): every checkpoint and weights file is read weights-only; a pickle
that would run code is refused with a clear error, and nothing of it runs."""
import os

import numpy as np
import pytest
import torch

from benchmark.checkpoints import numpy_rng_state, safe_load, set_numpy_rng_state
from benchmark.config import ConfigError


class _RunsCode:
    """Unpickling this calls os.system: what a hostile .pt would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"modules": {"net": {"w": torch.zeros(2)}}, "payload": _RunsCode(marker)}, path)
    with pytest.raises(ConfigError, match=r"evil\.pt: refused to load: .*could run code"):
        safe_load(path)
    assert not marker.exists()


def test_our_checkpoints_and_older_ones_with_numpy_rng_states_load(tmp_path):
    np.random.seed(3)
    state = {"step": 4, "best": {"best_val": (0.5, 2)}, "method": {"modules": {"net": {"w": torch.ones(3)}}},
             "rng": {"torch": torch.get_rng_state(), "numpy": numpy_rng_state(), "python": (3, (1, 2), None)}}
    torch.save(state, tmp_path / "last.pt")
    loaded = safe_load(tmp_path / "last.pt")
    assert loaded["step"] == 4 and torch.equal(loaded["method"]["modules"]["net"]["w"], torch.ones(3))
    expected = np.random.rand(5)
    set_numpy_rng_state(loaded["rng"]["numpy"])
    assert np.array_equal(np.random.rand(5), expected)               # the saved stream continues exactly
    # before the RNG state became a tensor, last.pt held numpy's plain tuple: still readable, still exact
    np.random.seed(7)
    torch.save({"rng": {"numpy": np.random.get_state()}}, tmp_path / "old.pt")
    expected = np.random.rand(5)
    set_numpy_rng_state(safe_load(tmp_path / "old.pt")["rng"]["numpy"])
    assert np.array_equal(np.random.rand(5), expected)


def test_a_swin_weights_file_with_foreign_objects_is_refused(tmp_path):
    from benchmark.nets.swin_unet import SwinUNet, load_pretrained

    path = tmp_path / "swin.pth"
    torch.save({"model": {}, "args": _RunsCode(tmp_path / "pwned")}, path)
    with pytest.raises(ConfigError, match="swin.pth: refused to load"):
        load_pretrained(SwinUNet(1, 4, embed_dim=16, num_heads=(1, 2, 4, 8)), path)
    assert not (tmp_path / "pwned").exists()
