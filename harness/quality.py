"""Quality per unit of time and energy: how much sooner an MoE reaches the loss its dense baseline
reaches, and what several seeds say about it.

An MoE is usually slower per step than its FLOP-matched dense model and reaches a given loss in fewer
steps; the answer a user needs is the product (Switch Transformer's "7x pre-training speedup" is a
time-to-quality ratio). Built on the held-out learning curve of the quality workload (`steps.csv`,
`val_loss` every `run.eval_every` steps) and the measured median step time and energy per token.

Pure functions over pandas frames: `steps_to_target` (one curve), `to_target` (the speedup columns
of each MoE/dense pair), `replicates` (one row per configuration over its seeds, with paired
intervals and the verdict from `harness.verdict`). Never imports torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from harness.metrics.statistics import paired_mean_ci, paired_ratio_ci
from harness.verdict import UNRELIABLE, UNSTABLE, Disturbance, Verdict, decide, disturbances

QUALITY_MARGIN = 0.01
"""Δval_loss (nats per byte) inside ±this is called 'same': the spread a thread count alone moves a run by."""
SPEEDUP_MARGIN = 0.05
"""Time-to-target speedups inside [1/1.05, 1.05] are called 'same'."""
BETTER, WORSE = "better", "worse"

TO_TARGET_COLUMNS = {
    "target_val_loss": "the higher of the pair's two final val_loss values: the loss both the MoE and its baseline reached",
    "steps_to_target": "training steps after which the MoE's held-out loss first reached target_val_loss, interpolated "
                       "linearly between evaluations (run.eval_every)",
    "time_to_target_s": "steps_to_target x the MoE's median step time: training seconds to the target",
    "flops_to_target": "steps_to_target x training FLOPs per step (analytic)",
    "energy_to_target_j": "steps_to_target x measured energy per step (energy_j_per_token x tokens per step); empty "
                          "where energy was not measured",
    "dense_steps_to_target": "the same for the dense baseline", "dense_time_to_target_s": "the same for the dense baseline",
    "dense_flops_to_target": "the same for the dense baseline", "dense_energy_to_target_j": "the same for the dense baseline",
    "step_speedup": "dense_steps_to_target / steps_to_target: above 1 the MoE reached the loss in fewer steps",
    "time_speedup": "dense_time_to_target_s / time_to_target_s: above 1 the MoE reached the loss sooner in wall time",
    "flop_speedup": "dense_flops_to_target / flops_to_target",
    "energy_speedup": "dense_energy_to_target_j / energy_to_target_j",
    "to_target_note": "why the speedups are empty, when they are",
    "delta_val_loss": "val_loss - dense_val_loss (nats per byte): below 0 the MoE ended better",
}
"""Columns `to_target` adds to a quality pair (docs/quality.md)."""


@dataclass(frozen=True)
class Reach:
    """When a curve first reached a loss: `steps` (fractional, interpolated), or None and `why` not."""

    steps: Optional[float]
    why: str = ""


def steps_to_target(steps: Sequence[float], losses: Sequence[float], target: float) -> Reach:
    """The training steps after which a held-out curve first reached `target` (loss <= target).

    `steps[i]` is how many updates the model had when it scored `losses[i]`. The crossing is
    interpolated linearly between the last evaluation above the target and the first at or below it.
    When the very first evaluation is already at or below the target, the curve cannot say when it
    got there (somewhere before it): None, never a guess. None too when no evaluation reaches it.
    """
    points = [(float(s), float(v)) for s, v in zip(steps, losses) if math.isfinite(float(v))]
    points.sort()
    if not points or not math.isfinite(target):
        return Reach(None, "no held-out curve")
    for i, (s, v) in enumerate(points):
        if v <= target:
            if i == 0:
                return Reach(None, f"reached at or before the first evaluation (step {s:g}); set run.eval_every lower")
            s0, v0 = points[i - 1]
            return Reach(s0 + (v0 - target) / (v0 - v) * (s - s0))
    return Reach(None, f"not reached (lowest {min(v for _, v in points):.4f} > {target:.4f})")


def curves(steps: Optional[pd.DataFrame]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """case_id -> (training steps done, held-out loss) of every quality case's learning curve in
    `steps.csv` (a row's `step` is 0-based, so the model had step + 1 updates when it was scored)."""
    if steps is None or "val_loss" not in steps.columns:
        return {}
    data = steps[(steps["workload"] == "quality") & pd.to_numeric(steps["val_loss"], errors="coerce").notna()]
    return {str(case): (group["step"].to_numpy(float) + 1, pd.to_numeric(group["val_loss"]).to_numpy(float))
            for case, group in data.sort_values("step").groupby("case_id")}


def _num(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return number


def _per_step(row: pd.Series, prefix: str) -> dict[str, float]:
    """Seconds, training FLOPs and joules of one training step of one side of a pair."""
    tokens = _num(row.get("tokens_per_step"))
    if not tokens > 0:
        tokens = _num(row.get("quality_tokens")) / _num(row.get("quality_steps"))
    return {
        "time": _num(row.get(f"{prefix}latency_ms_median")) / 1000,
        "flops": _num(row.get(f"{prefix}train_flops_per_token")) * tokens,
        "energy": _num(row.get(f"{prefix}energy_j_per_token")) * tokens,
    }


def pair_to_target(row: pd.Series, curve: Optional[tuple], dense_curve: Optional[tuple]) -> dict[str, Any]:
    """The `TO_TARGET_COLUMNS` of one MoE/dense quality pair (a `paired` row) from both curves."""
    moe_final, dense_final = _num(row.get("val_loss")), _num(row.get("dense_val_loss"))
    out: dict[str, Any] = {name: float("nan") for name in TO_TARGET_COLUMNS}
    out["to_target_note"] = pd.NA
    if not (math.isfinite(moe_final) and math.isfinite(dense_final)):
        out["to_target_note"] = "val_loss not measured on both sides"
        return out
    target = max(moe_final, dense_final)
    out["target_val_loss"], out["delta_val_loss"] = target, moe_final - dense_final
    reaches = {}
    for side, found, prefix in (("", curve, ""), ("dense_", dense_curve, "dense_")):
        reach = steps_to_target(*found, target) if found is not None else Reach(None, "no held-out curve")
        reaches[side] = reach
        if reach.steps is None:
            continue
        out[f"{side}steps_to_target"] = reach.steps
        cost = _per_step(row, prefix)
        out[f"{side}time_to_target_s"] = reach.steps * cost["time"]
        out[f"{side}flops_to_target"] = reach.steps * cost["flops"]
        out[f"{side}energy_to_target_j"] = reach.steps * cost["energy"]
    for name, column in (("step", "steps_to_target"), ("time", "time_to_target_s"), ("flop", "flops_to_target"),
                         ("energy", "energy_to_target_j")):
        num, den = out[f"dense_{column}"], out[column]
        out[f"{name}_speedup"] = num / den if num > 0 and den > 0 else float("nan")
    missing = [f"{'MoE' if side == '' else 'baseline'}: {r.why}" for side, r in reaches.items() if r.steps is None]
    if missing:
        out["to_target_note"] = "; ".join(missing)
    return out


def to_target(pairs: pd.DataFrame, steps: Optional[pd.DataFrame]) -> pd.DataFrame:
    """The quality pairs of `paired` (workload 'quality', both sides ok), with `TO_TARGET_COLUMNS`.

    The target is the loss both sides reached: the dense baseline's final val_loss when the MoE
    ended lower (the MoE gets there before its budget, the speedup is above 1), the MoE's when the
    baseline won (the baseline gets there first, below 1).
    """
    quality = pairs[(pairs["workload"] == "quality") & (pairs["status"] == "ok") & (pairs["dense_status"] == "ok")]
    quality = quality.copy().reset_index(drop=True)
    found = curves(steps)
    values = [pair_to_target(row, found.get(str(row["case_id"])), found.get(str(row["dense_case_id"])))
              for _, row in quality.iterrows()]
    for name in TO_TARGET_COLUMNS:
        column = [v[name] for v in values]
        if name == "to_target_note":
            quality[name] = pd.array(column, dtype="string")
        else:
            quality[name] = pd.Series(column, index=quality.index, dtype="float64")
    return quality


REPLICATE_COLUMNS = {
    "config_id": "the configuration: the MoE case id with its seed left out",
    "seeds": "how many seeds have a measured pair", "seed_list": "which seeds",
    "val_loss_mean": "MoE val_loss, mean over seeds", "dense_val_loss_mean": "its baseline's, mean over seeds",
    "delta_val_loss": "mean over seeds of MoE - dense val_loss (same seed); below 0 favours MoE",
    "delta_val_loss_ci_low": "95% paired t interval over seeds, low", "delta_val_loss_ci_high": "and high",
    "quality_verdict": "better, worse, same or unreliable (harness.verdict on the Δval_loss interval)",
    "quality_verdict_reason": "why",
    "time_speedup": "geometric mean over seeds of time_speedup", "time_speedup_ci_low": "95% paired interval, low",
    "time_speedup_ci_high": "and high", "time_verdict": "faster, slower, same or unreliable (time speedup interval)",
    "time_verdict_reason": "why",
    "step_speedup": "geometric mean over seeds of step_speedup", "step_speedup_ci_low": "95%, low",
    "step_speedup_ci_high": "and high",
    "energy_speedup": "geometric mean over seeds of energy_speedup", "energy_speedup_ci_low": "95%, low",
    "energy_speedup_ci_high": "and high",
}
"""Columns of `replicates`: one row per MoE configuration, over its seeds (docs/quality.md)."""


def group_key(pairs: pd.DataFrame) -> pd.Series:
    """The configuration each pair replicates: `config_id` (the case id without the seed) where the
    run recorded it, else the case id itself (a run from before seeds: every case its own group)."""
    key = pairs["config_id"] if "config_id" in pairs.columns else pd.Series(pd.NA, index=pairs.index)
    return key.astype("string").fillna(pairs["case_id"].astype("string"))


LOAD_FREE_METRICS = frozenset({"val_loss", "delta_val_loss", "final_load_cv", "step_speedup", "flop_speedup"})
"""Quantities a deterministic run gives the same under any machine load: held-out loss, routing, and
steps (or FLOPs) to a loss. Everything else (step time, time and energy to target) depends on load."""


def withholding(row: Any, side: str, metric: str, prefix: str = "") -> list[Disturbance]:
    """The flags of one row that withhold a verdict on `metric`: the one rule for quality runs.

    An unstable run always does: its loss is that run's accident, not the configuration's. A contended
    one only when `metric` depends on load: a quality run is deterministic (same seed, threads and
    device give the same val_loss to the last bit, busy or idle), so contention changes its times and
    nothing in `LOAD_FREE_METRICS`."""
    found = disturbances(row, side, prefix=prefix)
    return found if metric not in LOAD_FREE_METRICS else [d for d in found if d.kind == UNSTABLE]


def _withheld(group: pd.DataFrame, metric: str) -> list[Disturbance]:
    """`withholding` for every MoE row of a configuration and its baselines, seed by seed."""
    found = []
    for _, row in group.iterrows():
        seed = f" seed {int(row['seed'])}" if pd.notna(row.get("seed")) else ""
        found += withholding(row, f"MoE{seed}", metric) + withholding(row, f"baseline{seed}", metric, prefix="dense_")
    return found


def replicates(quality: pd.DataFrame) -> pd.DataFrame:
    """One row per MoE configuration of `to_target`'s pairs, over its seeds (`REPLICATE_COLUMNS`),
    plus the configuration's own columns (from its first seed).

    Each seed's MoE is compared with the baseline trained on the same seed (same data order, same
    initial-weight draw for the shared shapes); the interval is over those per-seed differences
    (`paired_mean_ci`; ratios on log scale). The verdicts come from `harness.verdict.decide`, withheld
    (unreliable) by the rows `withholding` names: any unstable row of any seed withholds both; a
    contended one withholds the time speedup only (val_loss does not depend on load). One seed has
    no interval, so its verdict is 'unreliable': a direction needs seeds.
    """
    if quality.empty:
        return pd.DataFrame(columns=list(REPLICATE_COLUMNS))
    out = []
    keys = group_key(quality)
    for key, group in quality.groupby(keys, sort=False):
        group = group.sort_values("seed") if "seed" in group.columns else group
        first = group.iloc[0].to_dict()
        delta, lo, hi = paired_mean_ci(group["delta_val_loss"])
        verdict = decide(delta, lo, hi, scale="difference", higher_is_better=False, margin=QUALITY_MARGIN,
                         disturbed=_withheld(group, "delta_val_loss"), words=(BETTER, WORSE))
        entry = {
            **first, "config_id": key, "seeds": int(group["delta_val_loss"].notna().sum()),
            "seed_list": " ".join(str(int(s)) for s in group["seed"].dropna()) if "seed" in group.columns else "",
            "val_loss_mean": float(group["val_loss"].astype(float).mean()),
            "dense_val_loss_mean": float(group["dense_val_loss"].astype(float).mean()),
            "delta_val_loss": delta, "delta_val_loss_ci_low": lo, "delta_val_loss_ci_high": hi,
            "quality_verdict": verdict.verdict, "quality_verdict_reason": verdict.reason,
        }
        for name in ("time", "step", "energy"):
            mean, low, high = paired_ratio_ci(group[f"{name}_speedup"])
            entry.update({f"{name}_speedup": mean, f"{name}_speedup_ci_low": low, f"{name}_speedup_ci_high": high})
        time = _time_verdict(entry, group)
        entry.update(time_verdict=time.verdict, time_verdict_reason=time.reason)
        out.append(entry)
    return pd.DataFrame(out)


def _time_verdict(entry: dict[str, Any], group: pd.DataFrame) -> Verdict:
    if not math.isfinite(entry["time_speedup"]):
        notes = sorted({str(n) for n in group["to_target_note"].dropna()})
        return Verdict(UNRELIABLE, "; ".join(notes) or "no time-to-target", "no interval")
    return decide(entry["time_speedup"], entry["time_speedup_ci_low"], entry["time_speedup_ci_high"],
                  margin=SPEEDUP_MARGIN, disturbed=_withheld(group, "time_speedup"))


def sentence(row: pd.Series | dict) -> str:
    """One line for a configuration: Δval_loss and time speedup with intervals and verdicts."""
    get = row.get
    n = int(get("seeds") or 0)
    text = f"Δval_loss {get('delta_val_loss'):+.3f}"
    if math.isfinite(_num(get("delta_val_loss_ci_low"))):
        text += f" [{get('delta_val_loss_ci_low'):+.3f}, {get('delta_val_loss_ci_high'):+.3f}]"
    text += f" over {n} seed{'s' * (n != 1)}: {get('quality_verdict')}"
    if math.isfinite(_num(get("time_speedup"))):
        text += f"; time to the baseline's loss {get('time_speedup'):.2f}x"
        if math.isfinite(_num(get("time_speedup_ci_low"))):
            text += f" [{get('time_speedup_ci_low'):.2f}, {get('time_speedup_ci_high'):.2f}]"
        text += f": {get('time_verdict')}"
    return text


__all__ = ["BETTER", "LOAD_FREE_METRICS", "QUALITY_MARGIN", "Reach", "SPEEDUP_MARGIN", "WORSE", "curves",
           "pair_to_target", "replicates", "sentence", "steps_to_target", "to_target", "withholding"]


# ----------------------------------------------------------------------------- the papers' directions

CONFIG_KEYS = ("num_experts", "top_k", "capacity_factor", "aux_loss_coef", "router", "granularity",
               "num_shared_experts", "d_model", "n_layers", "seq_len", "batch_size", "quality_steps", "corpus",
               "eval_capacity_factor", "impl")
"""Columns that together name an MoE configuration of a quality run (the seed apart)."""
LOAD_CV_MARGIN = 0.05
"""Differences in end-of-training load CV inside ±this are called 'no difference'."""
SUPPORTED, CONTRADICTED, NO_DIFFERENCE, CANNOT_TELL = "supported", "contradicted", "no difference", "cannot tell"


@dataclass(frozen=True)
class Direction:
    """A checkable claim: configurations that differ only in `key`, `a` against `b` (chosen among the
    values the run has), paired by seed, on `metric`; the claim holds when `a` is `expect` than `b`."""

    name: str
    claim: str
    key: str
    metric: str
    expect: str  # "lower" or "higher"
    margin: float


DIRECTIONS = (
    Direction("D1", "more experts at equal active FLOPs gives lower loss", "num_experts", "val_loss", "lower",
              QUALITY_MARGIN),
    Direction("D2", "capacity factor 1.0 drops more tokens and loses a little against 1.25 or dropless",
              "capacity_factor", "val_loss", "higher", QUALITY_MARGIN),
    Direction("D3", "without the balancing loss the expert load collapses (its CV rises)", "aux_loss_coef",
              "final_load_cv", "higher", LOAD_CV_MARGIN),
)


def final_load_cv(steps: Optional[pd.DataFrame], last: float = 0.1) -> dict[str, float]:
    """case_id -> mean load CV over the last tenth of a quality case's training steps (steps.csv)."""
    if steps is None or "load_cv" not in steps.columns:
        return {}
    out = {}
    for case, group in steps[steps["workload"] == "quality"].groupby("case_id"):
        values = pd.to_numeric(group.sort_values("step")["load_cv"], errors="coerce").dropna()
        if len(values):
            out[str(case)] = float(values.iloc[-max(1, int(len(values) * last)):].mean())
    return out


def _value_label(key: str, value: Any) -> str:
    if key == "capacity_factor":
        return "dropless" if pd.isna(value) else f"cf{float(value):g}"
    if key == "num_experts":
        return f"E{int(value)}"
    return f"{key}={float(value):g}" if isinstance(value, (int, float)) else f"{key}={value}"


def _contrasts(direction: Direction, values: list[Any]) -> list[tuple[Any, Any]]:
    """(a, b) value pairs of `direction.key` to compare, from the values present."""
    if direction.key == "num_experts":
        return [(max(values), min(values))] if len(values) >= 2 else []
    if direction.key == "capacity_factor":
        ones = [v for v in values if not pd.isna(v) and float(v) == 1.0]
        others = [v for v in values if pd.isna(v) or float(v) > 1.0]
        return [(ones[0], other) for other in others] if ones else []
    if direction.key == "aux_loss_coef":
        zero = [v for v in values if float(v) == 0.0]
        positive = [v for v in values if float(v) > 0.0]
        return [(zero[0], max(positive))] if zero and positive else []
    return []


def directions(df: pd.DataFrame, steps: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """Each of the papers' `DIRECTIONS` the run can check: configurations that differ only in the
    direction's key, the difference a - b of the metric paired by seed with its t interval over the
    seeds, and whether the interval supports the claim (`harness.verdict.decide`, withheld by the rows
    `withholding` names, the same rule as `replicates`: unstable rows withhold it, contended ones do not,
    since every direction's metric is free of load; for D3 a collapsed router is the effect itself, so
    routing collapse does not withhold it either)."""
    moe = df[(df["workload"] == "quality") & (df["kind"] == "moe") & (df["status"] == "ok")].copy()
    columns = ["direction", "claim", "contrast", "metric", "seeds", "a_mean", "b_mean", "difference", "ci_low",
               "ci_high", "verdict", "reason"]
    if moe.empty:
        return pd.DataFrame(columns=columns)
    moe["final_load_cv"] = moe["case_id"].astype(str).map(final_load_cv(steps))
    out = []
    for direction in DIRECTIONS:
        if direction.key not in moe.columns or direction.metric not in moe.columns:
            continue
        # the evaluation capacity follows the training one unless set: it is part of what D2 varies
        varied = {direction.key, "eval_capacity_factor"} if direction.key == "capacity_factor" else {direction.key}
        others = [k for k in CONFIG_KEYS if k in moe.columns and k not in varied]
        keyed = moe.assign(_key=moe[direction.key].astype(object).where(moe[direction.key].notna(), None))
        for _, group in keyed.groupby(others, dropna=False, sort=False):
            values = list(dict.fromkeys(group["_key"]))
            for a, b in _contrasts(direction, [v if v is not None else float("nan") for v in values]):
                if (found := _contrast(direction, group, a, b)) is not None:
                    out.append(found)
    return pd.DataFrame(out, columns=columns)


def _same(value: Any, target: Any) -> bool:
    if value is None or pd.isna(value):
        return target is None or pd.isna(target)
    return target is not None and not pd.isna(target) and float(value) == float(target)


def _contrast(direction: Direction, group: pd.DataFrame, a: Any, b: Any) -> Optional[dict[str, Any]]:
    """The paired comparison of `a` with `b`; None when they share no seed (a shard of a run can hold
    one side only: there is nothing to compare, not a direction to call 'cannot tell')."""
    side_a = group[[_same(v, a) for v in group["_key"]]].set_index("seed")
    side_b = group[[_same(v, b) for v in group["_key"]]].set_index("seed")
    seeds = sorted(set(side_a.index) & set(side_b.index))
    if not seeds:
        return None
    va = pd.to_numeric(side_a.loc[seeds, direction.metric], errors="coerce").astype(float)
    vb = pd.to_numeric(side_b.loc[seeds, direction.metric], errors="coerce").astype(float)
    diff, lo, hi = paired_mean_ci((va - vb).to_numpy())
    disturbed = []
    for side, rows in (("a", side_a.loc[seeds]), ("b", side_b.loc[seeds])):
        for seed, row in rows.iterrows():
            for d in withholding(row, f"{_value_label(direction.key, a if side == 'a' else b)} seed {seed}",
                                 direction.metric):
                if direction.key == "aux_loss_coef" and d.kind == UNSTABLE and d.reason.startswith("routing collapse"):
                    continue
                disturbed.append(d)
    verdict = decide(diff, lo, hi, scale="difference", higher_is_better=direction.expect == "higher",
                     margin=direction.margin, disturbed=disturbed, words=(SUPPORTED, CONTRADICTED))
    word = {"same": NO_DIFFERENCE, UNRELIABLE: CANNOT_TELL}.get(verdict.verdict, verdict.verdict)
    contrast = f"{_value_label(direction.key, a)} vs {_value_label(direction.key, b)}"
    return {"direction": direction.name, "claim": direction.claim, "contrast": contrast, "metric": direction.metric,
            "seeds": len(seeds), "a_mean": float(va.mean()), "b_mean": float(vb.mean()), "difference": diff,
            "ci_low": lo, "ci_high": hi, "verdict": word, "reason": verdict.reason}
