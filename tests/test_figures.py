"""Figures from fake run tables (no training): each kind is drawn, saved as PNG and PDF, and not empty."""
import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from benchmark.report import figures  # noqa: E402
from benchmark.report import leaderboard as lbm  # noqa: E402


def runs() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame([{"method": m, "labeled": lab, "seed": s, "dice": base + lab / 20 + rng.normal(0, 0.01)}
                         for m, base in (("supervised", 0.4), ("mean-teacher", 0.45)) for lab in (1, 3, 7)
                         for s in range(3)])


def check(paths):
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    for p in paths:
        assert p.stat().st_size > 2000, p
    assert paths[0].read_bytes()[:4] == b"\x89PNG" and paths[1].read_bytes()[:4] == b"%PDF"


def test_dice_vs_labeled_with_the_papers_curves(tmp_path):
    pub = figures.published_curve(lbm.load("semsim-table1"), "acdc")
    assert set(pub["labeled"]) == {1, 3, 7} and pub["value"].max() > 1     # SemSim's fractions -> percent
    fig = figures.dice_vs_labeled(runs(), pub)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "MT [9] (paper)" in labels and "Only sup (paper)" in labels and "SemSim (paper)" not in labels
    check(figures.save(fig, tmp_path, "dvl"))


def test_seed_spread_one_panel_per_setting(tmp_path):
    fig = figures.seed_spread(runs())
    assert len(fig.axes) == 3
    check(figures.save(fig, tmp_path, "spread"))


def test_val_curves(tmp_path):
    hist = pd.DataFrame([{"method": m, "seed": s, "step": st, "value": st / 1000 + s / 100}
                         for m in ("a", "b") for s in range(2) for st in (100, 200, 300)])
    fig = figures.val_curves(hist)
    assert len(fig.axes[0].get_lines()) >= 2
    check(figures.save(fig, tmp_path, "curves"))


def test_sensitivity_with_the_paper_sweep(tmp_path):
    lb = lbm.load("advmim-table4")
    pub = figures.published_sweep(lb)
    assert list(pub["lambda_adv"]) == [0.0001, 0.001, 0.01, 0.1, 1.0] and pub["value"].iloc[1] == 85.4
    trials = pd.DataFrame({"lambda_adv": [1e-4, 1e-3, 1e-2, 1e-1], "dice": [0.80, 0.82, 0.81, 0.7],
                           "method": "advmim"})
    fig = figures.sensitivity(trials, "lambda_adv", published=pub, log=True)
    assert fig.axes[0].get_xscale() == "log"
    check(figures.save(fig, tmp_path, "sens"))


def test_missing_columns_and_empty_frames_are_named():
    with pytest.raises(ValueError, match="lacks column"):
        figures.seed_spread(pd.DataFrame({"method": ["a"]}))
    with pytest.raises(ValueError, match="no data"):
        figures.dice_vs_labeled(runs().iloc[0:0])


def test_study_trials_read_the_tune_tags():
    import json

    frame = pd.DataFrame({"tags.tune.study": ["s1", "s1", "s2", "s1"], "tags.method": "advmim",
                          "tags.tune.values": [json.dumps({"mask_ratio": v}) for v in (0.1, 0.5, 0.9, 0.7)],
                          "metrics.test/best_val/dice": [0.80, 0.85, 0.5, float("nan")]})
    trials = figures.study_trials(frame, "s1", "mask_ratio", "best_val")
    assert list(trials["mask_ratio"]) == [0.1, 0.5] and list(trials["dice"]) == [0.80, 0.85]
    assert figures.study_trials(pd.DataFrame(), "s1", "mask_ratio", "best_val").empty
