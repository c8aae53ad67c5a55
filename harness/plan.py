"""`python -m harness plan SUITE_OR_PRESET`: parameters, FLOPs and memory of every case, from configs alone.

Nothing is allocated, so it answers in seconds for hundred-billion-parameter models. A suite is expanded
exactly as `run` would (MoE cases and their derived dense baselines); a preset name plans that model,
for an MoE its FLOP- and param-matched dense baselines, and its published dense peer, if it names one.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path
from typing import Any, Optional

from pydantic import ValidationError

from harness import accounting, memory_model, presets
from harness.config import Case, ModelConfig, MoEConfig, ParallelConfig, RunSettings
from harness.suite import SuiteError, apply_override, format_validation_error, load_suite
from harness.sweep import dense_baseline, expand
from harness.text_table import cell, text_table

GIB = 2**30

COLUMNS = [
    "case_id", "name", "kind", "baseline", "matched_to", "match_error",
    "experts", "top_k", "d_ff", "d_expert",
    "params_total", "params_active", "gflops_per_token", "train_gflops_per_token",
    "batch_size", "seq_len", "dtype", "train_memory_gib", "inference_memory_gib", "decode_memory_gib",
    "world_size", "ep_size", "dp_size", "params_per_rank", "train_memory_per_rank_gib", "inference_memory_per_rank_gib",
    "all_to_all_bytes_per_token_layer", "all_to_all_bytes_per_rank_step", "grad_sync_bytes_per_rank_step",
]


def _row(case: Case, name: str, matched_to: Optional[Case] = None) -> dict[str, Any]:
    model, moe, run = case.model, case.moe, case.run
    summary = accounting.summary(model, moe)
    device = "cpu" if run.device == "cpu" else "cuda"
    train, infer, decode = (memory_model.case_estimate(case, workload, device)
                            for workload in ("train_step", "forward", "decode"))
    error = None
    if matched_to is not None and case.baseline is not None:
        target = accounting.summary(matched_to.model, matched_to.moe)
        key = "flops_per_token" if case.baseline == "flop_matched" else "params_total"
        error = accounting.match_error(summary[key], target[key])
    return {
        "case_id": case.id,
        "name": name,
        "kind": case.kind,
        "baseline": case.baseline,
        "matched_to": matched_to.id if matched_to is not None else None,
        "match_error": error,
        "experts": moe.experts if moe else None,
        "top_k": moe.k if moe else None,
        "d_ff": model.d_ff,
        "d_expert": moe.expert_width(model) if moe else None,
        "params_total": summary["params_total"],
        "params_active": summary["params_active"],
        "gflops_per_token": summary["flops_per_token"] / 1e9,
        "train_gflops_per_token": summary["train_flops_per_token"] / 1e9,
        "batch_size": run.batch_size,
        "seq_len": model.seq_len,
        "dtype": run.dtype,
        "train_memory_gib": train / GIB,
        "inference_memory_gib": infer / GIB,
        "decode_memory_gib": decode / GIB,
        **_parallel(case, device),
    }


def _parallel(case: Case, device: str) -> dict[str, Any]:
    """Per-rank footprint of the case's layout (one node: world size = parallel.nproc)."""
    model, moe, run, par = case.model, case.moe, case.run, case.parallel
    train, infer = (accounting.parallel_footprint(model, moe, run.batch_size, par.nproc, par.expert, run.dtype, workload, device)
                    for workload in ("train_step", "forward"))
    return {
        "world_size": train["world_size"],
        "ep_size": train["ep_size"],
        "dp_size": train["dp_size"],
        "params_per_rank": train["params_per_rank"],
        "train_memory_per_rank_gib": train["memory_per_rank"]["total"] / GIB,
        "inference_memory_per_rank_gib": infer["memory_per_rank"]["total"] / GIB,
        "all_to_all_bytes_per_token_layer": train["all_to_all_bytes_per_token_layer"],
        "all_to_all_bytes_per_rank_step": train["all_to_all_bytes_per_rank_step"],
        "grad_sync_bytes_per_rank_step": train["grad_sync_bytes_per_rank_step"],
    }


def _suite_rows(path: str, overrides: tuple[str, ...]) -> list[dict[str, Any]]:
    suite = load_suite(path, overrides)
    expansion = expand(suite)
    by_id = expansion.by_id()
    matched_to = {dense: by_id[moes[0]] for dense, moes in expansion.serves.items()}
    rows = []
    for case in expansion:
        if case.kind == "moe":
            name = _variant(case, suite) or suite.name
        else:
            name = f"{case.baseline} baseline"
        rows.append(_row(case, name, matched_to.get(case.id)))
    return rows


def _variant(case: Case, suite: Any) -> str:
    """The swept values of this case, as `key=value` (empty when the suite sweeps nothing)."""
    keys = list(suite.sweep.grid) + [key for group in suite.sweep.zip for key in group]
    parts = []
    for key in keys:
        section, _, field = key.partition(".")
        parts.append(f"{field}={getattr(getattr(case, section), field)}")
    return " ".join(parts)


def _preset_case(name: str, overrides: tuple[str, ...]) -> Case:
    """A preset as a case. Defaults to bfloat16 (how published models are trained); --set wins."""
    data: dict[str, Any] = {**presets.resolve(name), "run": {"dtype": "bfloat16"}}
    is_moe = "moe" in data
    for assignment in overrides:
        if assignment.partition("=")[0].strip().startswith("moe.") and not is_moe:
            continue
        apply_override(data, assignment)
    try:
        return Case(
            kind="moe" if is_moe else "dense",
            model=ModelConfig.model_validate(data["model"]),
            moe=MoEConfig.model_validate(data["moe"]) if is_moe else None,
            run=RunSettings.model_validate(data.get("run") or {}),
            parallel=_dense_layout(ParallelConfig.model_validate(data.get("parallel") or {}), is_moe),
        )
    except ValidationError as err:
        raise SuiteError(format_validation_error(err, prefix=f"preset {name}: ")) from None


def _dense_layout(parallel: ParallelConfig, is_moe: bool) -> ParallelConfig:
    """A dense preset runs data parallel on the same ranks, as a derived baseline does."""
    return parallel if is_moe else parallel.model_copy(update={"expert": 1})


def _preset_rows(name: str, overrides: tuple[str, ...]) -> list[dict[str, Any]]:
    """The preset, for an MoE preset the dense models `run` would derive for it, and its published peer."""
    case = _preset_case(name, overrides)
    rows = [_row(case, name)]
    if case.moe is not None:
        for rule in ("flop_matched", "param_matched"):
            dense = dense_baseline(case, rule)
            rows.append(_row(dense, f"{name} {rule.replace('_', '-')} dense", matched_to=case))
    peer = presets.info(name).dense_peer
    if peer is not None:
        rows.append(_row(_preset_case(peer, overrides), f"{peer} (dense peer)"))
    return rows


def plan_rows(target: str, overrides: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Rows for a suite file or a preset name."""
    if target in presets.names():
        return _preset_rows(target, overrides)
    if Path(target).exists() or target.endswith((".yaml", ".yml")):
        return _suite_rows(target, overrides)
    raise SuiteError(f"{target}: neither a suite file nor a preset; presets: {', '.join(presets.names())}")


def _human(n: float) -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}"
    return f"{n:.0f}"


def _bytes(gib: float) -> str:
    for scale, suffix in ((1024.0, "TiB"), (1.0, "GiB"), (1 / 1024, "MiB"), (1 / 1024**2, "KiB")):
        if gib >= scale:
            return f"{gib / scale:.1f} {suffix}"
    return f"{gib * 2**30:.0f} B"


def format_table(rows: list[dict[str, Any]]) -> str:
    parallel = any(r["world_size"] > 1 for r in rows)
    headers = ["case_id", "name", "kind", "experts", "top_k", "d_ff", "params", "active", "GFLOP/tok fwd",
               "GFLOP/tok train", "train mem", "forward mem", "decode mem"]
    if parallel:
        headers += ["ranks", "EP", "params/rank", "train mem/rank", "a2a/rank/step", "grad sync/rank/step"]
    headers.append("matched")
    body = []
    for r in rows:
        matched = f"{r['baseline']} ({r['match_error']:.2%} off)" if r["baseline"] and r["match_error"] is not None else ""
        cells = [
            r["case_id"], r["name"], r["kind"], cell(r["experts"]), cell(r["top_k"]),
            str(r["d_ff"]), _human(r["params_total"]), _human(r["params_active"]),
            f"{r['gflops_per_token']:.4g}", f"{r['train_gflops_per_token']:.4g}",
            _bytes(r["train_memory_gib"]), _bytes(r["inference_memory_gib"]), _bytes(r["decode_memory_gib"]),
        ]
        if parallel:
            cells += [
                str(r["world_size"]), str(r["ep_size"]), _human(r["params_per_rank"]),
                _bytes(r["train_memory_per_rank_gib"]), _bytes(r["all_to_all_bytes_per_rank_step"] / GIB),
                _bytes(r["grad_sync_bytes_per_rank_step"] / GIB),
            ]
        body.append(cells + [matched])
    lines = text_table(headers, body)
    if rows:
        first = rows[0]
        lines.append(
            f"estimated peak memory at batch {first['batch_size']} x seq_len {first['seq_len']} in {first['dtype']}: "
            "training = weights + AdamW state + activations + the step's busiest moment, forward = weights + "
            "its largest working set (logits included), decode = weights + KV cache + prefill (see docs/accounting.md)"
        )
    if parallel:
        lines.append(
            "per rank: the global batch split over the ranks, experts over the EP ranks; a2a = bytes a rank sends in one "
            "training step's all-to-alls (dispatch + combine, forward + backward, uniform routing, no drops); "
            "grad sync = gradient bytes it all-reduces (see docs/distributed.md)"
        )
    return "\n".join(lines)


def format_rows(rows: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
        return out.getvalue().rstrip("\n")
    return format_table(rows)


def main(args: argparse.Namespace) -> int:
    rows = plan_rows(args.suite, tuple(args.overrides))
    print(format_rows(rows, args.format))
    return 0
