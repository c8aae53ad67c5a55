"""Assemble one result row: what is known about a case before it runs, then what its worker measured.

This is the run side of the schema in `results.py`: it needs the accounting and the sweep, which
persistence (`store`, `merge`) and analysis never should.
"""
from __future__ import annotations

from typing import Any

from harness import accounting
from harness.config import Case
from harness.contracts import WorkerResult
from harness.memory_model import case_estimate
from harness.sweep import Expansion


def case_columns(case: Case, expansion: Expansion, suite_name: str) -> dict[str, Any]:
    """Everything about a case that is known without running it."""
    m, moe = case.model, case.moe
    own = accounting.summary(m, moe)
    row: dict[str, Any] = {
        "case_id": case.id,
        "config_id": case.config_id,
        "kind": case.kind,
        "baseline": case.baseline,
        "suite": suite_name,
        "seed": case.run.seed,
        "d_model": m.d_model,
        "n_layers": m.n_layers,
        "d_ff": m.d_ff,
        "activation": m.activation,
        "seq_len": m.seq_len,
        "batch_size": case.run.batch_size,
        "dtype": case.run.dtype,
        "source": m.source,
        "hf_family": m.config,
        "checkpoint": m.path,
        "compile": str(case.run.compile).lower(),
        **own,
    }
    by_id = expansion.by_id()
    if moe is not None:
        baselines = expansion.baseline_of.get(case.id, {})
        main_rule = "flop_matched" if "flop_matched" in baselines else next(iter(baselines), None)
        row.update(
            num_experts=moe.experts,
            top_k=moe.k,
            capacity_factor=moe.capacity_factor,
            dropless=moe.capacity_factor is None and moe.router != "expert_choice",
            router=moe.router,
            impl=moe.impl,
            routing_mode=moe.routing_mode,
            granularity=moe.granularity,
            num_shared_experts=moe.num_shared_experts,
            aux_loss_coef=moe.aux_loss_coef,
            d_expert=moe.expert_width(m),
            matched_to=baselines.get(main_rule),
            param_matched_to=baselines.get("param_matched"),
        )
        if main_rule is not None:
            dense = by_id[baselines[main_rule]]
            dense_flops = accounting.summary(dense.model, dense.moe)["flops_per_token"]
            row["baseline_flops_per_token"] = dense_flops
            if main_rule == "flop_matched":
                row["flop_match_error"] = accounting.match_error(dense_flops, own["flops_per_token"])
    else:
        served = expansion.serves.get(case.id, [])
        row["matched_to"] = " ".join(served)
        row["baseline_flops_per_token"] = own["flops_per_token"]
        errors = [
            accounting.match_error(own["flops_per_token"], accounting.summary(by_id[i].model, by_id[i].moe)["flops_per_token"])
            for i in served
        ]
        row["flop_match_error"] = max(errors) if errors and case.baseline == "flop_matched" else None
    return row


def result_row(case: Case, workload: str, result: WorkerResult, expansion: Expansion, suite_name: str,
               fingerprint: dict[str, Any]) -> dict[str, Any]:
    """A result row; provenance comes from the process that measured it (a resumed run may be newer)."""
    row = case_columns(case, expansion, suite_name)
    row.update(
        workload=workload,
        status=result.status,
        error=result.error,
        harness_version=fingerprint["harness_version"],
        torch_version=fingerprint["torch"],
        git_commit=fingerprint["git_commit"],
    )
    row.update(result.row)
    row["memory_estimate_bytes"] = case_estimate(case, workload, _device_type(case, row, fingerprint))
    return row


def _device_type(case: Case, row: dict[str, Any], fingerprint: dict[str, Any]) -> str:
    """Where the case ran, or (a worker that died early) where it would have: cpu or cuda."""
    if row.get("device"):
        return "cuda" if str(row["device"]).startswith("cuda") else "cpu"
    requested = case.run.device
    return "cuda" if requested == "cuda" or (requested == "auto" and fingerprint.get("device_count")) else "cpu"
