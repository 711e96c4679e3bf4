"""Beyond the papers: a per-case paired test against the best other row, and a cost column.

The test is the two-sided Wilcoxon signed-rank test (scipy) over the test cases a cell and its reference share;
a case's value is its mean over classes, averaged over the cell's seeds. The reference of a cell is the best
other row of its column that we ran (by our mean, in the metric's direction), or a named baseline method.
"""
from __future__ import annotations

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


def rescore_runs(runs: pd.DataFrame, policy: str) -> pd.DataFrame:
    """`runs` (leaderboard.runs_to_layout_frame rows) with their test metrics re-scored under the empty-prediction
    `policy` from each run's `cases_<checkpoint>.csv` (benchmark.evaluate.rescore_cases, then the same means the
    run logged); `rescored` marks them. A run already under an equivalent rule, or whose file is missing or
    predates the voxel counts, is kept as it is (its cell then flags the differing rule)."""
    from benchmark.evaluate import rescore_cases, summarize
    from benchmark.report.leaderboard import OUR_METRICS, same_empty_rule

    out = runs.copy()
    for i in out.index:
        row = out.loc[i]
        path = Path(str(row.get("run_dir", ""))) / f"cases_{row['checkpoint']}.csv"
        if same_empty_rule(str(row["empty_prediction"]), policy) or not row.get("run_dir") or not path.exists():
            continue
        try:
            summary = summarize(rescore_cases(pd.read_csv(path), policy))
        except ValueError:
            continue
        for m in OUR_METRICS:
            out.loc[i, m] = summary.get(m, float("nan"))
        out.loc[i, ["empty_prediction", "rescored"]] = [policy, True]
    return out


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


COST_FIELDS = (("steps/s", "steps_per_second", lambda s: f"{s.mean():.3g}"),
               ("hours", "wall_s", lambda s: f"{s.sum() / 3600:.3f}"),
               ("params (M)", "params_m", lambda s: f"{s.mean():.2f}"))


def cost_fields(frame: pd.DataFrame) -> pd.DataFrame:
    """The cost of each finished MLflow run (rows as in `frame`): steps_per_second, params_m (every net the
    method trains), wall_s (the run's `run_seconds`: training, validation and test of each attempt, summed; runs
    of older harnesses: start to end) and device; absent fields are left out."""
    out = pd.DataFrame(index=frame.index)
    if "metrics.steps_per_second" in frame:
        out["steps_per_second"] = frame["metrics.steps_per_second"].astype(float)
    for key in ("metrics.param_count", "metrics.params", "metrics.n_params"):
        if key in frame:
            out["params_m"] = frame[key].astype(float) / 1e6
            break
    if "start_time" in frame and "end_time" in frame:
        out["wall_s"] = (pd.to_datetime(frame["end_time"]) - pd.to_datetime(frame["start_time"])).dt.total_seconds()
    if "metrics.run_seconds" in frame:   # the attempts' seconds summed (a resumed run's downtime left out)
        measured = frame["metrics.run_seconds"].astype(float)
        out["wall_s"] = measured.fillna(out["wall_s"]) if "wall_s" in out else measured
    if "tags.device" in frame:
        out["device"] = frame["tags.device"].fillna("").astype(str)
    return out


def cost_table(frames: list[pd.DataFrame]) -> tuple[list[str], list[list[str]]]:
    """Cost of our runs per table row (one frame of runs each): steps/s (mean), hours (wall time summed over
    the row's runs, labelled CPU-h or GPU-h by the runs' device) and parameters (M); a column only for a field
    some run logged."""
    have = pd.concat([f for f in frames if not f.empty]) if any(not f.empty for f in frames) else pd.DataFrame()
    fields = [(name, col, fmt) for name, col, fmt in COST_FIELDS if col in have and have[col].notna().any()]
    names = [f"cost ({_hours_label(have.get('device', pd.Series(dtype=str)))})" if col == "wall_s" else name
             for name, col, _ in fields]
    values = [[fmt(f[col].dropna()) if col in f and f[col].notna().any() else "" for _, col, fmt in fields]
              for f in frames]
    return names, values


def cost_columns(rows: list) -> tuple[list[str], list[list[str]]]:
    """`cost_table` of a layout grid's rows."""
    return cost_table([gr.runs if gr.runs is not None else pd.DataFrame() for gr in rows])
