"""The markup both table engines share: rank emphasis, LaTeX escaping, booktabs tables, and a PDF of them.

Our LaTeX needs `\\usepackage{booktabs}` (the rules) and `\\usepackage{graphicx}` (the paper layouts scale wide
tables to the text width with \\resizebox); everything else is in the LaTeX kernel. Text goes through `tex_escape`,
so method names and notes may hold any of  _ % & # $ { } ~ ^ \\  and the symbols we print (± Δ ‡ † * ↑ ↓ ...).
`compile_pdf` turns a table into a standalone PDF with the TeX engine on PATH (`bench table --format pdf`).
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

from benchmark.config import ConfigError

#: the packages a document including our tables must load (README: "Tables in a paper")
PACKAGES = ("booktabs", "graphicx")
ENGINES = ("pdflatex", "lualatex", "xelatex")
INSTALL_HINT = ("install a small TeX Live: Debian/Ubuntu `apt-get install --no-install-recommends texlive-latex-base "
                "texlive-latex-recommended` (booktabs is in -recommended), macOS `brew install --cask basictex`, "
                "or see https://tug.org/texlive/")


def mark_rank(text: str, rank: float | int | None, fmt: str) -> str:
    """Best (rank 1) bold, second (rank 2) underlined, in `fmt` (markdown | latex); other ranks as they are."""
    if rank == 1:
        return f"**{text}**" if fmt == "markdown" else r"\textbf{" + text + "}"
    if rank == 2:
        return f"<u>{text}</u>" if fmt == "markdown" else r"\underline{" + text + "}"
    return text


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}",
        "|": r"\textbar{}"}   # < > | print as other glyphs in LaTeX's default OT1 text font
_TEX_SYMBOLS = {"±": r"$\pm$", "Δ": r"$\Delta$", "‡": r"$^\ddagger$", "†": r"$^\dagger$", "*": r"$^*$", "—": "--",
                "–": "--", "λ": r"$\lambda$", "⁻": r"$^-$", "↑": r"$\uparrow$", "↓": r"$\downarrow$",
                "≥": r"$\geq$", "≤": r"$\leq$", "×": r"$\times$", "→": r"$\rightarrow$", "…": r"\ldots{}",
                "³": r"$^3$", "²": r"$^2$", "°": r"$^\circ$"}


def tex_escape(text: str) -> str:
    """Plain text -> LaTeX-safe text (special characters escaped, the few symbols we print as math)."""
    out = "".join(_TEX.get(ch, ch) for ch in str(text))
    for sym, tex in _TEX_SYMBOLS.items():
        out = out.replace(sym, tex)
    return out


def row(cells: Sequence[str]) -> str:
    """One tabular row of already-escaped cells."""
    return " & ".join(cells) + r" \\"


def table(caption: str, label: str, column_format: str, head: Sequence[str], body: Sequence[str],
          notes: Sequence[str] = (), fit_width: bool = False) -> str:
    """A booktabs `table` float: `head` and `body` are rows (`row`) or rules (\\midrule, \\cmidrule...), already
    escaped; `caption` and `notes` are plain text (escaped here). `fit_width` scales the tabular to \\textwidth."""
    lines = [r"\begin{table}[t]", r"\centering", r"\caption{" + tex_escape(caption) + "}", r"\label{" + label + "}"]
    if fit_width:
        lines.append(r"\resizebox{\textwidth}{!}{%")
    lines += [r"\begin{tabular}{" + column_format + "}", r"\toprule", *head, r"\midrule", *body, r"\bottomrule",
              r"\end{tabular}" + ("}" if fit_width else "")]
    if notes:
        lines.append(r"\par\smallskip\footnotesize")
        lines += [tex_escape(n) + r"\par" for n in notes]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def document(body: str) -> str:
    """A standalone landscape article around `body` (our tables), with the packages they need."""
    packages = "".join(r"\usepackage{" + p + "}" for p in PACKAGES)
    return ("\\documentclass[10pt]{article}\n\\usepackage[T1]{fontenc}\n\\usepackage[landscape,margin=1.5cm]{geometry}\n"
            f"{packages}\n\\pagestyle{{empty}}\n\\begin{{document}}\n{body}\n\\end{{document}}\n")


def tex_engine() -> str:
    """The first TeX engine on PATH; a ConfigError saying what to install when there is none."""
    for name in ENGINES:
        if shutil.which(name):
            return name
    raise ConfigError(f"--format pdf needs a TeX engine ({', '.join(ENGINES)}) on PATH and none was found; "
                      f"{INSTALL_HINT}. `--format latex` writes the source without one.")


def compile_pdf(body: str, out: Path, timeout: float = 180.0) -> Path:
    """Compile `body` (LaTeX tables) in `document` to the PDF `out`; the engine's first error on failure."""
    engine = tex_engine()
    with tempfile.TemporaryDirectory(prefix="bench-tex-") as tmp:
        src = Path(tmp) / "table.tex"
        src.write_text(document(body), encoding="utf-8")
        done = subprocess.run([engine, "-interaction=nonstopmode", "-halt-on-error", src.name], cwd=tmp,
                              capture_output=True, text=True, errors="replace", timeout=timeout)
        pdf = src.with_suffix(".pdf")
        if done.returncode != 0 or not pdf.is_file():
            log = done.stdout.splitlines()
            first = next((i for i, line in enumerate(log) if line.startswith("!")), max(len(log) - 8, 0))
            missing = [p for p in ("geometry", *PACKAGES) if f"{p}.sty' not found" in done.stdout]
            hint = f" (missing package(s) {', '.join(missing)}: {INSTALL_HINT})" if missing else ""
            raise ConfigError(f"{engine} could not compile the table{hint}:\n" + "\n".join(log[first:first + 8]))
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pdf, out)
    return out
