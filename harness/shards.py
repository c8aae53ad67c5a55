"""`--shard I/N`: which cases each of N shards runs, balanced by estimated work.

Shards run side by side (on the cores of one machine, or on N CI jobs) and the run ends when the
slowest does, so a shard is a share of the *work*, not of the case count: suites/quality.yaml's seven
1,000-step cases once split 6:1 by case id, and one shard ran alone for most of the wall time.

The estimate is analytic (`harness.accounting`): the FLOPs of the steps a case will take, over its
workloads and worker processes. Cases are dealt largest first, each to the shard with the least work
so far (longest-processing-time-first, ties by case id, then by shard number), so every case lands in
exactly one shard and the split depends only on the suite's set of cases, not on their order.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

from harness import accounting
from harness.config import TRAINING_WORKLOADS, Case


def case_cost(case: Case, workloads: Sequence[str]) -> float:
    """Estimated FLOPs a case's jobs compute: steps x tokens per step x FLOPs per token, per workload,
    times run.processes (each process runs the job again). A quality job trains run.quality_steps
    steps and scores run.eval_batches held-out batches at each evaluation; a timed workload runs a
    probe, run.warmup and run.repeats steps (longer when run.min_time_s asks: not known in advance)."""
    run, model = case.run, case.model
    tokens = run.batch_size * model.seq_len
    forward = accounting.step_flops_per_token(model, case.moe, training=False)
    total = 0.0
    for workload in workloads:
        step = accounting.step_flops_per_token(model, case.moe, training=workload in TRAINING_WORKLOADS)
        if workload == "quality":
            evaluations = run.quality_steps // run.eval_every + 1 if run.eval_every else 1
            total += (run.quality_steps * step + evaluations * run.eval_batches * forward) * tokens
        else:
            total += (1 + run.warmup + run.repeats) * step * tokens
    return total * run.processes


def assign(cases: Iterable[Case], workloads: Sequence[str], count: int) -> dict[str, int]:
    """case id -> shard (1..count), balancing `case_cost` across the shards."""
    unique = {case.id: case for case in cases}
    costs = sorted(((case_cost(case, workloads), case_id) for case_id, case in unique.items()),
                   key=lambda item: (-item[0], item[1]))
    load = [0.0] * count
    shard_of = {}
    for cost, case_id in costs:
        lightest = min(range(count), key=lambda i: (load[i], i))
        load[lightest] += cost
        shard_of[case_id] = lightest + 1
    return shard_of


def shard_ids(cases: Iterable[Case], workloads: Sequence[str], shard: Optional[tuple[int, int]]) -> Optional[set[str]]:
    """The ids of the cases shard (index, count) runs; None without --shard (every case)."""
    if shard is None:
        return None
    index, count = shard
    return {case_id for case_id, where in assign(cases, workloads, count).items() if where == index}
