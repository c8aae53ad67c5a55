"""The decision, pure: the metrics compared, the verdicts, and whether a change is large (beyond the
threshold), real (its interval excludes no change) and measured on undisturbed runs.

Timing is judged by the one verdict rule (`harness.verdict.decide`) on the ratio of the two runs'
median latencies, with a hierarchical bootstrap interval over each run's processes, then steps."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.compare.records import CaseResult, Results
from harness.metrics.statistics import NOISY_RELATIVE_IQR, ratio_ci
from harness.results import COLUMNS
from harness.values import usable
from harness.verdict import CONTENDED, FASTER, ONE_PROCESS, SAME, SLOWER, UNSTABLE, Disturbance, decide


@dataclass(frozen=True)
class Metric:
    """A result column compare decides on; its unit, direction and `*_source` come from the schema."""

    name: str
    timing: bool  # decided by the samples' interval; otherwise by the threshold alone
    disturbable: bool = False  # a contended or unstable side makes a large change inconclusive

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
    Metric("energy_j_per_token", timing=False, disturbable=True),
)

# Verdicts. The first three fail the comparison.
REGRESSION, MISSING, FAILED = "regression", "missing", "failed"
INCONCLUSIVE = "inconclusive"
BETTER_INSIGNIFICANT = "better, not significant"
IMPROVEMENT, UNCHANGED, FIXED, STILL_FAILING, NEW, NOT_COMPARED = (
    "improvement", "unchanged", "fixed", "still failing", "new", "not compared")
REGRESSIONS = (REGRESSION, MISSING, FAILED)
NOISY_NOTE = "noisy timing"
ORDER = (FAILED, MISSING, REGRESSION, INCONCLUSIVE, STILL_FAILING, NOT_COMPARED, IMPROVEMENT,
         BETTER_INSIGNIFICANT, FIXED, NEW, UNCHANGED)


@dataclass(frozen=True)
class Finding:
    """One line of the comparison: a (case, workload, metric) or, for status changes, the case itself."""

    case_id: str
    workload: str
    label: str
    metric: str
    baseline: float | None  # the reference's value (named `baseline` in the JSON and CSV output)
    current: float | None
    change: float | None  # current / reference - 1
    test: str  # how it was decided
    p_value: float | None  # kept for the file formats; the interval decides
    verdict: str
    note: str = ""
    ci_low: float | None = None  # interval of current / reference (timing)
    ci_high: float | None = None

    @property
    def regression(self) -> bool:
        return self.verdict in REGRESSIONS


@dataclass(frozen=True)
class Comparison:
    reference: Results
    current: Results
    threshold: float
    alpha: float
    findings: list[Finding]
    mismatch: list[str] = field(default_factory=list)
    aa_spread: float | None = None

    @property
    def regressions(self) -> list[Finding]:
        return [f for f in self.findings if f.regression]

    @property
    def inconclusive(self) -> list[Finding]:
        return [f for f in self.findings if f.verdict == INCONCLUSIVE]

    @property
    def effective_threshold(self) -> float:
        """The smallest change that can be a regression: the threshold, or the A/A spread when larger."""
        return max(self.threshold, self.aa_spread or 0.0)

    @property
    def exit_code(self) -> int:
        return 1 if self.regressions else 3 if self.inconclusive else 0

    @property
    def noisy_cases(self) -> int:
        """(case, workload) pairs whose timing was noisy on either side: a busy machine, verdicts to distrust."""
        return len({(f.case_id, f.workload) for f in self.findings if NOISY_NOTE in f.note})

    @property
    def timed_cases(self) -> int:
        return len({(f.case_id, f.workload) for f in self.findings if f.metric == "latency_ms_median"})

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for finding in self.findings:
            out[finding.verdict] = out.get(finding.verdict, 0) + 1
        return {v: out[v] for v in ORDER if v in out}



def timing_decision(base: CaseResult, current: CaseResult, threshold: float, confidence: float,
                    aa_measured: bool = False) -> dict[str, Any]:
    """The verdict on a case's timing: current / reference median latency with its hierarchical interval,
    judged by `harness.verdict.decide` with the threshold as the band of 'same' (`aa_measured`: the
    threshold holds an A/A spread, so single-process runs can be judged)."""
    disturbed = ([Disturbance("reference", d.kind, d.reason) for d in base.disturbed]
                 + [Disturbance("current run", d.kind, d.reason) for d in current.disturbed])
    if base.samples_ms and current.samples_ms:
        ratio, low, high = ratio_ci(current.samples_ms, base.samples_ms, confidence=confidence)
        processes = min(len(base.samples_ms), len(current.samples_ms))
        method = f"hierarchical {confidence:.0%} CI, processes {len(base.samples_ms)}/{len(current.samples_ms)}"
    else:  # a table without raw samples: the two rows' own intervals, as a box
        b, c = base.latency_ms_median, current.latency_ms_median
        bounds = (base.latency_ms_ci_low, base.latency_ms_ci_high, current.latency_ms_ci_low, current.latency_ms_ci_high)
        if not all(usable(v) for v in (b, c, *bounds)):
            return {"verdict": decide(None, None, None, disturbed=disturbed), "ratio": None, "low": None, "high": None,
                    "method": "no samples or CI"}
        ratio, low, high = c / b, bounds[2] / bounds[1], bounds[3] / bounds[0]
        processes = None
        method = "box of the two 95% CIs (no samples)"
    verdict = decide(ratio, low, high, higher_is_better=False, margin=threshold, disturbed=disturbed,
                     processes=processes, margin_measured=aa_measured)
    return {"verdict": verdict, "ratio": ratio, "low": low, "high": high, "method": method}


def timing_finding_verdict(decision: dict[str, Any], threshold: float) -> tuple[str, str]:
    """(compare verdict, note) from the timing decision: a regression is slower beyond the threshold;
    whatever cannot rule out a slowdown beyond it (disturbed, too wide, slower by an uncertain amount)
    is inconclusive."""
    verdict, ratio, high = decision["verdict"], decision["ratio"], decision["high"]
    if verdict.verdict == SAME:
        return UNCHANGED, ""
    if verdict.verdict == SLOWER:
        if ratio > 1 + threshold:
            return REGRESSION, ""
        return INCONCLUSIVE, f"slower, possibly beyond the {threshold:.0%} threshold ({verdict.reason})"
    if verdict.verdict == FASTER:
        return (IMPROVEMENT if ratio < 1 / (1 + threshold) else UNCHANGED), ""
    if verdict.cause in (CONTENDED, UNSTABLE, ONE_PROCESS) or high is None or high > 1 + threshold:
        return INCONCLUSIVE, verdict.reason
    better = ratio is not None and ratio < 1 / (1 + threshold)
    return (BETTER_INSIGNIFICANT if better else UNCHANGED), verdict.reason


def metric_finding(
    metric: Metric, base: CaseResult, current: CaseResult, threshold: float, decision: dict[str, Any]
) -> Finding | None:
    """The verdict on one metric of a case measured ok on both sides; None when neither side has it."""
    b, c = getattr(base, metric.name), getattr(current, metric.name)
    finding = dict(case_id=base.case_id, workload=base.workload, label=base.label or current.label, metric=metric.name,
                   baseline=b, current=c)
    if not usable(b) and not usable(c):
        return None
    if not usable(b) or not usable(c):
        missing_side, source = ("reference", base) if not usable(b) else ("current run", current)
        reason = getattr(source, metric.source) if metric.source else None
        return Finding(**finding, change=None, test="-", p_value=None, verdict=NOT_COMPARED,
                       note=f"not measured in the {missing_side}" + (f" ({reason})" if reason else ""))
    if metric.source and getattr(base, metric.source) != getattr(current, metric.source):
        return Finding(**finding, change=None, test="-", p_value=None, verdict=NOT_COMPARED,
                       note=f"measured by {getattr(base, metric.source)} in the reference, "
                            f"{getattr(current, metric.source)} now")
    if metric.timing:
        verdict, note = timing_finding_verdict(decision, threshold)
        low, high = decision["low"], decision["high"]
        if metric.higher_is_better and low is not None and high is not None:  # tokens/s: the latency interval inverted
            low, high = 1 / high, 1 / low
        notes = "; ".join(n for n in (note, _noise_note(base, current)) if n)
        return Finding(**finding, change=c / b - 1, test=decision["method"], p_value=None, verdict=verdict, note=notes,
                       ci_low=low, ci_high=high)
    worse = b / c if metric.higher_is_better else c / b  # > 1 means worse, symmetric in log space
    disturbed = metric.disturbable and (base.disturbed or current.disturbed)
    if disturbed and worse > 1 + threshold:
        why = "; ".join(str(d) for d in (*base.disturbed, *current.disturbed))
        return Finding(**finding, change=c / b - 1, test="threshold only", p_value=None, verdict=INCONCLUSIVE, note=why)
    verdict = REGRESSION if worse > 1 + threshold else IMPROVEMENT if worse < 1 / (1 + threshold) else UNCHANGED
    return Finding(**finding, change=c / b - 1, test="threshold only", p_value=None, verdict=verdict)


def _noise_note(base: CaseResult, current: CaseResult) -> str:
    """Say when either side's spread (IQR / median) was above the 'noisy' line: the machine was busy."""
    spread = {side: r.latency_ms_iqr / r.latency_ms_median for side, r in (("reference", base), ("now", current))
              if usable(r.latency_ms_iqr) and usable(r.latency_ms_median)}
    if not any(v > NOISY_RELATIVE_IQR for v in spread.values()):
        return ""
    return f"{NOISY_NOTE}: IQR/median " + ", ".join(f"{v:.0%} {side}" for side, v in spread.items())


def compare_case(base: CaseResult | None, current: CaseResult | None, threshold: float, alpha: float,
                 aa_measured: bool = False) -> list[Finding]:
    """Findings for one (case, workload): status changes first, then each metric when both are ok."""
    either = base or current
    assert either is not None

    def status(verdict: str, note: str = "") -> list[Finding]:
        return [Finding(either.case_id, either.workload, either.label, "status", None, None, None, "-", None,
                        verdict, note)]

    if base is None:
        return status(NEW, f"not in the reference; status {current.status}")
    if current is None:
        if base.ok:
            return status(MISSING, "in the reference, absent from this run")
        return status(NOT_COMPARED, f"absent from this run; {base.status} in the reference")
    if not base.ok and not current.ok:
        return status(STILL_FAILING, f"{current.status}: {current.error or ''}".rstrip(": "))
    if not current.ok:
        return status(FAILED, f"{current.status}: {current.error or 'no error recorded'}")
    if not base.ok:
        return status(FIXED, f"{base.status} in the reference, ok now")
    decision = timing_decision(base, current, threshold, 1 - alpha, aa_measured)
    found = (metric_finding(m, base, current, threshold, decision) for m in METRICS)
    return [f for f in found if f is not None]


def compare(reference: Results, current: Results, threshold: float = 0.10, alpha: float = 0.05,
            aa_measured: bool = False) -> list[Finding]:
    """All findings, most severe first; within a verdict, in reference order then new cases. `threshold`
    is the smallest regression (pass `Comparison.effective_threshold` and `aa_measured` to honour an
    A/A spread)."""
    keys = list(reference.cases) + [k for k in current.cases if k not in reference.cases]
    findings = [f for k in keys for f in compare_case(reference.cases.get(k), current.cases.get(k), threshold, alpha, aa_measured)]
    return sorted(findings, key=lambda f: ORDER.index(f.verdict))
