"""The seed papers' tables as data: anchor cells of every table, cross-table agreement, schema checks."""
import os
import re
from pathlib import Path

import pytest
import yaml

from benchmark.config import ConfigError
from benchmark.report import leaderboard as lbm

EXPECTED = {
    "advmim": ["advmim-table1", "advmim-table2", "advmim-table3", "advmim-table4"],
    "semsim": [f"semsim-table{i}" for i in range(1, 7)],
    "cml": [f"cml-table{i}" for i in range(1, 5)],
    "dk-uxnet": ["dk-uxnet-table1", "dk-uxnet-table2"],
}
# (layout, row, setting, metric) -> printed value; at least two anchors per table, read off the paper copies.
ANCHORS = [
    ("advmim-table1", "AdvMIM", "acdc-10", "dice", 89.0),
    ("advmim-table1", "Labeled only", "synapse-15", "hd95", 43.1),
    ("advmim-table1", "+Masked Domain Learning", "acdc-10", "hd95", 1.8),
    ("advmim-table2", "AdvMIM", "acdc-3", "dice", 85.4),
    ("advmim-table2", "AdvMIM", "acdc-3", "hd95", 2.0),
    ("advmim-table2", "M-CnT [12]", "isic-10", "hd95", 24.4),
    ("advmim-table2", "UA-MT [27]", "synapse-15", "hd95", 93.4),
    ("advmim-table2", "DAN [28]", "synapse-30", "dice", 58.3),
    ("advmim-table3", "0.9", "acdc-3", "dice", 80.5),
    ("advmim-table3", "0.1", "acdc-3", "hd95", 2.4),
    ("advmim-table4", "1.0", "acdc-3", "dice", 76.6),
    ("advmim-table4", "0.0001", "acdc-3", "hd95", 2.3),
    ("semsim-table1", "SemSim", "acdc-1", "dice", 0.872),
    ("semsim-table1", "SemSim", "acdc-1", "hd95", 1.8),
    ("semsim-table1", "Only sup", "acdc-1", "hd95", 54.7),
    ("semsim-table1", "BCP-Net [28]", "acdc-5", "hd95", 2.1),
    ("semsim-table1", "MT [9]", "acdc-1", "dice", None),          # printed "-"
    ("semsim-table2", "SemSim", "isic-3", "hd95", 18.9),
    ("semsim-table2", "FixMatch [14]", "isic-10", "hd95", 15.5),
    ("semsim-table3", "SemSim", "promise12-7", "asd", 1.3),
    ("semsim-table3", "MT [9]", "promise12-3", "dice", 0.405),
    ("semsim-table4", "#3 L_cross", "acdc-1", "dice", 0.824),
    ("semsim-table4", "#5 L_intra + L_u", "acdc-1", "hd95", 2.9),
    ("semsim-table5", "14", "promise12-7", "asd", 4.5),
    ("semsim-table5", "1", "isic-10", "hd95", 18.1),
    ("semsim-table6", "p_in S1, p_cr S2, p_s S3", "isic-10", "hd95", 31.1),
    ("semsim-table6", "decoder only, p_s S1/S2/S3", "acdc-10", "hd95", 1.4),
    ("cml-table1", "Ours", "la-5", "dice", 87.63),
    ("cml-table1", "V-Net", "la-full", "dice", 91.47),
    ("cml-table1", "URPC[15]", "la-10", "hd95", 11.13),
    ("cml-table2", "Ours", "acdc-5", "asd", 0.57),
    ("cml-table2", "MCF[25]", "acdc-10", "hd95", 3.89),
    ("cml-table2", "UA-MT[38]", "acdc-5", "dice", 46.04),
    ("cml-table3", "Ours", "brats-10", "dice", 85.26),
    ("cml-table3", "MT[19]", "brats-20", "asd", 1.89),
    ("cml-table4", "L_sup^l + L_dis", "la-10", "hd95", 18.92),
    ("cml-table4", "L_sup^l + L_sup^u", "acdc-10", "dice", 87.75),
    ("dk-uxnet-table1", "ours", "la-20", "dice", 91.70),
    ("dk-uxnet-table1", "CAML [15]", "la-5", "jaccard", 77.65),
    ("dk-uxnet-table1", "V-Net", "la-full", "asd", 2.10),
    ("dk-uxnet-table2", "L_seg + L_qdc", "la-10", "hd95", 23.63),
    ("dk-uxnet-table2", "L_seg", "la-10", "jaccard", 64.42),
]


def test_every_seed_table_is_present_and_valid():
    names = lbm.available()
    for paper, tables in EXPECTED.items():
        for t in tables:
            assert t in names, t
            lb = lbm.load(t)
            assert lb.paper == paper and lb.caption and lb.source and lb.protocol.get("checkpoint")
            assert lb.rows and lb.settings
    assert len(names) == sum(len(t) for t in EXPECTED.values())


@pytest.mark.parametrize("layout,row,setting,metric,value", ANCHORS)
def test_anchor_cells(layout, row, setting, metric, value):
    got = lbm.load(layout).published(row, setting, metric)
    assert got == (pytest.approx(value) if value is not None else None)


def test_every_table_has_anchors():
    assert {a[0] for a in ANCHORS} == {t for ts in EXPECTED.values() for t in ts}


def test_numbers_reported_twice_agree_across_tables():
    p = lambda t, r, s, m: lbm.load(t).published(r, s, m)  # noqa: E731
    for m in ("dice", "hd95"):
        assert p("advmim-table3", "0.7", "acdc-3", m) == p("advmim-table2", "AdvMIM", "acdc-3", m)
        assert p("advmim-table4", "0.001", "acdc-3", m) == p("advmim-table2", "AdvMIM", "acdc-3", m)
        assert p("advmim-table1", "AdvMIM", "synapse-15", m) == p("advmim-table2", "AdvMIM", "synapse-15", m)
        assert p("semsim-table4", "#7 L_intra + L_cross + L_u", "acdc-1", m) == p("semsim-table1", "SemSim", "acdc-1", m)
        assert p("semsim-table5", "4", "acdc-10", m) == p("semsim-table1", "SemSim", "acdc-10", m)
        assert p("semsim-table6", "p_in S1, p_cr S2, p_s S1", "isic-10", m) == p("semsim-table2", "SemSim", "isic-10", m)
    assert p("semsim-table5", "4", "promise12-7", "asd") == p("semsim-table3", "SemSim", "promise12-7", "asd")
    for m in ("dice", "hd95", "asd"):
        assert p("cml-table4", "L_sup^l + L_dis + L_sup^u", "la-10", m) == p("cml-table1", "Ours", "la-10", m)
        assert p("cml-table4", "L_sup^l + L_dis + L_sup^u", "acdc-10", m) == p("cml-table2", "Ours", "acdc-10", m)
        assert p("cml-table4", "L_sup^l", "acdc-10", m) == p("cml-table2", "U-Net", "acdc-10", m)
    for m in ("dice", "jaccard", "hd95", "asd"):
        assert p("dk-uxnet-table2", "L_seg + L_qdc + L_segc", "la-10", m) == p("dk-uxnet-table1", "ours", "la-10", m)


def test_text_claims_recomputed_from_the_tables():
    """The papers' own sentences, recomputed from the transcribed cells (guards against a transposed digit)."""
    a2 = lbm.load("advmim-table2")
    margins = {"acdc-3": (10.1, 8.7), "acdc-10": (0.6, 3.1), "synapse-15": (1.0, 9.9), "synapse-30": (3.4, 15.7),
               "isic-3": (1.9, 9.9), "isic-10": (0.7, 4.9)}
    for s, (dd, dh) in margins.items():
        assert a2.published("AdvMIM", s, "dice") - a2.published("M-CnT [12]", s, "dice") == pytest.approx(dd)
        assert a2.published("M-CnT [12]", s, "hd95") - a2.published("AdvMIM", s, "hd95") == pytest.approx(dh)
    s1 = lbm.load("semsim-table1")
    assert s1.published("SemSim", "acdc-1", "dice") - s1.published("CPC-SAM [35]", "acdc-1", "dice") == pytest.approx(0.016)
    assert s1.published("CPC-SAM [35]", "acdc-1", "hd95") - s1.published("SemSim", "acdc-1", "hd95") == pytest.approx(7.4)
    c3 = lbm.load("cml-table3")
    assert [c3.published("URPC[15]", "brats-10", m) - c3.published("Ours", "brats-10", m) for m in ("hd95", "asd")] == \
        [pytest.approx(1.93), pytest.approx(0.8)]
    c1 = lbm.load("cml-table1")
    assert c1.published("Ours", "la-5", "dice") - c1.published("UA-MT[38]", "la-5", "dice") == pytest.approx(5.37)


def test_method_mappings_resolve_to_registered_methods_presets_and_fields_or_reported_only():
    import dataclasses

    from benchmark import catalog

    reported = {e["name"] for e in catalog.reported_only()}
    for lb in lbm.all_leaderboards():
        for r in lb.rows:
            if r.method is None or r.method in reported:
                continue
            catalog.preset_overrides(r.method)   # raises for an unknown method or preset
            fields = {f.name for f in dataclasses.fields(catalog.method_class(r.method).Config)}
            assert set(r.config or {}) <= fields, (lb.id, r.name, set(r.config) - fields)
    # every reported-only method of the seed tables is mapped somewhere
    mapped = {r.method for lb in lbm.all_leaderboards() for r in lb.rows}
    assert reported <= mapped, reported - mapped
    assert lbm.load("advmim-table2").row("M-CnT [12]").method == "m-cnt"
    assert lbm.load("advmim-table3").row("0.5").config == {"mask_ratio": 0.5}


def test_acdc_settings_match_the_card_table():
    card = yaml.safe_load((Path(lbm.REPO_ROOT) / "datasets" / "acdc.yaml").read_text())
    table = card["labeled"]["table"]
    for lb in lbm.all_leaderboards():
        for s in lb.settings:
            if s.dataset == "acdc" and s.rows is not None:
                assert table[s.count] == s.rows, (lb.id, s.id)


def test_units_as_printed():
    assert lbm.load("semsim-table1").metrics["dice"].unit == "fraction"
    assert lbm.load("advmim-table2").metrics["hd95"].unit == "mm"
    assert lbm.load("cml-table2").metrics["hd95"].unit == "voxel"
    assert lbm.load("semsim-table3").metrics["asd"].label == "ASSD"


def test_bad_tables_fail_with_the_row_and_the_fix(tmp_path):
    data = yaml.safe_load((lbm.LEADERBOARD_DIR / "advmim-table3.yaml").read_text())
    data["rows"][0]["values"]["acdc-3"] = [84.7]
    with pytest.raises(ConfigError, match=r"rows\[0\] \('0.1'\).*needs 2 values"):
        lbm.parse(data, "x.yaml")
    data["rows"][0]["values"] = {"acdc-5": [1.0, 2.0]}
    with pytest.raises(ConfigError, match="unknown setting 'acdc-5'"):
        lbm.parse(data, "x.yaml")
    with pytest.raises(ConfigError, match="valid layouts: .*advmim-table2"):
        lbm.load("advmim-table9")


# the seed papers' markdown copies: $BENCH_PAPERS_DIR, else ../shared/papers beside the repository
PAPERS = Path(os.environ.get("BENCH_PAPERS_DIR") or Path(lbm.REPO_ROOT).parent / "shared" / "papers")


@pytest.mark.skipif(not PAPERS.exists(), reason="the paper copies (shared/papers) are not beside the repo")
def test_each_rows_numbers_stand_in_one_line_of_the_paper_copy():
    """Every (row, setting) value run appears contiguously on one line of the paper's markdown copy, on a line
    that starts with the row's name where the copy has one (so two rows' numbers cannot be swapped).
    Known exceptions: AdvMIM's row interleaves its margins; in CML Table 4's ACDC block the copy repeats the
    header inside the rows and cuts the last row (recovered from Table 2, see the YAML)."""
    skip = {("advmim-table2", "AdvMIM", "*"), ("cml-table4", "*", "acdc-10")}
    for lb in lbm.all_leaderboards():
        text = (PAPERS / f"{lb.paper}.md").read_text().splitlines()
        for r in lb.rows:
            if (lb.id, r.name, "*") in skip:
                continue
            # lines that start with the row's name (without the citation) when the copy has such lines
            key = re.split(r"\s*\[", r.name)[0]
            named = [line for line in text if line.startswith(key)] or text
            lines = [[float(x) for x in re.findall(r"\d+\.\d+|\d+", line)] for line in named]
            for s in lb.settings:
                if (lb.id, "*", s.id) in skip:
                    continue
                vals = [v for v in r.values.get(s.id, ()) if v is not None]
                if lb.orientation == "sweep" or not vals:
                    continue
                assert any(any(line[i:i + len(vals)] == vals for i in range(len(line))) for line in lines), \
                    (lb.id, r.name, s.id, vals)
