"""A run judged against the history: each metric of each (case, workload) against the window of the
same configuration's recent runs on the same machine class.

The decision is `harness.verdict.decide` (the one rule) on the ratio of the run's value to the
window's location, with the window's prediction interval (`steps.window_interval`) and the
threshold as the equivalence margin: 'worse' fails the comparison, 'unreliable' (a disturbed row, a
window too noisy to tell) is inconclusive. Rows of the window that did not finish ok, or that were
disturbed (contended, unstable), do not enter the window; when the window holds a level step with at
least `MIN_WINDOW` runs after it, only those runs are the reference (the level changed, on purpose
or not, and the step is reported rather than failing every night until it leaves the window). `compare --history` and the trend page
both call `judge`, so a point marked on the page is exactly what compare would have said that night.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from harness.compare.decide import METRICS, Metric
from harness.compare.render import metric_text
from harness.compare.steps import MIN_WINDOW, Step, WindowInterval, find_steps, window_interval
from harness.history import Entry, HistoryError
from harness.labels import case_label
from harness.text_table import markdown_table, text_table
from harness.values import as_number
from harness.verdict import NO_INTERVAL, UNRELIABLE, Verdict, decide, disturbances

BETTER, WORSE = "better", "worse"
DEFAULT_WINDOW = 10
Key = tuple[str, str]


@dataclass(frozen=True)
class Judgement:
    key: Key
    label: str
    metric: Metric
    value: float | None
    interval: WindowInterval | None
    verdict: Verdict
    level: Step | None = None  # a level step inside the window: only the runs since it were the reference

    @property
    def regression(self) -> bool:
        return self.verdict.verdict == WORSE

    @property
    def inconclusive(self) -> bool:
        return self.verdict.verdict == UNRELIABLE


def value_of(row: dict[str, Any], metric: Metric) -> float | None:
    value = as_number(row.get(metric.name))
    return value if value is not None and value > 0 else None


def judge(row: dict[str, Any], window: Sequence[dict[str, Any]], metric: Metric, threshold: float) -> Judgement:
    """One metric of one run's row against the rows of its window (oldest first)."""
    key = (str(row.get("case_id")), str(row.get("workload")))
    value = value_of(row, metric)
    values = [v for v in (value_of(r, metric) for r in window if r.get("status") == "ok" and not disturbances(r, "window"))
              if v is not None]
    steps = find_steps(values, threshold=threshold)
    level = steps[-1] if steps and len(values) - steps[-1].index >= MIN_WINDOW else None
    if level is not None:
        values = values[level.index:]
    interval = window_interval(value, values) if value is not None else None
    disturbed = disturbances(row, "now")
    if interval is None and not disturbed:
        why = "not measured in this run" if value is None else f"{len(values)} comparable runs in the window, fewer than {MIN_WINDOW}"
        verdict = Verdict(UNRELIABLE, why, NO_INTERVAL)
    elif interval is None:
        verdict = decide(None, None, None, disturbed=disturbed)
    else:
        verdict = decide(interval.ratio, interval.low, interval.high, higher_is_better=metric.higher_is_better,
                         margin=threshold, disturbed=disturbed, words=(BETTER, WORSE))
    return Judgement(key, case_label(row), metric, value, interval, verdict, level)


def configurations(entries: Sequence[Entry]) -> dict[Key, list[tuple[Entry, dict[str, Any]]]]:
    """(case, workload) -> its rows over the entries, oldest first."""
    out: dict[Key, list[tuple[Entry, dict[str, Any]]]] = {}
    for entry in entries:
        for row in entry.rows:
            out.setdefault((str(row["case_id"]), str(row["workload"])), []).append((entry, row))
    return out


def judge_run(rows: Sequence[dict[str, Any]], previous: Sequence[Entry], window: int, threshold: float,
              metrics: Sequence[Metric] = METRICS) -> list[Judgement]:
    """Every metric of every ok row of a run against the last `window` previous runs that have its case."""
    history = configurations(previous)
    found = []
    for row in rows:
        if row.get("status") != "ok":
            continue
        past = [r for _, r in history.get((str(row["case_id"]), str(row["workload"])), [])][-window:]
        for metric in metrics:
            j = judge(row, past, metric, threshold)
            if j.value is not None:
                found.append(j)
    return found


@dataclass(frozen=True)
class HistoryComparison:
    """A run against its history: per-metric judgements, status changes, and what the window was."""

    source: str
    history: str
    machine: str
    described: str
    window_runs: int
    judgements: list[Judgement]
    status: list[tuple[Key, str, str]]  # (key, 'failed' or 'missing', note)
    threshold: float
    recorded: str = ""

    @property
    def bootstrap(self) -> bool:
        return self.window_runs == 0

    @property
    def regressions(self) -> list[Judgement]:
        return [j for j in self.judgements if j.regression]

    @property
    def inconclusive(self) -> list[Judgement]:
        """Judgements the measurement cannot support (disturbed rows, a window too wide); a short window is
        'not judged yet', not inconclusive."""
        return [j for j in self.judgements if j.inconclusive and j.verdict.cause != NO_INTERVAL]

    @property
    def exit_code(self) -> int:
        if self.regressions or self.status:
            return 1
        return 3 if self.inconclusive and not self.bootstrap else 0


def compare_with_history(run_rows: Sequence[dict[str, Any]], current: Entry, previous: Sequence[Entry], history: str,
                         window: int, threshold: float) -> HistoryComparison:
    """`current` (the run as a history entry) against the `previous` entries of its machine class and suite."""
    from harness.history import describe_machine

    judgements = judge_run(run_rows, previous, window, threshold)
    status: list[tuple[Key, str, str]] = []
    if previous:
        last = {(str(r["case_id"]), str(r["workload"])): r for r in previous[-1].rows}
        now = {(str(r["case_id"]), str(r["workload"])): r for r in run_rows}
        for key, before in last.items():
            if before.get("status") != "ok":
                continue
            if key not in now:
                status.append((key, "missing", f"ok in the last recorded run ({previous[-1].short}), absent now"))
            elif now[key].get("status") != "ok":
                status.append((key, "failed", f"{now[key].get('status')}: {now[key].get('error') or 'no error recorded'}"))
    order = {WORSE: 0, UNRELIABLE: 1, BETTER: 2}
    judgements.sort(key=lambda j: (order.get(j.verdict.verdict, 3), j.key, j.metric.name))
    return HistoryComparison(current.source, history, current.machine, describe_machine(current.fingerprint),
                             min(len(previous), window), judgements, status, threshold)


def render_history(c: HistoryComparison, fmt: str) -> str:
    """The comparison as a table (terminal), markdown (CI job summary) or JSON."""
    import json

    if c.bootstrap:
        headline = (f"bootstrap: no earlier run of this suite on machine class {c.machine} ({c.described}) in "
                    f"{c.history}; nothing to compare with yet")
    else:
        state = ("REGRESSION" if c.exit_code == 1 else "inconclusive" if c.exit_code == 3 else "no regression")
        counts: dict[str, int] = {}
        for j in c.judgements:
            counts[j.verdict.verdict] = counts.get(j.verdict.verdict, 0) + 1
        for _, what, _ in c.status:
            counts[what] = counts.get(what, 0) + 1
        headline = (f"{state} against the last {c.window_runs} runs on machine class {c.machine} (threshold "
                    f"{c.threshold:.0%}): " + "; ".join(f"{n} {v}" for v, n in counts.items()))
    if fmt == "json":
        return json.dumps({
            "regression": c.exit_code == 1, "inconclusive": c.exit_code == 3, "bootstrap": c.bootstrap,
            "summary": headline, "run": c.source, "history": c.history, "machine": c.machine,
            "window_runs": c.window_runs, "threshold": c.threshold, "recorded": c.recorded,
            "status": [{"case_id": k[0], "workload": k[1], "verdict": v, "note": n} for k, v, n in c.status],
            "findings": [{"case_id": j.key[0], "workload": j.key[1], "label": j.label, "metric": j.metric.name,
                          "value": j.value, "window_location": j.interval.location if j.interval else None,
                          "ratio": j.interval.ratio if j.interval else None,
                          "ci_low": j.interval.low if j.interval else None,
                          "ci_high": j.interval.high if j.interval else None,
                          "window_runs": j.interval.runs if j.interval else 0, "verdict": j.verdict.verdict,
                          "reason": j.verdict.reason, "note": _note(j)} for j in c.judgements],
        }, indent=2, allow_nan=False, default=str) + "\n"
    headers = ["case", "workload", "metric", "now", "window", "change", "interval", "verdict", "why"]
    rows = [[f"{j.key[0]} {j.label}".strip(), j.key[1], j.metric.name, metric_text(j.value, j.metric.name),
             metric_text(j.interval.location if j.interval else None, j.metric.name),
             f"{j.interval.ratio - 1:+.1%}" if j.interval else "-",
             f"[{j.interval.low:.2f}, {j.interval.high:.2f}]" if j.interval else "-", j.verdict.verdict,
             "; ".join(filter(None, (j.verdict.reason, _note(j))))] for j in c.judgements]
    rows = [[f"{k[0]}", k[1], "status", "-", "-", "-", "-", what, note] for k, what, note in c.status] + rows
    if fmt == "markdown":
        lines = [f"**{headline}**", "", f"run {c.source} vs history {c.history}", ""]
        if rows:
            bold = (WORSE, "failed", "missing")
            lines += markdown_table(headers, [[*r[:7], f"**{r[7]}**" if r[7] in bold else r[7], *r[8:]] for r in rows])
        return "\n".join(lines) + (f"\n\n{c.recorded}\n" if c.recorded else "\n")
    lines = [f"run {c.source} vs history {c.history}", ""]
    if rows:
        lines += [*text_table(headers, rows), ""]
    if c.recorded:
        lines.append(c.recorded)
    lines.append(headline)
    return "\n".join(lines) + "\n"


def _note(j: Judgement) -> str:
    if j.level is None:
        return ""
    return f"window restarted at a level step of {j.level.change:+.0%}"


def run_against_history(run_dir: str, history_path: str, window: int, threshold: float, fmt: str,
                        record: bool = True) -> int:
    """`compare RUN --history H`: print the comparison, append the run to the history (unless `record` is
    False), and return the exit status (0 clean or bootstrap, 1 regression, 3 inconclusive)."""
    import sys

    from harness.history import History, entry_from_run

    if window < MIN_WINDOW:
        raise HistoryError(f"--window must be at least {MIN_WINDOW} (runs needed for a spread), got {window}")
    if not threshold > 0:
        raise HistoryError(f"--threshold must be > 0 (a relative change, 0.10 = 10%), got {threshold}")
    current = entry_from_run(run_dir)
    store = History.at(history_path)
    try:
        recorded_before = store.entries(machine=current.machine, suite=current.suite, rows=True)
    except HistoryError:
        if Path(history_path).exists():
            raise
        recorded_before = []  # no history yet: the first run bootstraps it
    previous = [e for e in recorded_before if e.key != current.key and e.when <= current.when]
    comparison = compare_with_history(current.rows, current, previous, history_path, window, threshold)
    note = ""
    if record:
        new = store.add(current)
        note = f"history: {'recorded' if new else 'already recorded'} this run as {current.short} in {history_path}"
    comparison = replace(comparison, recorded=note)
    sys.stdout.write(render_history(comparison, fmt))
    return comparison.exit_code


def main(args) -> int:
    """The `compare --history` mode of the compare command."""
    if args.baseline or args.save_baseline:
        raise HistoryError("give --history (compare with the recorded runs) or --baseline/--save-baseline, not both")
    fmt = "table" if args.format == "csv" else args.format
    return run_against_history(args.run, args.history, args.window, args.threshold, fmt, record=not args.no_record)
