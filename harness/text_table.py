"""Plain-text tables for the terminal (`list`, `plan`, `compare`, the GPU smoke check): each column as wide as its
widest cell, two spaces apart, a dash for a value that is missing; the same rows as Markdown (compare's
job summaries); and the one precision rule for measured numbers, which the HTML report's tables share."""
from __future__ import annotations

from typing import Any, Collection, Sequence


def cell(value: Any, spec: str = "") -> str:
    """`value` formatted with `spec`, or "-" when it is missing (None, NaN, pandas NA)."""
    try:
        missing = value is None or bool(value != value)  # NaN is the one value unequal to itself
    except TypeError:  # pandas.NA: its comparison is NA, which has no truth value
        missing = True
    return "-" if missing else format(value, spec)


def readable(value: float) -> str:
    """A measured number at the precision a reader uses: 12,345 / 123.4 / 12.34 / 0.0123."""
    size = abs(value)
    return f"{value:,.0f}" if size >= 1000 else f"{value:.1f}" if size >= 100 else f"{value:.2f}" if size >= 1 else f"{value:.3g}"


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Collection[int] = ()) -> list[str]:
    """Header, a rule, then the rows; columns whose index is in `right` are right-aligned (numbers)."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [line(headers), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A GitHub Markdown table; a '|' inside a cell is escaped so it cannot split the cell."""
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
            *("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows)]
