"""Like-for-like tables: the papers' machine-readable rules, exact re-scoring of saved per-case rows under another
empty-prediction policy, and the cells that say which rules our numbers used (fidelity issue, item 7)."""
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmark.config import ConfigError
from benchmark.evaluate import CASE_COLUMNS, rescore_cases, score_case, summarize
from benchmark.report import leaderboard as lbm
from benchmark.report.stats import rescore_runs

POLICIES = ("worst", "zero_all", "dice0_hd0", "transunet")
NAMES = ["background", "A", "B"]


def rows_of(cases, policy):
    """Per-case rows of (name, pred, ref) label maps, scored as the Trainer scores them."""
    return pd.DataFrame([r for name, p, r in cases for r in score_case(name, p, r, [1, 2], NAMES, policy, None)],
                        columns=CASE_COLUMNS)


def random_cases(seed: int, n: int = 4):
    """Small 3D label maps in which some classes are missing from the prediction, the reference or both."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        ref = rng.integers(0, 3, (6, 7, 5))
        pred = np.where(rng.random(ref.shape) < 0.7, ref, rng.integers(0, 3, ref.shape))
        for target, label in ((pred, 1), (ref, 2), (pred, 2), (ref, 1)):
            if rng.random() < 0.4:
                target[target == label] = 0
        out.append((f"case{i}", pred, ref))
    return out


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), source=st.sampled_from(POLICIES), target=st.sampled_from(POLICIES))
def test_rescoring_saved_rows_equals_scoring_under_the_target_policy(seed, source, target):
    cases = random_cases(seed)
    rescored = rescore_cases(rows_of(cases, source), target)
    direct = rows_of(cases, target)
    pd.testing.assert_frame_equal(rescored, direct, check_dtype=False)


def test_rescoring_changes_an_empty_prediction_only():
    ref = np.zeros((8, 8, 4), int)
    ref[2:6, 2:6, 1:3] = 1
    ref[0:2, 0:2, 0:2] = 2
    pred = ref.copy()
    pred[pred == 2] = 0                                   # class B missed entirely
    worst = rows_of([("c", pred, ref)], "worst")
    zero = rescore_cases(worst, "zero_all")
    assert worst.loc[1, "hd95"] == pytest.approx(math.sqrt(8 ** 2 + 8 ** 2 + 4 ** 2)) and zero.loc[1, "hd95"] == 0.0
    assert worst.loc[0].equals(zero.loc[0])               # class A is unchanged
    assert summarize(zero)["hd95"] < summarize(worst)["hd95"]


def test_rows_without_voxel_counts_and_the_error_policy_are_refused():
    old = rows_of(random_cases(0), "worst").drop(columns=["pred_voxels", "ref_voxels", "diagonal"])
    with pytest.raises(ValueError, match="bench eval --run RUN_ID --empty-prediction zero_all"):
        rescore_cases(old, "zero_all")
    with pytest.raises(ValueError, match="cannot re-score under 'error'"):
        rescore_cases(rows_of(random_cases(0), "worst"), "error")


def test_every_leaderboard_states_its_rules_and_cml_fixes_them_per_setting():
    for lb in lbm.all_leaderboards():
        for s in lb.settings:
            assert s.empty_prediction in lbm.EMPTY_RULES and s.checkpoint in lbm.CHECKPOINT_RULES
    cml4 = lbm.load("cml-table4")          # one table, two rules: LA selected on the test list, ACDC on val
    assert (cml4.setting("la-10").empty_prediction, cml4.setting("la-10").checkpoint) == ("zero_all", "best_test")
    assert (cml4.setting("acdc-10").empty_prediction, cml4.setting("acdc-10").checkpoint) == ("zero_all", "best_val")
    assert {s.checkpoint for s in lbm.load("dk-uxnet-table2").settings} == {"last"}
    assert {s.empty_prediction for s in lbm.load("advmim-table2").settings} == {"unknown"}


def test_a_bad_rule_names_its_field():
    data = lbm.read_yaml(lbm.LEADERBOARD_DIR / "cml-table4.yaml")
    data["settings"][1]["checkpoint"] = "best"
    with pytest.raises(ConfigError, match=r"settings\[1\]\.checkpoint: 'best'; valid: best_val"):
        lbm.parse(data, "cml-table4.yaml")
    data = lbm.read_yaml(lbm.LEADERBOARD_DIR / "cml-table4.yaml")
    data["rules"] = {"empty_prediction": "zero"}
    with pytest.raises(ConfigError, match=r"rules\.empty_prediction: 'zero'"):
        lbm.parse(data, "cml-table4.yaml")


def la_runs(tmp_path, drop_counts_in=()):
    """Two CML runs on LA (8 scans) whose per-case files hold a missed structure in one case."""
    rows = []
    for seed in range(2):
        run_dir = tmp_path / f"cml-{seed}"
        run_dir.mkdir()
        ref = np.zeros((10, 10, 6), int)
        ref[2:8, 2:8, 1:5] = 1
        cases = [("a", ref.copy(), ref), ("b", np.zeros_like(ref), ref)]   # case b: nothing predicted
        table = rows_of(cases, "worst")[lambda d: d["class"] == 1]
        if seed in drop_counts_in:
            table = table.drop(columns=["pred_voxels", "ref_voxels", "diagonal"])
        table.to_csv(run_dir / "cases_best_val.csv", index=False)
        summary = summarize(table)
        rows.append({"method": "cml", "dataset": "la", "labeled": 8, "seed": seed, "run_dir": str(run_dir),
                     "empty_prediction": "worst", "checkpoint": "best_val", "rescored": False,
                     **{m: summary[m] for m in lbm.OUR_METRICS}})
    return pd.DataFrame(rows)


def ours_cells(grid, setting: int = 0):
    """Dice, 95HD, ASD of the CML row in the setting's column group (cml-table4: LA, then ACDC)."""
    row = next(r for r in grid.rows if r.row.method == "cml")
    return row.cells[3 * setting:3 * setting + 3]


def test_default_view_is_ours_and_flags_the_rules_the_paper_used_otherwise(tmp_path):
    runs = la_runs(tmp_path)
    dice, hd95, _ = ours_cells(lbm.build_grid(lbm.load("cml-table4"), runs))
    diag = math.sqrt(10 ** 2 + 10 ** 2 + 6 ** 2)
    assert dice.mean == pytest.approx(50.0) and hd95.mean == pytest.approx(diag / 2)   # honest: worst
    assert hd95.rules_code == "W!/V!" and hd95.empty_differs and hd95.checkpoint_differs
    text = lbm.to_markdown(lbm.build_grid(lbm.load("cml-table4"), runs))
    assert "W!/V!]" in text and "Rules of our numbers" in text and "--rules paper" in text
    # ACDC in the same table selects on val as we do: no checkpoint flag there
    acdc = lbm.build_grid(lbm.load("cml-table4"), runs.assign(dataset="acdc", labeled=7))
    assert ours_cells(acdc, setting=1)[1].rules_code == "W!/V"


def test_paper_rules_rescore_from_the_per_case_rows_and_keep_the_checkpoint_flag(tmp_path):
    runs = la_runs(tmp_path)
    grid = lbm.build_grid(lbm.load("cml-table4"), runs, rescore=rescore_runs)
    dice, hd95, asd = ours_cells(grid)
    assert dice.mean == pytest.approx(50.0) and hd95.mean == pytest.approx(0.0) and asd.mean == pytest.approx(0.0)
    assert hd95.rescored and hd95.rules_code == "Z*/V!"          # re-scored; the checkpoint is flagged, not re-selected
    back = pd.read_csv(pd.io.common.StringIO(lbm.to_csv(grid)))
    ours = back[(back["method"] == "cml") & (back["n"] > 0)]                 # the LA cells (our runs are LA)
    assert len(ours) == 3
    assert set(ours["paper_checkpoint"]) == {"best_test"} and ours["checkpoint_differs"].all()
    assert ours["rescored"].all() and set(ours["empty_rule"]) == {"zero_all"}
    # a table whose paper rule is unknown is never re-scored
    unknown = lbm.build_grid(lbm.load("dk-uxnet-table2"), runs.assign(method="dk-uxnet", checkpoint="last"),
                             rescore=rescore_runs)
    cell = next(r for r in unknown.rows if r.row.method == "dk-uxnet").cells[2]
    assert cell.mean == pytest.approx(math.sqrt(10 ** 2 + 10 ** 2 + 6 ** 2) / 2) and cell.rules_code == "W/L"


def test_runs_that_cannot_be_rescored_keep_their_rule_and_are_flagged(tmp_path):
    runs = la_runs(tmp_path, drop_counts_in=(0, 1))
    out = rescore_runs(runs, "zero_all")
    assert not out["rescored"].any() and out["hd95"].tolist() == runs["hd95"].tolist()
    hd95 = ours_cells(lbm.build_grid(lbm.load("cml-table4"), runs, rescore=rescore_runs))[1]
    assert hd95.rules_code == "W!/V!"
