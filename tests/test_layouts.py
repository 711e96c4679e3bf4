"""Paper layouts filled with fake runs (no training): shapes, deltas, units, directions, markers, LaTeX/CSV."""
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark.report import leaderboard as lbm
from benchmark.report.stats import case_table, wilcoxon_p

GOLDEN = Path(__file__).parent / "golden"


def fake_runs(specs, dataset="acdc", labeled=3, **extra) -> pd.DataFrame:
    """specs: {method: [(dice, hd95), ...] one per seed} -> the frame runs_to_layout_frame makes."""
    rows = []
    for method, seeds in specs.items():
        for seed, (dice, hd) in enumerate(seeds):
            rows.append({"method": method, "dataset": dataset, "labeled": labeled, "seed": seed,
                         "run_dir": f"/runs/{method}-{labeled}-{seed}", "device": "cpu", "run_id": f"{method}{seed}",
                         "dice": dice, "jaccard": dice - 0.1, "hd95": hd, "asd": hd / 3, "steps_per_second": 4.0,
                         "wall_s": 1800.0, "empty_prediction": "worst", "checkpoint": "best_val", **extra})
    return pd.DataFrame(rows)


def md_row(md: str, name: str) -> list[str]:
    line = next(line for line in md.splitlines() if line.startswith(f"| {name} |"))
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_columns_layout_fills_ours_with_mean_std_n_and_the_paper_value_or_delta():
    lb = lbm.load("advmim-table2")
    runs = fake_runs({"advmim": [(0.80, 3.0), (0.82, 3.0), (0.84, 3.0)]})
    grid = lbm.build_grid(lb, runs)
    both = md_row(lbm.to_markdown(grid, "both"), "AdvMIM")
    assert both[1] == "**82.00 ± 2.00 (n=3) [paper 85.4, Δ -3.40; W/V]**"    # percent, 85.4 published; best shown
    assert both[3] == "***89.0***"                                      # ACDC 10%: not run -> published, italic, best
    assert "Δ" not in md_row(lbm.to_markdown(grid, "reported"), "AdvMIM")[1]
    delta = md_row(lbm.to_markdown(grid, "delta"), "AdvMIM")[1]
    assert delta == "**82.00 ± 2.00 (n=3) [Δ -3.40; W/V]**" and "paper" not in delta
    # a row we have not run keeps the published value only, in italics
    assert md_row(lbm.to_markdown(grid), "MT [21]")[1] == "*56.6*"
    # header: one column per (setting, metric), in the paper's order
    header = lbm.to_markdown(grid).splitlines()[2]
    assert header.index("ACDC (3%) Dice") < header.index("ACDC (3%) HD") < header.index("ACDC (10%) Dice") \
        < header.index("ISIC (10%) HD")


def test_distance_cells_in_another_unit_are_flagged_and_delta_is_arithmetic():
    lb = lbm.load("advmim-table2")
    cell = lbm.build_grid(lb, fake_runs({"advmim": [(0.8, 2.5), (0.8, 3.5)]}), our_hd_units="voxel").rows[-1].cells[1]
    assert cell.mean == pytest.approx(3.0) and cell.delta == pytest.approx(1.0) and cell.unit_mismatch
    cml = lbm.build_grid(lbm.load("cml-table2"), fake_runs({"cml": [(0.8, 2.5)]}), our_hd_units="voxel")
    ours = next(r for r in cml.rows if r.label == "Ours" and r.section.startswith("3(5%)"))
    assert not ours.cells[1].unit_mismatch and ours.cells[0].mean == pytest.approx(80.0)


def test_fraction_tables_keep_fractions():
    grid = lbm.build_grid(lbm.load("semsim-table1"), fake_runs({"semsim": [(0.82, 2.0), (0.84, 2.0)]}))
    row = md_row(lbm.to_markdown(grid, "delta"), "SemSim")
    assert row[3].startswith("0.8300 ± 0.0141 (n=2) [Δ -0.0580; W/V]")      # 5% labeled = 3 patients; 0.888 printed
    assert row[-1] == "2.6"                                              # Params (M) column as printed


def test_best_bold_second_underlined_in_each_metrics_direction():
    lb = lbm.load("advmim-table2")
    # our AdvMIM is poor in Dice (50%) but the best in HD (1.0): Dice best goes to M-CnT, HD best to ours
    grid = lbm.build_grid(lb, fake_runs({"advmim": [(0.50, 1.0)]}))
    md = lbm.to_markdown(grid)
    assert md_row(md, "M-CnT [12]")[1] == "***75.3***"                 # Dice: highest published
    assert md_row(md, "SSNet [25]")[1] == "<u>*70.5*</u>"              # second
    assert md_row(md, "AdvMIM")[2].startswith("**1.00 (n=1)")          # HD: lowest is best
    assert md_row(md, "M-CnT [12]")[2] == "<u>*10.7*</u>"
    assert not md_row(md, "AdvMIM")[1].startswith("**")


def test_rows_layout_blocks_per_setting_with_their_own_ranks():
    grid = lbm.build_grid(lbm.load("cml-table2"), fake_runs({"supervised": [(0.9, 1.0)]}, labeled=7))
    sections = list(dict.fromkeys(r.section for r in grid.rows))
    assert sections == ["3(5%) labeled / 67(95%) unlabeled", "7(10%) labeled / 63(90%) unlabeled", "70(All) labeled"]
    sup10 = next(r for r in grid.rows if r.label == "U-Net" and r.section == sections[1])
    assert sup10.cells[0].mean == pytest.approx(90.0) and sup10.cells[0].rank == 1
    ours5 = next(r for r in grid.rows if r.label == "Ours" and r.section == sections[0])
    assert ours5.cells[0].rank == 1 and ours5.cells[0].n == 0           # ranks are per block
    md = lbm.to_markdown(grid)
    assert md.count("| 3(5%) labeled / 67(95%) unlabeled |") == 1        # the setting is named once per block


def test_sweep_layout_puts_values_in_columns_and_matches_runs_by_config():
    lb = lbm.load("advmim-table3")
    runs = pd.concat([fake_runs({"advmim": [(0.86, 1.5)]}, **{"cfg.mask_ratio": "0.5"}),
                      fake_runs({"advmim": [(0.70, 9.0)]}, **{"cfg.mask_ratio": "0.9"})])
    grid = lbm.build_grid(lb, runs)
    assert grid.columns == ["0.1", "0.3", "0.5", "0.7 (default)", "0.9"]
    assert [r.label for r in grid.rows] == ["Dice", "HD"]
    dice = grid.rows[0].cells
    assert dice[2].mean == pytest.approx(86.0) and dice[2].rank == 1 and dice[3].rank == 2 and dice[0].n == 0
    md = lbm.to_markdown(grid)
    assert "| Metric | mask ratio = 0.1 |" in md


def test_synthetic_runs_fill_acdc_cells_only_as_a_declared_stand_in():
    lb = lbm.load("advmim-table2")
    runs = fake_runs({"advmim": [(0.8, 2.0)]}, dataset="synthetic-acdc")
    assert lbm.build_grid(lb, runs).rows[-1].cells[0].n == 0
    grid = lbm.build_grid(lb, runs, stand_in="acdc")
    assert grid.rows[-1].cells[0].n == 1
    assert any("synthetic-acdc standing in for acdc" in n for n in grid.footnotes)


def test_caption_and_footnotes_state_the_protocol():
    grid = lbm.build_grid(lbm.load("cml-table1"), fake_runs({"cml": [(0.8, 1.0)]}, dataset="la", labeled=8),
                          ours_note="suite x, protocol: best_val")
    assert "Ours: mean ± std over seeds" in grid.caption and "protocol: best_val" in grid.caption
    text = " ".join(grid.footnotes)
    assert "best checkpoint on the 20-case test list" in text
    assert "Not implemented in this harness" not in text   # every row of CML Table 1 has a method (issue 15)
    for table in ("dk-uxnet-table1", "dk-uxnet-table2"):   # DK-UXNet's rows map to its presets (issue 16)
        assert "Not implemented in this harness" not in " ".join(lbm.build_grid(lbm.load(table)).footnotes)
    assert "Not implemented in this harness (yet): M-CnT [12]" in " ".join(
        lbm.build_grid(lbm.load("advmim-table2")).footnotes)   # a row without a method is still named


def write_cases(tmp: Path, method: str, seed: int, values) -> str:
    run_dir = tmp / f"{method}-{seed}"
    run_dir.mkdir()
    rows = [{"case": f"case{i}", "class": c, "class_name": n, "dice": v, "jaccard": v, "hd95": 1 - v, "asd": 1 - v}
            for i, v in enumerate(values) for c, n in ((1, "RV"), (2, "LV"))]
    pd.DataFrame(rows).to_csv(run_dir / "cases_best_val.csv", index=False)
    return str(run_dir)


def test_wilcoxon_markers_against_the_best_other_row(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.uniform(0.5, 0.7, 12)
    runs = []
    for method, shift in (("advmim", 0.1), ("ctct", 0.0), ("mean-teacher", -0.001)):
        for seed in range(2):
            vals = base + shift + rng.normal(0, 0.002, 12)
            runs.append({"method": method, "dataset": "acdc", "labeled": 3, "seed": seed, "dice": vals.mean(),
                         "hd95": 1 - vals.mean(), "run_dir": write_cases(tmp_path, method, seed, vals)})
    runs = pd.DataFrame(runs)
    cases = case_table(runs, "best_val")
    assert len(cases) == 6 * 12 and set(cases.columns) >= {"run_dir", "case", "dice"}
    grid = lbm.build_grid(lbm.load("advmim-table2"), runs, cases=cases)
    cells = {r.label: r.cells[0] for r in grid.rows}
    assert cells["AdvMIM"].marker == "*" and cells["AdvMIM"].p_value < 0.05      # vs CTCT, clearly better
    assert cells["CTCT [15]"].marker == "†"                                      # vs AdvMIM, clearly worse
    assert cells["MT [21]"].marker == "†"
    assert cells["DAN [28]"].marker == "" and cells["DAN [28]"].p_value is None     # not run: no test
    md = lbm.to_markdown(grid)
    assert "(n=2)*" in md and "Wilcoxon signed-rank" in md
    # with a named baseline every cell is compared to it; the baseline itself gets no test
    grid = lbm.build_grid(lbm.load("advmim-table2"), runs, cases=cases, baseline="mean-teacher")
    cells = {r.label: r.cells[0] for r in grid.rows}
    assert cells["AdvMIM"].marker == "*" and cells["MT [21]"].p_value is None


def test_wilcoxon_p_identical_and_shifted():
    a = pd.Series(np.linspace(0, 1, 10), index=[f"c{i}" for i in range(10)])
    assert wilcoxon_p(a, a) == 1.0
    assert wilcoxon_p(a + 0.1, a) < 0.01
    assert wilcoxon_p(a.iloc[:1], a.iloc[:1]) is None


def test_cost_columns_only_where_runs_have_them():
    lb = lbm.load("advmim-table2")
    grid = lbm.build_grid(lb, fake_runs({"advmim": [(0.8, 2.0), (0.8, 2.0)]}), cost=True)
    assert grid.extra_columns == ["steps/s", "cost (CPU-h)"]
    assert grid.rows[-1].extra == ["4", "1.000"]                         # 2 runs x 1800 s
    assert grid.rows[0].extra == ["", ""]
    runs = fake_runs({"advmim": [(0.8, 2.0)]}).drop(columns=["steps_per_second", "wall_s"])
    assert lbm.build_grid(lb, runs, cost=True).extra_columns == []


def latex_structure_ok(tex: str) -> None:
    """What a LaTeX engine would reject first: unbalanced braces / environments, ragged rows."""
    assert tex.count("{") - tex.count(r"\{") == tex.count("}") - tex.count(r"\}")
    for env in ("table", "tabular"):
        assert tex.count(rf"\begin{{{env}}}") == tex.count(rf"\end{{{env}}}") == 1
    spec = re.search(r"\\begin\{tabular\}\{([lc]+)\}", tex).group(1)
    body = tex.split(r"\midrule", 1)[1].split(r"\bottomrule")[0]
    for line in body.splitlines():
        if line.endswith(r"\\"):
            assert line.count(" & ") == len(spec) - 1, line
    for token in (r"\toprule", r"\midrule", r"\bottomrule", r"\caption{", r"\label{tab:"):
        assert token in tex
    assert "±" not in tex and "Δ" not in tex and "‡" not in tex


@pytest.mark.parametrize("name", lbm.available())
def test_every_layout_renders_valid_latex_and_csv(name):
    lb = lbm.load(name)
    runs = fake_runs({m: [(0.8, 2.0), (0.7, 3.0)] for m in lb.methods()},
                     dataset=lb.settings[0].dataset, labeled=lb.settings[0].count or 0)
    grid = lbm.build_grid(lb, runs, cost=True)
    tex = lbm.to_latex(grid, "both")
    latex_structure_ok(tex)
    assert r"\multicolumn" in tex or len(lb.settings) == 1 or lb.orientation == "rows"
    back = pd.read_csv(io.StringIO(lbm.to_csv(grid)))
    assert set(back["table"]) == {name}
    pub = back.dropna(subset=["published"])
    assert len(pub) == lb.published_frame()["value"].notna().sum()
    filled = back[back["n"] > 0].dropna(subset=["published"])
    assert np.allclose(filled["ours_mean"] - filled["published"], filled["delta"])


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no LaTeX engine here (none installable from PyPI)")
def test_latex_compiles_in_a_plain_article(tmp_path):
    grid = lbm.build_grid(lbm.load("advmim-table2"), fake_runs({"advmim": [(0.8, 2.0), (0.82, 2.0)]}), cost=True)
    doc = (r"\documentclass{article}\usepackage[T1]{fontenc}\usepackage{booktabs}\usepackage{graphicx}"
           r"\begin{document}" + lbm.to_latex(grid) + r"\end{document}")
    (tmp_path / "t.tex").write_text(doc)
    out = subprocess.run(["pdflatex", "-interaction=nonstopmode", "t.tex"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:]


def test_markdown_golden_file():
    """advmim-table2 with fixed fake runs; regenerate with BENCH_REGEN_GOLDEN=1 after an intended change."""
    import os

    runs = pd.concat([fake_runs({"advmim": [(0.80, 3.0), (0.84, 2.0)], "mean-teacher": [(0.60, 20.0), (0.62, 18.0)]}),
                      fake_runs({"advmim": [(0.88, 1.5)]}, labeled=7)])
    implemented = {"supervised", "mean-teacher", "ua-mt", "entropy-min", "cps", "ict", "cct", "urpc", "dan", "mc-net",
                   "dct", "ctct", "ss-net", "ict-med", "fixmatch", "bcp", "advmim", "semsim", "cml"}   # fixed: registry-independent
    grid = lbm.build_grid(lbm.load("advmim-table2"), runs, cost=True, implemented=implemented)
    text = lbm.to_markdown(grid, "both")
    path = GOLDEN / "advmim-table2.md"
    if os.environ.get("BENCH_REGEN_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert text == path.read_text()
