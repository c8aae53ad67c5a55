"""Matching the cases of two runs that differ in a run setting.

A case id hashes every setting that differs from its default, run settings included, so "threads 2
vs threads 1" shares no case id. Such runs are matched on what the case *is*: its kind, baseline
rule, workload and model and MoE configuration (the result schema's configuration columns, less the
run's own: batch size, dtype, device, compile). The settings that differ between the two runs'
resolved suites are then the thing compared, and every comparison says which they are.
"""
from __future__ import annotations

from typing import Any, Mapping

from harness.values import as_text

CONFIG_COLUMNS = ("kind", "baseline", "workload", "num_experts", "top_k", "capacity_factor", "dropless", "router",
                  "impl", "source", "hf_family", "checkpoint", "routing_mode", "granularity", "num_shared_experts",
                  "d_model", "n_layers", "d_ff", "d_expert", "activation", "seq_len")
"""What identifies a case across runs that differ in run settings (no run.* setting among them)."""

Key = tuple[str, str]


def config_key(row: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(as_text(row.get(c)) or "" for c in CONFIG_COLUMNS)


def match_by_configuration(rows_a: list[Mapping[str, Any]], rows_b: list[Mapping[str, Any]]) -> dict[Key, Key]:
    """B's (case_id, workload) -> A's, for configurations that occur exactly once on each side."""
    def index(rows: list[Mapping[str, Any]]) -> dict[tuple[str, ...], Key]:
        seen: dict[tuple[str, ...], list[Key]] = {}
        for r in rows:
            seen.setdefault(config_key(r), []).append((str(r["case_id"]), str(r["workload"])))
        return {k: v[0] for k, v in seen.items() if len(v) == 1}

    a, b = index(rows_a), index(rows_b)
    return {b[k]: a[k] for k in a.keys() & b.keys()}


def settings_diff(suite_a: Mapping[str, Any], suite_b: Mapping[str, Any], prefix: str = "") -> list[str]:
    """'run.threads: 1 vs 2' for every setting whose resolved value differs between two suites."""
    out = []
    for key in sorted(set(suite_a) | set(suite_b)):
        if key in ("name", "description"):
            continue
        va, vb = suite_a.get(key), suite_b.get(key)
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            out += settings_diff(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: {va!r} vs {vb!r}")
    return out


def rekeyed_on_configuration(reference, current):
    """`current` (a compare `Results` of a run folder) with its cases renamed to the reference's ids where
    their configurations match, its source naming the differing settings; CompareError when nothing
    matches, the suites differ, or either side is not a run folder (a reference file keeps no configuration
    columns)."""
    from dataclasses import replace
    from pathlib import Path

    from harness.analysis import load_run_info
    from harness.compare.records import CompareError
    from harness.store import RunStore

    paths = [Path(r.source) for r in (reference, current)]
    if not all(p.is_dir() for p in paths) or reference.suite != current.suite:
        raise CompareError(f"no (case, workload) of the reference (suite {reference.suite}) is in the run "
                           f"(suite {current.suite}): wrong reference?")
    mapping = match_by_configuration(RunStore(paths[0]).rows(), RunStore(paths[1]).rows())
    if not mapping:
        raise CompareError(f"no (case, workload) of {paths[0]} is in {paths[1]}, by case id or by model and MoE "
                           "configuration: these runs measure different things")
    differs = settings_diff(load_run_info(paths[0]).suite, load_run_info(paths[1]).suite)
    cases = {}
    for key, case in current.cases.items():
        new = mapping.get(key, key)
        cases[new] = replace(case, case_id=new[0])
    note = "; ".join(differs) if differs else "no setting differs"
    return replace(current, cases=cases,
                   source=f"{current.source} (matched on model and MoE configuration; compared: {note})")


def rekeyed_frame(a, b):
    """Run B's results table with its case ids renamed to run A's where configurations match, when the
    two tables share no (case_id, workload) at all (the `report A B` counterpart of the above)."""
    keys_a = set(zip(a["case_id"], a["workload"]))
    if keys_a & set(zip(b["case_id"], b["workload"])):
        return b
    mapping = match_by_configuration(a.to_dict("records"), b.to_dict("records"))
    b = b.copy()
    b["case_id"] = [mapping.get((c, w), (c, w))[0] for c, w in zip(b["case_id"], b["workload"])]
    return b
