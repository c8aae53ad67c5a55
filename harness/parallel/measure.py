"""Measuring a multi-rank case: what each rank records, and the one row the group's records make.

Each rank runs the worker's usual measurement on its share of the global batch, with three changes
(`RankSession`):

- the ranks agree between steps how many steps to run (`agree`: one tiny all-reduce outside the
  timed step), so adaptive warmup and `run.min_time_s` never leave one rank waiting in a collective
  the others will not reach;
- every collective of a timed step is timed and byte-counted by the `CommRecorder`, without a barrier;
- the energy window ends on the group's clock (`clock`: each rank's elapsed time, the largest wins).

Then every rank's record goes to rank 0 (`gather`), where `merge` makes the row. Pure, so a test can
feed it records without starting processes.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist

from harness.metrics import contention
from harness.parallel.comm import EXCHANGE, CollectiveError, CommRecorder
from harness.parallel.group import ProcessGroups

# the expert-parallel exchange as the all_to_all_* columns count it: the dispatch and its counts, plus
# the routing statistics totalled over the EP group (auxiliary losses), which only EP needs
EP_COLLECTIVES = (*EXCHANGE, "moe_stats")
GRAD_SYNC = ("grad_sync",)


def _collective(what: str, call: Callable[[], Any]) -> Any:
    """The measurement's own collectives (never timed): a failure is a `CollectiveError` like the step's."""
    try:
        return call()
    except Exception as exc:  # noqa: BLE001 - re-raised with what the group was doing
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CollectiveError(f"{what} collective failed: {first}") from exc


@dataclass
class RankSession:
    """This rank's place in the group and the collectives the worker's measurement needs."""

    groups: ProcessGroups
    device: torch.device
    backend: str
    local_rank: int
    local_world: int = 1
    recorder: CommRecorder = field(init=False)
    _origin: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        self.recorder = CommRecorder(self.device)

    @property
    def rank(self) -> int:
        return self.groups.layout.rank

    def _flag_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def agree(self, more: bool) -> bool:
        """True while any rank wants another step."""
        flag = torch.tensor([float(more)], device=self._flag_device())
        with self.recorder.waiting():
            _collective("agree", lambda: dist.all_reduce(flag, op=dist.ReduceOp.MAX))
        return bool(flag.item())

    def waited_s(self) -> float:
        """Host seconds so far in collectives, the step's and `agree`'s: where a fast rank waits for a
        slow one, not a CPU it was denied (`harness.metrics.contention.watch`)."""
        return self.recorder.blocked_s

    def clock(self) -> float:
        """Seconds since this session began, the largest over the ranks: every rank reads the same value."""
        elapsed = torch.tensor([time.perf_counter() - self._origin], dtype=torch.float64, device=self._flag_device())
        with self.recorder.waiting():
            _collective("clock", lambda: dist.all_reduce(elapsed, op=dist.ReduceOp.MAX))
        return float(elapsed.item())

    def recorded(self, step: Callable[[], None]) -> Callable[[], None]:
        """`step`, with its collectives recorded as one step."""

        def run() -> None:
            self.recorder.start_step()
            step()

        return run

    def gather(self, record: dict[str, Any]) -> Optional[list[dict[str, Any]]]:
        """Every rank's record, in rank order, on rank 0; None elsewhere."""
        records: Optional[list[Any]] = [None] * self.groups.layout.world_size if self.rank == 0 else None
        with self.recorder.waiting():
            _collective("gather", lambda: dist.gather_object(record, records, dst=0))
        return records


def rank_record(session: RankSession, row: dict[str, Any], timed_steps: int,
                steps: list[dict[str, Any]]) -> dict[str, Any]:
    """What one rank measured: its own row (latencies, memory, energy of its device) and, for each
    timed step, its collectives' seconds and bytes."""
    comm = session.recorder.steps()[-timed_steps:] if timed_steps else []
    return {"rank": session.rank, "local_rank": session.local_rank, "row": row, "comm": comm, "steps": steps}


def _median_over_steps(comm: list[dict[str, float]], kinds: tuple[str, ...], suffix: str) -> float:
    return statistics.median(sum(step.get(f"{k}_{suffix}", 0.0) for k in kinds) for step in comm) if comm else 0.0


def _joined(values: list[Any], fmt: str = "{}") -> str:
    return " ".join(fmt.format(v) for v in values)


ENERGY_SUMMED = ("energy_j", "energy_above_idle_j", "avg_power_w", "idle_power_w")


def _energy(records: list[dict[str, Any]], device_type: str, tokens_per_step: int) -> dict[str, Any]:
    """The group's energy: every device's meter summed (one GPU per rank); a host meter (RAPL, the
    CPU packages) is read once per node, by its local rank 0, since all ranks of a node share it."""
    out: dict[str, Any] = {}
    for prefix in ("", "cpu_"):
        host_meter = prefix == "cpu_" or device_type != "cuda"
        owners = [r["row"] for r in records if not host_meter or r["local_rank"] == 0]
        for name in ENERGY_SUMMED:
            values = [o.get(prefix + name) for o in owners]
            out[prefix + name] = None if any(v is None for v in values) else float(sum(values))
        for name in ("energy_j", "energy_above_idle_j"):
            total = out[prefix + name]
            out[f"{prefix}{name}_per_token"] = None if total is None else total / tokens_per_step
    return out


def merge(records: list[dict[str, Any]], ep_size: int, backend: str, seed: int) -> dict[str, Any]:
    """One row for the group from every rank's record (rank order).

    The group's step ends when its slowest rank's does, so step i of the group takes the largest of
    the ranks' step-i times; tokens/s is the global batch's tokens over the median of those.
    """
    from harness.metrics.statistics import latency_columns, summarize

    world = len(records)
    rows = [r["row"] for r in records]
    first = rows[0]
    per_step = [max(times) for times in zip(*(row["samples_s"] for row in rows))]
    stats = summarize(per_step, seed=seed)
    tokens_per_step = first["tokens_per_step"] * world
    rank_medians = [statistics.median(row["samples_s"]) for row in rows]
    shares = [_median_over_steps(r["comm"], EP_COLLECTIVES, "s") / m if m > 0 else None
              for r, m in zip(records, rank_medians)]
    merged = dict(first)
    merged.update({
        "world_size": world,
        "ep_size": ep_size,
        "dp_size": world // ep_size,
        "backend": backend,
        "tokens_per_step": tokens_per_step,
        **latency_columns(stats, tokens_per_step),
        "samples_s": per_step,
        "rank_step_ms": _joined([m * 1e3 for m in rank_medians], "{:.3f}"),
        "straggler_ratio": max(rank_medians) / statistics.median(rank_medians),
        "all_to_all_ms": statistics.mean(_median_over_steps(r["comm"], EP_COLLECTIVES, "s") for r in records) * 1e3,
        "all_to_all_share": None if None in shares else statistics.mean(shares),
        "all_to_all_bytes_per_rank": int(statistics.mean(_median_over_steps(r["comm"], EP_COLLECTIVES, "bytes")
                                                          for r in records)),
        "grad_sync_ms": statistics.mean(_median_over_steps(r["comm"], GRAD_SYNC, "s") for r in records) * 1e3,
        "grad_sync_bytes_per_rank": int(statistics.mean(_median_over_steps(r["comm"], GRAD_SYNC, "bytes") for r in records)),
        "peak_memory_bytes": max(row["peak_memory_bytes"] for row in rows),
        "rank_peak_memory_bytes": _joined([row["peak_memory_bytes"] for row in rows]),
    })
    if any(row.get("peak_memory_reserved_bytes") is not None for row in rows):
        merged["peak_memory_reserved_bytes"] = max(row.get("peak_memory_reserved_bytes") or 0 for row in rows)
    if ep_size > 1:
        expert_rows = [statistics.mean(step["expert_rows"] for step in r["comm"]) if r["comm"] else 0.0 for r in records]
        merged["rank_expert_rows"] = _joined(expert_rows, "{:.1f}")
        mean_rows = statistics.mean(expert_rows)
        merged["expert_rank_imbalance"] = max(expert_rows) / mean_rows if mean_rows > 0 else None
    losses = [row.get("train_loss") for row in rows]
    if None not in losses:
        merged["train_loss"] = statistics.mean(losses)  # equal shards: the mean is the global batch's loss
    if "energy_source" in first:
        merged.update(_energy(records, first["device"].split(":")[0], tokens_per_step))
    merged.update(contention.combine(rows, label="rank"))  # the group's step is as disturbed as its worst rank's
    return merged


def merge_steps(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rank 0's per-step records with the loss averaged over the ranks (each rank's loss is the mean
    over its equal share of the global batch); the rest (gradient norm after the sync, router
    statistics over the EP group) is the same on every rank of a group."""
    merged = [dict(step) for step in records[0]["steps"]]
    for i, step in enumerate(merged):
        for key in ("loss", "val_loss"):
            values = [r["steps"][i].get(key) for r in records if i < len(r["steps"])]
            if key in step and len(values) == len(records) and None not in values:
                step[key] = statistics.mean(values)
    return merged
