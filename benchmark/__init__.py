"""ssl-medseg-bench: a benchmark harness for semi-supervised medical image segmentation."""
from __future__ import annotations

import os
from pathlib import Path

__version__ = "0.2.0"

#: The repository root: where `datasets/`, `methods/` and `leaderboards/` live.
REPO_ROOT = Path(os.environ.get("BENCH_REPO_ROOT", Path(__file__).resolve().parent.parent))
