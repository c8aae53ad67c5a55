"""The small commands that only read a suite: `validate` and `list`."""
from __future__ import annotations

import argparse

from harness.suite import load_suite
from harness.sweep import expand
from harness.text_table import text_table


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
    headers = ["case_id", "kind", "experts", "top_k", "cap", "d_ff", "params", "active", "MFLOP/tok"]
    headers += ["ranks", "EP"] if ranks else []
    rows = []
    for case in expansion:
        summary = accounting.summary(case.model, case.moe)
        if case.moe is not None:
            cf = "dropless" if case.moe.capacity_factor is None else f"{case.moe.capacity_factor:g}"
            experts, top_k = str(case.moe.experts), str(case.moe.k)
            matched = ", ".join(f"{rule}: {cid}" for rule, cid in expansion.baseline_of[case.id].items())
        else:
            cf, experts, top_k = "-", "-", "-"
            matched = f"{case.baseline} for " + ", ".join(expansion.serves.get(case.id, []))
        layout = [str(case.parallel.nproc), str(case.parallel.expert)] if ranks else []
        rows.append([case.id, case.kind, experts, top_k, cf, str(case.model.d_ff), f"{summary['params_total']:,}",
                     f"{summary['params_active']:,}", f"{summary['flops_per_token'] / 1e6:.3f}", *layout, matched])
    for line in text_table([*headers, "matched"], rows, right=set(range(2, len(headers)))):
        print(line)
    print(f"{len(expansion)} cases x {len(suite.workloads)} workloads = {len(expansion) * len(suite.workloads)} measurements")
    return 0
