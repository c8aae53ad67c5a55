"""Statistics against distributions whose answers are known."""
import numpy as np
import pytest

from harness.metrics.statistics import as_groups, bootstrap_ci, few_processes_factor, median_ci, ratio_ci, summarize
from harness.metrics.timing import _settled, time_steps


def test_summary_of_known_samples():
    s = summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    assert s.median == 3.0 and s.iqr == 2.0 and s.n == 5
    assert s.p90 == pytest.approx(4.6)
    assert s.ci_low <= 3.0 <= s.ci_high


def test_bootstrap_ci_covers_the_true_median_most_of_the_time():
    rng = np.random.default_rng(1)
    covered = 0
    trials = 200
    for seed in range(trials):
        x = rng.lognormal(mean=0.0, sigma=0.5, size=40)  # true median exp(0) = 1
        low, high = bootstrap_ci(x, seed=seed, resamples=500)
        covered += low <= 1.0 <= high
    assert 0.88 <= covered / trials <= 0.995


def test_bootstrap_ci_shrinks_with_more_samples():
    rng = np.random.default_rng(2)
    small = bootstrap_ci(rng.normal(10, 1, 10))
    large = bootstrap_ci(rng.normal(10, 1, 1000))
    assert (large[1] - large[0]) < (small[1] - small[0]) / 3


def test_noisy_flag():
    assert not summarize([1.0, 1.01, 0.99, 1.0, 1.02]).noisy
    assert summarize([1.0, 1.5, 0.6, 1.2, 2.0]).noisy


def test_ratio_ci_covers_known_ratio():
    rng = np.random.default_rng(3)
    a = rng.normal(2.0, 0.05, 60)
    b = rng.normal(1.0, 0.025, 60)
    ratio, low, high = ratio_ci(list(a), list(b))
    assert ratio == pytest.approx(2.0, rel=0.03)
    assert low < 2.0 < high and high - low < 0.1


def test_settled():
    assert not _settled([1.0, 2.0])
    assert _settled([5.0, 1.0, 1.02, 0.99])
    assert not _settled([1.0, 1.5, 1.0])


def test_time_steps_meets_count_and_min_time():
    import torch

    calls = []
    t = time_steps(lambda: calls.append(1), torch.device("cpu"), warmup=2, repeats=3, min_time_s=0.02)
    assert t.timer == "perf_counter"
    assert t.warmup_iterations >= 2
    assert len(t.seconds) >= 3
    assert len(calls) == t.warmup_iterations + len(t.seconds)


# ---------------------------------------------------------------------------------------------
# Hierarchical intervals: processes, then steps


def _processes(rng, count, steps=20, between=0.10, within=0.05, centre=1.0):
    """Per-process samples whose true median over all processes is `centre`: each process is shifted
    by its own N(0, between) offset, its steps scatter by N(0, within) around that."""
    return [centre + rng.normal(0, between) + rng.normal(0, within, steps) for _ in range(count)]


def _coverage(count, trials=200, **kwargs):
    rng = np.random.default_rng(7)
    hierarchical = step_only = 0
    for trial in range(trials):
        groups = _processes(rng, count, **kwargs)
        _, low, high = median_ci(groups, seed=trial, resamples=500)
        hierarchical += low <= 1.0 <= high
        low, high = bootstrap_ci(np.concatenate(groups), seed=trial, resamples=500)
        step_only += low <= 1.0 <= high
    return hierarchical / trials, step_only / trials


def test_hierarchical_ci_keeps_nominal_coverage_where_a_step_only_ci_does_not():
    """Between-process spread twice the within-process spread (a machine where processes differ):
    the hierarchical interval covers the true median about 95% of the time, the pooled-steps one far less."""
    hierarchical, step_only = _coverage(count=8)
    assert 0.90 <= hierarchical <= 0.995
    assert step_only < 0.6


def test_two_processes_stay_conservative():
    """The default of 2 processes: the small-cluster correction keeps coverage at or above nominal."""
    hierarchical, step_only = _coverage(count=2, trials=150)
    assert hierarchical >= 0.93
    assert step_only < 0.6


def test_few_processes_factor():
    assert few_processes_factor(1) == 1.0
    assert few_processes_factor(2) > few_processes_factor(3) > few_processes_factor(10) > 1.0
    assert few_processes_factor(1000) == pytest.approx(1.0, abs=0.01)


def test_one_flat_list_is_one_process():
    flat = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert [list(g) for g in as_groups(flat)] == [flat]
    assert [len(g) for g in as_groups([[1.0, 2.0], [3.0], []])] == [2, 1]
    assert as_groups(None) == []
    assert summarize([flat, flat]).processes == 2 and summarize(flat).processes == 1


def test_a_stalled_process_widens_the_interval_to_reach_it():
    """The issue's failure: one tight but 20x slow process. Steps alone give a tight interval near one
    of the two levels; the hierarchical interval spans both."""
    rng = np.random.default_rng(4)
    fast, stalled = 1.0 + rng.normal(0, 0.01, 20), 20.0 + rng.normal(0, 0.2, 20)
    _, low, high = median_ci([fast, stalled])
    assert low <= 1.05 and high >= 19.0


def test_paired_ratio_cancels_what_the_two_sides_share():
    """Interleaved A/B in the same processes: a process-wide slowdown hits both sides, so the paired
    interval is narrow and covers the true ratio; resampling the sides independently is much wider."""
    rng = np.random.default_rng(5)
    level = [1.0 + rng.normal(0, 0.2) for _ in range(4)]
    a = [p * (1 + rng.normal(0, 0.02, 30)) for p in level]
    b = [2 * p * (1 + rng.normal(0, 0.02, 30)) for p in level]
    ratio, low, high = ratio_ci(a, b, paired=True)
    _, low_u, high_u = ratio_ci(a, b)
    assert low < 0.5 < high and ratio == pytest.approx(0.5, rel=0.05)
    assert (high - low) * 3 < high_u - low_u
    with pytest.raises(ValueError):
        ratio_ci([[1.0, 2.0]], [[1.0]], paired=True)


def test_ratio_ci_of_processes_covers_known_ratio():
    rng = np.random.default_rng(6)
    covered = 0
    for trial in range(100):
        a = _processes(rng, 5, centre=2.0, between=0.1)
        b = _processes(rng, 5, centre=1.0, between=0.05)
        _, low, high = ratio_ci(a, b, seed=trial, resamples=500)
        covered += low <= 2.0 <= high
    assert covered >= 88


def test_time_steps_says_when_the_repeat_cap_stopped_min_time():
    import torch

    capped = time_steps(lambda: None, torch.device("cpu"), warmup=0, repeats=1, min_time_s=5.0, max_repeats=20)
    assert len(capped.seconds) == 20 and capped.min_time_capped
    reached = time_steps(lambda: None, torch.device("cpu"), warmup=0, repeats=30, min_time_s=0.0, max_repeats=20)
    assert len(reached.seconds) == 30 and not reached.min_time_capped


def test_pooled_variance_weights_each_pair_by_its_degrees_of_freedom():
    from harness.metrics.statistics import pooled_variance

    assert pooled_variance([0.01, 0.04, float("nan"), 0.5], [2, 3, 4, 1]) == pytest.approx(((1 * 0.01 + 2 * 0.04) / 3, 3))
    assert pooled_variance([0.5], [1]) == (pytest.approx(float("nan"), nan_ok=True), 0)


def test_pooled_intervals_keep_nominal_coverage_with_two_processes_per_pair():
    """Four pairs of two processes each, no true difference: the t interval on the pooled variance
    (4 degrees of freedom) covers 1 about 95% of the time; a normal quantile, or the pooled
    degrees of freedom mistaken for more, would cover less."""
    from harness.metrics.statistics import pooled_ratio_intervals, pooled_variance

    rng = np.random.default_rng(0)
    covered = total = 0
    for _ in range(3000):
        logs = rng.normal(0.0, 0.1, size=(4, 2))
        means, variances = logs.mean(axis=1), logs.var(axis=1, ddof=1)
        pooled, dof = pooled_variance(variances, [2] * 4)
        assert dof == 4
        for _, low, high in pooled_ratio_intervals(means, variances, [2] * 4, pooled, dof):
            covered += low <= 1.0 <= high
            total += 1
    assert 0.94 <= covered / total <= 0.99


def test_a_pair_whose_processes_disagree_keeps_its_own_wider_interval():
    from harness.metrics.statistics import pooled_ratio_intervals, pooled_variance

    means, variances = [0.0, 0.0, 0.0, 0.0], [1e-4, 1e-4, 1e-4, 0.02]
    pooled, dof = pooled_variance(variances[:3], [2] * 3)
    calm, *_, split = pooled_ratio_intervals(means, variances, [2] * 4, pooled, dof)
    assert np.log(split[2] / split[1]) == pytest.approx(np.sqrt(0.02 / 1e-4) * np.log(calm[2] / calm[1]))
    assert all(np.isnan(b) for b in pooled_ratio_intervals([0.1], [1e-4], [2], pooled, 1)[0][1:])
    assert all(np.isnan(b) for b in pooled_ratio_intervals([0.1], [float("nan")], [1], pooled, dof)[0][1:])


def test_an_interleaved_pass_records_each_process_log_ratio():
    from harness.pooling import pool_interleaved

    parts = [{"samples_a": [2.0, 2.2, 1.8], "samples_b": [3.0, 3.3, 2.7]},  # MoE 1.5x faster in process 1
             {"samples_a": [1.0, 1.1, 0.9], "samples_b": [2.0, 2.2, 1.8]}]  # 2x in process 2
    out = pool_interleaved(parts)
    logs = [np.log(1.5), np.log(2.0)]
    assert out["interleaved_process_count"] == 2
    assert out["interleaved_log_ratio_mean"] == pytest.approx(np.mean(logs))
    assert out["interleaved_log_ratio_var"] == pytest.approx(np.var(logs, ddof=1))
    assert pool_interleaved(parts[:1])["interleaved_log_ratio_var"] is None
