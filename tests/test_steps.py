"""Step detection and the window interval on synthetic histories with known levels and noise."""
import numpy as np
import pytest

from harness.compare.steps import MIN_WINDOW, find_steps, robust_spread, window_interval


def series(levels, n_each, noise=0.03, seed=0):
    rng = np.random.default_rng(seed)
    return [level * float(np.exp(noise * rng.standard_normal())) for level in levels for _ in range(n_each)]


@pytest.mark.parametrize("seed", range(5))
def test_one_step_found_where_it_is(seed):
    values = series([10.0, 13.0], 8, seed=seed)  # +30% from run 8 on
    [step] = find_steps(values)
    assert step.index == 8
    assert step.change == pytest.approx(0.30, abs=0.06)


@pytest.mark.parametrize("seed", range(5))
def test_flat_noisy_history_has_no_step(seed):
    assert find_steps(series([10.0], 20, noise=0.05, seed=seed)) == []


def test_two_steps_and_a_small_one_ignored():
    values = series([10.0, 14.0, 10.5], 7, seed=1)
    assert [s.index for s in find_steps(values)] == [7, 14]
    assert find_steps(series([10.0, 10.5], 10, noise=0.01, seed=2)) == []  # 5%: below the threshold


def test_one_outlier_night_is_not_a_step():
    values = series([10.0], 16, seed=3)
    values[9] = 30.0
    assert find_steps(values) == []


def test_short_or_bad_series_have_no_steps():
    assert find_steps([1.0, 2.0, 3.0]) == []
    assert find_steps([1.0] * 10 + [float("nan")]) == []


def test_window_interval_from_between_run_spread():
    window = series([10.0], 10, noise=0.05, seed=4)
    same = window_interval(10.0, window)
    assert same.low < 1 < same.high
    assert same.spread == pytest.approx(robust_spread(window))
    slow = window_interval(14.0, window)
    assert slow.low > 1 and slow.ratio == pytest.approx(14.0 / np.median(window))
    # a window twice as noisy gives a wider interval for the same run
    wide = window_interval(10.0, series([10.0], 10, noise=0.10, seed=4))
    assert (wide.high / wide.low) > (same.high / same.low)
    assert window_interval(10.0, window[: MIN_WINDOW - 1]) is None


def test_window_interval_covers_a_new_run_of_the_same_level_about_95_percent():
    rng = np.random.default_rng(5)
    covered = 0
    trials = 400
    for _ in range(trials):
        runs = 10.0 * np.exp(0.05 * rng.standard_normal(9))
        new = 10.0 * float(np.exp(0.05 * rng.standard_normal()))
        w = window_interval(new, list(runs))
        covered += w.low <= 1 <= w.high
    assert 0.88 <= covered / trials <= 0.995
