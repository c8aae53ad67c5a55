"""The small commands that only read a suite: `validate` and `list`."""
from __future__ import annotations

import argparse

from harness.suite import load_suite
from harness.sweep import expand


def validate(args: argparse.Namespace) -> int:
    suite = load_suite(args.suite, tuple(args.overrides))
    expansion = expand(suite)
    n_moe = sum(case.kind == "moe" for case in expansion)
    print(
        f"{args.suite}: ok — suite '{suite.name}', {n_moe} MoE cases + {len(expansion) - n_moe} dense baselines, "
        f"{len(suite.workloads)} workloads ({', '.join(suite.workloads)})"
    )
    return 0


def list_cases(args: argparse.Namespace) -> int:
    from harness import accounting

    suite = load_suite(args.suite, tuple(args.overrides))
    expansion = expand(suite)
    ranks = any(case.parallel.nproc > 1 for case in expansion)
    layout = f"  {'ranks':>5}  {'EP':>3}" if ranks else ""
    header = f"{'case_id':<12}  {'kind':<5}  {'experts':>7}  {'top_k':>5}  {'cap':>7}  {'d_ff':>6}  {'params':>11}  {'active':>11}  {'MFLOP/tok':>10}{layout}  matched"
    print(header)
    print("-" * len(header))
    for case in expansion:
        summary = accounting.summary(case.model, case.moe)
        if case.moe is not None:
            cf = "dropless" if case.moe.capacity_factor is None else f"{case.moe.capacity_factor:g}"
            experts, top_k = str(case.moe.experts), str(case.moe.k)
            matched = ", ".join(f"{rule}: {cid}" for rule, cid in expansion.baseline_of[case.id].items())
        else:
            cf, experts, top_k = "-", "-", "-"
            matched = f"{case.baseline} for " + ", ".join(expansion.serves.get(case.id, []))
        layout = f"  {case.parallel.nproc:>5}  {case.parallel.expert:>3}" if ranks else ""
        print(
            f"{case.id:<12}  {case.kind:<5}  {experts:>7}  {top_k:>5}  {cf:>7}  {case.model.d_ff:>6}  "
            f"{summary['params_total']:>11,}  {summary['params_active']:>11,}  {summary['flops_per_token'] / 1e6:>10.3f}{layout}  {matched}"
        )
    print(f"{len(expansion)} cases x {len(suite.workloads)} workloads = {len(expansion) * len(suite.workloads)} measurements")
    return 0
