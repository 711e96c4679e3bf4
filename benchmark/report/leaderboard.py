"""The seed papers' published tables (leaderboards/*.yaml) as data, and their layouts filled with our runs.

A leaderboard YAML holds one published table: paper, table id, caption, the paper's protocol as far as it is
stated, metrics with their printed units, settings (dataset x labeled count, in the paper's name and in patient /
scan / image counts), and rows (the paper's method name, our method name or null, values per setting).

`build_grid` places our results (a long frame of finished runs, see `runs_to_layout_frame`) beside the published
values, in the paper's own shape:
  columns  settings are column groups, methods are rows (AdvMIM Table 2, SemSim Table I, ...)
  rows     each setting is a block of rows, metrics are the columns (CML Tables 1-3, DK-UXNet Table 1)
  sweep    the swept value is the columns, metrics are the rows (AdvMIM Tables 3-4)
Each cell shows ours (mean +- std over seeds, n) and the published value beside it, or the delta, or both; a row
we have not run shows the published value only, in italics. Best bold / second underlined per column (per metric
row in sweeps), by the shown value (ours where we have it, else the published one), in the metric's direction.

Like for like: each setting has the paper's `empty_prediction` and `checkpoint` rules (or `unknown`); each of
our cells ends with the rules its numbers used (`Cell.rules_code`, RULES_LEGEND), and `build_grid(rescore=...)`
(`bench table --rules paper`) re-scores our runs under a known empty-prediction rule from their per-case rows.
A checkpoint rule we did not follow is flagged, never re-selected. Our own rules are the default view.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd

from benchmark import REPO_ROOT
from benchmark.config import ConfigError, read_yaml
from benchmark.report.markup import mark_rank, tex_escape
from benchmark.report.markup import row as markup_row
from benchmark.report.markup import table as latex_table
from benchmark.report.stats import cost_fields

LEADERBOARD_DIR = REPO_ROOT / "leaderboards"
Rescorer = Callable[[pd.DataFrame, str], pd.DataFrame]   # (runs, empty-prediction policy) -> re-scored runs
ORIENTATIONS = ("columns", "rows", "sweep")
SHOW = ("reported", "delta", "both")
OUR_METRICS = ("dice", "jaccard", "hd95", "asd")   # the keys our runs log (benchmark.metrics.METRICS)
FRACTION_METRICS = {"dice", "jaccard"}              # ours are fractions in [0, 1]
# machine-readable rules of a published setting (`rules:` of the table, overridden per setting): what the paper
# or its released code fixes, `unknown` where neither does; `error` = the reference crashes on an empty class
EMPTY_RULES = ("worst", "zero_all", "dice0_hd0", "error", "transunet", "unknown")
CHECKPOINT_RULES = ("best_val", "last", "best_test", "unknown")


# ------------------------------------------------------------------------------------------ data model
@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool


@dataclass(frozen=True)
class Setting:
    id: str
    dataset: str
    name: str
    unit: str
    count: int | None
    metrics: tuple[str, ...]
    rows: int | None = None
    note: str = ""
    empty_prediction: str = "unknown"    # the paper's rule for an empty predicted class (EMPTY_RULES)
    checkpoint: str = "unknown"          # the checkpoint the paper reports (CHECKPOINT_RULES)


@dataclass(frozen=True)
class Row:
    name: str
    method: str | None
    values: dict[str, tuple[float | None, ...]]
    config: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, float] = field(default_factory=dict)
    note: str = ""
    default: bool = False


@dataclass(frozen=True)
class Leaderboard:
    id: str
    paper: str
    table: str
    title: str
    caption: str
    source: str
    orientation: str
    protocol: dict[str, str]
    metrics: dict[str, Metric]
    settings: tuple[Setting, ...]
    rows: tuple[Row, ...]
    extra_columns: dict[str, dict[str, Any]] = field(default_factory=dict)
    footnotes: tuple[str, ...] = ()
    sweep: dict[str, Any] = field(default_factory=dict)
    missing: str = ""

    def setting(self, setting_id: str) -> Setting:
        return next(s for s in self.settings if s.id == setting_id)

    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)

    def published(self, row: str, setting: str, metric: str) -> float | None:
        """One printed number, in the paper's unit (None for a '-' cell or a cell the table does not have)."""
        s = self.setting(setting)
        values = self.row(row).values.get(setting)
        return None if values is None else values[s.metrics.index(metric)]

    def decimals(self, metric: str) -> int:
        """Decimals the paper prints for `metric` (the most found in its column)."""
        best = 0
        for r in self.rows:
            for s in self.settings:
                v = r.values.get(s.id)
                if v is not None and metric in s.metrics and v[s.metrics.index(metric)] is not None:
                    text = repr(float(v[s.metrics.index(metric)]))
                    best = max(best, len(text.split(".")[1].rstrip("0")) if "." in text else 0)
        return max(best, 1)

    def methods(self) -> set[str]:
        return {r.method for r in self.rows if r.method}

    def published_frame(self) -> pd.DataFrame:
        """Long frame: row, method, setting, dataset, labeled, metric, unit, value."""
        out = []
        for r in self.rows:
            for s in self.settings:
                for m, v in zip(s.metrics, r.values.get(s.id, ())):
                    out.append({"row": r.name, "method": r.method, "setting": s.id, "dataset": s.dataset,
                                "labeled": s.count, "metric": m, "unit": self.metrics[m].unit, "value": v})
        return pd.DataFrame(out)


def _need(d: dict, key: str, where: str) -> Any:
    if key not in d:
        raise ConfigError(f"{where}: missing field {key!r}")
    return d[key]


def _rules(data: dict[str, Any], where: str, default: dict[str, str]) -> dict[str, str]:
    """`empty_prediction` and `checkpoint` of a table (`rules:`) or a setting (which overrides its table)."""
    out = {}
    for key, valid in (("empty_prediction", EMPTY_RULES), ("checkpoint", CHECKPOINT_RULES)):
        value = str(data.get(key, default.get(key, "unknown")))
        if value not in valid:
            raise ConfigError(f"{where}.{key}: {value!r}; valid: {', '.join(valid)}")
        out[key] = value
    return out


def parse(data: dict[str, Any], where: str) -> Leaderboard:
    """Validate a leaderboard mapping: every row's values match its settings' metric lists."""
    metrics = {k: Metric(k, str(_need(v, "label", f"{where}.metrics.{k}")), str(_need(v, "unit", f"{where}.metrics.{k}")),
                         bool(_need(v, "higher_is_better", f"{where}.metrics.{k}")))
               for k, v in _need(data, "metrics", where).items()}
    for k in metrics:
        if k not in OUR_METRICS:
            raise ConfigError(f"{where}: metric {k!r} is not one of ours ({', '.join(OUR_METRICS)})")
    settings = []
    table_rules = _rules(data.get("rules") or {}, f"{where}.rules", {})
    for i, s in enumerate(_need(data, "settings", where)):
        sw = f"{where}.settings[{i}]"
        ms = tuple(_need(s, "metrics", sw))
        unknown = [m for m in ms if m not in metrics]
        if unknown:
            raise ConfigError(f"{sw}: metric(s) {unknown} not declared under metrics")
        rules = _rules(s, sw, table_rules)
        settings.append(Setting(str(_need(s, "id", sw)), str(_need(s, "dataset", sw)), str(_need(s, "name", sw)),
                                str(_need(s, "unit", sw)), s.get("count"), ms, s.get("rows"), s.get("note", ""),
                                rules["empty_prediction"], rules["checkpoint"]))
    ids = {s.id for s in settings}
    rows = []
    for i, r in enumerate(_need(data, "rows", where)):
        rw = f"{where}.rows[{i}] ({r.get('name')!r})"
        values = {}
        for sid, vals in _need(r, "values", rw).items():
            if sid not in ids:
                raise ConfigError(f"{rw}: unknown setting {sid!r}; valid: {', '.join(sorted(ids))}")
            n = len(next(s for s in settings if s.id == sid).metrics)
            if len(vals) != n:
                raise ConfigError(f"{rw}: setting {sid!r} needs {n} values, got {len(vals)}")
            values[sid] = tuple(None if v is None else float(v) for v in vals)
        rows.append(Row(str(_need(r, "name", rw)), r.get("method"), values, dict(r.get("config") or {}),
                        {k: float(v) for k, v in (r.get("extra") or {}).items()}, r.get("note", ""),
                        bool(r.get("default", False))))
    orientation = data.get("orientation", "columns")
    if orientation not in ORIENTATIONS:
        raise ConfigError(f"{where}: orientation {orientation!r}; valid: {', '.join(ORIENTATIONS)}")
    if orientation == "sweep" and len(settings) != 1:
        raise ConfigError(f"{where}: a sweep table has exactly one setting")
    return Leaderboard(str(_need(data, "id", where)), str(_need(data, "paper", where)), str(_need(data, "table", where)),
                       str(data.get("title", "")), str(data.get("caption", "")), str(data.get("source", "")), orientation,
                       {k: str(v) for k, v in (data.get("protocol") or {}).items()}, metrics, tuple(settings), tuple(rows),
                       dict(data.get("extra_columns") or {}), tuple(data.get("footnotes") or ()),
                       dict(data.get("sweep") or {}), str(data.get("missing", "")))


def available(directory: Path = LEADERBOARD_DIR) -> list[str]:
    return sorted(p.stem for p in Path(directory).glob("*.yaml"))


def load(name: str | Path, directory: Path = LEADERBOARD_DIR) -> Leaderboard:
    """A leaderboard by id (`advmim-table2`) or path; unknown ids list the valid ones."""
    path = Path(name)
    if not path.suffix:
        path = Path(directory) / f"{name}.yaml"
        if not path.exists():
            raise ConfigError(f"unknown layout {str(name)!r}; valid layouts: {', '.join(available(directory))}")
    lb = parse(read_yaml(path), str(path))
    if path.stem != lb.id:
        raise ConfigError(f"{path}: id {lb.id!r} differs from the file name")
    return lb


# ------------------------------------------------------------------------------------------ our runs
def runs_to_layout_frame(frame: pd.DataFrame, checkpoint: str) -> pd.DataFrame:
    """Finished MLflow runs -> one row per run: method, dataset, labeled, seed, run_dir, the rules its metrics
    follow (empty_prediction, checkpoint, rescored), cfg.<param>, metrics, and the cost fields the runs have
    (steps_per_second, wall_s, params_m, device)."""
    cols = ["method", "dataset", "labeled", "seed", "run_dir", *OUR_METRICS]
    if frame.empty:
        return pd.DataFrame(columns=cols)

    def tag(name: str, default: str = "") -> pd.Series:
        return frame.get(f"tags.{name}", pd.Series(default, index=frame.index)).fillna(default).astype(str)

    out = pd.DataFrame({"method": tag("method"), "dataset": tag("dataset"),
                        "labeled": frame["tags.labeled_patients"].astype(int), "seed": frame["tags.seed"].astype(int),
                        "run_dir": tag("run_dir"), "device": tag("device"),
                        "run_id": frame["run_id"].astype(str) if "run_id" in frame else "",
                        "empty_prediction": tag("empty_prediction", "worst"), "checkpoint": checkpoint,
                        "rescored": False})
    prefix = f"metrics.test/{checkpoint}/"
    for m in OUR_METRICS:
        out[m] = frame[prefix + m].astype(float) if prefix + m in frame else math.nan
    for col in frame.columns:
        if col.startswith("params.method.") and col != "params.method.name":
            out["cfg." + col[len("params.method."):]] = frame[col]
    costs = cost_fields(frame).drop(columns="device", errors="ignore")
    from benchmark.report.tables import training_fields

    return pd.concat([out, costs, training_fields(frame)], axis=1).reset_index(drop=True)


def _same(a: Any, b: Any) -> bool:
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    except (TypeError, ValueError):
        return str(a) == str(b)


def select_runs(runs: pd.DataFrame, row: Row, setting: Setting, stand_in: str | None = None) -> pd.DataFrame:
    """Our runs that fill (row, setting): same method, same config values, same dataset and labeled count.
    `stand_in`: a paper dataset name (e.g. 'acdc') that all our runs stand in for (synthetic demos)."""
    if row.method is None or runs.empty or setting.count is None:
        return runs.iloc[0:0]
    dataset = runs["dataset"] if not stand_in else pd.Series(stand_in, index=runs.index)
    keep = (runs["method"] == row.method) & (dataset == setting.dataset) & (runs["labeled"] == int(setting.count))
    for k, v in row.config.items():
        col = f"cfg.{k}"
        if col not in runs:
            return runs.iloc[0:0]
        keep &= runs[col].map(lambda x: _same(x, v))
    return runs[keep]


def to_paper_unit(value: float, metric: str, unit: str) -> float:
    """Our value in the unit the paper printed: Dice/Jaccard x100 for '%', as is for 'fraction'."""
    if metric in FRACTION_METRICS and unit == "%":
        return value * 100.0
    return value


def units_differ(metric: Metric, our_hd_units: str) -> bool:
    """A distance metric printed in another unit than ours (e.g. paper 'mm', ours 'voxel'): delta is not like for like."""
    if metric.key in FRACTION_METRICS:
        return False
    return metric.unit != our_hd_units


# ------------------------------------------------------------------------------------------ the grid
_EMPTY_CODE = {"worst": "W", "zero_all": "Z", "dice0_hd0": "Z", "error": "E", "transunet": "U"}
_CHECKPOINT_CODE = {"best_val": "V", "last": "L", "best_test": "T"}
RULES_LEGEND = ("Rules of our numbers, after each cell's delta as EMPTY/CHECKPOINT: W = a class missing from the "
                "prediction scored worst (Dice 0, HD95/ASD = the image diagonal), Z = scored 0 on all metrics as the "
                "SS-Net/BCP/CML test scripts do (SSL4MIS's Dice 0 / HD95 0 gives the same numbers), U = TransUNet's "
                "Synapse rule (a missed class 0 / 0, a class predicted but absent from the ground truth Dice 1 / "
                "HD95 0), * = re-scored "
                "to the paper's rule from our per-case rows (--rules paper); V / L / T = the best checkpoint on "
                "validation / the last / the best on the test list; ! = the paper's rule is known and differs "
                "(a checkpoint is flagged, never re-selected).")


def same_empty_rule(a: str, b: str) -> bool:
    """zero_all and dice0_hd0 give the same numbers (benchmark.metrics)."""
    return a == b or {a, b} == {"zero_all", "dice0_hd0"}


@dataclass
class Cell:
    metric: Metric
    decimals: int
    published: float | None = None
    has_published: bool = False          # False: the paper has no such cell (blank), True with None: printed '-'
    mean: float | None = None            # ours, in the paper's unit
    std: float | None = None
    n: int = 0
    rank: int | None = None
    marker: str = ""
    p_value: float | None = None
    unit_mismatch: bool = False
    run_dirs: tuple[str, ...] = ()       # the runs behind `mean` (for the per-case test)
    empty_rule: str = ""                 # the empty-prediction rule(s) of our runs ('+'-joined when mixed)
    rescored: bool = False               # our values were re-scored to the paper's rule (bench table --rules paper)
    checkpoint_rule: str = ""            # the checkpoint our values come from
    paper_empty: str = "unknown"         # the setting's rules (Setting.empty_prediction / .checkpoint)
    paper_checkpoint: str = "unknown"

    @property
    def empty_differs(self) -> bool:
        """The paper's empty-prediction rule is known and our values follow another one."""
        return self.paper_empty not in ("unknown", "error") and bool(self.empty_rule) and not all(
            same_empty_rule(r, self.paper_empty) for r in self.empty_rule.split("+"))

    @property
    def checkpoint_differs(self) -> bool:
        """The paper's checkpoint rule is known and ours is another one (flagged, never re-selected)."""
        return self.paper_checkpoint != "unknown" and bool(self.checkpoint_rule) and \
            self.checkpoint_rule != self.paper_checkpoint

    @property
    def rules_code(self) -> str:
        """E.g. 'W/V!': worst-scored empties, best-on-val checkpoint where the paper took another (legend in
        RULES_LEGEND); '' without runs."""
        if not self.n:
            return ""
        empty = "".join(dict.fromkeys(_EMPTY_CODE.get(r, "?") for r in self.empty_rule.split("+")))
        empty += "*" if self.rescored else ""
        empty += "!" if self.empty_differs else ""
        ckpt = _CHECKPOINT_CODE.get(self.checkpoint_rule, "?") + ("!" if self.checkpoint_differs else "")
        return f"{empty}/{ckpt}"

    @property
    def shown(self) -> float | None:
        return self.mean if self.n else self.published

    @property
    def delta(self) -> float | None:
        if self.n and self.published is not None:
            return self.mean - self.published
        return None


@dataclass
class GridRow:
    label: str
    row: Row
    cells: list[Cell]
    extra: list[str] = field(default_factory=list)
    section: str = ""
    runs: pd.DataFrame | None = None     # our runs behind the row (for the cost columns)


@dataclass
class Grid:
    """A rendered-to-be table: header groups, rows of cells, caption and footnotes."""
    lb: Leaderboard
    groups: list[tuple[str, int]]        # (group title, span) over the cell columns
    columns: list[str]                   # one label per cell column
    rows: list[GridRow]
    extra_columns: list[str]
    caption: str
    footnotes: list[str]
    stub: str = "Method"


def _fill(cell: Cell, runs: pd.DataFrame, our_hd_units: str, setting: Setting) -> None:
    cell.paper_empty, cell.paper_checkpoint = setting.empty_prediction, setting.checkpoint
    vals = runs[cell.metric.key].dropna() if cell.metric.key in runs else pd.Series(dtype=float)
    if len(vals):
        conv = vals.map(lambda v: to_paper_unit(v, cell.metric.key, cell.metric.unit))
        cell.mean, cell.n = float(conv.mean()), int(len(conv))
        cell.std = float(conv.std(ddof=1)) if len(conv) > 1 else None
        cell.unit_mismatch = units_differ(cell.metric, our_hd_units)
        used = runs.loc[vals.index]
        if "run_dir" in used:
            cell.run_dirs = tuple(used["run_dir"].astype(str))
        cell.empty_rule = "+".join(dict.fromkeys(used.get("empty_prediction", pd.Series("worst", used.index))))
        cell.checkpoint_rule = "+".join(dict.fromkeys(used.get("checkpoint", pd.Series("", used.index))))
        cell.rescored = bool(used.get("rescored", pd.Series(False, used.index)).astype(bool).all())


def _paper_rules(runs: pd.DataFrame, setting: Setting, rescore: Rescorer | None) -> pd.DataFrame:
    """With `rescore` (--rules paper): the runs re-scored under the setting's empty-prediction rule, where the
    paper fixes one we can apply; else the runs as they are."""
    if rescore is None or runs.empty or setting.empty_prediction in ("unknown", "error"):
        return runs
    return rescore(runs, setting.empty_prediction)


def _rank(cells: list[Cell]) -> None:
    """1 = best, 2 = second, by the shown value in the metric's direction; ties share the better rank."""
    shown = [c.shown for c in cells]
    for c in cells:
        if c.shown is not None:
            better = sum(1 for v in shown if v is not None and
                         (v > c.shown if c.metric.higher_is_better else v < c.shown) and not math.isclose(v, c.shown))
            c.rank = better + 1


def build_grid(lb: Leaderboard, runs: pd.DataFrame | None = None, our_hd_units: str = "voxel",
               stand_in: str | None = None, cases: pd.DataFrame | None = None, baseline: str | None = None,
               alpha: float = 0.05, cost: bool = False, ours_note: str = "",
               implemented: set[str] | None = None, rescore: Rescorer | None = None) -> Grid:
    """The table of `lb` in the paper's shape, cells filled with our runs where they exist.

    `rescore(runs, policy)` (`stats.rescore_runs`; `bench table --rules paper`): each setting's runs are
    re-scored under its empty-prediction rule where the paper fixes one. Without it our own rules stand (the
    default view); either way each cell says which rules its numbers used (Cell.rules_code).

    `implemented`: registered method names (default: the registry), for the "not implemented" footnote.

    `cases`: per-case test metrics of the runs (see `stats.case_table`); with it, each of our cells gets a
    Wilcoxon signed-rank marker against the best other row of its column (or `baseline`)."""
    runs = runs if runs is not None else pd.DataFrame(columns=["method", "dataset", "labeled", "seed"])
    settings = lb.settings
    columns, groups, out_rows = [], [], []
    if lb.orientation in ("columns", "sweep"):
        for s in settings:
            groups.append((s.name, len(s.metrics)))
            columns += [f"{lb.metrics[m].label} ({lb.metrics[m].unit})" for m in s.metrics]
        for r in lb.rows:
            cells, matched = [], []
            for s in settings:
                sel = _paper_rules(select_runs(runs, r, s, stand_in), s, rescore)
                matched.append(sel)
                for i, m in enumerate(s.metrics):
                    metric = lb.metrics[m]
                    vals = r.values.get(s.id)
                    cell = Cell(metric, lb.decimals(m), None if vals is None else vals[i], vals is not None)
                    _fill(cell, sel, our_hd_units, s)
                    cells.append(cell)
            extra = [_fmt_plain(r.extra.get(k)) for k in lb.extra_columns]
            label = f"{r.name} (default)" if r.default else r.name
            out_rows.append(GridRow(label, r, cells, extra, runs=pd.concat(matched)))
        for j in range(len(columns)):
            _rank([gr.cells[j] for gr in out_rows])
    else:  # rows: a block per setting
        metrics = list(dict.fromkeys(m for s in settings for m in s.metrics))
        columns = [f"{lb.metrics[m].label} ({lb.metrics[m].unit})" for m in metrics]
        groups = [("Metrics", len(metrics))]
        for s in settings:
            block = []
            for r in lb.rows:
                sel = _paper_rules(select_runs(runs, r, s, stand_in), s, rescore)
                if s.id not in r.values and sel.empty:
                    continue
                cells = []
                for m in metrics:
                    vals = r.values.get(s.id)
                    i = s.metrics.index(m) if m in s.metrics else None
                    cell = Cell(lb.metrics[m], lb.decimals(m), None if vals is None or i is None else vals[i],
                                vals is not None and i is not None)
                    if i is not None:
                        _fill(cell, sel, our_hd_units, s)
                    cells.append(cell)
                block.append(GridRow(r.name, r, cells, section=s.name, runs=sel))
            for j in range(len(columns)):
                _rank([gr.cells[j] for gr in block])
            out_rows += block
    if cases is not None:
        from benchmark.report.stats import mark_significance

        mark_significance(out_rows, lb, cases, baseline, alpha)
    extra_columns = [str(v.get("label", k)) for k, v in lb.extra_columns.items()]
    if cost:
        from benchmark.report.stats import cost_columns

        names, per_row = cost_columns(out_rows)
        extra_columns += names
        for gr, values in zip(out_rows, per_row):
            gr.extra = [*gr.extra, *values]
    if implemented is None:
        from benchmark import catalog

        implemented = set(catalog.methods().names())
    caption, notes = describe(lb, our_hd_units, runs, stand_in, ours_note,
                              any(c.n for gr in out_rows for c in gr.cells), implemented, rescore is not None)
    if cases is not None:
        notes.append(f"* / †: our mean differs from the reference row (the best other row we ran in that column"
                     f"{'' if baseline is None else ', or ' + baseline}) by a two-sided Wilcoxon signed-rank test "
                     f"over test cases, p < {alpha} (* better, † worse).")
    grid = Grid(lb, groups, columns, out_rows, extra_columns, caption, notes)
    if lb.orientation == "sweep":
        grid = _transpose(grid)
    return grid


def _transpose(grid: Grid) -> Grid:
    """Sweep tables: the swept values become columns, the metrics rows (ranks were computed per metric)."""
    lb = grid.lb
    label = str(lb.sweep.get("label", lb.sweep.get("param", "value")))
    rows = []
    for j, col in enumerate(grid.columns):
        cells = [gr.cells[j] for gr in grid.rows]
        rows.append(GridRow(col.split(" (")[0], grid.rows[0].row, cells))
    return Grid(lb, [(lb.settings[0].name, len(grid.rows))], [gr.label for gr in grid.rows], rows, [],
                grid.caption, grid.footnotes, stub=label)


def describe(lb: Leaderboard, our_hd_units: str, runs: pd.DataFrame, stand_in: str | None, ours_note: str,
             any_ours: bool, implemented: set[str], paper_rules: bool = False) -> tuple[str, list[str]]:
    """Caption (the paper's, plus what ours are) and footnotes (the paper's protocol and rules, units, markers)."""
    cap = f"{lb.paper} Table {lb.table}: {lb.caption or lb.title}"
    if any_ours:
        cap += f" Ours: mean ± std over seeds (n = number of seeds){', ' + ours_note if ours_note else ''}."
        from benchmark.report.tables import training_note

        trained = training_note(runs)   # precision (references: fp32) and the Swin-UNet start of our runs
        cap += f" Our runs' {trained}." if trained else ""
    notes = []
    proto = "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in lb.protocol.items())
    if proto:
        notes.append(f"Paper protocol — {proto}.")
    by_rule: dict[str, list[str]] = {}
    for s in lb.settings:
        by_rule.setdefault(f"{s.empty_prediction} / {s.checkpoint}", []).append(s.name)
    notes.append("Paper rules (empty prediction / checkpoint): " + ("; ".join(
        f"{', '.join(names)}: {rule}" for rule, names in by_rule.items()) if len(by_rule) > 1 else
        f"{next(iter(by_rule))} in every setting") + ".")
    if any_ours:
        notes.append(RULES_LEGEND)
        notes.append("Our numbers re-scored under each setting's known empty-prediction rule (--rules paper); the "
                     "per-case tests use the rows as scored in training." if paper_rules else
                     "Our numbers under our own rules (the default); `bench table --rules paper` re-scores them "
                     "under each setting's known empty-prediction rule.")
    notes.append(f"Our HD95/ASD are in {our_hd_units}s; ‡ marks a distance cell whose printed unit differs from ours, "
                 f"so its delta is not like for like.")
    notes.append("Italic: published value only (method not run here or not implemented); "
                 "bold best / underlined second per column, by the shown value, Dice/Jaccard up, distances down.")
    if lb.missing:
        notes.append(f"'-' in the paper: {lb.missing}")
    missing = [r.name for r in lb.rows if r.method is None or r.method.split(":")[0] not in implemented]
    if missing:
        notes.append(f"Not implemented in this harness (yet): {', '.join(missing)}.")
    if stand_in:
        ours = ", ".join(sorted(set(runs["dataset"]))) if "dataset" in runs and len(runs) else "our dataset"
        notes.append(f"Ours come from {ours} standing in for {stand_in} (--stand-in): not comparable in value.")
    for s in lb.settings:
        if s.note:
            notes.append(f"{s.name}: {s.note}")
    notes += list(lb.footnotes)
    notes.append(f"Source: {lb.source}.")
    return cap, notes


# ------------------------------------------------------------------------------------------ cell text
def _fmt(v: float | None, d: int) -> str:
    return "-" if v is None else f"{v:.{d}f}"


def _fmt_plain(v: float | None) -> str:
    return "" if v is None else f"{v:g}"


def cell_parts(c: Cell, show: str) -> tuple[str, str]:
    """(ours, published/delta) texts of one cell; ours is '' when we have no run."""
    d = c.decimals
    pub = "" if not c.has_published else _fmt(c.published, d)
    if not c.n:
        return "", pub
    ours = _fmt(c.mean, d + 1) + ("" if c.std is None else f" ± {c.std:.{d + 1}f}") + f" (n={c.n})" + c.marker
    if c.unit_mismatch:
        ours += "‡"
    if not c.has_published or c.published is None:
        ref = "" if not c.has_published else "paper -"
    elif show == "reported":
        ref = f"paper {pub}"
    elif show == "delta":
        ref = f"Δ {c.delta:+.{d + 1}f}"
    else:
        ref = f"paper {pub}, Δ {c.delta:+.{d + 1}f}"
    return ours, f"{ref}; {c.rules_code}" if ref else c.rules_code


def check_show(show: str) -> None:
    if show not in SHOW:
        raise ConfigError(f"unknown --show {show!r}; valid: {', '.join(SHOW)}")


def _markdown_cell(c: Cell, show: str) -> str:
    ours, ref = cell_parts(c, show)
    if not ours:
        text = f"*{ref}*" if ref and ref != "-" else ref
    else:
        text = f"{ours} [{ref}]" if ref else ours
    return mark_rank(text, c.rank, "markdown")


def to_markdown(grid: Grid, show: str = "both") -> str:
    check_show(show)
    heads = []
    for title, span in grid.groups:
        heads += [title] * span
    columns = [f"{h} {c}" if grid.lb.orientation == "columns" and len(grid.groups) > 1 else c
               for h, c in zip(heads, grid.columns)]
    first = ["Setting", grid.stub] if grid.lb.orientation == "rows" else [grid.stub]
    if grid.lb.orientation == "sweep":
        columns = [f"{grid.stub} = {c}" for c in grid.columns]
        first = ["Metric"]
    out = [f"**{grid.caption}**", "", "| " + " | ".join([*first, *columns, *grid.extra_columns]) + " |",
           "|" + "---|" * len(first) + "---:|" * (len(columns) + len(grid.extra_columns))]
    last_section = None
    for gr in grid.rows:
        lead = [gr.label]
        if grid.lb.orientation == "rows":
            lead = [gr.section if gr.section != last_section else "", gr.label]
            last_section = gr.section
        out.append("| " + " | ".join([*lead, *(_markdown_cell(c, show) for c in gr.cells), *gr.extra]) + " |")
    out.append("")
    out += [f"- {n}" for n in grid.footnotes]
    return "\n".join(out) + "\n"


def _latex_cell(c: Cell, show: str) -> str:
    ours, ref = cell_parts(c, show)
    if not ours:
        text = r"\textit{" + tex_escape(ref) + "}" if ref and ref != "-" else tex_escape(ref)
    else:
        text = tex_escape(ours) + (r" {\scriptsize[" + tex_escape(ref) + "]}" if ref else "")
    return mark_rank(text, c.rank, "latex")


def to_latex(grid: Grid, show: str = "both") -> str:
    """A booktabs table (`markup.PACKAGES`: booktabs, graphicx); column groups as \\multicolumn with \\cmidrule."""
    check_show(show)
    lead = 2 if grid.lb.orientation == "rows" else 1
    ncol = lead + len(grid.columns) + len(grid.extra_columns)
    if grid.lb.orientation == "sweep":
        stub = ["Metric"]
        cols = [tex_escape(f"{grid.stub} = {c}") for c in grid.columns]
    else:
        stub = ["Setting", grid.stub] if grid.lb.orientation == "rows" else [grid.stub]
        cols = [tex_escape(c) for c in grid.columns]
    head = []
    if len(grid.groups) > 1 or grid.lb.orientation == "sweep":
        heads, rules, at = [], [], lead + 1
        for title, span in grid.groups:
            heads.append(r"\multicolumn{" + str(span) + "}{c}{" + tex_escape(title) + "}")
            rules.append(r"\cmidrule(lr){" + f"{at}-{at + span - 1}" + "}")
            at += span
        head += [markup_row([""] * lead + heads + [""] * len(grid.extra_columns)), " ".join(rules)]
    head.append(markup_row([tex_escape(s) for s in stub] + cols + [tex_escape(c) for c in grid.extra_columns]))
    body, last_section = [], None
    for gr in grid.rows:
        first = [tex_escape(gr.label)]
        if grid.lb.orientation == "rows":
            if last_section is not None and gr.section != last_section:
                body.append(r"\midrule")
            first = [tex_escape(gr.section) if gr.section != last_section else "", tex_escape(gr.label)]
            last_section = gr.section
        body.append(markup_row([*first, *(_latex_cell(c, show) for c in gr.cells), *(tex_escape(x) for x in gr.extra)]))
    return latex_table(grid.caption, f"tab:{grid.lb.id}", "l" * lead + "c" * (ncol - lead), head, body,
                       grid.footnotes, fit_width=True)


def to_csv(grid: Grid) -> str:
    """Tidy CSV: one line per cell with published, ours, delta, rank, marker and p-value."""
    out = []
    for gr in grid.rows:
        for j, c in enumerate(gr.cells):
            out.append({"table": grid.lb.id, "row": gr.label, "section": gr.section, "column": grid.columns[j],
                        "method": gr.row.method or "", "metric": c.metric.key, "unit": c.metric.unit,
                        "published": c.published, "ours_mean": c.mean, "ours_std": c.std, "n": c.n,
                        "delta": c.delta, "rank": c.rank, "marker": c.marker, "p_value": c.p_value,
                        "unit_mismatch": c.unit_mismatch, "empty_rule": c.empty_rule, "rescored": c.rescored,
                        "checkpoint_rule": c.checkpoint_rule, "paper_empty_prediction": c.paper_empty,
                        "paper_checkpoint": c.paper_checkpoint, "empty_differs": c.empty_differs,
                        "checkpoint_differs": c.checkpoint_differs})
    return pd.DataFrame(out).to_csv(index=False)


def render(grid: Grid, fmt: str, show: str = "both") -> str:
    if fmt == "markdown":
        return to_markdown(grid, show)
    if fmt == "latex":
        return to_latex(grid, show)
    if fmt == "csv":
        return to_csv(grid)
    raise ValueError(f"unknown format {fmt!r}; valid formats: markdown, latex, csv")


def all_leaderboards(directory: Path = LEADERBOARD_DIR) -> Iterable[Leaderboard]:
    for name in available(directory):
        yield load(name, directory)
