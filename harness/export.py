"""`python -m harness export RUN_DIR --format pytest-benchmark --out FILE`: a run in another tool's schema.

pytest-benchmark's JSON (`--benchmark-json`) is what CI users already wire up: `pytest-benchmark
compare`, github-action-benchmark (`tool: 'pytest'`), Bencher's `python_pytest` adapter. Each
(case, workload) measured ok becomes one benchmark whose rounds are the run's raw per-step times in
seconds; pytest-benchmark's own `Stats` computes the statistics from them, so they mean exactly what
that tool means. The harness's headline metrics (throughput, memory, energy, ...) ride along in
`extra_info`, and the full fingerprint in `machine_info`. Rows that did not finish ok, or whose raw
samples were not kept, have no rounds to export: they are left out and counted on stderr.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
from pathlib import Path
from typing import Any

from harness.atomic import write_atomic
from harness.errors import UserError
from harness.results import COLUMNS

IDENTITY = ("case_id", "kind", "suite", "num_experts", "top_k", "capacity_factor", "impl", "d_model", "n_layers",
            "d_ff", "seq_len", "batch_size", "dtype", "device", "matched_to", "tokens_per_step", "timer")


def _stats_class():
    try:
        from pytest_benchmark.stats import Stats
    except ImportError:
        raise UserError("export --format pytest-benchmark needs pytest-benchmark (pip install 'pytest-benchmark>=4.0', "
                        "or install moe-harness[dev])") from None
    return Stats


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def benchmark_entry(row: dict[str, Any], label: str, Stats) -> dict[str, Any]:
    from harness.metrics.statistics import as_groups

    stats = Stats()
    for group in as_groups(row["samples_s"]):  # a list per worker process (a flat list: one process)
        for seconds in group:
            stats.update(float(seconds))
    case = f"{label}, {row['case_id']}" if label else row["case_id"]
    extra = {name: _plain(row[name]) for name in COLUMNS if COLUMNS[name].direction and row.get(name) is not None}
    extra.update({name: row[name] for name in IDENTITY if row.get(name) is not None})
    extra["label"] = label
    return {
        "group": row["workload"],
        "name": f"{row['workload']}[{case}]",
        "fullname": f"{row.get('suite') or 'suite'}::{row['workload']}[{case}]",
        "params": {"case": case},
        "param": case,
        "extra_info": extra,
        "options": {"disable_gc": False, "timer": row.get("timer") or "perf_counter", "min_rounds": stats.rounds,
                    "max_time": None, "min_time": None, "warmup": bool(row.get("warmup_iterations"))},
        "stats": {**stats.as_dict(), "data": list(stats.data), "iterations": 1},
    }


def machine_info(fingerprint: dict[str, Any]) -> dict[str, Any]:
    return {
        "node": fingerprint.get("hostname"),
        "processor": fingerprint.get("cpu_model"),
        "machine": platform.machine(),
        "python_implementation": platform.python_implementation(),
        "python_version": fingerprint.get("python"),
        "system": str(fingerprint.get("platform") or "").split("-")[0] or platform.system(),
        "release": fingerprint.get("platform"),
        "cpu": {"brand_raw": fingerprint.get("cpu_model"), "count": fingerprint.get("cpu_count")},
        "moe_harness": fingerprint,
    }


def commit_info(fingerprint: dict[str, Any]) -> dict[str, Any]:
    commit = str(fingerprint.get("git_commit") or "")
    return {"id": commit.removesuffix("+dirty") or "unversioned", "dirty": commit.endswith("+dirty"), "time": None,
            "author_time": None, "project": "moe-harness", "branch": "(unknown)"}


def pytest_benchmark_doc(run_dir: Path) -> tuple[dict[str, Any], int]:
    """The document, and how many rows were left out (not ok, or no raw samples)."""
    from harness.analysis import load_run_info
    from harness.labels import case_label
    from harness.store import RunStore

    Stats = _stats_class()
    info = load_run_info(run_dir)
    rows = sorted(RunStore(run_dir).rows(), key=lambda r: (r["workload"], r["case_id"]))
    if not rows:
        raise UserError(f"{run_dir}: the run has no result rows (rows.jsonl); nothing to export")
    kept = [r for r in rows if r.get("status") == "ok" and isinstance(r.get("samples_s"), list) and r["samples_s"]]
    from pytest_benchmark import __version__ as pb_version

    doc = {
        "machine_info": machine_info(info.fingerprint),
        "commit_info": commit_info(info.fingerprint),
        "benchmarks": [benchmark_entry(r, case_label(r), Stats) for r in kept],
        "datetime": info.started or info.finished,
        "version": pb_version,
    }
    return doc, len(rows) - len(kept)


def main(args: argparse.Namespace) -> int:
    run_dir = Path(args.run)
    doc, left_out = pytest_benchmark_doc(run_dir)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=2, allow_nan=False, default=str)
    write_atomic(out, lambda p: p.write_text(text))
    print(f"wrote {len(doc['benchmarks'])} benchmarks of {run_dir} to {out} (pytest-benchmark JSON)")
    if left_out:
        print(f"note: {left_out} rows left out (not ok, or no raw per-step samples to export)", file=sys.stderr)
    return 0
