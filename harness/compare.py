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
"""
from __future__ import annotations

import argparse
import io
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness.analysis import RunError, load, load_run_info
from harness.environment import comparable
from harness.metrics.statistics import NOISY_RELATIVE_IQR

MIN_SAMPLES = 5
CI_LEVEL = "95%"
BASELINE_FORMAT = "moe-harness-baseline"
BASELINE_VERSION = 1
SAMPLE_DIGITS = 6  # significant digits kept per stored sample: far below timer noise, keeps files small

Key = tuple[str, str]


class CompareError(Exception):
    """Bad input for compare (missing run, unreadable baseline, incomparable environments): exit 2."""


# ---------------------------------------------------------------------------------------------
# What is compared


@dataclass(frozen=True)
class CaseResult:
    """One (case, workload) as compare needs it: status, headline metrics and raw latency samples."""

    case_id: str
    workload: str
    status: str
    kind: str | None = None
    label: str = ""
    error: str | None = None
    tokens_per_s: float | None = None
    latency_ms_median: float | None = None
    latency_ms_ci_low: float | None = None
    latency_ms_ci_high: float | None = None
    latency_ms_iqr: float | None = None
    peak_memory_bytes: float | None = None
    memory_source: str | None = None
    energy_j_per_token: float | None = None
    energy_source: str | None = None
    samples_ms: tuple[float, ...] = ()

    @property
    def key(self) -> Key:
        return (self.case_id, self.workload)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> CaseResult:
        """From a run row (rows.jsonl or a results table); `samples_s` become milliseconds."""
        samples = row.get("samples_s")
        samples_ms = tuple(float(s) * 1e3 for s in samples) if isinstance(samples, (list, tuple)) else ()
        return cls(
            case_id=str(row["case_id"]), workload=str(row["workload"]), status=_text(row.get("status")) or "unknown",
            kind=_text(row.get("kind")), label=_label(row), error=_text(row.get("error")),
            tokens_per_s=_num(row.get("tokens_per_s")), latency_ms_median=_num(row.get("latency_ms_median")),
            latency_ms_ci_low=_num(row.get("latency_ms_ci_low")), latency_ms_ci_high=_num(row.get("latency_ms_ci_high")),
            latency_ms_iqr=_num(row.get("latency_ms_iqr")), peak_memory_bytes=_num(row.get("peak_memory_bytes")),
            memory_source=_text(row.get("memory_source")), energy_j_per_token=_num(row.get("energy_j_per_token")),
            energy_source=_text(row.get("energy_source")), samples_ms=samples_ms,
        )

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        record["samples_ms"] = [_round(s) for s in self.samples_ms]
        if self.peak_memory_bytes is not None:
            record["peak_memory_bytes"] = int(self.peak_memory_bytes)
        return {k: v for k, v in record.items() if v is not None and v != "" and v != []}

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> CaseResult:
        known = set(cls.__dataclass_fields__)
        values = {k: v for k, v in record.items() if k in known}
        values["samples_ms"] = tuple(float(s) for s in record.get("samples_ms", ()))
        return cls(**values)


@dataclass(frozen=True)
class Results:
    """A run or a stored baseline: where it came from, its environment fingerprint and its cases."""

    source: str
    suite: str | None
    fingerprint: dict[str, Any]
    cases: dict[Key, CaseResult]


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    higher_is_better: bool
    timing: bool  # decided by the latency samples' test; otherwise by the threshold alone
    source: str | None = None  # the '*_source' field that must agree for values to be comparable


METRICS = (
    Metric("latency_ms_median", "ms", higher_is_better=False, timing=True),
    Metric("tokens_per_s", "tok/s", higher_is_better=True, timing=True),
    Metric("peak_memory_bytes", "bytes", higher_is_better=False, timing=False, source="memory_source"),
    Metric("energy_j_per_token", "J/token", higher_is_better=False, timing=False, source="energy_source"),
)

# Verdicts. The first three fail the comparison.
REGRESSION, MISSING, FAILED = "regression", "missing", "failed"
WORSE_INSIGNIFICANT, BETTER_INSIGNIFICANT = "worse, not significant", "better, not significant"
IMPROVEMENT, UNCHANGED, FIXED, STILL_FAILING, NEW, NOT_COMPARED = (
    "improvement", "unchanged", "fixed", "still failing", "new", "not compared")
REGRESSIONS = (REGRESSION, MISSING, FAILED)
NOISY_NOTE = "noisy timing"
_ORDER = (FAILED, MISSING, REGRESSION, WORSE_INSIGNIFICANT, STILL_FAILING, NOT_COMPARED, IMPROVEMENT,
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
        return {v: out[v] for v in _ORDER if v in out}


# ---------------------------------------------------------------------------------------------
# Decisions (pure)


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
    if all(_usable(b) for b in bounds):
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
    if not _usable(b) and not _usable(c):
        return None
    if not _usable(b) or not _usable(c):
        missing_side, source = ("baseline", base) if not _usable(b) else ("current run", current)
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
              if _usable(r.latency_ms_iqr) and _usable(r.latency_ms_median)}
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
    return sorted(findings, key=lambda f: _ORDER.index(f.verdict))


# ---------------------------------------------------------------------------------------------
# Loading and saving


def load_results(path: str | Path) -> Results:
    """A run folder (rows.jsonl with raw samples, else its results table) or a baseline JSON file."""
    p = Path(path)
    if p.is_dir():
        return _from_run(p)
    if p.is_file():
        if p.suffix != ".json":
            raise CompareError(f"{p}: expected a run folder or a baseline .json file")
        return read_baseline(p)
    raise CompareError(f"{p}: no such run folder or baseline file")


def _from_run(run_dir: Path) -> Results:
    from harness.store import RunStore

    info = load_run_info(run_dir)
    rows = RunStore(run_dir).rows()
    if not rows:  # a copied run without its journal: no raw samples, so intervals decide
        frame = load(run_dir)
        rows = [{k: _plain(v) for k, v in r.items()} for r in frame.to_dict("records")]
    cases = {}
    for row in rows:
        result = CaseResult.from_row(row)
        cases[result.key] = result
    if not cases:
        raise CompareError(f"{run_dir}: the run has no result rows")
    suite = info.get("suite")
    return Results(str(run_dir), suite.get("name") if isinstance(suite, dict) else suite,
                   info.get("fingerprint") or {}, cases)


def read_baseline(path: Path) -> Results:
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CompareError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(doc, dict) or doc.get("format") != BASELINE_FORMAT:
        raise CompareError(f"{path}: not a moe-harness baseline (write one with compare RUN --save-baseline FILE)")
    if doc.get("version") != BASELINE_VERSION:
        raise CompareError(f"{path}: baseline format version {doc.get('version')}, this harness reads {BASELINE_VERSION}")
    try:
        cases = [CaseResult.from_json(record) for record in doc["cases"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise CompareError(f"{path}: malformed case record ({exc})") from None
    return Results(str(path), doc.get("suite"), doc.get("fingerprint") or {}, {c.key: c for c in cases})


def baseline_text(results: Results, created: str | None = None) -> str:
    """The baseline file: a small header, then one line per case so that refreshes diff readably."""
    header = {
        "format": BASELINE_FORMAT,
        "version": BASELINE_VERSION,
        "created": created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source_run": results.source,
        "suite": results.suite,
        "fingerprint": _clean(results.fingerprint),
    }
    head = json.dumps(header, indent=2, allow_nan=False)
    lines = [json.dumps(_clean(results.cases[k].to_json()), allow_nan=False) for k in sorted(results.cases)]
    body = ",\n".join(f"    {line}" for line in lines)
    return f'{head[:-2]},\n  "cases": [\n{body}\n  ]\n}}\n'


def save_baseline(results: Results, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(baseline_text(results))
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------
# Output


COLUMNS = ("case_id", "label", "workload", "metric", "baseline", "current", "change", "test", "p_value", "verdict",
           "note")


def render(comparison: Comparison, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(_json_doc(comparison), indent=2, allow_nan=False) + "\n"
    if fmt == "csv":
        import csv

        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(COLUMNS)
        for f in comparison.findings:
            writer.writerow(["" if v is None else v for v in (getattr(f, c) for c in COLUMNS)])
        return out.getvalue()
    rows = [_display(f) for f in comparison.findings]
    headers = ["case", "workload", "metric", "baseline", "current", "change", "test", "p", "verdict"]
    if fmt == "markdown":
        lines = [f"**{_headline(comparison)}**", "", _context(comparison), ""]
        if comparison.noisy_cases:
            lines += [_noise_warning(comparison), ""]
        lines += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        for f, row in zip(comparison.findings, rows):
            row[-1] = f"**{row[-1]}**" if f.regression else row[-1]
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
        return "\n".join(lines) + "\n"
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = [_context(comparison), ""]
    lines.append("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    notes = list(dict.fromkeys(f"  {f.case_id} {f.workload}: {f.note}" for f in comparison.findings if f.note))
    if notes:
        lines += ["", "notes:", *notes]
    if comparison.noisy_cases:
        lines += ["", _noise_warning(comparison)]
    lines += ["", _headline(comparison)]
    return "\n".join(lines) + "\n"


def _headline(c: Comparison) -> str:
    counts = "; ".join(f"{n} {verdict}" for verdict, n in c.counts().items())
    state = "REGRESSION" if c.regressions else "no regression"
    return f"{state} (threshold {c.threshold:.0%}, alpha {c.alpha:g}): {counts}"


def _noise_warning(c: Comparison) -> str:
    return (f"warning: {c.noisy_cases} of {c.timed_cases} timed cases had noisy timing (IQR/median > "
            f"{NOISY_RELATIVE_IQR:.0%}) on one side or both: the machine was busy, and timing verdicts may reflect that")


def _context(c: Comparison) -> str:
    def describe(r: Results) -> str:
        commit = r.fingerprint.get("git_commit")
        return f"{r.source} (suite {r.suite or '?'}" + (f", commit {str(commit)[:12]}" if commit else "") + ")"

    text = f"baseline {describe(c.baseline)} vs current {describe(c.current)}"
    if c.mismatch:
        text += f"; environments differ ({', '.join(c.mismatch)}), compared anyway (--allow-mismatch)"
    return text


def _display(f: Finding) -> list[str]:
    def value(v: float | None) -> str:
        if v is None:
            return "-"
        if f.metric == "peak_memory_bytes":
            return f"{v / 2**20:.1f} MiB"
        size = abs(v)
        return f"{v:,.0f}" if size >= 1000 else f"{v:.1f}" if size >= 100 else f"{v:.2f}" if size >= 1 else f"{v:.3g}"

    case = f"{f.case_id} {f.label}".strip()
    change = "-" if f.change is None else f"{f.change:+.1%}"
    p = "-" if f.p_value is None else f"{f.p_value:.2g}"
    metric = {"latency_ms_median": "latency ms", "tokens_per_s": "tokens/s", "peak_memory_bytes": "peak memory",
              "energy_j_per_token": "J/token"}.get(f.metric, f.metric)
    return [case, f.workload, metric, value(f.baseline), value(f.current), change, f.test, p, f.verdict]


def _json_doc(c: Comparison) -> dict[str, Any]:
    return _clean({
        "regression": bool(c.regressions),
        "summary": c.counts(),
        "threshold": c.threshold,
        "alpha": c.alpha,
        "baseline": {"source": c.baseline.source, "suite": c.baseline.suite},
        "current": {"source": c.current.source, "suite": c.current.suite},
        "environment_mismatch": c.mismatch,
        "noisy_cases": c.noisy_cases,
        "timed_cases": c.timed_cases,
        "findings": [asdict(f) for f in c.findings],
    })


# ---------------------------------------------------------------------------------------------
# Command


def environment_mismatch(baseline: Results, current: Results) -> list[str]:
    """Comparable fingerprint keys that differ, as 'key (baseline vs current)'; a missing fingerprint too."""
    missing = [f"{r.source} has no environment fingerprint" for r in (baseline, current) if not r.fingerprint]
    if missing:
        return missing
    return [f"{k} ({baseline.fingerprint.get(k)!r} vs {current.fingerprint.get(k)!r})"
            for k in comparable(baseline.fingerprint, current.fingerprint)]


def run_comparison(args: argparse.Namespace) -> Comparison:
    if not args.threshold > 0:
        raise CompareError(f"--threshold must be > 0 (a relative change, 0.10 = 10%), got {args.threshold}")
    if not 0 < args.alpha < 1:
        raise CompareError(f"--alpha must be between 0 and 1, got {args.alpha}")
    current = load_results(args.run)
    baseline = load_results(args.baseline)
    mismatch = environment_mismatch(baseline, current)
    if mismatch and not args.allow_mismatch:
        raise CompareError("environments differ: " + "; ".join(mismatch)
                           + ". Measure the baseline on this machine, or pass --allow-mismatch")
    if not baseline.cases.keys() & current.cases.keys():
        raise CompareError(f"no (case, workload) of the baseline (suite {baseline.suite}) is in the run "
                           f"(suite {current.suite}): wrong baseline?")
    findings = compare(baseline, current, args.threshold, args.alpha)
    return Comparison(baseline, current, args.threshold, args.alpha, findings, mismatch if args.allow_mismatch else [])


def _save(args: argparse.Namespace) -> int:
    results = load_results(args.run)
    ok = sum(c.ok for c in results.cases.values())
    if not ok:
        raise CompareError(f"{args.run}: no case finished ok; nothing to promote to a baseline")
    if not results.fingerprint:
        raise CompareError(f"{args.run}: no environment fingerprint (run.json); a baseline must say where it was measured")
    path = Path(args.save_baseline)
    save_baseline(results, path)
    not_ok = len(results.cases) - ok
    fp = results.fingerprint
    where = ", ".join(f"{k}={fp.get(k)}" for k in ("device_name", "cpu_model", "threads", "torch"))
    print(f"saved {len(results.cases)} cases of suite {results.suite} to {path} ({where})")
    if not_ok:
        print(f"warning: {not_ok} of them did not finish ok; they are stored as such, and a later run that still "
              "fails them is not a regression", file=sys.stderr)
    return 0


def main(args: argparse.Namespace) -> int:
    save = getattr(args, "save_baseline", None)
    try:
        if save and args.baseline:
            raise CompareError("give either --baseline (compare) or --save-baseline (promote this run), not both")
        if save:
            return _save(args)
        if not args.baseline:
            raise CompareError("compare needs --baseline DIR_OR_FILE (or --save-baseline FILE to promote this run)")
        comparison = run_comparison(args)
    except (CompareError, RunError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if comparison.mismatch:
        print(f"warning: environments differ ({', '.join(comparison.mismatch)}); compared anyway", file=sys.stderr)
    sys.stdout.write(render(comparison, args.format))
    return 1 if comparison.regressions else 0


# ---------------------------------------------------------------------------------------------
# Small helpers


def _num(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _usable(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value > 0


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text if text and text not in ("<NA>", "nan") else None


def _plain(value: Any) -> Any:
    """pandas' NA/NaN -> None so rows read from a table look like journal rows."""
    try:
        import pandas as pd

        if not isinstance(value, (list, tuple, dict)) and pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return value.item() if hasattr(value, "item") else value


def _label(row: dict[str, Any]) -> str:
    """'moe E8 k2 cf1' or 'dense d_ff=160': enough to recognise a case id in a CI log."""
    kind = _text(row.get("kind"))
    if kind == "dense":
        d_ff = _num(row.get("d_ff"))
        return f"dense d_ff={int(d_ff)}" if d_ff is not None else "dense"
    parts = []
    for column, prefix in (("num_experts", "E"), ("top_k", "k")):
        value = _num(row.get(column))
        if value is not None:
            parts.append(f"{prefix}{int(value)}")
    if parts:
        cf = _num(row.get("capacity_factor"))
        parts.append(f"cf{cf:g}" if cf is not None else "dropless")
    return " ".join([kind or "", *parts]).strip()


def _round(value: float) -> float:
    return float(f"{value:.{SAMPLE_DIGITS}g}")


def _clean(value: Any) -> Any:
    """NaN/inf -> None, recursively, so files are strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value

