"""harness.analysis: typed loading of a run and MoE/dense pairing with ratios and CIs."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from harness.analysis import DTYPES, RunError, coverage, load, paired
from tests.report_fixtures import DENSE_LATENCY_MS, case_id, make_run, moe_latency_ms, rows


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run"))


def _row(p: pd.DataFrame, label: str, workload: str) -> pd.Series:
    hit = p[(p["case_id"] == case_id(label)) & (p["workload"] == workload)]
    assert len(hit) == 1
    return hit.iloc[0]


@pytest.mark.parametrize("source", ["results.csv", "results.parquet"])
def test_load_gives_documented_dtypes(run, source):
    df = load(run / source)
    assert len(df) == 40
    for column, dtype in DTYPES.items():
        assert str(df[column].dtype) == str(pd.api.types.pandas_dtype(dtype)), column
    assert df.loc[df["kind"] == "dense", "num_experts"].isna().all()
    assert df["case_id"].str.fullmatch(r"[0-9a-f]{12}").all()


def test_csv_and_parquet_load_identically(run):
    pd.testing.assert_frame_equal(load(run / "results.csv"), load(run / "results.parquet"))


def test_numeric_looking_ids_stay_exact_strings(tmp_path):
    data = rows()
    renames = {case_id("dense k1"): "120e45678901", case_id("E2 k1 cf1"): "000123456789"}
    for row in data:
        row["case_id"] = renames.get(row["case_id"], row["case_id"])
        row["matched_to"] = " ".join(renames.get(i, i) for i in row["matched_to"].split())
    tmp_path.mkdir(exist_ok=True)
    pd.DataFrame(data).to_csv(tmp_path / "results.csv", index=False)
    df = load(tmp_path)
    assert {"120e45678901", "000123456789"} <= set(df["case_id"])
    assert df.loc[df["case_id"] == "120e45678901", "matched_to"].iloc[0].split()[0] == "000123456789"
    pair = paired(df)
    assert pair.loc[pair["case_id"] == "000123456789", "dense_case_id"].eq("120e45678901").all()


def test_absent_columns_are_added_missing_and_explained(tmp_path):
    frame = pd.DataFrame(rows()).drop(columns=["energy_j", "energy_j_per_token", "energy_source"])
    frame.to_csv(tmp_path / "results.csv", index=False)
    df = load(tmp_path)
    assert "energy_j_per_token" in df.attrs["absent_columns"]
    assert df["energy_j_per_token"].isna().all() and df["energy_j_per_token"].dtype == np.float64
    measured, of, reason = coverage(df, "energy_j_per_token")
    assert measured == 0 and of == 38 and "not recorded" in reason


def test_unmeasured_energy_stays_nan_with_its_reason(run):
    df = load(run)
    assert df["energy_j_per_token"].isna().all()
    assert coverage(df, "energy_j_per_token") == (0, 38, "unavailable: no NVML (CPU run)")
    assert coverage(df, "tokens_per_s") == (38, 38, None)
    assert paired(df)["energy_per_token_ratio"].isna().all()


def test_paired_ratios_match_hand_computation(run):
    p = paired(load(run))
    assert len(p) == 36 and (p["kind"] == "moe").all()
    row = _row(p, "E4 k2 cf1.25", "train_step")
    moe_lat, dense_lat = moe_latency_ms("train_step", 4, 2, 1.25), DENSE_LATENCY_MS[("train_step", 2)]
    assert row["dense_case_id"] == case_id("dense k2") and row["dense_baseline"] == "flop_matched"
    assert row["throughput_ratio"] == pytest.approx(dense_lat / moe_lat)
    assert row["latency_ratio"] == pytest.approx(moe_lat / dense_lat)
    # the ratio of the peaks net of the process floor, not of the raw RSS (which holds ~300 MB of runtime)
    assert row["memory_ratio"] == pytest.approx((40 + 32) / 40)
    # box CI from the +-3% latency intervals: dense low / moe high and dense high / moe low
    assert row["throughput_ratio_ci_low"] == pytest.approx(dense_lat * 0.97 / (moe_lat * 1.03))
    assert row["throughput_ratio_ci_high"] == pytest.approx(dense_lat * 1.03 / (moe_lat * 0.97))
    assert row["throughput_ratio_ci_method"] == "latency_ci_bounds"
    assert row["latency_ratio_ci_low"] == pytest.approx(moe_lat * 0.97 / (dense_lat * 1.03))
    assert np.isnan(row["quality_ratio"])


def test_failed_rows_and_failed_baselines_give_nan_ratios_not_zero(tmp_path):
    data = rows()
    for row in data:  # the k=1 dense baseline fails on forward
        if row["case_id"] == case_id("dense k1") and row["workload"] == "forward":
            row.update(status="failed", error="RuntimeError: boom", tokens_per_s=float("nan"))
    pd.DataFrame(data).to_csv(tmp_path / "results.csv", index=False)
    p = paired(load(tmp_path))
    assert len(p) == 36  # every MoE row kept
    oom = _row(p, "E8 k2 cf1", "train_step")
    assert oom["status"] == "oom" and np.isnan(oom["throughput_ratio"]) and np.isnan(oom["memory_ratio"])
    orphans = p[(p["top_k"] == 1) & (p["workload"] == "forward")]
    assert (orphans["dense_status"] == "failed").all()
    assert orphans[list(["throughput_ratio", "latency_ratio", "memory_ratio", "throughput_ratio_ci_low"])].isna().all().all()
    others = p[(p["top_k"] == 1) & (p["workload"] == "train_step") & (p["status"] == "ok")]
    assert others["throughput_ratio"].notna().all()


def test_interleaved_ratio_ci_wins_over_latency_box(tmp_path):
    data = rows()
    target = case_id("E2 k1 cf1")
    for row in data:
        if row["case_id"] == target and row["workload"] == "train_step":
            row.update(interleaved_throughput_ratio=1.12, throughput_ratio_ci_low=1.10, throughput_ratio_ci_high=1.14,
                       throughput_ratio_ci_method="interleaved")
        if row["case_id"] == target and row["workload"] == "forward":
            row.update(throughput_ratio_ci_method="unavailable: interleaved pair timeout: no result")
    pd.DataFrame(data).to_csv(tmp_path / "results.csv", index=False)
    p = paired(load(tmp_path))
    row = _row(p, "E2 k1 cf1", "train_step")
    assert (row["throughput_ratio_ci_low"], row["throughput_ratio"], row["throughput_ratio_ci_high"]) == (1.10, 1.12, 1.14)
    assert row["throughput_ratio_ci_method"] == "interleaved"
    assert _row(p, "E2 k1 cf1", "forward")["throughput_ratio_ci_method"].startswith("unavailable: interleaved pair")
    assert _row(p, "E2 k2 cf1", "forward")["throughput_ratio_ci_method"] == "latency_ci_bounds"
    assert (p["latency_ratio_ci_high"].dropna() < float("inf")).all()


def test_param_matched_pairing_uses_its_own_baseline(tmp_path):
    data = rows()
    pm = case_id("param-matched dense")
    for row in data:
        if row["kind"] == "moe" and row["num_experts"] == 4:
            row["param_matched_to"] = pm
    for workload in ("train_step", "forward"):
        data.append({**next(r for r in data if r["case_id"] == case_id("dense k1") and r["workload"] == workload),
                     "case_id": pm, "baseline": "param_matched", "tokens_per_s": 5000.0,
                     "peak_memory_bytes": 400 * 2**20, "peak_memory_net_bytes": 140 * 2**20})
    pd.DataFrame(data).to_csv(tmp_path / "results.csv", index=False)
    df = load(tmp_path)
    by_params = paired(df, baseline="param_matched")
    row = _row(by_params, "E4 k1 cf1.25", "forward")
    assert row["dense_case_id"] == pm and row["dense_baseline"] == "param_matched"
    assert row["throughput_ratio"] == pytest.approx(row["tokens_per_s"] / 5000.0)
    assert by_params.loc[by_params["num_experts"] != 4, "dense_case_id"].isna().all()
    by_flops = paired(df)
    assert _row(by_flops, "E4 k1 cf1.25", "forward")["dense_case_id"] == case_id("dense k1")


def test_zero_or_missing_denominator_is_nan_not_inf(tmp_path):
    data = rows()
    for row in data:
        if row["case_id"] == case_id("dense k2"):
            row["peak_memory_net_bytes"] = 0
    pd.DataFrame(data).to_csv(tmp_path / "results.csv", index=False)
    p = paired(load(tmp_path))
    k2 = p[p["top_k"] == 2]
    assert k2["memory_ratio"].isna().all()
    assert not np.isinf(p.select_dtypes("number").to_numpy(dtype=float)).any()


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="baseline must be one of"):
        paired(pd.DataFrame(rows()), baseline="flops")
    with pytest.raises(RunError, match="no results"):
        load(tmp_path / "nowhere")


def test_harness_load_is_a_lazy_reexport():
    code = ("import sys, harness; assert 'pandas' not in sys.modules; "
            "from harness.analysis import load, paired; assert harness.load is load and harness.paired is paired; "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_interleaved_intervals_pool_the_between_process_variance_of_calm_pairs(tmp_path):
    """Each forward pair recorded two processes' log ratios; the interval uses the variance pooled over
    the undisturbed pairs (one degree of freedom each), or the pair's own when that is larger."""
    from scipy.stats import t

    data = rows()
    moe = [r for r in data if r["kind"] == "moe" and r["workload"] == "forward"]
    disturbed, split = moe[0]["case_id"], moe[1]["case_id"]
    for i, row in enumerate(moe):
        own = 0.05 if row["case_id"] == split else 1e-3 * (1 + i % 3)
        row.update(interleaved_log_ratio_mean=0.2, interleaved_log_ratio_var=own, interleaved_process_count=2,
                   interleaved_throughput_ratio=1.2, throughput_ratio_ci_low=0.5, throughput_ratio_ci_high=3.0,
                   throughput_ratio_ci_method="interleaved", processes=2)
        if row["case_id"] == disturbed:
            row.update(contended=True, contention_reason="cpu share 0.4 of 1 thread")
    pd.DataFrame(data).to_csv(tmp_path / "results.csv", index=False)
    p = paired(load(tmp_path))
    forward = p[p["workload"] == "forward"]
    estimating = [r for r in moe if r["case_id"] != disturbed and r["status"] == "ok"]
    pooled = float(np.mean([r["interleaved_log_ratio_var"] for r in estimating]))
    q = t.ppf(0.975, len(estimating))
    assert (forward["throughput_ratio_ci_method"] == f"interleaved, pooled over {len(estimating)} pairs ({len(estimating)} df)").all()
    calm = forward[forward["case_id"] == moe[2]["case_id"]].iloc[0]
    assert calm["throughput_ratio"] == pytest.approx(np.exp(0.2))
    assert calm["throughput_ratio_ci_low"] == pytest.approx(np.exp(0.2 - q * np.sqrt(pooled / 2)))
    assert calm["throughput_ratio_ci_high"] == pytest.approx(np.exp(0.2 + q * np.sqrt(pooled / 2)))
    assert calm["verdict"] == "faster", calm["verdict_reason"]
    wide = forward[forward["case_id"] == split].iloc[0]
    assert wide["throughput_ratio_ci_high"] == pytest.approx(np.exp(0.2 + q * np.sqrt(0.05 / 2)))
    assert wide["verdict"] == "unreliable"
    assert forward[forward["case_id"] == disturbed].iloc[0]["verdict_cause"] == "contended"
    assert (p[p["workload"] == "train_step"]["throughput_ratio_ci_method"] == "latency_ci_bounds").all()


def test_trust_notes_advise_interleaving_only_when_a_wide_pair_was_not_interleaved(run, tmp_path):
    from harness.analysis import trust_notes

    df = load(run)
    assert "interleave: true" in trust_notes(paired(df), df)[0]
    groups = df.assign(world_size=2)  # multi-rank groups cannot be interleaved
    assert "interleave: true" not in trust_notes(paired(groups), groups)[0]
    data = rows()
    for row in data:
        if row["kind"] == "moe":
            row.update(interleaved_throughput_ratio=1.0, throughput_ratio_ci_low=0.7, throughput_ratio_ci_high=1.4,
                       throughput_ratio_ci_method="interleaved")
    pd.DataFrame(data).to_csv(tmp_path / "results.csv", index=False)
    df = load(tmp_path)
    notes = trust_notes(paired(df), df)
    assert "too wide to tell" in notes[0] and "interleave: true" not in notes[0]


def test_a_disturbed_interleaved_pass_withholds_the_pair_but_not_the_row(tmp_path):
    """The interleaved pass gives the pair's ratio, so its contention withholds the verdict; the row's
    own timings come from other processes, so the row stays uncontended (compare judges it)."""
    from harness.pooling import with_interleaved

    calm = {"cpu_share": 0.99}
    parts = [{"samples_a": [1.0, 1.1, 0.9], "samples_b": [2.0, 2.1, 1.9], "contention": calm},
             {"samples_a": [1.0, 1.1, 0.9], "samples_b": [2.0, 2.2, 1.8],
              "contention": {"contended": True, "contention_reason": "hypervisor steal 9%"}}]
    folded = with_interleaved({"contended": False, "contention_reason": None}, parts)
    assert folded["contended"] is False and folded["interleaved_contended"] is True
    assert "steal" in folded["interleaved_contention_reason"]

    data = rows()
    target = case_id("E2 k2 cf1")
    for row in data:
        if row["case_id"] == target and row["workload"] == "forward":
            row.update({k: folded[k] for k in folded if k.startswith(("interleaved_", "throughput_ratio_ci"))})
    pd.DataFrame(data).to_csv(tmp_path / "results.csv", index=False)
    df = load(tmp_path)
    assert not df.loc[(df["case_id"] == target) & (df["workload"] == "forward"), "contended"].fillna(False).any()
    pair = _row(paired(df), "E2 k2 cf1", "forward")
    assert pair["verdict"] == "unreliable" and pair["verdict_cause"] == "contended"
    assert "interleaved pass contended" in pair["verdict_reason"]
