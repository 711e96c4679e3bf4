"""Beyond the papers: a per-case paired test against the best other row, and a cost column.

The test is the two-sided Wilcoxon signed-rank test (scipy) over the test cases a cell and its reference share;
a case's value is its mean over classes, averaged over the cell's seeds. The reference of a cell is the best
other row of its column that we ran (by our mean, in the metric's direction), or a named baseline method.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import pandas as pd

from benchmark.metrics import METRICS


def case_table(runs: pd.DataFrame, checkpoint: str) -> pd.DataFrame:
    """Per-case test metrics (mean over classes) of each run, read from `<run_dir>/cases_<checkpoint>.csv`
    (what `bench run` writes); runs without the file are left out."""
    frames = []
    for run_dir in runs.get("run_dir", pd.Series(dtype=str)).dropna().unique():
        path = Path(run_dir) / f"cases_{checkpoint}.csv"
        if run_dir and path.exists():
            cases = pd.read_csv(path)
            cols = [m for m in METRICS if m in cases]
            per_case = cases.groupby("case", sort=False)[cols].mean().reset_index()
            frames.append(per_case.assign(run_dir=str(run_dir)))
    if not frames:
        return pd.DataFrame(columns=["run_dir", "case", *METRICS])
    return pd.concat(frames, ignore_index=True)


def per_case(cases: pd.DataFrame, run_dirs: Sequence[str], metric: str) -> pd.Series:
    """The cell's value per case: mean over its seeds (runs)."""
    sel = cases[cases["run_dir"].isin(list(run_dirs))]
    if sel.empty or metric not in sel:
        return pd.Series(dtype=float)
    return sel.groupby("case")[metric].mean().dropna()


def wilcoxon_p(a: pd.Series, b: pd.Series) -> float | None:
    """Two-sided Wilcoxon signed-rank p over the cases both have; 1.0 when all differences are zero."""
    from scipy.stats import wilcoxon

    common = a.index.intersection(b.index)
    if len(common) < 2:
        return None
    diff = a[common] - b[common]
    if (diff.abs() < 1e-12).all():
        return 1.0
    return float(wilcoxon(a[common], b[common], alternative="two-sided").pvalue)


def mark_significance(rows: list, lb, cases: pd.DataFrame, baseline: str | None = None, alpha: float = 0.05) -> None:
    """Set `marker` ('*' better / '†' worse than the reference, p < alpha) and `p_value` on our cells."""
    if cases.empty:
        return
    groups: dict[tuple[str, int], list] = {}
    for gr in rows:
        for j, c in enumerate(gr.cells):
            if c.n and c.run_dirs:
                groups.setdefault((gr.section, j), []).append((gr, c))
    for members in groups.values():
        if len(members) < 2:
            continue
        for gr, c in members:
            others = [(g, o) for g, o in members if o is not c]
            if baseline is not None:
                others = [(g, o) for g, o in others if g.row.method == baseline]
            if not others:
                continue
            sign = 1 if c.metric.higher_is_better else -1
            _, ref = max(others, key=lambda go: sign * go[1].mean)
            p = wilcoxon_p(per_case(cases, c.run_dirs, c.metric.key), per_case(cases, ref.run_dirs, c.metric.key))
            c.p_value = p
            if p is not None and p < alpha:
                c.marker = "*" if sign * (c.mean - ref.mean) > 0 else "†"


def _hours_label(devices: pd.Series) -> str:
    kinds = {"GPU" if d.startswith("cuda") else "CPU" for d in devices.dropna().astype(str) if d}
    return f"{kinds.pop()}-h" if len(kinds) == 1 else "h"


def cost_columns(rows: list) -> tuple[list[str], list[list[str]]]:
    """Cost of our runs per table row: steps/s (mean), hours (sum of wall time over the row's runs) and
    parameters (M), where the runs logged them; no column for a field no run has."""
    frames = [getattr(gr, "runs", pd.DataFrame()) for gr in rows]
    have = pd.concat([f for f in frames if not f.empty]) if any(not f.empty for f in frames) else pd.DataFrame()
    names, fields = [], []
    if "steps_per_second" in have and have["steps_per_second"].notna().any():
        names.append("steps/s")
        fields.append(lambda f: f"{f['steps_per_second'].mean():.2f}")
    if "wall_s" in have and have["wall_s"].notna().any():
        names.append(f"cost ({_hours_label(have.get('device', pd.Series(dtype=str)))})")
        fields.append(lambda f: f"{f['wall_s'].sum() / 3600:.3f}")
    if "params_m" in have and have["params_m"].notna().any():
        names.append("params (M)")
        fields.append(lambda f: f"{f['params_m'].mean():.2f}")
    values = []
    for f in frames:
        values.append([fn(f) if not f.empty and not math.isnan(_first(f, name)) else "" for fn, name in
                       zip(fields, names)])
    return names, values


def _first(f: pd.DataFrame, name: str) -> float:
    col = {"steps/s": "steps_per_second", "params (M)": "params_m"}.get(name, "wall_s")
    return float(f[col].mean()) if col in f else math.nan
