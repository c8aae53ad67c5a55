"""Compare run B against run A: the same cases (by case id and workload) measured twice.

Case ids hash the resolved config, so the same suite on two machines or commits lines up row by
row. Changes are B / A; the throughput change gets the same latency-CI box interval as `paired`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns

from harness.analysis import latency_columns, paired, safe_ratio, throughput_ratio_bounds
from harness.contracts import RunInfo
from harness.environment import comparable
from harness.labels import config_label, configuration
from harness.report.plots import Plot, new_figure
from harness.report.tables import Cell, Table, fmt, ratio_cell, text, varying, verdict_cell
from harness.results import COLUMNS
from harness.verdict import decide, disturbances, fewest_processes

KEYS = ["case_id", "workload"]


def matched(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Rows present in both runs (columns suffixed _a/_b) with B/A change columns."""
    both = a.merge(b, on=KEYS, suffixes=("_a", "_b"))
    ok = ((both["status_a"] == "ok") & (both["status_b"] == "ok")).fillna(False).astype(bool)
    for metric, name in (("tokens_per_s", "throughput"), ("peak_memory_net_bytes", "memory"),
                         ("energy_j_per_token", "energy_per_token")):
        both[f"{name}_change"] = safe_ratio(pd.to_numeric(both[f"{metric}_b"], errors="coerce").astype(float),
                                        pd.to_numeric(both[f"{metric}_a"], errors="coerce").astype(float)).where(ok)
    renamed_b = both.rename(columns=lambda c: c[:-2] if c.endswith("_b") else c)
    renamed_a = both.rename(columns=lambda c: c[:-2] if c.endswith("_a") else c)
    lo, hi = throughput_ratio_bounds(both["throughput_change"], latency_columns(renamed_b), latency_columns(renamed_a))
    both["throughput_change_ci_low"], both["throughput_change_ci_high"] = lo, hi
    judged = [decide(r["throughput_change"], r["throughput_change_ci_low"], r["throughput_change_ci_high"],
                     disturbed=disturbances(r, "run A", suffix="_a") + disturbances(r, "run B", suffix="_b"),
                     processes=fewest_processes(r.get("processes_a"), r.get("processes_b")))
              if ok_ else None for ok_, (_, r) in zip(ok, both.iterrows())]
    both["throughput_verdict"] = pd.array([v.verdict if v else pd.NA for v in judged], dtype="string")
    both["throughput_verdict_reason"] = pd.array([v.reason if v else pd.NA for v in judged], dtype="string")
    return both


def _fingerprint_table(info_a: RunInfo, info_b: RunInfo) -> Table:
    fa, fb = info_a.fingerprint, info_b.fingerprint
    table = Table(["Field", "Run A", "Run B"])
    for key in list(dict.fromkeys([*fa, *fb])):
        va, vb = str(fa.get(key, "—")), str(fb.get(key, "—"))
        table.rows.append([Cell(str(key)), Cell(va), Cell(vb, cls="" if va == vb else "worse", title="differs" if va != vb else "")])
        table.row_classes.append("")
    return table


def _change_table(both: pd.DataFrame) -> Table:
    table = Table(["Case", "Kind", "Configuration", "Workload", "A tok/s", "B tok/s", "Throughput B/A [CI]",
                   "Memory B/A", "Energy/token B/A", "Status A", "Status B"])
    extras = varying(both.rename(columns=lambda c: c[:-2] if c.endswith("_a") else c))
    changes = both["throughput_change"]
    best = changes.idxmax() if changes.notna().sum() >= 2 else None
    worst = changes.idxmin() if changes.notna().sum() >= 2 else None
    for idx, row in both.sort_values("throughput_change", na_position="last").iterrows():
        view = pd.Series({c[:-2]: v for c, v in row.items() if c.endswith("_a")})
        label = configuration(view, extras)
        table.rows.append([
            Cell(text(row["case_id"])), Cell(text(row["kind_a"])), Cell(label), Cell(text(row["workload"])),
            fmt(row["tokens_per_s_a"]), fmt(row["tokens_per_s_b"]),
            verdict_cell(row["throughput_change"], row["throughput_change_ci_low"], row["throughput_change_ci_high"],
                         row["throughput_verdict"], row["throughput_verdict_reason"]),
            ratio_cell(row["memory_change"], higher_is_better=COLUMNS["peak_memory_bytes"].higher_is_better),
            ratio_cell(row["energy_per_token_change"], higher_is_better=COLUMNS["energy_j_per_token"].higher_is_better),
            Cell(text(row["status_a"]), cls="" if text(row["status_a"]) == "ok" else "failed"),
            Cell(text(row["status_b"]), cls="" if text(row["status_b"]) == "ok" else "failed"),
        ])
        table.row_classes.append("best" if idx == best else "worst" if idx == worst else "")
    table.notes.append("B/A above 1 means run B has more throughput (or more memory/energy) than run A. "
                       "CI: box of the two runs' 95% latency intervals; colour: the verdict (grey: unreliable, "
                       "e.g. a contended measurement in either run).")
    return table


def _ratio_shift(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    cols = KEYS + ["num_experts", "top_k", "capacity_factor", "kind", "throughput_ratio", "throughput_ratio_ci_low",
                   "throughput_ratio_ci_high"]
    cols += ["verdict", "verdict_reason"]
    pa = paired(a)
    pb = paired(b)[KEYS + ["throughput_ratio", "throughput_ratio_ci_low", "throughput_ratio_ci_high", "verdict",
                           "verdict_reason"]]
    return pa[[c for c in cols if c in pa.columns]].merge(pb, on=KEYS, suffixes=("_a", "_b"))


def _ratio_table(shift: pd.DataFrame, a: pd.DataFrame) -> Table:
    table = Table(["Configuration", "Workload", "MoE/dense in A", "MoE/dense in B"])
    extras = varying(a)
    for _, row in shift.iterrows():
        table.rows.append([
            Cell(config_label(row, extras)), Cell(text(row["workload"])),
            *(verdict_cell(row[f"throughput_ratio_{s}"], row[f"throughput_ratio_ci_low_{s}"],
                           row[f"throughput_ratio_ci_high_{s}"], row[f"verdict_{s}"], row[f"verdict_reason_{s}"])
              for s in ("a", "b")),
        ])
        table.row_classes.append("")
    return table


def _only_in(x: pd.DataFrame, y: pd.DataFrame) -> list[str]:
    keys = set(map(tuple, y[KEYS].astype(str).to_numpy()))
    return [f"{c} ({w})" for c, w in x[KEYS].astype(str).to_numpy() if (c, w) not in keys]


def context(a: pd.DataFrame, b: pd.DataFrame, info_a: RunInfo, info_b: RunInfo, run_a: Path, run_b: Path) -> dict[str, Any]:
    both = matched(a, b)
    shift = _ratio_shift(a, b)
    name = lambda info, run: info.suite_name or run.name  # noqa: E731
    return {
        "name_a": name(info_a, run_a), "name_b": name(info_b, run_b), "dir_a": str(run_a), "dir_b": str(run_b),
        "started_a": str(info_a.started or "?"), "started_b": str(info_b.started or "?"),
        "n_matched": len(both), "n_both_ok": int(both["throughput_change"].notna().sum()),
        "changes": _change_table(both), "ratios": _ratio_table(shift, a),
        "fingerprints": _fingerprint_table(info_a, info_b),
        "env_differs": comparable(info_a.fingerprint, info_b.fingerprint),
        "only_a": _only_in(a, b), "only_b": _only_in(b, a),
    }


def plots(a: pd.DataFrame, b: pd.DataFrame) -> list[Plot]:
    both = matched(a, b)
    data = both[both["throughput_change"].notna()].assign(
        A=lambda d: d["tokens_per_s_a"].astype(float), B=lambda d: d["tokens_per_s_b"].astype(float),
        model=lambda d: d["kind_a"].astype(str))
    title = "Throughput, run B vs run A"
    caption = "Tokens per second of each case measured in both runs; points above the diagonal are faster in B."
    if data.empty:
        return [Plot("throughput_b_vs_a", title, caption, missing="no case finished successfully in both runs")]
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
        fig, axes = new_figure(1, 1)
        ax = axes[0][0]
        sns.scatterplot(data, x="A", y="B", hue="model", style="workload", s=50, ax=ax)
        lo, hi = float(np.nanmin(data[["A", "B"]].to_numpy())), float(np.nanmax(data[["A", "B"]].to_numpy()))
        ax.plot([lo, hi], [lo, hi], color="0.5", linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("run A tokens / s")
        ax.set_ylabel("run B tokens / s")
    return [Plot("throughput_b_vs_a", title, caption, figure=fig)]
