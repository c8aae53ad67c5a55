"""The short table `run` prints at the end: each MoE case relative to its matched dense baseline."""
from __future__ import annotations

import pandas as pd

from harness.analysis import main_rule, paired, trust_notes
from harness.contracts import RunInfo


def ratios(df: pd.DataFrame) -> pd.DataFrame:
    """One line per (MoE case, workload) with throughput and memory over its matched baseline
    (flop-matched when the suite derived one, else param-matched) and the verdict. `df` as `harness.load` returns it."""
    pairs = _pairs(df)
    if pairs.empty:
        return pd.DataFrame()
    capacity = pairs["capacity_factor"].astype(object).where(~pairs["dropless"].fillna(False).astype(bool), "dropless")
    return pd.DataFrame({
        "case_id": pairs["case_id"], "workload": pairs["workload"], "baseline": pairs["dense_baseline"],
        "experts": pairs["num_experts"], "top_k": pairs["top_k"], "capacity": capacity, "impl": pairs["impl"],
        "status": pairs["status"],
        "throughput_x": pairs["throughput_ratio"], "ci_low": pairs["throughput_ratio_ci_low"],
        "ci_high": pairs["throughput_ratio_ci_high"], "verdict": pairs["verdict"], "memory_x": pairs["memory_ratio"],
        "dropped": pairs["dropped_fraction"],
    })


def _pairs(df: pd.DataFrame) -> pd.DataFrame:
    if df.empty or not (df["kind"] == "moe").any():
        return pd.DataFrame()
    return paired(df, main_rule(df))


def print_summary(df: pd.DataFrame, info: RunInfo | None = None) -> None:
    pairs = _pairs(df)
    table = ratios(df)
    if not table.empty:
        against = "an identical copy (A/A)" if main_rule(df) == "aa_copy" else "its matched dense baseline"
        print(f"\nMoE vs {against} (x = MoE / baseline; throughput > 1 means MoE is faster):")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-"))
    if main_rule(df) == "aa_copy":
        from harness import aa

        print("\n" + aa.summarize(pairs).sentence())
    for note in trust_notes(pairs, df, info):
        print("\n" + note)
