"""Figures from the run store (seaborn, Agg backend): pure functions of pandas frames, saved as PNG/PDF.

  dice_vs_labeled   mean Dice +- std over seeds against the labeled count, one line per method, with a
                    leaderboard's published values as dashed lines when given (like SemSim Fig. 1)
  seed_spread       per-seed test Dice per method (box + points), one panel per labeled setting
  val_curves        validation Dice over training steps, mean +- std over seeds, one line per method
  sensitivity       test Dice against a swept hyper-parameter (a `bench tune` study or runs that vary it),
                    with the paper's sweep (AdvMIM Tables 3-4 style) as a dashed line when given
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

KINDS = ("dice-vs-labeled", "seed-spread", "val-curves", "sensitivity")


def _sns():
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper")
    return sns


def _require(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame]
    if missing:
        raise ValueError(f"{what}: the frame lacks column(s) {', '.join(missing)}")
    if frame.empty:
        raise ValueError(f"{what}: no data to plot")


def dice_vs_labeled(runs: pd.DataFrame, published: pd.DataFrame | None = None, metric: str = "dice",
                    title: str = "") -> plt.Figure:
    """`runs`: method, labeled, seed, <metric> (fraction). `published`: row, method, labeled, value in %
    (see `published_curve`); only the rows of methods we ran are drawn, dashed, in the method's colour."""
    _require(runs, ["method", "labeled", metric], "dice-vs-labeled")
    sns = _sns()
    fig, ax = plt.subplots(figsize=(7, 4))
    methods = list(dict.fromkeys(runs["method"]))
    palette = dict(zip(methods, sns.color_palette(n_colors=len(methods))))
    data = runs.assign(value=runs[metric] * 100)
    sns.lineplot(data=data, x="labeled", y="value", hue="method", palette=palette, marker="o", errorbar="sd", ax=ax)
    if published is not None and not published.empty:
        pub = published[published["method"].isin(methods)].dropna(subset=["value"])
        for (name, method), part in pub.groupby(["row", "method"], sort=False):
            part = part.sort_values("labeled")
            ax.plot(part["labeled"], part["value"], linestyle="--", alpha=0.7, marker="x", color=palette[method],
                    label=f"{name} (paper)")
    ax.set_xlabel("labeled patients")
    ax.set_ylabel(f"{metric.capitalize()} (%)")
    ax.set_title(title or f"{metric.capitalize()} vs labeled count (mean ± std over seeds)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


def seed_spread(runs: pd.DataFrame, metric: str = "dice") -> plt.Figure:
    """`runs`: method, labeled, seed, <metric>; one panel per labeled count."""
    _require(runs, ["method", "labeled", "seed", metric], "seed-spread")
    sns = _sns()
    settings = sorted(runs["labeled"].unique())
    fig, axes = plt.subplots(1, len(settings), figsize=(4 * len(settings), 4), squeeze=False)
    for ax, labeled in zip(axes[0], settings):
        part = runs[runs["labeled"] == labeled].assign(value=lambda f: f[metric] * 100)
        sns.boxplot(data=part, x="method", y="value", ax=ax, color="0.9", showfliers=False)
        sns.stripplot(data=part, x="method", y="value", hue="seed", ax=ax, dodge=False, size=6)
        ax.set_title(f"{labeled} labeled")
        ax.set_xlabel("")
        ax.set_ylabel(f"{metric.capitalize()} (%)")
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig


def val_curves(history: pd.DataFrame) -> plt.Figure:
    """`history`: method, seed, step, value (validation Dice, fraction), optionally labeled."""
    _require(history, ["method", "step", "value"], "val-curves")
    sns = _sns()
    fig, ax = plt.subplots(figsize=(6, 4))
    data = history.assign(value=history["value"] * 100)
    hue = data["method"] + (" / " + data["labeled"].astype(str) + " lab." if "labeled" in data and
                            data["labeled"].nunique() > 1 else "")
    sns.lineplot(data=data.assign(curve=hue), x="step", y="value", hue="curve", errorbar="sd", ax=ax)
    ax.set_xlabel("training step")
    ax.set_ylabel("validation Dice (%)")
    ax.set_title("Validation Dice during training (mean ± std over seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def sensitivity(trials: pd.DataFrame, param: str, metric: str = "dice", published: pd.DataFrame | None = None,
                log: bool = False) -> plt.Figure:
    """`trials`: <param>, <metric> (fraction), optionally method. `published`: <param>, value (%)."""
    _require(trials, [param, metric], "sensitivity")
    sns = _sns()
    fig, ax = plt.subplots(figsize=(6, 4))
    data = trials.assign(value=trials[metric] * 100, **{param: trials[param].astype(float)})
    sns.lineplot(data=data, x=param, y="value", hue="method" if "method" in data else None, marker="o",
                 errorbar="sd", ax=ax)
    if published is not None and not published.empty:
        pub = published.sort_values(param)
        ax.plot(pub[param].astype(float), pub["value"], linestyle="--", marker="x", color="0.4", label="paper")
        ax.legend(fontsize=7)
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(param)
    ax.set_ylabel(f"test {metric.capitalize()} (%)")
    ax.set_title(f"Sensitivity to {param}")
    fig.tight_layout()
    return fig


def study_trials(frame: pd.DataFrame, study: str, param: str, checkpoint: str) -> pd.DataFrame:
    """Trials of a `bench tune` study (MLflow runs tagged `tune.study`, sampled values in the JSON tag
    `tune.values`) as method, <param>, dice (test Dice of `checkpoint`, fraction)."""
    import json

    if frame.empty or "tags.tune.study" not in frame:
        return pd.DataFrame(columns=["method", param, "dice"])
    part = frame[frame["tags.tune.study"] == study]
    values = part.get("tags.tune.values", pd.Series("{}", index=part.index)).fillna("{}").map(json.loads)
    out = pd.DataFrame({"method": part.get("tags.method", pd.Series("", index=part.index)),
                        param: values.map(lambda v: v.get(param)),
                        "dice": part.get(f"metrics.test/{checkpoint}/dice", pd.Series(float("nan"), index=part.index))})
    return out.dropna(subset=[param, "dice"]).reset_index(drop=True)


def save(fig: plt.Figure, out_dir: Path, name: str, formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Write `fig` as out_dir/name.<fmt> for each format; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out_dir / f"{name}.{fmt}"
        fig.savefig(path, dpi=150, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def published_sweep(lb, metric: str = "dice") -> pd.DataFrame:
    """A sweep leaderboard (AdvMIM Table 3/4) as <param>, value."""
    param = lb.sweep["param"]
    s = lb.settings[0]
    rows = [{param: r.config[param], "value": r.values[s.id][s.metrics.index(metric)]} for r in lb.rows
            if param in r.config and s.id in r.values]
    return pd.DataFrame(rows)


def published_curve(lb, dataset: str, metric: str = "dice") -> pd.DataFrame:
    """A leaderboard's published `metric` per row and labeled count on `dataset`, in percent."""
    pub = lb.published_frame()
    pub = pub[(pub["dataset"] == dataset) & (pub["metric"] == metric) & pub["labeled"].notna()].copy()
    unit = lb.metrics[metric].unit if metric in lb.metrics else "%"
    if unit == "fraction":
        pub["value"] = pub["value"] * 100
    return pub
