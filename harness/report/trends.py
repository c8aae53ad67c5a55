"""`python -m harness trends HISTORY`: a self-contained HTML page of every configuration over time.

One figure per (case, workload) per machine class, one panel per headline metric (throughput, peak
memory, energy per token where measured) over the recorded runs: each run's value (with its own
confidence interval where the run has one), the band a run of unchanged code would fall in (the
prediction interval of the preceding window), runs that `compare --history` would have failed marked
red, and level steps drawn where they began. The judgement of each point is
`harness.compare.history.judge`, the same call `compare --history` makes.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import seaborn as sns

from harness.compare.decide import Metric
from harness.compare.history import BETTER, DEFAULT_WINDOW, WORSE, Judgement, configurations, judge
from harness.compare.steps import Step, find_steps
from harness.history import Entry, History, describe_machine
from harness.labels import case_label
from harness.report.plots import Plot, new_figure
from harness.report.tables import Cell, Table
from harness.values import as_number

PLOTTED = (Metric("tokens_per_s", timing=True), Metric("peak_memory_bytes", timing=False),
           Metric("energy_j_per_token", timing=False))
TITLES = {"tokens_per_s": "throughput (tokens/s)", "peak_memory_bytes": "peak memory (MiB)",
          "energy_j_per_token": "energy (J/token)"}
SCALE = {"peak_memory_bytes": 2**-20}
PANEL_W = 5.2


@dataclass
class Series:
    """One metric of one configuration over the runs: values, judgements and steps."""

    metric: Metric
    entries: list[Entry]
    rows: list[dict[str, Any]]
    values: list[float | None]
    judgements: list[Judgement]
    steps: list[tuple[int, Step]]  # (index into entries, step)


def build_series(points: Sequence[tuple[Entry, dict[str, Any]]], metric: Metric, window: int,
                 threshold: float) -> Series | None:
    entries = [e for e, _ in points]
    rows = [r for _, r in points]
    values = [as_number(r.get(metric.name)) if r.get("status") == "ok" else None for r in rows]
    if not any(v is not None and v > 0 for v in values):
        return None
    judgements = [judge(rows[i], rows[max(0, i - window):i], metric, threshold) for i in range(len(rows))]
    usable = [i for i, v in enumerate(values) if v is not None and v > 0]
    steps = [(usable[s.index], s) for s in find_steps([values[i] for i in usable], threshold=threshold)]
    return Series(metric, entries, rows, values, judgements, steps)


def _tick(entry: Entry) -> str:
    return f"{entry.when[5:10]}\n{(entry.git_commit or '?')[:7]}"


def _step_text(series: Series, at: int, step: Step) -> str:
    entry = series.entries[at]
    return f"{step.change:+.0%} at {(entry.git_commit or '?')[:10]} ({entry.when[:10]})"


def _worse(metric: Metric, step: Step) -> bool:
    return (step.change < 0) == metric.higher_is_better


def plot_configuration(name: str, title: str, series: list[Series]) -> Plot:
    fig, axes = new_figure(1, len(series))
    fig.set_size_inches(PANEL_W * len(series), 3.4)
    for ax, s in zip(axes[0], series):
        scale = SCALE.get(s.metric.name, 1.0)
        x = list(range(len(s.entries)))
        y = [v * scale if v is not None else float("nan") for v in s.values]
        low, high = [], []
        for j in s.judgements:
            if j.interval is None:
                low.append(float("nan"))
                high.append(float("nan"))
            else:
                location = j.interval.location * scale
                low.append(location * j.interval.low / j.interval.ratio)
                high.append(location * j.interval.high / j.interval.ratio)
        ax.fill_between(x, low, high, color="#2f5d9e", alpha=0.15, linewidth=0, label="window band")
        ax.plot(x, y, marker="o", color="#2f5d9e", linewidth=1.2, markersize=4, label="run")
        if s.metric.name == "tokens_per_s":
            _error_bars(ax, s, x)
        bad = [i for i, j in enumerate(s.judgements) if j.verdict.verdict == WORSE]
        if bad:
            ax.scatter([x[i] for i in bad], [y[i] for i in bad], color="#9c2318", marker="X", s=70, zorder=5,
                       label="regression")
        for at, step in s.steps:
            color = "#9c2318" if _worse(s.metric, step) else "#186a2c"
            ax.axvline(at - 0.5, color=color, linestyle="--", linewidth=1)
            ax.annotate(f"{step.change:+.0%}", (at - 0.5, 1), xycoords=("data", "axes fraction"), color=color,
                        fontsize=8, ha="left", va="top")
        ax.set_title(TITLES[s.metric.name], fontsize=10)
        ax.set_xticks(x, [_tick(e) for e in s.entries], fontsize=7)
        if len(x) > 8:
            every = -(-len(x) // 8)
            for i, label in enumerate(ax.get_xticklabels()):
                label.set_visible(i % every == 0)
        ax.set_xlim(-0.5, max(x) + 0.5)
    axes[0][0].legend(fontsize=7, loc="lower left")
    caption = ("Each point is one recorded run (date, commit). Shaded: the range a run of unchanged code would "
               "fall in, from the preceding window's between-run spread. Red X: a run compare --history fails. "
               "Dashed lines: level steps where they began (red worse, green better).")
    return Plot(name, title, caption, figure=fig)


def _error_bars(ax, s: Series, x: list[int]) -> None:
    """A run's own throughput interval, from its latency interval (tokens/s = tokens per step / latency)."""
    for i, row in enumerate(s.rows):
        value, med = s.values[i], as_number(row.get("latency_ms_median"))
        lo, hi = as_number(row.get("latency_ms_ci_low")), as_number(row.get("latency_ms_ci_high"))
        if value and med and lo and hi:
            ax.plot([x[i], x[i]], [value * med / hi, value * med / lo], color="#2f5d9e", linewidth=0.8, alpha=0.7)


def summary_table(rows: list[tuple[str, str, Series]]) -> Table:
    table = Table(["Machine", "Case", "Workload", "Metric", "Runs", "Latest", "vs window", "Latest verdict", "Steps"])
    for machine, label, s in rows:
        latest = s.judgements[-1]
        value = s.values[-1]
        scale = SCALE.get(s.metric.name, 1.0)
        change = None if latest.interval is None else latest.interval.ratio - 1
        verdict = latest.verdict.verdict
        cls = "worse" if verdict == WORSE else "better" if verdict == BETTER else ""
        steps = "; ".join(_step_text(s, at, step) for at, step in s.steps) or "none"
        table.rows.append([
            Cell(machine), Cell(label), Cell(str(s.rows[-1]["workload"])), Cell(TITLES[s.metric.name]),
            Cell(str(len(s.entries)), sort=len(s.entries)),
            Cell("-" if value is None else f"{value * scale:,.4g}", sort=None if value is None else value * scale,
                 cls="missing" if value is None else ""),
            Cell("-" if change is None else f"{change:+.1%}", sort=change, cls="missing" if change is None else ""),
            Cell(verdict, cls=cls, title=latest.verdict.reason),
            Cell(steps, cls="worse" if any(_worse(s.metric, st) for _, st in s.steps) else ""),
        ])
        table.row_classes.append("")
    return table


def write_trends(history: str | Path, out: str | Path, window: int = DEFAULT_WINDOW, threshold: float = 0.10,
                 machine: str | None = None, suite: str | None = None) -> Path:
    from harness.report import _context_common
    from harness.report.html import render, save_plots

    entries = History.at(history).entries(machine=machine, suite=suite, rows=True)
    out = Path(out)
    sections, summary = [], []
    by_machine: dict[str, list[Entry]] = {}
    for e in entries:
        by_machine.setdefault(e.machine, []).append(e)
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
        for machine_id, group in by_machine.items():
            plots = []
            for (case_id, workload), points in configurations(group).items():
                series = [s for s in (build_series(points, m, window, threshold) for m in PLOTTED) if s is not None]
                if not series:
                    continue
                label = f"{case_label(points[-1][1]) or case_id} ({case_id}), {workload}"
                summary += [(machine_id, f"{case_label(points[-1][1])} {case_id}".strip(), s) for s in series]
                plots.append(plot_configuration(f"{machine_id}-{case_id}-{workload}", label, series))
            sections.append({"machine": machine_id, "describe": describe_machine(group[-1].fingerprint),
                             "runs": len(group), "first": group[0].when, "last": group[-1].when,
                             "plots": save_plots(plots, out.parent / f"{out.stem}-plots")})
    context = {
        **_context_common(f"{Path(history).name}: moe-harness trends"),
        "history": str(history), "n_runs": len(entries), "window": window, "threshold": threshold,
        "summary": summary_table(summary), "sections": sections,
        "n_worse": sum(s.judgements[-1].verdict.verdict == WORSE for _, _, s in summary),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render("trends.html.j2", context))
    return out


def main(args) -> int:
    out = write_trends(args.history, args.out, window=args.window, threshold=args.threshold, machine=args.machine,
                       suite=args.suite)
    print(f"trends: {out}", file=sys.stdout)
    return 0
