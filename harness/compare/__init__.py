"""`python -m harness compare RUN --baseline DIR_OR_FILE`: has this run regressed against stored results?

A timing change is judged by the one verdict rule (`harness.verdict.decide`) on the ratio of the
two runs' median latencies, with a hierarchical bootstrap interval over each run's processes, then
steps (`metrics.statistics.ratio_ci`). It is a regression only when it is real (the interval
excludes no change), large (the estimate beyond `--threshold`, or beyond the A/A spread when a run
calibrated one) and neither side was disturbed (`contended`/`unstable`). A disturbed side, or an
interval that cannot rule out a change beyond the threshold, is inconclusive: a busy runner must
not fail a build with a false regression, nor pass one it could not see. Peak memory is one number
per side with no noise estimate, so the threshold alone decides; energy likewise, unless either side
was contended.

Exit status is the CI signal: 0 no regression, 1 regression (slower, bigger, a case that failed or
vanished), 2 bad input or environments that may not be compared (never a silent mix), 3 inconclusive
(nothing regressed, but some timing was too noisy or too disturbed to decide).

The reference is either a run folder or a compact JSON file written by `--save-baseline` (see
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
    INCONCLUSIVE,
    METRICS,
    MISSING,
    NEW,
    NOT_COMPARED,
    REGRESSION,
    REGRESSIONS,
    STILL_FAILING,
    UNCHANGED,
    Comparison,
    Finding,
    Metric,
    compare,
    compare_case,
)
from harness.compare.records import CaseResult, CompareError, Results
from harness.compare.reference import load_results, read_reference, save_reference
from harness.compare.render import render

__all__ = [
    "BETTER_INSIGNIFICANT", "FAILED", "FIXED", "IMPROVEMENT", "METRICS", "MISSING", "NEW", "NOT_COMPARED",
    "REGRESSION", "REGRESSIONS", "STILL_FAILING", "UNCHANGED", "INCONCLUSIVE", "CaseResult", "CompareError",
    "Comparison", "Finding", "Metric", "Results", "compare", "compare_case", "environment_mismatch", "load_results",
    "main", "read_reference", "render", "run_comparison", "save_reference",
]
