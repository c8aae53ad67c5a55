"""The decision, pure: the metrics compared, the verdicts, and whether a change is large (beyond the
threshold) and real (significant)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from harness.compare.records import CaseResult, Results
from harness.compare.values import usable
from harness.metrics.statistics import NOISY_RELATIVE_IQR
from harness.results import COLUMNS

MIN_SAMPLES = 5
CI_LEVEL = "95%"


@dataclass(frozen=True)
class Metric:
    """A result column compare decides on; its unit, direction and `*_source` come from the schema."""

    name: str
    timing: bool  # decided by the latency samples' test; otherwise by the threshold alone

    @property
    def unit(self) -> str:
        return COLUMNS[self.name].unit

    @property
    def higher_is_better(self) -> bool:
        return COLUMNS[self.name].higher_is_better

    @property
    def source(self) -> str | None:
        """The '*_source' field that must agree for values to be comparable."""
        return COLUMNS[self.name].source


METRICS = (
    Metric("latency_ms_median", timing=True),
    Metric("tokens_per_s", timing=True),
    Metric("peak_memory_bytes", timing=False),
    Metric("energy_j_per_token", timing=False),
)

# Verdicts. The first three fail the comparison.
REGRESSION, MISSING, FAILED = "regression", "missing", "failed"
WORSE_INSIGNIFICANT, BETTER_INSIGNIFICANT = "worse, not significant", "better, not significant"
IMPROVEMENT, UNCHANGED, FIXED, STILL_FAILING, NEW, NOT_COMPARED = (
    "improvement", "unchanged", "fixed", "still failing", "new", "not compared")
REGRESSIONS = (REGRESSION, MISSING, FAILED)
NOISY_NOTE = "noisy timing"
ORDER = (FAILED, MISSING, REGRESSION, WORSE_INSIGNIFICANT, STILL_FAILING, NOT_COMPARED, IMPROVEMENT,
         BETTER_INSIGNIFICANT, FIXED, NEW, UNCHANGED)


@dataclass(frozen=True)
class Finding:
    """One line of the comparison: a (case, workload, metric) or, for status changes, the case itself."""

    case_id: str
    workload: str
    label: str
    metric: str
    baseline: float | None
    current: float | None
    change: float | None  # current / baseline - 1
    test: str  # how significance was decided
    p_value: float | None
    verdict: str
    note: str = ""

    @property
    def regression(self) -> bool:
        return self.verdict in REGRESSIONS


@dataclass(frozen=True)
class Comparison:
    baseline: Results
    current: Results
    threshold: float
    alpha: float
    findings: list[Finding]
    mismatch: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[Finding]:
        return [f for f in self.findings if f.regression]

    @property
    def noisy_cases(self) -> int:
        """(case, workload) pairs whose timing was noisy on either side: a busy machine, verdicts to distrust."""
        return len({(f.case_id, f.workload) for f in self.findings if f.note.startswith(NOISY_NOTE)})

    @property
    def timed_cases(self) -> int:
        return len({(f.case_id, f.workload) for f in self.findings if f.metric == "latency_ms_median"})

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for finding in self.findings:
            out[finding.verdict] = out.get(finding.verdict, 0) + 1
        return {v: out[v] for v in ORDER if v in out}



def timing_test(base: CaseResult, current: CaseResult, alpha: float) -> tuple[str, float | None, bool]:
    """(method, p-value, significant) for the latency difference between two measurements of a case."""
    if len(base.samples_ms) >= MIN_SAMPLES and len(current.samples_ms) >= MIN_SAMPLES:
        try:
            from scipy.stats import mannwhitneyu
        except ImportError:  # scipy is a dependency; without it fall back to the intervals below
            pass
        else:
            p = float(mannwhitneyu(base.samples_ms, current.samples_ms, alternative="two-sided").pvalue)
            method = f"mann-whitney n={len(base.samples_ms)}/{len(current.samples_ms)}"
            return method, (None if math.isnan(p) else p), (not math.isnan(p) and p < alpha)
    bounds = (base.latency_ms_ci_low, base.latency_ms_ci_high, current.latency_ms_ci_low, current.latency_ms_ci_high)
    if all(usable(b) for b in bounds):
        b_lo, b_hi, c_lo, c_hi = bounds
        apart = b_hi < c_lo or c_hi < b_lo
        return f"{CI_LEVEL} CIs {'apart' if apart else 'overlap'}", None, apart
    return "threshold only (no samples or CI)", None, True


def metric_finding(
    metric: Metric, base: CaseResult, current: CaseResult, threshold: float, test: tuple[str, float | None, bool]
) -> Finding | None:
    """The verdict on one metric of a case measured ok on both sides; None when neither side has it."""
    b, c = getattr(base, metric.name), getattr(current, metric.name)
    finding = dict(case_id=base.case_id, workload=base.workload, label=base.label or current.label, metric=metric.name,
                   baseline=b, current=c)
    if not usable(b) and not usable(c):
        return None
    if not usable(b) or not usable(c):
        missing_side, source = ("baseline", base) if not usable(b) else ("current run", current)
        reason = getattr(source, metric.source) if metric.source else None
        return Finding(**finding, change=None, test="-", p_value=None, verdict=NOT_COMPARED,
                       note=f"not measured in the {missing_side}" + (f" ({reason})" if reason else ""))
    if metric.source and getattr(base, metric.source) != getattr(current, metric.source):
        return Finding(**finding, change=None, test="-", p_value=None, verdict=NOT_COMPARED,
                       note=f"measured by {getattr(base, metric.source)} in the baseline, "
                            f"{getattr(current, metric.source)} now")
    method, p, significant = test if metric.timing else ("threshold only", None, True)
    worse = b / c if metric.higher_is_better else c / b  # > 1 means worse, symmetric in log space
    if worse > 1 + threshold:
        verdict = REGRESSION if significant else WORSE_INSIGNIFICANT
    elif worse < 1 / (1 + threshold):
        verdict = IMPROVEMENT if significant else BETTER_INSIGNIFICANT
    else:
        verdict = UNCHANGED
    return Finding(**finding, change=c / b - 1, test=method, p_value=p, verdict=verdict,
                   note=_noise_note(base, current) if metric.timing else "")


def _noise_note(base: CaseResult, current: CaseResult) -> str:
    """Say when either side's spread (IQR / median) was above the 'noisy' line: the machine was busy."""
    spread = {side: r.latency_ms_iqr / r.latency_ms_median for side, r in (("baseline", base), ("now", current))
              if usable(r.latency_ms_iqr) and usable(r.latency_ms_median)}
    if not any(v > NOISY_RELATIVE_IQR for v in spread.values()):
        return ""
    return f"{NOISY_NOTE}: IQR/median " + ", ".join(f"{v:.0%} {side}" for side, v in spread.items())


def compare_case(base: CaseResult | None, current: CaseResult | None, threshold: float, alpha: float) -> list[Finding]:
    """Findings for one (case, workload): status changes first, then each metric when both are ok."""
    either = base or current
    assert either is not None

    def status(verdict: str, note: str = "") -> list[Finding]:
        return [Finding(either.case_id, either.workload, either.label, "status", None, None, None, "-", None,
                        verdict, note)]

    if base is None:
        return status(NEW, f"not in the baseline; status {current.status}")
    if current is None:
        if base.ok:
            return status(MISSING, "in the baseline, absent from this run")
        return status(NOT_COMPARED, f"absent from this run; {base.status} in the baseline")
    if not base.ok and not current.ok:
        return status(STILL_FAILING, f"{current.status}: {current.error or ''}".rstrip(": "))
    if not current.ok:
        return status(FAILED, f"{current.status}: {current.error or 'no error recorded'}")
    if not base.ok:
        return status(FIXED, f"{base.status} in the baseline, ok now")
    test = timing_test(base, current, alpha)
    found = (metric_finding(m, base, current, threshold, test) for m in METRICS)
    return [f for f in found if f is not None]


def compare(baseline: Results, current: Results, threshold: float = 0.10, alpha: float = 0.01) -> list[Finding]:
    """All findings, most severe first; within a verdict, in baseline order then new cases."""
    keys = list(baseline.cases) + [k for k in current.cases if k not in baseline.cases]
    findings = [f for k in keys for f in compare_case(baseline.cases.get(k), current.cases.get(k), threshold, alpha)]
    return sorted(findings, key=lambda f: ORDER.index(f.verdict))
