"""Time-, FLOP- and energy-to-target on synthetic curves, seed-paired intervals with a known effect, and
`run.seeds` pairing each MoE with the baseline of its own seed (harness/quality.py)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from harness import quality
from harness.metrics.statistics import paired_mean_ci, paired_ratio_ci
from harness.suite import SuiteError, build_suite
from harness.sweep import expand


def test_steps_to_target_interpolates_between_evaluations():
    reach = quality.steps_to_target([10, 20, 30, 40], [3.0, 2.5, 2.0, 1.8], 2.2)
    assert reach.steps == pytest.approx(20 + (2.5 - 2.2) / (2.5 - 2.0) * 10)  # 26
    assert quality.steps_to_target([10, 20, 30], [3.0, 2.5, 2.0], 2.5).steps == pytest.approx(20)


def test_steps_to_target_is_the_first_crossing_of_a_noisy_curve():
    # dips below 2.2 at 25, comes back up, ends below: the first crossing counts
    reach = quality.steps_to_target([10, 20, 30, 40, 50], [3.0, 2.4, 2.0, 2.3, 2.1], 2.2)
    assert reach.steps == pytest.approx(25)


def test_not_reached_and_before_the_first_evaluation_are_not_guessed():
    never = quality.steps_to_target([10, 20], [3.0, 2.5], 2.0)
    assert never.steps is None and "not reached" in never.why
    early = quality.steps_to_target([10, 20], [1.5, 1.4], 2.0)
    assert early.steps is None and "first evaluation" in early.why
    assert quality.steps_to_target([], [], 2.0).steps is None


def test_reference_on_random_monotone_curves():
    rng = np.random.default_rng(0)
    for _ in range(50):
        losses = np.sort(rng.uniform(1, 4, size=8))[::-1]
        steps = np.cumsum(rng.integers(1, 20, size=8)).astype(float)
        target = rng.uniform(losses[-1], losses[0])
        dense_steps = np.linspace(steps[0], steps[-1], 20001)
        curve = np.interp(dense_steps, steps, losses[::-1][::-1])
        expected = dense_steps[np.argmax(curve <= target)]
        assert quality.steps_to_target(steps, losses, target).steps == pytest.approx(expected, abs=0.01 * steps[-1])


def _pair(moe_final: float, dense_final: float, moe_ms: float = 20.0, dense_ms: float = 10.0) -> pd.Series:
    return pd.Series({
        "case_id": "m", "dense_case_id": "d", "val_loss": moe_final, "dense_val_loss": dense_final,
        "latency_ms_median": moe_ms, "dense_latency_ms_median": dense_ms, "tokens_per_step": 100,
        "train_flops_per_token": 6.0, "dense_train_flops_per_token": 6.0,
        "energy_j_per_token": 0.01, "dense_energy_j_per_token": 0.004,
    })


def test_moe_that_wins_reaches_the_baselines_loss_early():
    # MoE: linear from 3.0 at step 10 to 1.0 at step 100; dense ends at 2.0
    moe = ([10, 100], [3.0, 1.0])
    dense = ([10, 100], [3.0, 2.0])
    out = quality.pair_to_target(_pair(1.0, 2.0), moe, dense)
    assert out["target_val_loss"] == 2.0 and out["delta_val_loss"] == -1.0
    assert out["steps_to_target"] == pytest.approx(55) and out["dense_steps_to_target"] == pytest.approx(100)
    assert out["step_speedup"] == pytest.approx(100 / 55)
    assert out["time_speedup"] == pytest.approx(100 * 0.010 / (55 * 0.020))  # slower per step, fewer steps
    assert out["time_to_target_s"] == pytest.approx(55 * 0.020)
    assert out["flops_to_target"] == pytest.approx(55 * 600)
    assert out["energy_speedup"] == pytest.approx(100 * 0.4 / (55 * 1.0))
    assert pd.isna(out["to_target_note"])


def test_baseline_that_wins_gives_a_speedup_below_one():
    moe = ([10, 100], [3.0, 2.0])
    dense = ([10, 100], [3.0, 1.0])
    out = quality.pair_to_target(_pair(2.0, 1.0, moe_ms=10, dense_ms=10), moe, dense)
    assert out["target_val_loss"] == 2.0
    assert out["dense_steps_to_target"] == pytest.approx(55) and out["steps_to_target"] == pytest.approx(100)
    assert out["time_speedup"] == pytest.approx(0.55)


def test_without_a_curve_there_is_no_speedup_and_a_reason():
    out = quality.pair_to_target(_pair(1.0, 2.0), ([100], [1.0]), ([100], [2.0]))
    assert math.isnan(out["time_speedup"]) and "first evaluation" in out["to_target_note"]
    energy = quality.pair_to_target(_pair(1.0, 2.0).drop(["energy_j_per_token"]), ([10, 100], [3.0, 1.0]),
                                    ([10, 100], [3.0, 2.0]))
    assert math.isnan(energy["energy_speedup"]) and energy["time_speedup"] > 0  # not measured, never 0


def test_paired_mean_ci_covers_a_known_effect():
    rng = np.random.default_rng(1)
    covered, excluded = 0, 0
    for _ in range(400):
        seed_noise = rng.normal(0, 0.05, size=3)  # shared by both sides of a seed: cancels in the pair
        moe = 1.50 + seed_noise + rng.normal(0, 0.01, size=3)
        dense = 1.60 + seed_noise + rng.normal(0, 0.01, size=3)
        mean, lo, hi = paired_mean_ci(moe - dense)
        covered += lo <= -0.1 <= hi
        excluded += hi < 0
    assert 0.92 <= covered / 400 <= 0.98  # a 95% interval
    assert excluded / 400 > 0.9  # pairing removes the seed noise: the effect is seen


def test_paired_intervals_need_two_seeds():
    assert math.isnan(paired_mean_ci([0.1])[1])
    mean, lo, hi = paired_ratio_ci([2.0, 2.0, 2.0])
    assert mean == pytest.approx(2.0) and lo == pytest.approx(2.0) and hi == pytest.approx(2.0)


def _pairs(deltas: list[float], speedups: list[float], unstable_seed: int | None = None,
           contended: str | None = None, contended_seed: int = 1) -> pd.DataFrame:
    """`contended`: 'moe' or 'dense', the side of seed `contended_seed` whose row is contended."""
    rows = []
    for seed, (delta, speedup) in enumerate(zip(deltas, speedups)):
        busy = {f"{p}contended": seed == contended_seed and contended == side for p, side in (("", "moe"), ("dense_", "dense"))}
        rows.append({"case_id": f"m{seed}", "config_id": "cfg", "seed": seed, "val_loss": 1.5 + delta,
                     "dense_val_loss": 1.5, "delta_val_loss": delta, "time_speedup": speedup,
                     "step_speedup": speedup, "energy_speedup": float("nan"), "to_target_note": pd.NA,
                     "unstable": seed == unstable_seed, "unstable_reason": "loss spike at step 3" if seed == unstable_seed else "",
                     "dense_unstable": False, **busy, "contention_reason": "run queue 40%", "dense_contention_reason": "run queue 40%"})
    return pd.DataFrame(rows)


def test_replicates_give_a_verdict_only_when_the_seeds_support_it():
    better = quality.replicates(_pairs([-0.10, -0.12, -0.09], [1.5, 1.6, 1.4])).iloc[0]
    assert better["seeds"] == 3 and better["seed_list"] == "0 1 2"
    assert better["delta_val_loss"] == pytest.approx(-0.1033, abs=1e-3)
    assert better["quality_verdict"] == "better" and better["time_verdict"] == "faster"
    assert better["delta_val_loss_ci_high"] < 0

    unclear = quality.replicates(_pairs([-0.10, 0.08, -0.02], [1.5, 0.7, 1.0])).iloc[0]
    assert unclear["quality_verdict"] == "unreliable" and unclear["time_verdict"] == "unreliable"

    same = quality.replicates(_pairs([0.001, -0.001, 0.0005], [1.0, 1.01, 0.99])).iloc[0]
    assert same["quality_verdict"] == "same" and same["time_verdict"] == "same"

    one_seed = quality.replicates(_pairs([-0.3], [3.0])).iloc[0]
    assert one_seed["quality_verdict"] == "unreliable" and "no confidence interval" in one_seed["quality_verdict_reason"]


def test_an_unstable_seed_withholds_the_quality_verdict():
    row = quality.replicates(_pairs([-0.10, -0.12, -0.09], [1.5, 1.6, 1.4], unstable_seed=1)).iloc[0]
    assert row["quality_verdict"] == "unreliable" and "seed 1" in row["quality_verdict_reason"]
    assert row["time_verdict"] == "unreliable"


@pytest.mark.parametrize("side", ["moe", "dense"])
def test_a_contended_seed_withholds_the_time_verdict_not_the_quality_one(side):
    """val_loss of a deterministic run is the same under any load; its step times are not."""
    row = quality.replicates(_pairs([-0.10, -0.12, -0.09], [1.5, 1.6, 1.4], contended=side)).iloc[0]
    assert row["quality_verdict"] == "better"
    assert row["time_verdict"] == "unreliable" and "seed 1 contended" in row["time_verdict_reason"]


def test_withholding_is_one_rule_for_load_free_and_timed_metrics():
    row = {"contended": True, "contention_reason": "busy", "unstable": False}
    assert quality.withholding(row, "MoE", "val_loss") == []
    assert quality.withholding(row, "MoE", "final_load_cv") == []
    assert [d.kind for d in quality.withholding(row, "MoE", "time_speedup")] == ["contended"]
    assert [d.kind for d in quality.withholding(row, "MoE", "latency_ms_median")] == ["contended"]  # unknown: timed
    shaky = {**row, "unstable": True, "unstable_reason": "loss spike at step 3"}
    assert [d.kind for d in quality.withholding(shaky, "MoE", "val_loss")] == ["unstable"]


SEEDED = """
name: seeded
model: {vocab_size: 256, d_model: 32, n_layers: 2, n_heads: 2, d_ff: 64, seq_len: 16}
moe: {num_experts: 2, top_k: 1}
run: {seeds: [3, 1, 2]}
workloads: [quality]
sweep: {grid: {moe.num_experts: [2, 4]}}
"""


def test_run_seeds_pairs_each_moe_with_the_baseline_of_its_seed():
    import yaml

    expansion = expand(build_suite(yaml.safe_load(SEEDED)))
    by_id = expansion.by_id()
    moe = [c for c in expansion if c.kind == "moe"]
    assert [(c.moe.num_experts, c.run.seed) for c in moe] == [(2, 3), (2, 1), (2, 2), (4, 3), (4, 1), (4, 2)]
    assert len(expansion) == 12 and all(c.run.seeds is None for c in expansion)
    for case in moe:
        dense = by_id[expansion.baseline_of[case.id]["flop_matched"]]
        assert dense.run.seed == case.run.seed
    assert len({c.config_id for c in moe if c.moe.num_experts == 2}) == 1
    assert len({c.config_id for c in moe}) == 2 and len({c.id for c in moe}) == 6


def test_run_seeds_refusals():
    import yaml

    data = yaml.safe_load(SEEDED)
    data["sweep"]["grid"]["run.seed"] = [0, 1]
    with pytest.raises(SuiteError, match="run.seeds already"):
        build_suite(data)
    data = yaml.safe_load(SEEDED)
    data["run"]["seeds"] = [1, 1]
    with pytest.raises(SuiteError, match="listed twice"):
        build_suite(data)


def test_a_case_without_seeds_keeps_its_id():
    import yaml

    data = yaml.safe_load(SEEDED)
    del data["run"]["seeds"]
    plain = expand(build_suite(data)).cases[0]
    assert plain.config_id == plain.id  # seed 0, no seeds: ids stored before run.seeds stay


def _direction_rows() -> tuple[pd.DataFrame, pd.DataFrame]:
    """E2 and E8 (cf1.25), E8 cf1.0, E8 dropless, E8 without aux loss; 3 seeds each, known effects."""
    configs = [(2, 1.25, 0.01, 1.60), (8, 1.25, 0.01, 1.50), (8, 1.0, 0.01, 1.53), (8, None, 0.01, 1.49),
               (8, 1.25, 0.0, 1.52)]
    rows, steps = [], []
    for experts, cf, aux, loss in configs:
        for seed, noise in zip((0, 1, 2), (0.0, 0.004, -0.003)):
            case = f"E{experts}-{cf}-{aux}-{seed}"
            rows.append({"case_id": case, "kind": "moe", "workload": "quality", "status": "ok", "seed": seed,
                         "num_experts": experts, "top_k": 1, "capacity_factor": cf, "aux_loss_coef": aux,
                         "eval_capacity_factor": "dropless" if cf is None else f"{cf:g}",
                         "d_model": 64, "val_loss": loss + noise + 0.01 * seed, "unstable": aux == 0.0,
                         "unstable_reason": "routing collapse at step 40: ..." if aux == 0.0 else None})
            cv = 2.5 if aux == 0.0 else 0.3
            steps += [{"case_id": case, "workload": "quality", "step": s, "load_cv": cv + 0.01 * seed} for s in range(20)]
    return pd.DataFrame(rows), pd.DataFrame(steps)


def test_the_papers_directions_are_stated_with_their_intervals():
    df, steps = _direction_rows()
    found = quality.directions(df, steps).set_index(["direction", "contrast"])
    d1 = found.loc[("D1", "E8 vs E2")]
    assert d1["verdict"] == "supported" and d1["difference"] == pytest.approx(-0.10) and d1["seeds"] == 3
    assert found.loc[("D2", "cf1 vs cf1.25")]["verdict"] == "supported"
    assert found.loc[("D2", "cf1 vs dropless")]["difference"] == pytest.approx(0.04)
    d3 = found.loc[("D3", "aux_loss_coef=0 vs aux_loss_coef=0.01")]
    assert d3["verdict"] == "supported" and d3["difference"] == pytest.approx(2.2)  # collapse is the effect itself


def test_a_direction_the_data_contradicts_or_cannot_tell():
    df, steps = _direction_rows()
    flipped = df.assign(val_loss=[v + 0.2 if n == 8 and c == 1.25 and a == 0.01 else v
                                  for v, n, c, a in zip(df["val_loss"], df["num_experts"], df["capacity_factor"],
                                                        df["aux_loss_coef"])])
    assert quality.directions(flipped, steps).set_index("direction").loc["D1", "verdict"] == "contradicted"
    spiky = df.assign(unstable=df["num_experts"] == 2, unstable_reason="loss spike at step 9")
    d1 = quality.directions(spiky, steps).set_index("direction").loc["D1"]
    assert d1["verdict"] == "cannot tell" and "loss spike" in d1["reason"]


def test_a_contrast_whose_sides_share_no_seed_is_left_out():
    """A shard can hold cf1.0 at seeds 0 and 1 and dropless at seed 2 only: no pair, no row."""
    df, steps = _direction_rows()
    dropless, cf1 = df["capacity_factor"].isna(), df["capacity_factor"] == 1.0
    split = df[~((dropless & (df["seed"] < 2)) | (cf1 & (df["seed"] == 2)))]
    found = quality.directions(split, steps).set_index(["direction", "contrast"])
    assert ("D2", "cf1 vs dropless") not in found.index
    assert found.loc[("D2", "cf1 vs cf1.25")]["seeds"] == 2


def test_contention_does_not_withhold_a_direction():
    """The same rule as `replicates`' quality verdict: val_loss and load CV do not depend on load."""
    df, steps = _direction_rows()
    busy = df.assign(contended=True, contention_reason="run queue 60%")
    found = quality.directions(busy, steps).set_index(["direction", "contrast"])
    assert found.loc[("D1", "E8 vs E2")]["verdict"] == "supported"
    assert found.loc[("D2", "cf1 vs cf1.25")]["verdict"] == "supported"
    assert found.loc[("D3", "aux_loss_coef=0 vs aux_loss_coef=0.01")]["verdict"] == "supported"


def test_keeping_the_weights_does_not_change_what_is_measured():
    import yaml

    case = expand(build_suite(yaml.safe_load(SEEDED))).cases[0]
    kept = case.model_copy(update={"run": case.run.model_copy(update={"save_weights": True})})
    assert kept.id == case.id
