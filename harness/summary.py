"""The short table `run` prints at the end: each MoE case relative to its matched dense baseline."""
from __future__ import annotations

import pandas as pd

from harness.analysis import paired


def ratios(df: pd.DataFrame) -> pd.DataFrame:
    """One line per (MoE case, workload) with throughput and memory over its matched baseline
    (flop-matched when the suite derived one, else param-matched). `df` as `harness.load` returns it."""
    if df.empty or not (df["kind"] == "moe").any():
        return pd.DataFrame()
    rule = "flop_matched" if (df["baseline"] == "flop_matched").fillna(False).any() else "param_matched"
    pairs = paired(df, rule)
    capacity = pairs["capacity_factor"].astype(object).where(~pairs["dropless"].fillna(False).astype(bool), "dropless")
    return pd.DataFrame({
        "case_id": pairs["case_id"], "workload": pairs["workload"], "baseline": pairs["dense_baseline"],
        "experts": pairs["num_experts"], "top_k": pairs["top_k"], "capacity": capacity, "impl": pairs["impl"],
        "status": pairs["status"],
        "throughput_x": pairs["throughput_ratio"], "memory_x": pairs["memory_ratio"],
        "dropped": pairs["dropped_fraction"],
    })


def print_summary(df: pd.DataFrame) -> None:
    table = ratios(df)
    if table.empty:
        return
    print("\nMoE vs its matched dense baseline (x = MoE / dense; throughput > 1 means MoE is faster):")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-"))
