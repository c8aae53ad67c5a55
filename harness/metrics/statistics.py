"""Summary statistics for timings: median, p90, IQR and confidence intervals of a median and a ratio.

A case is timed in several worker processes, so samples come as one list of per-step seconds per
process. Intervals come from a hierarchical bootstrap (processes, then steps within them), so they
include the variance between processes that a single process's steps cannot show. Pure functions
over lists of floats, so they can be tested against known distributions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

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
    processes: int = 1

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


def summarize(samples: Any, confidence: float = 0.95, seed: int = 0) -> Summary:
    """Median, p90 and IQR of all steps pooled; the interval from `median_ci`. `samples`: one flat
    list (one process) or one list per process."""
    groups = as_groups(samples)
    x = np.concatenate(groups) if groups else np.array([np.nan])
    q1, median, q3, p90 = np.quantile(x, [0.25, 0.5, 0.75, 0.9])
    _, low, high = median_ci(groups, confidence=confidence, seed=seed)
    return Summary(float(median), float(p90), float(q3 - q1), low, high, int(x.size) if groups else 0, len(groups))


Groups = Sequence[Sequence[float]]
"""Timing samples per worker process: one inner sequence of per-step seconds per process."""


def as_groups(samples: Any) -> list[np.ndarray]:
    """Per-process arrays from `samples_s` as stored: a list of per-process lists, or (runs from
    before processes were recorded) one flat list, which is one process. Empty groups are dropped."""
    if samples is None:
        return []
    items = list(samples)
    if items and not isinstance(items[0], (list, tuple, np.ndarray)):
        items = [items]
    groups = [np.asarray(g, dtype=float) for g in items]
    return [g[np.isfinite(g)] for g in groups if np.isfinite(g).any()]


def _draw(groups: list[np.ndarray], rng: np.random.Generator, resamples: int, processes=None, steps=None):
    """One hierarchical resample per row: processes drawn with replacement, then steps drawn with
    replacement within each drawn process. Returns (values [resamples, P, n_max] with NaN padding,
    the process draw, the uniform step draw) so a paired side can reuse the same draws."""
    sizes = np.array([g.size for g in groups])
    padded = np.full((len(groups), sizes.max()), np.nan)
    for i, g in enumerate(groups):
        padded[i, : g.size] = g
    if processes is None:
        processes = rng.integers(0, len(groups), size=(resamples, len(groups)))
    if steps is None:
        steps = rng.random((resamples, len(groups), sizes.max()))
    n = sizes[processes][..., None]
    index = np.minimum((steps * n).astype(int), n - 1)
    values = padded[processes[..., None], index]
    values[np.arange(sizes.max())[None, None, :] >= n] = np.nan  # a short process contributes its own count
    return values, processes, steps


def hierarchical_bootstrap(groups: Groups, resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """Bootstrap distribution of the pooled median over processes, then steps.

    Resampling processes first carries the between-process variance (a process that stalled, a
    different memory layout, another job on the machine for a while) into the interval; resampling
    steps alone treats every step as independent and gives an interval that is too narrow whenever
    processes differ (issue: a stalled process with tight samples). With one process it reduces to
    the ordinary bootstrap of the median.
    """
    arrays = as_groups(groups)
    if not arrays:
        return np.full(resamples, np.nan)
    values, _, _ = _draw(arrays, np.random.default_rng(seed), resamples)
    return np.nanmedian(values.reshape(resamples, -1), axis=1)


def pooled_median(groups: Groups) -> float:
    arrays = as_groups(groups)
    return float(np.median(np.concatenate(arrays))) if arrays else float("nan")


def few_processes_factor(processes: int, confidence: float = 0.95, dof: int | None = None) -> float:
    """How much to widen a bootstrap interval resampled over `processes` clusters.

    With few clusters the bootstrap sees too little between-process variance: it is biased low by
    (P-1)/P, and its spread is only estimated from P values, so a normal quantile is too small. The
    usual small-cluster fix (Cameron, Gelbach and Miller, 2008) scales by sqrt(P/(P-1)) and uses
    Student's t with `dof` degrees of freedom (P-1; two independent sides: Pa+Pb-2) instead of the
    normal quantile. 1 for a single process, where there is nothing to correct (and no
    between-process variance in the interval).
    """
    if processes < 2:
        return 1.0
    from scipy.stats import norm, t

    q = 1 - (1 - confidence) / 2
    dof = processes - 1 if dof is None else dof
    return math.sqrt(processes / (processes - 1)) * float(t.ppf(q, dof) / norm.ppf(q))


def _interval(estimate: float, stats: np.ndarray, processes: int, confidence: float,
              dof: int | None = None) -> tuple[float, float]:
    """Percentile interval of `stats`, widened around `estimate` in log space (timings and their
    ratios are positive and skewed) by `few_processes_factor`."""
    alpha = (1 - confidence) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    factor = few_processes_factor(processes, confidence, dof)
    if factor == 1.0 or not (estimate > 0 and low > 0):
        return float(low), float(high)
    centre = math.log(estimate)
    return (float(math.exp(centre + (math.log(low) - centre) * factor)),
            float(math.exp(centre + (math.log(high) - centre) * factor)))


def median_ci(groups: Groups, confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(pooled median, low, high) of per-process timing samples.

    The interval is the hierarchical bootstrap's percentile interval, widened for few processes
    (`few_processes_factor`); with one process it is the plain bootstrap of the median over steps.
    """
    arrays = as_groups(groups)
    if not arrays:
        return float("nan"), float("nan"), float("nan")
    estimate = pooled_median(arrays)
    low, high = _interval(estimate, hierarchical_bootstrap(arrays, resamples, seed), len(arrays), confidence)
    return estimate, low, high


def ratio_ci(
    numerator: Groups, denominator: Groups, confidence: float = 0.95, resamples: int = 2000, seed: int = 0,
    paired: bool = False,
) -> tuple[float, float, float]:
    """Ratio of pooled medians with a hierarchical bootstrap interval.

    Each side is resampled over processes, then steps. `paired=True` is for interleaved timing
    (A B A B in one process): process i of the numerator ran in the same process as process i of the
    denominator, and step j of one next to step j of the other, so both sides reuse the same draws and
    what the two share (a slow process, a busy minute) cancels in the ratio. A flat list is one process.
    The interval is widened for few processes as in `median_ci`: by the smaller side's count, with
    P-1 degrees of freedom when paired and Pa+Pb-2 when the sides are independent.
    """
    a, b = as_groups(numerator), as_groups(denominator)
    if not a or not b:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    if paired and [g.size for g in a] != [g.size for g in b]:
        raise ValueError("paired ratio needs the same number of steps per process on both sides")
    va, processes, steps = _draw(a, rng, resamples)
    vb, _, _ = _draw(b, rng, resamples, processes, steps) if paired else _draw(b, rng, resamples)
    ratios = np.nanmedian(va.reshape(resamples, -1), axis=1) / np.nanmedian(vb.reshape(resamples, -1), axis=1)
    estimate = pooled_median(a) / pooled_median(b)
    dof = len(a) - 1 if paired else len(a) + len(b) - 2
    return (estimate, *_interval(estimate, ratios, min(len(a), len(b)), confidence, dof))


def paired_mean_ci(differences: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of per-seed paired differences, Student's t interval over the seeds.

    One value per seed (MoE minus its baseline trained on the same seed): what the two runs of a seed
    share, the data order and the initial weights' luck, cancels in the difference, and the spread
    between seeds is what the interval carries. Seeds are few (3 is usual), too few for a bootstrap,
    whose percentile interval from 3 values is far too narrow; t with n-1 degrees of freedom is the
    textbook paired interval. Fewer than 2 finite values: no interval (NaN bounds).
    """
    x = np.asarray(list(differences), dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(x.mean())
    if x.size < 2:
        return mean, float("nan"), float("nan")
    from scipy.stats import t

    half = float(t.ppf(1 - (1 - confidence) / 2, x.size - 1)) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return mean, mean - half, mean + half


def paired_ratio_ci(ratios: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(geometric mean, low, high) of per-seed ratios (speedups): `paired_mean_ci` on their logarithms,
    since a ratio of 2 and one of 0.5 are equally far from 1. Non-positive values are left out."""
    x = np.asarray(list(ratios), dtype=float)
    x = x[np.isfinite(x) & (x > 0)]
    mean, low, high = paired_mean_ci(np.log(x), confidence)
    return tuple(float(np.exp(v)) if math.isfinite(v) else float("nan") for v in (mean, low, high))  # type: ignore[return-value]


def latency_columns(stats: Summary, tokens_per_step: float) -> dict[str, Any]:
    """A row's timing columns from the `Summary` of its step seconds. The one place that turns them into
    tokens/s and millisecond latencies, so a worker's row, a multi-rank group's and a pooled row agree."""
    return {
        "tokens_per_s": tokens_per_step / stats.median,
        "latency_ms_median": stats.median * 1e3,
        "latency_ms_p90": stats.p90 * 1e3,
        "latency_ms_iqr": stats.iqr * 1e3,
        "latency_ms_ci_low": stats.ci_low * 1e3,
        "latency_ms_ci_high": stats.ci_high * 1e3,
        "repeats": stats.n,
        "noisy": stats.noisy,
    }


def process_log_ratios(a: Groups, b: Groups) -> list[float]:
    """log(median of a / median of b) per process, for interleaved timing where process i timed both
    sides: one replicate of the pair's ratio per process."""
    medians = [(float(np.median(x)), float(np.median(y))) for x, y in zip(as_groups(a), as_groups(b)) if len(x) and len(y)]
    return [math.log(x / y) for x, y in medians if x > 0 and y > 0]


def pooled_variance(variances: Sequence[float], counts: Sequence[int]) -> tuple[float, int]:
    """(variance, degrees of freedom) pooled over pairs: sum of (P - 1) * variance over sum of (P - 1).

    Each pair's own variance of its processes' log ratios rests on P - 1 degrees of freedom, one with
    the default two processes, where Student's t widens an interval about 9x and nearly nothing can
    be decided. How much two processes of identical code differ is a property of the machine and the
    run more than of the case, so one variance is estimated from every pair. Pairs with one process or
    a non-finite variance are left out; (NaN, 0) when none is left.
    """
    v, n = (np.asarray(list(x), dtype=float) for x in (variances, counts))
    usable = np.isfinite(v) & (n >= 2)
    dof = int((n[usable] - 1).sum())
    if dof == 0:
        return float("nan"), 0
    return float(((n[usable] - 1) * v[usable]).sum() / dof), dof


def pooled_ratio_intervals(
    means: Sequence[float], variances: Sequence[float], counts: Sequence[int], pooled: float, dof: int,
    confidence: float = 0.95,
) -> list[tuple[float, float, float]]:
    """(ratio, low, high) per pair: exp(mean +- t(dof) * sqrt(v / P)) on the pair's P per-process log
    ratios, with v the larger of the pooled variance (`pooled_variance`, `dof` degrees of freedom)
    and the pair's own.

    The pooled variance gives the interval its degrees of freedom; the pair's own variance keeps a
    pair whose processes disagree (an offset fixed within each process, which the counterbalanced
    order of interleaving turns into disagreement) from borrowing the calm of the others. NaN bounds
    for a pair with one process or no finite mean, and for every pair when the pooled variance has
    fewer than 2 degrees of freedom."""
    nan = float("nan")
    q = None
    if dof >= 2 and math.isfinite(pooled):
        from scipy.stats import t

        q = float(t.ppf(1 - (1 - confidence) / 2, dof))
    out = []
    for mean, own, count in zip(means, variances, counts):
        mean, own = float(mean), float(own)
        ratio = math.exp(mean) if math.isfinite(mean) else nan
        if q is None or not math.isfinite(mean) or not count >= 2:
            out.append((ratio, nan, nan))
            continue
        half = q * math.sqrt(max(pooled, own if math.isfinite(own) else 0.0) / count)
        out.append((ratio, math.exp(mean - half), math.exp(mean + half)))
    return out
