"""Rerunnable micro-benchmarks.

    python -m benchmark.perf metrics [--repeat N] [--medpy-repeat-large N] [--quick]

`metrics`: medpy (`hd95` + `asd` of one class, as `mask_metrics` used to compute them) against
`benchmark.metrics.surface_metrics` on seeded synthetic cases: an LA-sized 112x112x80 patch and a full
88x576x576 volume, each in voxel units and with a spacing that is not a short binary fraction (0.7 mm: the
exact EDT path instead of the k-d tree, see `benchmark/metrics.py`), and the patch at LA's 0.625 mm (k-d
tree). The reference is a smooth random 3D blob, the prediction the same blob shifted by a few voxels and
perturbed by a second smooth field. Times are the
best of the repeats (at least 1 s of them for all but medpy on the large cases: the machine may be
shared); the values must be identical (max relative difference; exit status 1 beyond 1e-6).
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage as ndi


@dataclass(frozen=True)
class Case:
    name: str
    shape: tuple[int, int, int]
    fraction: float                       # reference volume / array volume
    shift: tuple[int, int, int]           # prediction = reference field shifted by this ...
    noise: float                          # ... plus this much of a second smooth field
    spacing: tuple[float, ...] | None
    seed: int
    large: bool = False                   # medpy is timed once by default


CASES = (
    Case("LA patch", (112, 112, 80), 0.12, (2, -3, 1), 0.15, None, 1),
    Case("LA patch, mm", (112, 112, 80), 0.12, (2, -3, 1), 0.15, (0.625, 0.625, 0.625), 1),  # LA's spacing
    Case("LA patch, mm", (112, 112, 80), 0.12, (2, -3, 1), 0.15, (0.7, 0.7, 1.3), 1),
    Case("full volume", (88, 576, 576), 0.03, (1, 4, -3), 0.15, None, 0, large=True),
    Case("full volume, mm", (88, 576, 576), 0.03, (1, 4, -3), 0.15, (2.5, 0.7, 0.7), 0, large=True),
)


def smooth_field(shape: Sequence[int], seed: int, coarse: int = 8, sigma: float = 1.5) -> np.ndarray:
    """A smooth random field peaked at the centre: low-resolution noise, blurred, upsampled (order 1)."""
    rng = np.random.default_rng(seed)
    cshape = tuple(max(4, s // coarse) for s in shape)
    noise = ndi.gaussian_filter(rng.standard_normal(cshape), sigma)
    grids = np.meshgrid(*[np.linspace(-1, 1, c) for c in cshape], indexing="ij")
    field = noise / noise.std() * 0.5 - 3.0 * sum(g * g for g in grids)
    return ndi.zoom(field, [s / c for s, c in zip(shape, cshape)], order=1)


def make_case(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """(pred, ref) boolean masks of `case`, deterministic in `case.seed`."""
    field = smooth_field(case.shape, case.seed)
    threshold = np.quantile(field[::2, ::2, ::2], 1.0 - case.fraction)
    ref = field > threshold
    other = smooth_field(case.shape, case.seed + 1000)
    field = np.roll(field, case.shift, axis=(0, 1, 2))
    field += case.noise * (other - other.mean()) / other.std()
    pred = field > threshold
    return pred, ref


def _best(fn: Callable[[], dict[str, float]], repeat: int,
          min_total_s: float = 0.0) -> tuple[float, dict[str, float]]:
    """Best time of `repeat` runs, more (up to 200) while they add up to less than `min_total_s`."""
    best, out, total, runs = float("inf"), {}, 0.0, 0
    while runs < max(1, repeat) or (total < min_total_s and runs < 200):
        t0 = time.perf_counter()
        out = fn()
        took = time.perf_counter() - t0
        best, total, runs = min(best, took), total + took, runs + 1
    return best, out


def medpy_hd95_asd(pred: np.ndarray, ref: np.ndarray, spacing) -> dict[str, float]:
    from medpy.metric import binary  # the reference; not a run-time dependency of the package

    return {"hd95": float(binary.hd95(pred, ref, voxelspacing=spacing)),
            "asd": float(binary.asd(pred, ref, voxelspacing=spacing))}


def bench_metrics(repeat: int = 3, medpy_repeat_large: int = 1, cases: Sequence[Case] = CASES) -> list[dict]:
    from benchmark.metrics import _exact_scales, _spacing, surface_metrics

    rows = []
    for case in cases:
        pred, ref = make_case(case)
        medpy_s, want = _best(lambda: medpy_hd95_asd(pred, ref, case.spacing),
                              medpy_repeat_large if case.large else repeat, 0.0 if case.large else 1.0)
        ours_s, got = _best(lambda: surface_metrics(pred, ref, case.spacing), repeat, 1.0)
        rel = max(abs(got[m] - want[m]) / max(abs(want[m]), 1e-300) for m in want)
        exact = _exact_scales(_spacing(case.spacing, 3), case.shape) is not None
        rows.append({"case": case.name, "shape": "x".join(map(str, case.shape)),
                     "spacing": "voxel" if case.spacing is None else ",".join(f"{s:g}" for s in case.spacing),
                     "path": "kdtree" if exact else "edt", "fg %": 100.0 * ref.mean(),
                     "medpy s": medpy_s, "ours s": ours_s, "speed-up": medpy_s / ours_s,
                     "max rel diff": rel, "identical": all(got[m] == want[m] for m in want),
                     "hd95": got["hd95"], "asd": got["asd"]})
    return rows


def format_table(rows: list[dict]) -> str:
    cols = ["case", "shape", "spacing", "path", "fg %", "medpy s", "ours s", "speed-up", "max rel diff",
            "identical", "hd95", "asd"]
    fmt = {"fg %": "{:.1f}", "medpy s": "{:.3f}", "ours s": "{:.4f}", "speed-up": "{:.1f}x",
           "max rel diff": "{:.1e}", "hd95": "{:.4f}", "asd": "{:.4f}"}
    cells = [[fmt.get(c, "{}").format(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(cols, widths)), "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.perf", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    m = sub.add_parser("metrics", help="medpy vs benchmark.metrics.surface_metrics (hd95 + asd)")
    m.add_argument("--repeat", type=int, default=3,
                   help="at least this many runs, best kept (medpy on the large cases: --medpy-repeat-large)")
    m.add_argument("--medpy-repeat-large", type=int, default=1, help="medpy repeats on the 88x576x576 cases")
    m.add_argument("--quick", action="store_true", help="only the voxel-unit cases")
    args = parser.parse_args(argv)
    if args.what == "metrics":
        cases = [c for c in CASES if not (args.quick and c.spacing is not None)]
        rows = bench_metrics(args.repeat, args.medpy_repeat_large, cases)
        print(format_table(rows))
        return 0 if all(r["max rel diff"] <= 1e-6 for r in rows) else 1
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
