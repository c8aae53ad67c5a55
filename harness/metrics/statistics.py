"""Summary statistics for timings: median, p90, IQR and a bootstrap confidence interval of the median.

Pure functions over lists of floats, so they can be tested against known distributions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NOISY_RELATIVE_IQR = 0.10


@dataclass(frozen=True)
class Summary:
    median: float
    p90: float
    iqr: float
    ci_low: float
    ci_high: float
    n: int

    @property
    def noisy(self) -> bool:
        """Relative spread (IQR over median) above 10%: the number deserves suspicion."""
        return self.median > 0 and self.iqr / self.median > NOISY_RELATIVE_IQR


def bootstrap_ci(
    samples: np.ndarray, stat=np.median, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of `stat`; deterministic for a given seed."""
    samples = np.asarray(samples, dtype=float)
    if samples.size < 2:
        value = float(stat(samples)) if samples.size else float("nan")
        return value, value
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, samples.size, size=(resamples, samples.size))
    stats = stat(samples[idx], axis=1)
    alpha = (1 - confidence) / 2
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


def summarize(samples: list[float], confidence: float = 0.95, seed: int = 0) -> Summary:
    x = np.asarray(samples, dtype=float)
    q1, median, q3, p90 = np.quantile(x, [0.25, 0.5, 0.75, 0.9])
    low, high = bootstrap_ci(x, confidence=confidence, seed=seed)
    return Summary(float(median), float(p90), float(q3 - q1), low, high, int(x.size))


def ratio_ci(
    numerator: list[float], denominator: list[float], confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Ratio of medians with a bootstrap interval, resampling both sides independently."""
    a = np.asarray(numerator, dtype=float)
    b = np.asarray(denominator, dtype=float)
    rng = np.random.default_rng(seed)
    ra = np.median(a[rng.integers(0, a.size, size=(resamples, a.size))], axis=1)
    rb = np.median(b[rng.integers(0, b.size, size=(resamples, b.size))], axis=1)
    ratios = ra / rb
    alpha = (1 - confidence) / 2
    return float(np.median(a) / np.median(b)), float(np.quantile(ratios, alpha)), float(np.quantile(ratios, 1 - alpha))
