"""Our LaTeX, compiled for real: every paper layout and the plain table in a minimal document with only the
packages the README names (markup.PACKAGES), special characters in method names and notes coming out as typed
(checked in the PDF's text), and `bench table --format pdf` rendered to PNG. Skips where TeX Live is missing
(`.ci/run` installs it)."""
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from benchmark.cli import app
from benchmark.report import leaderboard as lbm
from benchmark.report.markup import PACKAGES, compile_pdf, tex_escape
from benchmark.report.tables import TableContext, render
from test_layouts import fake_runs

needs_tex = pytest.mark.skipif(shutil.which("pdflatex") is None or shutil.which("pdftotext") is None,
                               reason="no pdflatex / pdftotext here (Debian: texlive-latex-base, "
                                      "texlive-latex-recommended, poppler-utils; .ci/run installs them)")
ODD = "m_1 50% + a&b #2 <x> {y} $3 ~z^"   # every character LaTeX treats specially, in a method name


def minimal_document(body: str) -> str:
    """What the README tells a paper to load: \\documentclass{article} + booktabs + graphicx, nothing else."""
    return ("\\documentclass{article}\n" + "".join(f"\\usepackage{{{p}}}\n" for p in PACKAGES)
            + "\\begin{document}\n" + body + "\n\\end{document}\n")


def compile_text(tex_body: str, folder: Path) -> str:
    """Compile in the minimal document; return the PDF's text (pdftotext), failing with the engine's error."""
    (folder / "t.tex").write_text(minimal_document(tex_body), encoding="utf-8")
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"], cwd=folder,
                          capture_output=True, text=True, errors="replace", timeout=120)
    assert done.returncode == 0, "\n".join(l for l in done.stdout.splitlines() if l.startswith("!")) or done.stdout[-2000:]
    assert "Missing character" not in (folder / "t.log").read_text(errors="replace")
    subprocess.run(["pdftotext", "-layout", "t.pdf", "t.txt"], cwd=folder, check=True, timeout=60)
    return (folder / "t.txt").read_text(errors="replace")


def flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


#: ODD as pdftotext reads it back from the default OT1 font: \_ is drawn as a rule (read as a space), ~ and ^
#: as the accent glyphs
ODD_IN_PDF = ODD.replace("_", " ").replace("~", "˜").replace("^", "ˆ")


def test_tex_escape_covers_every_special_character():
    escaped = tex_escape(ODD + " ± ‡ † ↓ ≤")
    bare = re.sub(r"\\[a-zA-Z]+(\{\})?|\\.|\$[^$]*\$", "", escaped)   # drop the commands and math we wrote
    assert not set(bare) & set("_%&#{}$~^<>\\"), escaped
    assert not set(escaped) & set("±‡†↓≤")


@needs_tex
@pytest.mark.parametrize("name", lbm.available())
def test_every_layout_compiles_with_odd_names_and_markers(name, tmp_path):
    lb = lbm.load(name)
    runs = fake_runs({m: [(0.8, 2.0), (0.7, 3.0)] for m in lb.methods()},
                     dataset=lb.settings[0].dataset, labeled=lb.settings[0].count or 0)
    grid = lbm.build_grid(lb, runs, cost=True)
    grid.rows[0].label = ODD
    cell = next(c for gr in grid.rows for c in gr.cells if c.n) if any(c.n for gr in grid.rows for c in gr.cells) \
        else None
    if cell is not None:     # a significance marker and a unit mismatch on one of our cells
        cell.marker, cell.unit_mismatch = "†", True
    text = flat(compile_text(lbm.to_latex(grid, "both"), tmp_path))
    assert ODD_IN_PDF in text
    if cell is not None:
        assert "†" in text and "‡" in text
    assert "±" in text or cell is None


@needs_tex
def test_plain_table_compiles_with_odd_names(tmp_path):
    rows = [{"method": name, "labeled_patients": 3, "labeled_rows": 68, "seed": s, "dice": d + s / 100,
             "jaccard": d - .1, "hd95": 3.0 + s, "asd": 1.0}
            for name, d in ((ODD, 0.8), ("plain", 0.7)) for s in (0, 1)]
    ctx = TableContext("data_set-1", "checkpoint=best_val, p < 0.05 | 100% of cases", "voxel", "best_val")
    text = flat(compile_text(render(pd.DataFrame(rows), "latex", ctx), tmp_path))
    assert ODD_IN_PDF in text and "data set-1" in text and "p < 0.05 | 100% of cases" in text
    assert "80.50 ± 0.71" in text and "Dice (%) ↑" in text


@needs_tex
def test_compile_pdf_renders_a_page_that_is_not_blank(tmp_path):
    if shutil.which("pdftoppm") is None:
        pytest.skip("no pdftoppm (Debian: poppler-utils)")
    from PIL import Image

    grid = lbm.build_grid(lbm.load("advmim-table2"), fake_runs({"advmim": [(0.8, 2.0), (0.82, 2.0)]}), cost=True)
    pdf = compile_pdf(lbm.to_latex(grid), tmp_path / "out" / "t.pdf")
    subprocess.run(["pdftoppm", "-png", "-r", "50", "-f", "1", "-l", "1", str(pdf), str(tmp_path / "page")],
                   check=True, timeout=60)
    page = np.asarray(Image.open(next(tmp_path.glob("page*.png"))).convert("L"))
    dark = (page < 128).mean()
    assert 0.005 < dark < 0.5, dark          # text on a white page: neither blank nor a black box


@needs_tex
def test_cli_pdf_of_a_layout(tmp_path):
    out = tmp_path / "t.pdf"
    result = CliRunner().invoke(app, ["table", "--layout", "cml-table1", "--format", "pdf", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:5] == b"%PDF-"


def test_cli_pdf_needs_out_and_names_the_packages_without_an_engine(tmp_path, monkeypatch):
    result = CliRunner().invoke(app, ["table", "--layout", "cml-table1", "--format", "pdf"])
    assert result.exit_code == 2 and "--out" in result.output
    monkeypatch.setenv("PATH", str(tmp_path))           # no TeX engine anywhere
    result = CliRunner().invoke(app, ["table", "--layout", "cml-table1", "--format", "pdf", "--out",
                                      str(tmp_path / "t.pdf")])
    assert result.exit_code == 2
    assert "texlive-latex-recommended" in result.output and "pdflatex" in result.output
    assert not (tmp_path / "t.pdf").exists()
