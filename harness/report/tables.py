"""The report's tables as plain rows of cells: formatted text, a sort key and a CSS class.

Building them here (not in the template) keeps formatting and best/worst logic testable; the
template only lays cells out, and jinja2 escapes every text.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import pandas as pd

from harness.analysis import better_above_one, coverage
from harness.labels import config_label, configuration, dense_label
from harness.text_table import readable
from harness.values import as_number
from harness.verdict import FASTER, SAME, SLOWER, UNRELIABLE

MIB = 2**20
CONFIG_EXTRAS = ("source", "router", "impl", "compile", "routing_mode", "granularity", "num_shared_experts", "d_model", "n_layers",
                 "seq_len", "batch_size", "dtype", "d_expert", "activation")
"""Configuration columns that enter a row's label when they vary within the run."""


@dataclass
class Cell:
    text: str
    sort: Any = None
    cls: str = ""
    title: str = ""


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    row_classes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def text(value: Any, missing: str = "") -> str:
    """A string for display; pandas' NA/NaN become `missing` instead of raising or showing 'nan'."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return missing
    return str(value)


def _flag(value: Any) -> bool:
    return value is not None and not pd.isna(value) and bool(value)


def fmt(value: Any, scale: float = 1.0) -> Cell:
    """A numeric cell; a missing value shows as an em dash and sorts last (never as 0)."""
    number = as_number(value)
    if number is None:
        return Cell("—", None, "missing", "not measured")
    number /= scale
    return Cell(readable(number), number)


def ratio_cell(ratio: Any, lo: Any = None, hi: Any = None, higher_is_better: bool = True) -> Cell:
    """'1.12× [1.05, 1.19]', classed 'better'/'worse' when the whole interval is on one side of 1."""
    r = as_number(ratio)
    if r is None:
        return Cell("—", None, "missing", "not measured")
    lo, hi = as_number(lo), as_number(hi)
    text = f"{r:.2f}×"
    cls, title = "", ""
    if lo is not None and hi is not None:
        text += f" [{lo:.2f}, {hi:.2f}]"
        if lo > 1 or hi < 1:
            better = (lo > 1) == higher_is_better
            cls = "better" if better else "worse"
            title = "confidence interval excludes 1"
        else:
            title = "confidence interval includes 1: no clear difference"
    return Cell(text, r, cls, title)


VERDICT_CLASS = {FASTER: "better", SLOWER: "worse", UNRELIABLE: "unreliable"}


def verdict_cell(ratio: Any, lo: Any, hi: Any, verdict: Any, reason: Any) -> Cell:
    """A ratio with its CI, coloured by the pair's verdict (harness.verdict), never by the interval
    alone: an unreliable pair is grey whatever its interval says, and says why."""
    r = as_number(ratio)
    if r is None:
        return Cell("—", None, "missing", text(reason) or "not measured")
    lo, hi = as_number(lo), as_number(hi)
    shown = f"{r:.2f}×" + (f" [{lo:.2f}, {hi:.2f}]" if lo is not None and hi is not None else "")
    label = text(verdict)
    return Cell(shown, r, VERDICT_CLASS.get(label, ""), f"{label}: {text(reason)}" if label else text(reason))


def varying(df: pd.DataFrame, columns: tuple[str, ...] = CONFIG_EXTRAS) -> tuple[str, ...]:
    moe = df[df["kind"] == "moe"]
    return tuple(c for c in columns if c in moe.columns and moe[c].dropna().astype(str).nunique() > 1)


def headline(pairs: pd.DataFrame, df: pd.DataFrame) -> Table:
    """Each MoE configuration against its matched dense baseline, best/worst throughput ratio per workload."""
    extras = varying(df)
    show_energy = bool(pairs["energy_per_token_ratio"].notna().any())
    show_quality = bool(pairs["quality_ratio"].notna().any())
    columns = ["Configuration", "Workload", "MoE tok/s", "Dense tok/s", "Throughput ratio [CI]", "Latency ratio [CI]",
               "Memory ratio"]
    columns += ["Energy/token ratio"] * show_energy + ["Quality ratio (val loss)"] * show_quality
    columns += ["Dropped", "Params active / total", "Verdict", "Status"]
    table = Table(columns)
    best_worst: dict[int, str] = {}
    for _, group in pairs.groupby("workload", sort=False):
        ratios = pd.to_numeric(_reliable(group)["throughput_ratio"], errors="coerce").dropna()
        if len(ratios) >= 2:
            best_worst[ratios.idxmax()] = "best"
            best_worst[ratios.idxmin()] = "worst"
    order = pairs.assign(_r=pd.to_numeric(pairs["throughput_ratio"], errors="coerce")).sort_values(
        ["workload", "_r"], ascending=[False, False], na_position="last")
    for idx, row in order.iterrows():
        status = text(row["status"])
        unstable = unstable_reasons(row)
        if status == "ok" and text(row.get("dense_status")) != "ok":
            status = "baseline " + text(row.get("dense_status"), "missing")
        elif status == "ok" and unstable:
            status = "ok, unstable"
        elif status == "ok" and (_flag(row.get("noisy")) or _flag(row.get("dense_noisy"))):
            status = "ok, noisy"
        mark = best_worst.get(idx, "")
        label = config_label(row, extras)
        cells = [
            Cell(label + (f"  ({mark})" if mark else ""), label),
            Cell(text(row["workload"])),
            fmt(row["tokens_per_s"]),
            fmt(row.get("dense_tokens_per_s")),
            verdict_cell(row["throughput_ratio"], row["throughput_ratio_ci_low"], row["throughput_ratio_ci_high"],
                         row.get("verdict"), row.get("verdict_reason")),
            verdict_cell(row["latency_ratio"], row["latency_ratio_ci_low"], row["latency_ratio_ci_high"],
                         row.get("verdict"), row.get("verdict_reason")),
            ratio_cell(row["memory_ratio"], higher_is_better=better_above_one("memory_ratio")),
        ]
        if show_energy:
            cells.append(ratio_cell(row["energy_per_token_ratio"], higher_is_better=better_above_one("energy_per_token_ratio")))
        if show_quality:
            cells.append(ratio_cell(row["quality_ratio"], higher_is_better=better_above_one("quality_ratio")))
        active, total = as_number(row.get("params_active")), as_number(row.get("params_total"))
        cells += [
            fmt(row.get("dropped_fraction")),
            Cell(f"{active / 1e6:.2f}M / {total / 1e6:.2f}M" if active and total else "—", total),
            Cell(text(row.get("verdict"), "—"), text(row.get("verdict")), VERDICT_CLASS.get(text(row.get("verdict")), ""),
                 text(row.get("verdict_reason"))),
            Cell(status, status, "" if status.startswith("ok") else "failed",
                 "latency IQR / median > 10% for the MoE case or its baseline" if status == "ok, noisy"
                 else unstable if status == "ok, unstable" else text(row.get("error"))),
        ]
        table.rows.append(cells)
        table.row_classes.append(mark)
    method = pairs["throughput_ratio_ci_method"].dropna().unique()
    if "latency_ci_bounds" in method:
        table.notes.append(
            "Throughput-ratio CI from the two 95% latency CIs: [dense low / MoE high, dense high / MoE low] "
            "(scaled to the measured ratio); it covers the true ratio with probability ≥ 90%.")
    if "interleaved" in method:
        table.notes.append("Rows measured interleaved with their baseline use the run's own ratio CI.")
    for metric, name in (("energy_j_per_token", "Energy per token"), ("val_loss", "Quality (val loss)")):
        measured, of, reason = coverage(df, metric)
        if measured == 0:
            table.notes.append(f"{name}: not measured on this run — {reason}.")
    return table


def unstable_reasons(row: pd.Series) -> str:
    """Why the MoE row or its baseline trained unstably ('' when neither did)."""
    parts = [f"{side}: {text(row.get(prefix + 'unstable_reason'), 'unstable')}"
             for side, prefix in (("MoE", ""), ("baseline", "dense_")) if _flag(row.get(prefix + "unstable"))]
    return "; ".join(parts)


def verdicts(pairs: pd.DataFrame) -> list[dict[str, Any]]:
    """Per workload: how many MoE configurations the verdict calls faster, slower, same or unreliable,
    and the best and worst among the pairs that have a reliable verdict."""
    out = []
    for workload, group in pairs.groupby("workload", sort=False):
        measured = group[group["verdict"].notna()]
        counts = measured["verdict"].value_counts()
        entry = {
            "workload": str(workload), "total": len(group), "measured": len(measured),
            **{name: int(counts.get(name, 0)) for name in (FASTER, SLOWER, SAME, UNRELIABLE)},
            "best": None, "worst": None,
        }
        reliable = _reliable(measured)
        if len(reliable):
            extras = varying(group)
            for key, idx in (("best", reliable["throughput_ratio"].idxmax()), ("worst", reliable["throughput_ratio"].idxmin())):
                row = reliable.loc[idx]
                entry[key] = {"label": config_label(row, extras),
                              "ratio": verdict_cell(row["throughput_ratio"], row["throughput_ratio_ci_low"],
                                                    row["throughput_ratio_ci_high"], row["verdict"], "").text,
                              "verdict": str(row["verdict"])}
        out.append(entry)
    return out


def _reliable(pairs: pd.DataFrame) -> pd.DataFrame:
    """Pairs whose verdict is not unreliable: only those may be called best or worst."""
    if "verdict" not in pairs.columns:
        return pairs.iloc[0:0]
    keep = pairs["verdict"].isin([FASTER, SLOWER, SAME]).fillna(False).astype(bool)
    return pairs[keep & pd.to_numeric(pairs["throughput_ratio"], errors="coerce").notna()]


def failures(df: pd.DataFrame) -> Table:
    table = Table(["Case", "Kind", "Configuration", "Workload", "Status", "Reason"])
    extras = varying(df)
    for _, row in df[df["status"] != "ok"].iterrows():
        table.rows.append([
            Cell(text(row["case_id"])), Cell(text(row["kind"])),
            Cell(configuration(row, extras)),
            Cell(text(row["workload"])), Cell(text(row["status"]), cls="failed"),
            Cell(text(row.get("error"), "no reason recorded")),
        ])
        table.row_classes.append("")
    return table


RESULT_COLUMNS = [
    ("tokens_per_s", "tok/s", 1.0), ("latency_ms_median", "latency ms", 1.0), ("latency_ms_ci_low", "CI low", 1.0),
    ("latency_ms_ci_high", "CI high", 1.0), ("peak_memory_net_bytes", "peak MiB (net)", MIB),
    ("memory_estimate_bytes", "estimate MiB", MIB), ("peak_memory_bytes", "raw peak MiB", MIB),
    ("energy_j_per_token", "mJ/token", 1e-3), ("dropped_fraction", "dropped", 1.0), ("load_cv", "load CV", 1.0),
    ("flops_per_token", "MFLOP/token", 1e6), ("params_total", "params M", 1e6),
]


def all_results(df: pd.DataFrame) -> Table:
    """Every row of the run with its main measurements; columns never measured on this run are left out."""
    shown = [(c, h, s) for c, h, s in RESULT_COLUMNS if c in df.columns and df[c].notna().any()]
    table = Table(["Case", "Kind", "Configuration", "Workload", "Status"] + [h for _, h, _ in shown]
                  + ["Processes", "Noisy", "Contended"])
    extras = varying(df)
    for _, row in df.iterrows():
        label = config_label(row, extras) if text(row["kind"]) == "moe" else dense_label(row, rule=True)
        noisy = row.get("noisy")
        status = text(row["status"])
        unstable = status == "ok" and _flag(row.get("unstable"))
        table.rows.append(
            [Cell(text(row["case_id"])), Cell(text(row["kind"])), Cell(label), Cell(text(row["workload"])),
             Cell("ok, unstable" if unstable else status, cls="" if status == "ok" else "failed",
                  title=text(row.get("unstable_reason")) if unstable else "")]
            + [fmt(row.get(c), scale=s) for c, _, s in shown]
            + [Cell(text(row.get("processes"), "—")), Cell("—" if pd.isna(noisy) else ("yes" if noisy else "no")),
               _contended_cell(row)]
        )
        table.row_classes.append("")
    return table


def _contended_cell(row: pd.Series) -> Cell:
    value = row.get("contended")
    if value is None or pd.isna(value):
        return Cell("—", None, "missing", "not recorded by this run")
    if not value:
        return Cell("no")
    return Cell("yes", 1, "unreliable", text(row.get("contention_reason")))


LAYER_COLUMNS = [
    ("dropped_fraction", "Dropped"), ("load_cv", "Load CV"), ("max_mean_load", "Max/mean load"),
    ("experts_unused", "Unused experts"), ("router_entropy", "Router entropy"),
    ("realized_capacity_factor", "Realised capacity"), ("aux_loss", "Aux loss"),
]


def routing_layers(layers: pd.DataFrame | None, df: pd.DataFrame) -> Table:
    """Routing statistics of every MoE layer, where the per-case averages can hide one bad layer."""
    shown = [(c, h) for c, h in LAYER_COLUMNS if layers is not None and c in layers.columns]
    table = Table(["Configuration", "Workload", "Layer"] + [h for _, h in shown] + ["Tokens per expert"])
    if layers is None or layers.empty:
        return table
    rows = df.set_index(["case_id", "workload"])
    extras = varying(df)
    for _, layer in layers.sort_values(["case_id", "workload", "layer"]).iterrows():
        key = (layer["case_id"], layer["workload"])
        label = config_label(rows.loc[key], extras) if key in rows.index else text(layer["case_id"])
        table.rows.append(
            [Cell(label), Cell(text(layer["workload"])), fmt(layer["layer"])]
            + [fmt(layer.get(c)) for c, _ in shown]
            + [Cell(text(layer.get("tokens_per_expert")))]
        )
        table.row_classes.append("")
    return table


QUALITY_CLASS = {"better": "better", "worse": "worse", "faster": "better", "slower": "worse", "unreliable": "unreliable"}


def _judged(value: Optional[float], lo: Optional[float], hi: Optional[float], form: str, verdict: Any,
            reason: Any) -> Cell:
    """A value with its interval over seeds, coloured by its verdict (never by the interval alone)."""
    if value is None:
        return Cell("—", None, "missing", text(reason) or "not measured")
    shown = format(value, form) + ("×" if form == ".2f" else "")
    if lo is not None and hi is not None:
        shown += f" [{lo:{form}}, {hi:{form}}]"
    label = text(verdict)
    return Cell(shown, value, QUALITY_CLASS.get(label, ""), f"{label}: {text(reason)}" if label else text(reason))


def quality_table(table: pd.DataFrame) -> Table:
    """The report's quality table from `harness.quality.replicates`: one row per MoE configuration, with
    Δval_loss and the time-to-target speedup over its seeds, coloured by their verdicts."""
    out = Table(["Configuration", "Seeds", "MoE val_loss", "Dense val_loss", "Δval_loss [95% CI]", "Quality",
                 "Time to target [95% CI]", "Time", "Step speedup", "Energy speedup"])
    extras = varying(table) if len(table) else ()
    for _, row in table.iterrows():
        quality, time = text(row["quality_verdict"]), text(row["time_verdict"])
        out.rows.append([
            Cell(config_label(row, extras)),
            Cell(str(int(row["seeds"])), int(row["seeds"]), "", f"seeds {text(row.get('seed_list'))}"),
            fmt(row["val_loss_mean"]), fmt(row["dense_val_loss_mean"]),
            _judged(as_number(row["delta_val_loss"]), as_number(row["delta_val_loss_ci_low"]), as_number(row["delta_val_loss_ci_high"]),
                    "+.3f", quality, row["quality_verdict_reason"]),
            Cell(quality, quality, QUALITY_CLASS.get(quality, ""), text(row["quality_verdict_reason"])),
            _judged(as_number(row["time_speedup"]), as_number(row["time_speedup_ci_low"]), as_number(row["time_speedup_ci_high"]),
                    ".2f", time, row["time_verdict_reason"]),
            Cell(time, time, QUALITY_CLASS.get(time, ""), text(row["time_verdict_reason"])),
            _judged(as_number(row.get("step_speedup")), None, None, ".2f", None, "no held-out curve"),
            _judged(as_number(row.get("energy_speedup")), None, None, ".2f", None, "energy not measured"),
        ])
        out.row_classes.append("")
    return out


def quality_card(table: pd.DataFrame) -> dict[str, Any]:
    """The quality summary card: verdict counts over configurations, and the best and worst on quality
    among the configurations whose verdict is reliable (better, worse or same)."""
    if table.empty:
        return {}
    extras = varying(table)
    verdicts = table["quality_verdict"].astype(str)
    card: dict[str, Any] = {name: int((verdicts == name).sum()) for name in ("better", "worse", "same", "unreliable")}
    card.update(total=len(table), seeds=", ".join(str(n) for n in sorted({int(n) for n in table["seeds"]})),
                best=None, worst=None)
    reliable = table[verdicts.isin(["better", "worse", "same"])]
    delta = pd.to_numeric(reliable["delta_val_loss"], errors="coerce")
    picks = [("best", delta.idxmin())] if delta.notna().any() else []
    if delta.notna().sum() >= 2:
        picks.append(("worst", delta.idxmax()))
    for key, idx in picks:
        row = table.loc[idx]
        speed = as_number(row["time_speedup"])
        card[key] = {"label": config_label(row, extras), "delta": f"{float(row['delta_val_loss']):+.3f}",
                     "verdict": text(row["quality_verdict"]),
                     "time": "—" if speed is None else f"{speed:.2f}× ({text(row['time_verdict'])})"}
    return card


DIRECTION_CLASS = {"supported": "better", "contradicted": "worse", "cannot tell": "unreliable"}


def directions_table(found: pd.DataFrame) -> Table:
    """The papers' directions a quality run could check (`harness.quality.directions`): each contrast,
    its paired difference over seeds with the interval, and whether the interval supports the claim."""
    out = Table(["Direction", "Claim", "Contrast", "Metric", "Seeds", "Mean (first)", "Mean (second)",
                 "Difference [95% CI]", "Verdict"])
    for _, row in found.iterrows():
        verdict = text(row["verdict"])
        out.rows.append([
            Cell(text(row["direction"])), Cell(text(row["claim"])), Cell(text(row["contrast"])),
            Cell(text(row["metric"])), Cell(str(int(row["seeds"])), int(row["seeds"])),
            fmt(row["a_mean"]), fmt(row["b_mean"]),
            _judged(as_number(row["difference"]), as_number(row["ci_low"]), as_number(row["ci_high"]), "+.3f", verdict, row["reason"]),
            Cell(verdict, verdict, DIRECTION_CLASS.get(verdict, ""), text(row["reason"])),
        ])
        out.row_classes.append("")
    return out
