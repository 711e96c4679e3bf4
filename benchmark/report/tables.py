"""Paper-style tables: mean +- std over seeds, best bold, second underlined, the protocol in the header.

Pure pandas: `runs_to_long` takes the frame of finished MLflow runs (`Tracker.finished_frame`), the rest works
on that long table, so tables are testable without MLflow. Every caption also says how the runs were trained
(`training_note`): the precision (every reference trains in fp32; our Trainer's amp auto = bf16 autocast on
CUDA) and, for Swin-UNet methods, the weights they started from (imagenet | none | file).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import pandas as pd

from benchmark.metrics import HIGHER_IS_BETTER, METRICS
from benchmark.report.markup import mark_rank, row, tex_escape
from benchmark.report.markup import table as latex_table
from benchmark.report.stats import cost_fields, cost_table

PERCENT = {"dice", "jaccard"}  # shown x100 as in the papers
LABELS = {"dice": "Dice", "jaccard": "Jaccard", "hd95": "HD95", "asd": "ASD"}


@dataclass(frozen=True)
class TableContext:
    """What the header states: dataset, protocol, units."""

    dataset: str
    protocol: str
    hd_units: str
    checkpoint: str
    classes: tuple[str, ...] = ()   # order of the per-class columns
    unit: str = "patient"           # what a labeled count counts (the card's labeled.unit): patient | case
    training: str = ""              # how the runs trained (`training_note`; `render` fills it from the runs)


def training_fields(frame: pd.DataFrame) -> pd.DataFrame:
    """Per finished MLflow run (rows as in `frame`): `precision` (bf16 | fp32: the run's tag, else resolved from
    its params.train.amp and device tag, else 'unknown') and `pretrained` (imagenet | none | file name; '' for a
    run without a Swin-UNet)."""
    from benchmark.config import resolved_precision
    from benchmark.weights import tag_value

    def col(name: str) -> pd.Series:
        return frame.get(name, pd.Series("", index=frame.index)).fillna("").astype(str)

    tagged, amp, device = col("tags.precision"), col("params.train.amp"), col("tags.device")
    derived = [resolved_precision(a, d.split(" ")[0]) if a and d else "unknown" for a, d in zip(amp, device)]
    precision = tagged.where(tagged != "", pd.Series(derived, index=frame.index))
    pretrained = col("tags.pretrained")
    param = col("params.method.pretrained").map(lambda v: tag_value(None if v == "None" else v) if v else "")
    return pd.DataFrame({"precision": precision, "pretrained": pretrained.where(pretrained != "", param)},
                        index=frame.index)


def training_note(runs: pd.DataFrame) -> str:
    """'precision: fp32 (as the references)', '...: bf16 autocast (references: fp32)' (k of n when mixed),
    plus 'Swin-UNet start: advmim imagenet, ctct none' for the runs with one. '' for frames without the
    `precision` column (not made from MLflow runs)."""
    if runs.empty or "precision" not in runs:
        return ""
    values = runs["precision"].fillna("unknown").astype(str)
    n, bf16, unknown = len(values), int((values == "bf16").sum()), int((values == "unknown").sum())
    if bf16 == n:
        note = "precision: bf16 autocast (references: fp32)"
    elif bf16:
        note = f"precision: bf16 autocast in {bf16} of {n} runs, fp32 in the rest (references: fp32)"
    elif unknown < n:
        note = "precision: fp32 (as the references)"
    else:
        note = "precision: not recorded"
    if unknown and unknown < n:
        note += f"; {unknown} run(s) without a precision record"
    if "pretrained" in runs and "method" in runs:
        starts = runs[runs["pretrained"].fillna("").astype(str) != ""]
        if not starts.empty:
            base = starts["method"].astype(str).str.split(" (", regex=False).str[0]   # "ctct (iters 2, ..)"
            per = starts.groupby(base, sort=True)["pretrained"]
            note += "; Swin-UNet start: " + ", ".join(f"{m} {'/'.join(sorted(set(v)))}" for m, v in per)
    return note


def runs_to_long(frame: pd.DataFrame, checkpoint: str) -> pd.DataFrame:
    """One row per finished run: method, labeled_patients, labeled_rows, seed, the metrics of `checkpoint` and
    the run's cost fields (`stats.cost_fields`)."""
    if frame.empty:
        return pd.DataFrame(columns=["method", "cell", "iterations", "labeled_patients", "labeled_rows", "seed", *METRICS])
    prefix = f"metrics.test/{checkpoint}/"
    out = pd.DataFrame({
        "method": frame["tags.method"].astype(str),
        "cell": frame.get("tags.cell_hash", pd.Series("", index=frame.index)).fillna("").astype(str),
        "iterations": frame.get("tags.iterations", pd.Series("", index=frame.index)).fillna("").astype(str),
        "labeled_patients": frame["tags.labeled_patients"].astype(int),
        "labeled_rows": frame["tags.labeled_rows"].astype(int),
        "seed": frame["tags.seed"].astype(int),
    })
    for col in frame.columns:
        if col.startswith(prefix) and not col.endswith("nan_count"):
            out[col[len(prefix):]] = frame[col].astype(float)
    return pd.concat([out, cost_fields(frame), training_fields(frame)], axis=1).reset_index(drop=True)


def label_cells(long: pd.DataFrame) -> pd.DataFrame:
    """A method trained under several configs (e.g. another --iterations) gets one row per config, labelled
    `method (iters N, cell)`, so seeds of different configs are never averaged together."""
    if "cell" not in long:
        return long
    out = long.copy()
    counts = out.groupby(["labeled_patients", "method"])["cell"].transform("nunique")
    several = counts > 1
    start = pd.Series("", index=out.index)
    if "pretrained" in out:   # Swin-UNet runs: which start each row is
        known = out["pretrained"].fillna("").astype(str) != ""
        start[known] = ", pretrained " + out.loc[known, "pretrained"].astype(str)
    out.loc[several, "method"] = (out.loc[several, "method"] + " (iters " + out.loc[several, "iterations"]
                                  + start[several] + ", " + out.loc[several, "cell"].str[:6] + ")")
    return out


def order_rows(long: pd.DataFrame, method_order: list[str]) -> pd.DataFrame:
    """Sort by labeled setting, then methods in `method_order` (others after, by name), then seed."""
    rank = {m: i for i, m in enumerate(method_order)}
    key = long["method"].map(lambda m: (rank.get(m.split(" (")[0], len(rank)), m))
    return (long.assign(_key=key).sort_values(["labeled_patients", "_key", "seed"], kind="stable")
            .drop(columns="_key").reset_index(drop=True))


def aggregate(long: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """mean, std (ddof=1) and n over seeds, per (labeled_patients, labeled_rows, method), in first-seen order."""
    keys = ["labeled_patients", "labeled_rows", "method"]
    grouped = long.groupby(keys, sort=False)[columns]
    agg = grouped.agg(["mean", "std"])
    agg[("n", "")] = grouped.size()
    return agg.sort_index(level=0, sort_remaining=False)


def _scale(metric: str) -> float:
    return 100.0 if metric.split("/")[0] in PERCENT else 1.0


def _header(metric: str, hd_units: str) -> str:
    base, _, cls = metric.partition("/")
    unit = "%" if base in PERCENT else hd_units
    arrow = "↑" if HIGHER_IS_BETTER[base] else "↓"
    return f"{LABELS[base]}{' ' + cls if cls else ''} ({unit}) {arrow}"


def ranks(means: pd.Series, metric: str) -> pd.Series:
    """1 = best, 2 = second (ties share the better rank), by the numeric means."""
    return means.rank(ascending=not HIGHER_IS_BETTER[metric.split("/")[0]], method="min")


def _cell(mean: float, std: float, scale: float) -> str:
    if math.isnan(mean):
        return "–"
    m = f"{mean * scale:.2f}"
    return m if math.isnan(std) else f"{m} ± {std * scale:.2f}"


def _blocks(agg: pd.DataFrame, columns: list[str]):
    """Per labeled setting: (patients, rows, list of (method, n, {metric: (text, rank)}))."""
    for (patients, rows), block in agg.groupby(level=[0, 1], sort=False):
        block = block.droplevel([0, 1])
        rk = {m: ranks(block[(m, "mean")], m) for m in columns}
        lines = []
        for method in block.index:
            cells = {m: (_cell(block.loc[method, (m, "mean")], block.loc[method, (m, "std")], _scale(m)), rk[m][method])
                     for m in columns}
            lines.append((method, int(block.loc[method, ("n", "")]), cells))
        yield int(patients), int(rows), lines


def caption(ctx: TableContext, patients: int, rows: int, n_values: set[int]) -> str:
    n = "/".join(str(v) for v in sorted(n_values))
    labeled = (f"{patients} labeled patients ({rows} slices)" if ctx.unit == "patient"
               else f"{patients} labeled {'case' if patients == 1 else 'cases'}")
    training = f"; trained with {ctx.training}" if ctx.training else ""
    return f"{ctx.dataset}, {labeled}; mean ± std over n={n} seeds; protocol: {ctx.protocol}{training}"


Costs = tuple[list[str], dict[tuple[int, str], list[str]]]   # column names; (patients, method) -> cells


def cost_cells(long: pd.DataFrame) -> Costs:
    """The cost columns of a table (`stats.cost_table`) for each (labeled patients, method) row."""
    groups = list(long.groupby(["labeled_patients", "method"], sort=False))
    names, values = cost_table([g for _, g in groups])
    return names, {(int(p), m): v for ((p, m), _), v in zip(groups, values)}


def _cost_row(costs: Costs | None, patients: int, method: str) -> list[str]:
    if costs is None:
        return []
    return costs[1].get((patients, method), [""] * len(costs[0]))


def to_markdown(agg: pd.DataFrame, columns: list[str], ctx: TableContext, costs: Costs | None = None) -> str:
    out = []
    extra = costs[0] if costs else []
    for patients, rows, lines in _blocks(agg, columns):
        out.append(f"**{caption(ctx, patients, rows, {n for _, n, _ in lines})}**\n")
        out.append("| Method | " + " | ".join([*(_header(m, ctx.hd_units) for m in columns), "n", *extra]) + " |")
        out.append("|---|" + "---:|" * (len(columns) + 1 + len(extra)))
        for method, n, cells in lines:
            shown = [mark_rank(*cells[m], "markdown") for m in columns]
            out.append(f"| {method} | " + " | ".join([*shown, str(n), *_cost_row(costs, patients, method)]) + " |")
        out.append("")
    return "\n".join(out)


def to_latex(agg: pd.DataFrame, columns: list[str], ctx: TableContext, costs: Costs | None = None) -> str:
    """One booktabs table per labeled setting (`markup.PACKAGES`); best \\textbf, second \\underline."""
    out = []
    extra = costs[0] if costs else []
    for patients, rows, lines in _blocks(agg, columns):
        head = [row([tex_escape(h) for h in ("Method", *(_header(m, ctx.hd_units) for m in columns), "n", *extra)])]
        body = [row([tex_escape(method), *(mark_rank(tex_escape(cells[m][0]), cells[m][1], "latex") for m in columns),
                     str(n), *(tex_escape(c) for c in _cost_row(costs, patients, method))])
                for method, n, cells in lines]
        out.append(latex_table(caption(ctx, patients, rows, {n for _, n, _ in lines}), f"tab:{ctx.dataset}-{patients}p",
                               "l" + "c" * (len(columns) + 1 + len(extra)), head, body))
    return "\n".join(out)


def to_csv(agg: pd.DataFrame, columns: list[str], costs: Costs | None = None) -> str:
    flat = agg.copy()
    flat.columns = [f"{m}_{s}" if s else m for m, s in flat.columns]
    flat = flat.reset_index()
    for i, name in enumerate(costs[0] if costs else []):
        flat[name] = [_cost_row(costs, int(p), m)[i] for p, m in zip(flat["labeled_patients"], flat["method"])]
    return flat.to_csv(index=False)


def render(long: pd.DataFrame, fmt: str, ctx: TableContext, per_class: bool = False, cost: bool = False) -> str:
    """The table of a suite in `fmt` (markdown, latex, csv); with `cost`, the runs' steps/s, hours and
    parameters after the metrics (columns only for the fields the runs logged)."""
    columns = [m for m in METRICS if m in long]
    if per_class:
        order = {name: i for i, name in enumerate(ctx.classes)}
        extra = [c for c in long.columns if "/" in c and c.split("/")[0] in METRICS]
        columns += sorted(extra, key=lambda c: (METRICS.index(c.split("/")[0]), order.get(c.split("/")[1], 99), c))
    agg = aggregate(long, columns)
    costs = cost_cells(long) if cost else None
    if not ctx.training:
        ctx = dataclasses.replace(ctx, training=training_note(long))
    if fmt == "markdown":
        return to_markdown(agg, columns, ctx, costs)
    if fmt == "latex":
        return to_latex(agg, columns, ctx, costs)
    if fmt == "csv":
        return to_csv(agg, columns, costs)
    raise ValueError(f"unknown format {fmt!r}; valid formats: markdown, latex, csv")
