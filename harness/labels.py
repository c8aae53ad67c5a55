"""Human names for a case's configuration ('E8 k2 cf1.25', 'dense d_ff=160'): the one place reports, plots,
compare and CI logs take them from, so a case reads the same everywhere.

Rows may be journal dicts, pandas rows or an older run's JSON; missing values (None, NaN, NA) are left out.
"""
from __future__ import annotations

from typing import Any, Mapping

from harness.values import as_number, as_text


def capacity_label(value: Any, kind: Any = "moe") -> str:
    """'cf1.25', 'dropless' (no capacity limit), or '' for a dense case."""
    if kind == "dense":
        return ""
    number = as_number(value)
    return "dropless" if number is None else f"cf{number:g}"


def config_label(row: Mapping[str, Any], extra: tuple[str, ...] = ()) -> str:
    """An MoE configuration, e.g. 'E8 k2 cf1.25' or 'E8 k2 dropless router=switch' (extra: the settings
    that vary across the cases shown together)."""
    parts = []
    for column, prefix in (("num_experts", "E"), ("top_k", "k")):
        value = as_number(row.get(column))
        if value is not None:
            parts.append(f"{prefix}{int(value)}")
    parts.append(capacity_label(row.get("capacity_factor"), row.get("kind")))
    for column in extra:
        value = row.get(column)
        if as_text(value) is not None:
            parts.append(f"{column}={value}")
    return " ".join(p for p in parts if p)


def dense_label(row: Mapping[str, Any], rule: bool = False) -> str:
    """'dense d_ff=160', or with rule 'dense (flop_matched) d_ff=160': which baseline it is."""
    label = "dense"
    if rule:
        label += f" ({as_text(row.get('baseline')) or 'baseline'})"
    d_ff = as_number(row.get("d_ff"))
    return f"{label} d_ff={int(d_ff)}" if d_ff is not None else label


def configuration(row: Mapping[str, Any], extra: tuple[str, ...] = ()) -> str:
    """The configuration column of a table: the MoE settings, or the dense model's width."""
    return dense_label(row) if as_text(row.get("kind")) == "dense" else config_label(row, extra)


def case_label(row: Mapping[str, Any]) -> str:
    """'moe E8 k2 cf1' or 'dense d_ff=160': enough to recognise a case id in a CI log."""
    kind = as_text(row.get("kind"))
    if kind == "dense":
        return dense_label(row)
    return " ".join([kind or "", config_label(row)]).strip()
