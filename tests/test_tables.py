import io
import math

import pandas as pd
import pytest

from benchmark.report.tables import TableContext, aggregate, render, runs_to_long

CTX = TableContext("synthetic-acdc", "checkpoint=best_val, HD95/ASD in voxels", "voxel", "best_val")


def long_frame() -> pd.DataFrame:
    rows = []
    # method_a: best Dice, worst HD95; mean_b: second Dice, best HD95; sup_c: last Dice, second HD95
    for seed, (a, b, c) in enumerate([(0.80, 0.70, 0.50), (0.84, 0.72, 0.54)]):
        rows += [
            {"method": "method_a", "labeled_patients": 3, "labeled_rows": 68, "seed": seed, "dice": a, "jaccard": a - .1,
             "hd95": 9.0 + seed, "asd": 3.0},
            {"method": "mean_b", "labeled_patients": 3, "labeled_rows": 68, "seed": seed, "dice": b, "jaccard": b - .1,
             "hd95": 2.0 + seed, "asd": 1.0},
            {"method": "sup_c", "labeled_patients": 3, "labeled_rows": 68, "seed": seed, "dice": c, "jaccard": c - .1,
             "hd95": 5.0 + seed, "asd": 2.0},
        ]
    return pd.DataFrame(rows)


def test_aggregate_mean_std_n():
    agg = aggregate(long_frame(), ["dice", "hd95"])
    row = agg.loc[(3, 68, "method_a")]
    assert row[("dice", "mean")] == pytest.approx(0.82)
    assert row[("dice", "std")] == pytest.approx(0.0282842712)  # ddof=1
    assert row[("n", "")] == 2


def test_markdown_bold_best_underline_second_in_the_right_direction():
    md = render(long_frame(), "markdown", CTX)
    lines = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ") and "---" not in line}
    assert "**82.00 ± 2.83**" in lines["method_a"]          # best Dice (higher is better)
    assert "<u>71.00 ± 1.41</u>" in lines["mean_b"]         # second Dice
    assert "**2.50 ± 0.71**" in lines["mean_b"]             # best HD95 (lower is better)
    assert "<u>5.50 ± 0.71</u>" in lines["sup_c"]
    assert "9.50 ± 0.71" in lines["method_a"] and "**9.50" not in lines["method_a"]
    assert "3 labeled patients (68 slices)" in md and "n=2 seeds" in md and "voxels" in md
    assert "HD95 (voxel) ↓" in md and "Dice (%) ↑" in md


def test_latex_is_booktabs_with_marks_and_escapes():
    tex = render(long_frame(), "latex", CTX)
    for token in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{table}", r"\caption{", r"\label{tab:synthetic-acdc-3p}"):
        assert token in tex
    assert r"\textbf{82.00 $\pm$ 2.83}" in tex
    assert r"\underline{71.00 $\pm$ 1.41}" in tex
    assert r"method\_a" in tex and "±" not in tex
    assert tex.count(r"\textbf{") == 4  # one best per metric column


def test_csv_round_trips_numbers():
    csv = render(long_frame(), "csv", CTX)
    back = pd.read_csv(io.StringIO(csv))
    assert set(back["method"]) == {"method_a", "mean_b", "sup_c"}
    assert back.loc[back.method == "sup_c", "dice_mean"].item() == pytest.approx(0.52)
    assert (back["n"] == 2).all()


def test_single_seed_shows_mean_only_and_ties_share_bold():
    frame = long_frame()
    frame = frame[frame.seed == 0].copy()
    frame.loc[frame.method == "mean_b", "dice"] = 0.80  # tie with method_a
    md = render(frame, "markdown", CTX)
    assert md.count("**80.00**") == 2 and "±" not in md.split("\n", 2)[2]


def test_runs_to_long_reads_mlflow_columns():
    frame = pd.DataFrame({"tags.method": ["supervised"], "tags.labeled_patients": ["3"], "tags.labeled_rows": ["68"],
                          "tags.seed": ["1"], "metrics.test/best_val/dice": [0.7], "metrics.test/last/dice": [0.6],
                          "metrics.test/best_val/dice/RV": [0.5], "metrics.test/best_val/hd95/nan_count": [1.0]})
    long = runs_to_long(frame, "best_val")
    assert long.loc[0, "dice"] == 0.7 and long.loc[0, "dice/RV"] == 0.5 and long.loc[0, "seed"] == 1
    assert "hd95/nan_count" not in long and math.isclose(runs_to_long(frame, "last").loc[0, "dice"], 0.6)


def test_per_class_columns_follow_the_class_order():
    frame = long_frame()
    for cls, offset in (("RV", 0.0), ("Myo", 0.01), ("LV", 0.02)):
        frame[f"dice/{cls}"] = frame["dice"] + offset
    ctx = TableContext("d", "p", "voxel", "best_val", ("background", "RV", "Myo", "LV"))
    header = next(line for line in render(frame, "markdown", ctx, per_class=True).splitlines() if line.startswith("| Method"))
    assert header.index("Dice RV") < header.index("Dice Myo") < header.index("Dice LV")


def test_rows_follow_the_suite_method_order():
    from benchmark.report.tables import order_rows

    shuffled = long_frame().sample(frac=1.0, random_state=0)
    md = render(order_rows(shuffled, ["sup_c", "method_a"]), "markdown", CTX)
    rows = [line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| ") and "Method" not in line]
    assert rows == ["sup_c", "method_a", "mean_b"]


def test_configs_of_one_method_are_never_averaged_together():
    from benchmark.report.tables import label_cells

    frame = long_frame()
    frame["cell"], frame["iterations"] = "aaaaaaaa", "30000"
    extra = frame[frame.method == "sup_c"].assign(cell="bbbbbbbb", iterations="300", dice=0.1)
    md = render(label_cells(pd.concat([frame, extra])), "markdown", CTX)
    assert "sup_c (iters 30000, aaaaaa)" in md and "sup_c (iters 300, bbbbbb)" in md
    assert "| method_a |" in md  # a method with one config keeps its plain name


def test_cost_columns_follow_each_method_and_only_fields_the_runs_logged():
    frame = long_frame()
    frame["steps_per_second"] = frame["method"].map({"method_a": 2.0, "mean_b": 0.5, "sup_c": 4.0})
    frame["wall_s"] = frame["method"].map({"method_a": 1800.0, "mean_b": 3600.0, "sup_c": 360.0})
    frame["device"] = "cpu"
    md = render(frame, "markdown", CTX, cost=True)
    header = next(line for line in md.splitlines() if line.startswith("| Method"))
    assert header.endswith("| n | steps/s | cost (CPU-h) |") and "params" not in header   # no run logged params
    lines = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ") and "---" not in line}
    assert lines["mean_b"].endswith("| 2 | 0.5 | 2.000 |")       # 2 seeds x 1 h, summed
    assert lines["sup_c"].endswith("| 2 | 4 | 0.200 |")
    assert "steps/s" not in render(frame, "markdown", CTX)       # off unless asked
    back = pd.read_csv(io.StringIO(render(frame, "csv", CTX, cost=True)))
    assert back.set_index("method").loc["method_a", "steps/s"] == 2.0
    tex = render(frame, "latex", CTX, cost=True)
    assert "steps/s" in tex and tex.count(r"\textbf{") == 4    # cost columns are not ranked


def test_table_rows_follow_the_suite_order_with_all_expanded():
    from benchmark import catalog

    names = catalog.expand_method_names(["all", "dct:ssl4mis", "supervised"])
    registered = catalog.methods().names()
    assert names[:len(registered)] == registered and names[len(registered):] == ["dct:ssl4mis"]
