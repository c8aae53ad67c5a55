"""`python -m harness history {add,list,show}`: record runs into a history and read it back."""
from __future__ import annotations

import argparse
import math
from typing import Any

from harness.history import Entry, History, describe_machine, record


def add(args: argparse.Namespace) -> int:
    for run_dir in args.runs:
        entry, new = record(run_dir, args.history)
        what = "recorded" if new else "already recorded"
        print(f"{what}: {run_dir} as {entry.short} in {args.history} (machine {entry.machine}: "
              f"{describe_machine(entry.fingerprint)}; commit {_commit(entry)}; {entry.n_rows} rows)")
    return 0


def list_runs(args: argparse.Namespace) -> int:
    entries = History.at(args.history).entries(machine=args.machine, suite=args.suite, rows=True)
    if not entries:
        print(f"{args.history}: no recorded run" + (" matches" if args.machine or args.suite else ""))
        return 0
    header = f"{'id':<12}  {'measured':<25}  {'machine':<12}  {'commit':<12}  {'suite':<12}  {'rows':>4}  {'not ok':>6}"
    print(header)
    print("-" * len(header))
    for e in entries:
        bad = sum(r.get("status") != "ok" for r in e.rows)
        print(f"{e.short:<12}  {e.when:<25}  {e.machine:<12}  {_commit(e):<12}  {e.suite or '?':<12}  {e.n_rows:>4}  {bad:>6}")
    machines = {e.machine: e.fingerprint for e in entries}
    print()
    for machine, fp in machines.items():
        print(f"machine {machine}: {describe_machine(fp)}")
    return 0


def show(args: argparse.Namespace) -> int:
    entry = History.at(args.history).get(args.id)
    print(f"run {entry.short}: suite {entry.suite or '?'}, measured {entry.when}, recorded {entry.recorded}")
    print(f"  from {entry.source}; commit {entry.git_commit or 'unknown'}")
    print(f"  machine {entry.machine}: {describe_machine(entry.fingerprint)}")
    print()
    header = f"{'case_id':<12}  {'workload':<10}  {'status':<8}  {'latency ms':>10}  {'tokens/s':>10}  {'samples':>7}"
    print(header)
    print("-" * len(header))
    for r in sorted(entry.rows, key=lambda r: (r["case_id"], r["workload"])):
        samples = r.get("samples_s")
        print(f"{r['case_id']:<12}  {r['workload']:<10}  {r.get('status')!s:<8}  {_num(r.get('latency_ms_median')):>10}  "
              f"{_num(r.get('tokens_per_s')):>10}  {len(samples) if isinstance(samples, list) else 0:>7}")
    return 0


def _commit(entry: Entry) -> str:
    return (entry.git_commit or "unknown")[:12]


def _num(value: Any) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "-"
    return "-" if not math.isfinite(v) else f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"


def main(args: argparse.Namespace) -> int:
    return {"add": add, "list": list_runs, "show": show}[args.history_command](args)
