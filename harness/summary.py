"""The short table `run` prints at the end: each MoE case relative to its matched dense baseline."""
from __future__ import annotations

import math

import pandas as pd


def ratios(frame: pd.DataFrame) -> pd.DataFrame:
    """One line per (MoE case, workload) with throughput and memory over its matched baseline (flop-matched when the suite has one)."""
    if frame.empty or "matched_to" not in frame:
        return pd.DataFrame()
    ok = frame[frame["status"] == "ok"]
    dense = ok[ok["kind"] == "dense"].set_index(["case_id", "workload"])
    lines = []
    for _, row in frame[frame["kind"] == "moe"].iterrows():
        key = (row["matched_to"], row["workload"])
        base = dense.loc[key] if key in dense.index else None
        def ratio(col: str) -> float:
            if base is None or row["status"] != "ok" or col not in row or pd.isna(row[col]) or pd.isna(base[col]):
                return math.nan
            return float(row[col]) / float(base[col])
        lines.append({
            "case_id": row["case_id"], "workload": row["workload"],
            "baseline": base["baseline"] if base is not None else None,
            "experts": row.get("num_experts"), "top_k": row.get("top_k"),
            "capacity": "dropless" if row.get("dropless") else row.get("capacity_factor"),
            "status": row["status"], "throughput_x": ratio("tokens_per_s"), "memory_x": ratio("peak_memory_bytes"),
            "dropped": row.get("dropped_fraction", math.nan),
        })
    if not lines:
        return pd.DataFrame()
    return pd.DataFrame(lines).astype({"experts": "Int64", "top_k": "Int64"})


def print_summary(frame: pd.DataFrame) -> None:
    table = ratios(frame)
    if table.empty:
        return
    print("\nMoE vs its matched dense baseline (x = MoE / dense; throughput > 1 means MoE is faster):")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-"))
