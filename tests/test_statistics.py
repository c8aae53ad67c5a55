"""Statistics against distributions whose answers are known."""
import numpy as np
import pytest

from harness.metrics.statistics import bootstrap_ci, ratio_ci, summarize
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
