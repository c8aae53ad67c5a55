"""A metric over the history: the window's robust location and spread, and where its level stepped.

Nightly numbers drift between processes and machines by more than any one run's interval shows
(two idle runs of identical code differed by up to 17% here), so a run is judged against the spread
of the window's per-run medians, not against one stored run's samples:

- `window_interval`: the current run's median over the window's location (the median of its runs'
  medians), with a prediction interval from the window's between-run spread (1.4826 x the MAD of
  the log run medians, Student's t with n-1 degrees of freedom, widened by sqrt(1 + 1/n) for the
  location's own uncertainty). That ratio and interval go to `harness.verdict.decide`, the one rule.
- `find_steps`: change points in a series of per-run medians, by binary segmentation: the split
  that most lowers the L1 cost (sum of absolute log deviations from each side's median, as asv's
  step detection uses), kept when both sides have `min_size` runs, the two levels differ by more
  than `threshold`, and a Mann-Whitney U test tells the sides apart (p < `alpha`); then each side
  is split again. A step says where a level began: the first run of the new level.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

MIN_WINDOW = 3
MAD_TO_SD = 1.4826


@dataclass(frozen=True)
class WindowInterval:
    ratio: float  # current median / window location
    low: float
    high: float
    location: float
    spread: float  # relative between-run spread (robust sd of log run medians)
    runs: int
    method: str


def robust_spread(values: Sequence[float]) -> float:
    """1.4826 x the median absolute deviation of log values: a standard deviation of relative changes
    that one outlying night cannot inflate."""
    logs = np.log(np.asarray(values, dtype=float))
    return float(MAD_TO_SD * np.median(np.abs(logs - np.median(logs))))


def window_interval(current: float, window: Sequence[float], confidence: float = 0.95) -> WindowInterval | None:
    """The ratio of `current` to the window's location with a prediction interval for one new run;
    None with fewer than `MIN_WINDOW` runs (no spread to judge by) or non-positive values."""
    values = [v for v in window if v is not None and math.isfinite(v) and v > 0]
    if len(values) < MIN_WINDOW or not (current and math.isfinite(current) and current > 0):
        return None
    from scipy.stats import t

    location = float(np.median(values))
    spread = robust_spread(values)
    n = len(values)
    half = float(t.ppf(1 - (1 - confidence) / 2, n - 1)) * spread * math.sqrt(1 + 1 / n)
    ratio = current / location
    return WindowInterval(ratio, ratio * math.exp(-half), ratio * math.exp(half), location, spread, n,
                          f"window of {n} runs (spread {spread:.1%})")


@dataclass(frozen=True)
class Step:
    index: int  # the first point of the new level
    before: float  # median level before
    after: float  # median level after
    p_value: float

    @property
    def change(self) -> float:
        return self.after / self.before - 1


def _cost(logs: np.ndarray) -> float:
    return float(np.abs(logs - np.median(logs)).sum()) if logs.size else 0.0


def find_steps(values: Sequence[float], threshold: float = 0.10, alpha: float = 0.05, min_size: int = 4) -> list[Step]:
    """Change points of a positive series, in order (see the module docstring)."""
    x = np.asarray(values, dtype=float)
    if x.size < 2 * min_size or not np.all(np.isfinite(x) & (x > 0)):
        return []
    logs = np.log(x)
    steps: list[Step] = []
    _split(logs, 0, x.size, threshold, alpha, min_size, steps)
    return sorted(steps, key=lambda s: s.index)


def _split(logs: np.ndarray, lo: int, hi: int, threshold: float, alpha: float, min_size: int, out: list[Step]) -> None:
    if hi - lo < 2 * min_size:
        return
    segment = logs[lo:hi]
    whole = _cost(segment)
    best, at = whole, None
    for k in range(min_size, segment.size - min_size + 1):
        cost = _cost(segment[:k]) + _cost(segment[k:])
        if cost < best:
            best, at = cost, k
    if at is None:
        return
    left, right = segment[:at], segment[at:]
    before, after = float(np.exp(np.median(left))), float(np.exp(np.median(right)))
    if max(after / before, before / after) <= 1 + threshold:
        return
    from scipy.stats import mannwhitneyu

    p = float(mannwhitneyu(left, right, alternative="two-sided").pvalue)
    if not p < alpha:
        return
    out.append(Step(lo + at, before, after, p))
    _split(logs, lo, lo + at, threshold, alpha, min_size, out)
    _split(logs, lo + at, hi, threshold, alpha, min_size, out)
