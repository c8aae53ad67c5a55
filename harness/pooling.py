"""One result row from the worker processes that timed a (case, workload).

Each process returns a complete row of its own (timing, memory, contention; energy and the per-step
and routing records come from the first process only). The row a run stores pools them: timing
statistics over every process's steps with the hierarchical interval, the worst contention reading,
the largest peak memory. A multi-rank case's process is one whole torchrun group, whose rank 0
returns the group's merged row (samples_s: the group's step times); its parallel columns pool in
`pool_groups`. Pure functions of the worker results, so a resumed run pools the same way.
"""
from __future__ import annotations

import statistics
from typing import Any, Optional, Sequence

from harness.metrics import contention
from harness.metrics.statistics import as_groups, latency_columns, process_log_ratios, ratio_ci, summarize

PER_PROCESS = "process_rows"
"""Raw journal key: the worker rows a pooled row was made from (kept so a resumed run can add to them)."""
INTERLEAVED = "interleaved_processes"
"""Raw journal key: each interleaved process's samples and contention, for the same reason."""


def pool(parts: Sequence[dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    """The measured columns of a row from its processes' worker rows (all 'ok', first process first)."""
    first = dict(parts[0])
    groups = [p["samples_s"] for p in parts]
    stats = summarize(groups, seed=seed)
    row = {k: v for k, v in first.items() if k != "samples_s"}
    latency = latency_columns(stats, first["tokens_per_step"])
    scale = latency["tokens_per_s"] / first["tokens_per_s"] if first.get("tokens_per_s") else None
    row.update(
        latency,
        processes=stats.processes,
        warmup_iterations=max(p.get("warmup_iterations") or 0 for p in parts),
        min_time_capped=any(bool(p.get("min_time_capped")) for p in parts),
        samples_s=[list(map(float, g)) for g in as_groups(groups)],
    )
    for key in ("achieved_tflops", "mfu"):  # both are proportional to tokens/s
        if scale is not None and first.get(key) is not None:
            row[key] = first[key] * scale
    peaks = [p["peak_memory_bytes"] for p in parts if p.get("peak_memory_bytes") is not None]
    if peaks:
        row["peak_memory_bytes"] = max(peaks)
    row.update(contention.combine(parts))
    if first.get("world_size"):
        row.update(pool_groups(parts))
    return row


GROUP_MEDIANS = ("straggler_ratio", "all_to_all_ms", "all_to_all_share", "grad_sync_ms", "expert_rank_imbalance")
GROUP_BYTES = ("all_to_all_bytes_per_rank", "grad_sync_bytes_per_rank")


def pool_groups(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The parallel columns of a multi-rank row from its processes, each one whole torchrun group:
    the median over the groups of each group reading and, rank by rank, of each rank's step time and
    expert rows; each rank's largest peak memory (as `peak_memory_bytes` takes the largest)."""
    out: dict[str, Any] = {}
    for key in (*GROUP_MEDIANS, *GROUP_BYTES):
        values = [p[key] for p in parts if p.get(key) is not None]
        if values:
            out[key] = int(statistics.median(values)) if key in GROUP_BYTES else statistics.median(values)
    for key, pick, fmt in (("rank_step_ms", statistics.median, "{:.3f}"), ("rank_expert_rows", statistics.median, "{:.1f}"),
                           ("rank_peak_memory_bytes", max, "{:.0f}")):
        per_rank = [[float(v) for v in p[key].split()] for p in parts if p.get(key)]
        if per_rank and len({len(r) for r in per_rank}) == 1:
            out[key] = " ".join(fmt.format(pick(values)) for values in zip(*per_rank))
    return out


def pool_interleaved(parts: Sequence[dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    """MoE over baseline throughput from interleaved processes ('samples_a': MoE, 'samples_b': baseline),
    with the paired hierarchical interval, and the contention of those processes."""
    moe = [p["samples_a"] for p in parts]
    dense = [p["samples_b"] for p in parts]
    # equal tokens per step on both sides, so throughput ratio = baseline latency / MoE latency
    ratio, low, high = ratio_ci(dense, moe, seed=seed, paired=True)
    logs = process_log_ratios(dense, moe)
    return {
        "interleaved_log_ratio_mean": statistics.fmean(logs) if logs else None,
        "interleaved_log_ratio_var": statistics.variance(logs) if len(logs) >= 2 else None,
        "interleaved_process_count": len(logs),
        "interleaved_throughput_ratio": ratio,
        "throughput_ratio_ci_low": low,
        "throughput_ratio_ci_high": high,
        "throughput_ratio_ci_method": "interleaved",
        **{f"interleaved_{k}": v for k, v in contention.combine([p.get("contention", {}) for p in parts]).items()
           if k in ("contended", "contention_reason")},
    }


def processes_done(row: Optional[dict[str, Any]]) -> int:
    """Worker processes a stored row already pools (a row from before processes were recorded: one)."""
    if row is None:
        return 0
    return len(row.get(PER_PROCESS) or [None])


def interleaved_done(row: Optional[dict[str, Any]]) -> tuple[int, bool]:
    """(interleaved processes a row holds, whether one of them failed, which ends the pass)."""
    parts = (row or {}).get(INTERLEAVED) or []
    return len(parts), any(p.get("status", "ok") != "ok" for p in parts)


def with_interleaved(row: dict[str, Any], parts: Sequence[dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    """A pooled row with its interleaved processes (raw parts kept for resuming): the ratio columns and
    the pass's own contention (`interleaved_contended`), which withholds the pair's verdict; the row's
    `contended` stays about the row's own processes, whose timings a disturbed pass did not touch."""
    if not parts:
        return row
    failed = next((p for p in parts if p.get("status", "ok") != "ok"), None)
    if failed is not None:
        out = {**row, "throughput_ratio_ci_method": f"unavailable: interleaved pair {failed.get('status')}: {failed.get('error')}"}
    else:
        out = {**row, **pool_interleaved(parts, seed)}
    out[INTERLEAVED] = list(parts)
    return out
