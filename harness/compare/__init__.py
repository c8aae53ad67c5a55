"""`python -m harness compare RUN --baseline DIR_OR_FILE`: has this run regressed against stored results?

A timing change counts only when it is both large (beyond `--threshold`) and real: a two-sided
Mann-Whitney U test on the raw per-step samples (p < `--alpha`) when both sides have at least
`MIN_SAMPLES`, otherwise non-overlapping 95% intervals of the median (asv's fallback). Peak memory
and energy per token are one number per side, with no noise estimate, so the threshold alone decides.
Large changes that are not significant are still listed (asv#752: hiding them hides real noise).

Exit status is the CI signal: 0 no regression, 1 regression (slower, bigger, a case that failed or
vanished), 2 bad input or environments that may not be compared (never a silent mix).

A baseline is either a run folder or a compact JSON file written by `--save-baseline` (see
docs/compare.md for the format); both load into the same `Results`.

The package follows the data: `records` (what is compared), `reference` (loading a run or a stored
reference, saving one), `decide` (the pure decision), `render` (text, markdown, CSV, JSON) and
`command` (the CLI).
"""
from harness.compare.command import environment_mismatch, main, run_comparison
from harness.compare.decide import (
    BETTER_INSIGNIFICANT,
    FAILED,
    FIXED,
    IMPROVEMENT,
    METRICS,
    MISSING,
    NEW,
    NOT_COMPARED,
    REGRESSION,
    REGRESSIONS,
    STILL_FAILING,
    UNCHANGED,
    WORSE_INSIGNIFICANT,
    Comparison,
    Finding,
    Metric,
    compare,
    compare_case,
)
from harness.compare.records import CaseResult, CompareError, Results
from harness.compare.reference import load_results, read_baseline, save_baseline
from harness.compare.render import render

__all__ = [
    "BETTER_INSIGNIFICANT", "FAILED", "FIXED", "IMPROVEMENT", "METRICS", "MISSING", "NEW", "NOT_COMPARED",
    "REGRESSION", "REGRESSIONS", "STILL_FAILING", "UNCHANGED", "WORSE_INSIGNIFICANT", "CaseResult", "CompareError",
    "Comparison", "Finding", "Metric", "Results", "compare", "compare_case", "environment_mismatch", "load_results",
    "main", "read_baseline", "render", "run_comparison", "save_baseline",
]
