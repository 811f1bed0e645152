"""The text of a table: numbers, cells (mean ± std (n), Δ (p)) and whole grids as markdown
or LaTeX. A grid is {"header": [...], "rows": [[...], ...]} of strings (built by tables.grids)."""
from __future__ import annotations

import math

DAGGER = "†"   # a cell with fewer runs than its plan names: n/planned, never silently averaged


def fmt_value(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def fmt_number(value: float, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def fmt_p(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.3g}"


def score_text(cell: dict) -> str:
    if cell["n"] == 0:
        return f"— (0/{cell['n_planned']}){DAGGER}"
    n = f"({cell['n']})" if cell["complete"] else f"({cell['n']}/{cell['n_planned']}){DAGGER}"
    return f"{fmt_number(cell['mean'])} ± {fmt_number(cell['std'])} {n}"


def delta_text(cell: dict) -> str:
    if cell["n_pairs"] == 0:
        return "—"
    mark = "" if cell["complete"] else DAGGER
    return f"{fmt_number(cell['delta'], signed=True)} (p={fmt_p(cell['p_ttest_rel'])}){mark}"


def markdown_table(grid: dict) -> str:
    lines = ["| " + " | ".join(grid["header"]) + " |",
             "|" + "---|" * len(grid["header"])]
    lines += ["| " + " | ".join(row) + " |" for row in grid["rows"]]
    return "\n".join(lines)


_TEX = str.maketrans({"±": r"$\pm$", "†": r"$^\dagger$", "→": r"$\to$", "Δ": r"$\Delta$",
                      "_": r"\_", "%": r"\%", "&": r"\&", "—": "--"})


def tex_table(grid: dict, caption: str) -> str:
    spec = "l" + "c" * (len(grid["header"]) - 1)
    body = [" & ".join(c.translate(_TEX) for c in row) + r" \\" for row in grid["rows"]]
    return "\n".join([r"\begin{table}[t]", r"\centering\small", rf"\begin{{tabular}}{{{spec}}}",
                      r"\toprule", " & ".join(h.translate(_TEX) for h in grid["header"]) + r" \\",
                      r"\midrule", *body, r"\bottomrule", r"\end{tabular}",
                      rf"\caption{{{caption.translate(_TEX)}}}", r"\end{table}"])
