"""The HTML report of a run (`python -m harness report RUN_DIR`) or a comparison of two runs.

`write_report(run_dir)` is what the runner calls at the end of `run`; it writes
RUN_DIR/report.html (self-contained) and RUN_DIR/plots/*.png. Never imports torch.
"""
from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from harness import __version__
from harness.analysis import (
    RunError,
    coverage,
    load,
    load_routing_layers,
    load_run_info,
    load_steps,
    main_rule,
    paired,
    trust_notes,
)
from harness.contracts import RunInfo

MEASURED_METRICS = [
    ("tokens_per_s", "Throughput"), ("latency_ms_ci_low", "Latency confidence interval"),
    ("peak_memory_net_bytes", "Peak memory"), ("energy_j_per_token", "Energy per token"),
    ("achieved_tflops", "Achieved TFLOP/s"), ("mfu", "Model FLOPs utilisation"),
    ("dropped_fraction", "Dropped tokens (MoE)"), ("load_cv", "Expert load balance (MoE)"),
    ("val_loss", "Quality (validation loss)"),
]


def missing_metrics(df: pd.DataFrame) -> list[dict[str, str]]:
    """Each metric not measured for every successful case, with why (its *_source column or the run)."""
    out = []
    for column, name in MEASURED_METRICS:
        measured, of, reason = coverage(df, column)
        if reason is None:
            continue
        text = reason if measured == 0 else f"measured for {measured} of {of} successful cases; the rest: {reason}"
        out.append({"name": name, "column": column, "text": text})
    return out


def _run_items(info: RunInfo, run_dir: Path) -> list[tuple[str, str]]:
    suite = info.suite
    items = [("Suite", str(suite.get("name", "?"))), ("Run folder", str(run_dir)),
             ("Started", str(info.started or "?")), ("Finished", str(info.finished or "not finished"))]
    if suite.get("workloads"):
        items.append(("Workloads", ", ".join(map(str, suite["workloads"]))))
    if suite.get("baselines"):
        items.append(("Baselines", ", ".join(map(str, suite["baselines"]))))
    version = info.fingerprint.get("harness_version")
    items.append(("Harness version", str(version or "not recorded")))
    return items


def _context_common(title: str) -> dict[str, Any]:
    return {"title": title, "report_version": __version__,
            "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def write_report(run_dir: str | Path, out_dir: Optional[str | Path] = None) -> Path:
    """Write report.html and plots/*.png for one run into out_dir (default: the run folder)."""
    from harness.report import html, plots, tables

    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir else run_dir
    from harness.quality import directions, replicates, to_target

    df = load(run_dir)
    info = load_run_info(run_dir)
    pairs = paired(df, main_rule(df))
    steps = load_steps(run_dir)
    quality = to_target(pairs, steps)
    by_config = replicates(quality)
    suite = info.suite
    name = str(suite.get("name") or (df["suite"].dropna().iloc[0] if df["suite"].notna().any() else run_dir.name))
    context = {
        **_context_common(f"{name}: moe-harness report"),
        "suite_name": name,
        "description": str(suite.get("description") or ""),
        "n_rows": len(df), "n_ok": int((df["status"] == "ok").sum()), "n_failed": int((df["status"] != "ok").sum()),
        "verdicts": tables.verdicts(pairs),
        "trust_notes": trust_notes(pairs, df, info),
        "headline": tables.headline(pairs, df),
        "quality": tables.quality_card(by_config),
        "quality_table": tables.quality_table(by_config),
        "directions": tables.directions_table(directions(df, steps)),
        "plots": html.save_plots(plots.make_plots(df, pairs, steps, quality), out_dir / "plots"),
        "missing": missing_metrics(df),
        "failures": tables.failures(df),
        "results": tables.all_results(df),
        "layers": tables.routing_layers(load_routing_layers(run_dir), df),
        "run_items": _run_items(info, run_dir),
        "fingerprint": [(str(k), str(v)) for k, v in info.fingerprint.items()],
        "suite_yaml": info.suite_yaml,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.html"
    path.write_text(html.render("report.html.j2", context), encoding="utf-8")
    return path


def write_comparison(run_a: str | Path, run_b: str | Path, out_dir: Optional[str | Path] = None) -> Path:
    """Write a report comparing run B against run A (default folder: RUN_B/compare-<A name>)."""
    from harness.report import comparison, html

    run_a, run_b = Path(run_a), Path(run_b)
    out_dir = Path(out_dir) if out_dir else run_b / f"compare-{run_a.resolve().name}"
    from harness.compare.matching import rekeyed_frame, settings_diff

    a, b = load(run_a), load(run_b)
    info_a, info_b = load_run_info(run_a), load_run_info(run_b)
    b = rekeyed_frame(a, b)  # runs that differ in a run.* setting share no case id: match on configuration
    context = {
        **_context_common(f"{run_b.name} vs {run_a.name}: moe-harness comparison"),
        **comparison.context(a, b, info_a, info_b, run_a, run_b),
        "compared_settings": settings_diff(info_a.suite, info_b.suite),
    }
    context["plots"] = html.save_plots(comparison.plots(a, b), out_dir / "plots")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.html"
    path.write_text(html.render("compare.html.j2", context), encoding="utf-8")
    return path


def main(args: Any) -> int:
    """CLI entry: `report RUN_DIR [--out DIR]` or `report RUN_A RUN_B [--out DIR]`."""
    runs = list(args.runs)
    out = getattr(args, "out", None)
    if len(runs) > 2:
        print("error: report takes one run folder, or two to compare", file=sys.stderr)
        return 2
    try:
        path = write_report(runs[0], out) if len(runs) == 1 else write_comparison(runs[0], runs[1], out)
    except RunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0
