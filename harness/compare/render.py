"""A comparison as text, markdown (CI job summaries), CSV or JSON."""
from __future__ import annotations

import io
import json
from dataclasses import asdict
from typing import Any

from harness.compare.decide import Comparison, Finding
from harness.compare.records import Results
from harness.metrics.statistics import NOISY_RELATIVE_IQR
from harness.text_table import markdown_table, readable, text_table
from harness.values import strict_json

COLUMNS = ("case_id", "label", "workload", "metric", "baseline", "current", "change", "ci_low", "ci_high", "test",
           "verdict", "note")


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
    headers = ["case", "workload", "metric", "reference", "current", "change", "CI of now/before", "verdict"]
    if fmt == "markdown":
        lines = [f"**{_headline(comparison)}**", "", _context(comparison), ""]
        if comparison.noisy_cases:
            lines += [_noise_warning(comparison), ""]
        marked = [[*row[:-1], f"**{row[-1]}**" if f.regression else row[-1]] for f, row in zip(comparison.findings, rows)]
        lines += markdown_table(headers, marked)
        return "\n".join(lines) + "\n"
    lines = [_context(comparison), "", *text_table(headers, rows)]
    notes = list(dict.fromkeys(f"  {f.case_id} {f.workload}: {f.note}" for f in comparison.findings if f.note))
    if notes:
        lines += ["", "notes:", *notes]
    if comparison.noisy_cases:
        lines += ["", _noise_warning(comparison)]
    lines += ["", _headline(comparison)]
    return "\n".join(lines) + "\n"


def _headline(c: Comparison) -> str:
    counts = "; ".join(f"{n} {verdict}" for verdict, n in c.counts().items())
    state = "REGRESSION" if c.regressions else "INCONCLUSIVE" if c.inconclusive else "no regression"
    if c.aa_spread is not None:
        limit = (f"threshold {c.effective_threshold:.0%}: the larger of --threshold {c.threshold:.0%} and the "
                 f"A/A spread {c.aa_spread:.1%}")
    else:
        limit = f"threshold {c.threshold:.0%}, no A/A spread measured"
    text = f"{state} ({limit}; {1 - c.alpha:.0%} intervals): {counts}"
    if not c.regressions and c.inconclusive:
        text += (". Some timings were too disturbed or too noisy to decide (exit 3): re-run on an idle machine, "
                 "or with more run.processes")
    return text


def _noise_warning(c: Comparison) -> str:
    return (f"warning: {c.noisy_cases} of {c.timed_cases} timed cases had noisy timing (IQR/median > "
            f"{NOISY_RELATIVE_IQR:.0%}) on one side or both: the machine was busy, and timing verdicts may reflect that")


def _context(c: Comparison) -> str:
    def describe(r: Results) -> str:
        commit = r.fingerprint.get("git_commit")
        return f"{r.source} (suite {r.suite or '?'}" + (f", commit {str(commit)[:12]}" if commit else "") + ")"

    text = f"reference {describe(c.reference)} vs current {describe(c.current)}"
    if c.mismatch:
        text += f"; environments differ ({', '.join(c.mismatch)}), compared anyway (--allow-mismatch)"
    return text


def metric_text(value: float | None, metric: str) -> str:
    """One compared value for a reader: memory in MiB, anything else at table precision, '-' when missing."""
    if value is None:
        return "-"
    return f"{value / 2**20:.1f} MiB" if metric == "peak_memory_bytes" else readable(value)


def _display(f: Finding) -> list[str]:
    case = f"{f.case_id} {f.label}".strip()
    change = "-" if f.change is None else f"{f.change:+.1%}"
    ci = "-" if f.ci_low is None or f.ci_high is None else f"[{f.ci_low:.3g}, {f.ci_high:.3g}]"
    metric = {"latency_ms_median": "latency ms", "tokens_per_s": "tokens/s", "peak_memory_bytes": "peak memory",
              "energy_j_per_token": "J/token"}.get(f.metric, f.metric)
    return [case, f.workload, metric, metric_text(f.baseline, f.metric), metric_text(f.current, f.metric), change, ci, f.verdict]


def _json_doc(c: Comparison) -> dict[str, Any]:
    return strict_json({
        "regression": bool(c.regressions),
        "inconclusive": bool(c.inconclusive),
        "exit_code": c.exit_code,
        "summary": c.counts(),
        "threshold": c.threshold,
        "aa_spread": c.aa_spread,
        "effective_threshold": c.effective_threshold,
        "alpha": c.alpha,
        "baseline": {"source": c.reference.source, "suite": c.reference.suite},  # key kept for older readers
        "current": {"source": c.current.source, "suite": c.current.suite},
        "environment_mismatch": c.mismatch,
        "noisy_cases": c.noisy_cases,
        "timed_cases": c.timed_cases,
        "findings": [asdict(f) for f in c.findings],
    })
