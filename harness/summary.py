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


def quality_table(df: pd.DataFrame, steps: pd.DataFrame | None) -> pd.DataFrame:
    """One line per MoE configuration trained by the quality workload: val_loss on both sides (mean over
    seeds), Δval_loss and the time-to-target speedup with their intervals over seeds and verdicts."""
    from harness.labels import config_label
    from harness.quality import replicates, to_target

    if df.empty or not ((df["workload"] == "quality") & (df["kind"] == "moe")).any():
        return pd.DataFrame()
    rule = "flop_matched" if (df["baseline"] == "flop_matched").fillna(False).any() else "param_matched"
    table = replicates(to_target(paired(df, rule), steps))
    if table.empty:
        return table

    def interval(lo: float, hi: float, form: str) -> str:
        return "-" if pd.isna(lo) or pd.isna(hi) else f"[{lo:{form}}, {hi:{form}}]"

    return pd.DataFrame({
        "configuration": [config_label(row) for _, row in table.iterrows()],
        "seeds": table["seeds"],
        "val_loss": table["val_loss_mean"], "dense_val_loss": table["dense_val_loss_mean"],
        "delta": table["delta_val_loss"],
        "delta_ci": [interval(lo, hi, "+.3f") for lo, hi in zip(table["delta_val_loss_ci_low"], table["delta_val_loss_ci_high"])],
        "quality": table["quality_verdict"],
        "time_x": table["time_speedup"],
        "time_ci": [interval(lo, hi, ".2f") for lo, hi in zip(table["time_speedup_ci_low"], table["time_speedup_ci_high"])],
        "time": table["time_verdict"],
        "step_x": table["step_speedup"], "energy_x": table["energy_speedup"],
    })


def print_quality(df: pd.DataFrame, steps: pd.DataFrame | None) -> None:
    from harness.quality import directions

    table = quality_table(df, steps)
    if table.empty:
        return
    print("\nQuality: each MoE configuration against its baseline trained on the same seed (val_loss in nats/byte; "
          "delta = MoE - dense, below 0 favours MoE; time_x, step_x, energy_x: how many times sooner the MoE reached "
          "the loss both reached, above 1 favours MoE; intervals are 95% over seeds):")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-"))
    found = directions(df, steps)
    if len(found):
        print("\nThe papers' directions (first minus second, paired by seed, 95% interval over seeds):")
        for _, row in found.iterrows():
            interval = "" if pd.isna(row["ci_low"]) else f" [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]"
            print(f"  {row['direction']} {row['claim']}: {row['contrast']}, {row['metric']} {row['difference']:+.3f}"
                  f"{interval} over {int(row['seeds'])} seeds: {row['verdict']}")
