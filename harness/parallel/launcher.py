"""Launch a multi-rank case through `torch.distributed.run` (torchrun), and read what its ranks left.

`python -m harness.parallel.launcher ARGS` is torchrun itself (same arguments), made to die with the
runner: torchrun starts its ranks in sessions of their own, so killing the runner's child's process
group would not reach them; instead the ranks die with torchrun (the worker asks for that) and
torchrun dies with the runner.

Every rank writes `RESULT.rank<r>.json` (its status, and on a failure its one-line reason), and rank
0 writes RESULT itself once the group's row is merged. When there is no RESULT, `group_failure` names
the rank that failed first: a rank that raised something other than a collective error (the others'
collectives then fail as victims), else the rank torchrun saw fail first (a signal or exit code),
else a rank that left no file at all.
"""
from __future__ import annotations

import re
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from harness.contracts import WorkerResult

SIGNALS = {s.value: s.name for s in signal.Signals}
ROOT_CAUSE = re.compile(r"Root Cause.*?rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)\s*\(pid:\s*(\d+)\)", re.S)
FAILURE = re.compile(r"rank\s*:\s*(\d+)\s*\(local_rank.*?exitcode\s*:\s*(-?\d+)\s*\(pid:\s*(\d+)\)", re.S)


@dataclass(frozen=True)
class Rendezvous:
    """Where the ranks of several nodes meet: one runner per node, started alike (by Slurm or by hand),
    each with its node rank, all with node 0's HOST:PORT. A static rendezvous, so node 0 holds global
    rank 0 (and stores the rows) for every case. No endpoint: one node, torchrun's `--standalone`."""

    nnodes: int = 1
    node_rank: int = 0
    endpoint: Optional[str] = None

    def __post_init__(self) -> None:
        if self.nnodes < 1 or not 0 <= self.node_rank < self.nnodes:
            raise ValueError(f"--node-rank {self.node_rank}: must be in 0..{self.nnodes - 1} (--nnodes {self.nnodes})")
        if self.nnodes > 1 and not self.endpoint:
            raise ValueError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (node 0's, the same on every node)")
        if self.endpoint is not None:
            host, _, port = self.endpoint.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"--rdzv-endpoint {self.endpoint!r}: expected HOST:PORT")


def command(nproc: int, worker_args: list[str], rendezvous: Rendezvous = Rendezvous()) -> list[str]:
    if rendezvous.endpoint is None:
        where = ["--standalone"]
    else:
        host, _, port = rendezvous.endpoint.rpartition(":")
        where = ["--node-rank", str(rendezvous.node_rank), "--master-addr", host, "--master-port", port]
    return [sys.executable, "-m", "harness.parallel.launcher", "--nnodes", str(rendezvous.nnodes),
            "--nproc-per-node", str(nproc), *where, "--max-restarts", "0", "--monitor-interval", "0.1",
            "-m", "harness.worker", *worker_args]


def rank_path(result_path: Path, rank: int) -> Path:
    return result_path.with_name(f"{result_path.name}.rank{rank}.json")


def rank_results(result_path: Path) -> dict[int, WorkerResult]:
    out = {}
    for path in result_path.parent.glob(f"{result_path.name}.rank*.json"):
        rank = int(path.name.rsplit(".rank", 1)[1].split(".")[0])
        try:
            out[rank] = WorkerResult.model_validate_json(path.read_text())
        except ValueError:
            continue
    return out


def root_cause(log: str) -> Optional[tuple[int, int, int]]:
    """(rank, exit code, pid) of torchrun's "Root Cause (first observed failure)"; a negative code is a signal."""
    match = ROOT_CAUSE.search(log)
    return (int(match.group(1)), int(match.group(2)), int(match.group(3))) if match else None


def failures(log: str) -> dict[int, tuple[int, int]]:
    """Every failed rank torchrun's summary lists: rank -> (exit code, pid)."""
    return {int(m.group(1)): (int(m.group(2)), int(m.group(3))) for m in FAILURE.finditer(log)}


def _exit_reason(returncode: int, pid: int) -> tuple[str, str]:  # noqa: ARG001 - the signature of `explain`
    if returncode < 0:
        return "failed", f"killed by {SIGNALS.get(-returncode, f'signal {-returncode}')}"
    return "failed", f"exited with code {returncode}"


def group_failure(ranks: dict[int, WorkerResult], world: int, log: str,
                  explain: Callable[[int, int], tuple[str, str]] = _exit_reason) -> tuple[str, str]:
    """(status, one-line reason naming the rank) for a group that wrote no result. `explain` turns a
    silent rank's exit code and pid into (status, reason): the launcher passes the out-of-memory
    evidence (`harness.oom`)."""
    own = sorted((r.model_extra.get("at", 0.0), rank, r) for rank, r in ranks.items()
                 if r.status != "ok" and not r.model_extra.get("victim"))
    if own:
        _, rank, result = own[0]
        return result.status, f"rank {rank} of {world}: {result.error}"
    root = root_cause(log)
    silent = [rank for rank in range(world) if rank not in ranks]
    if root is not None and root[0] in silent:
        status, why = explain(root[1], root[2])
        return status, f"rank {root[0]} of {world}, no result: {why}"
    # a busy machine can let a victim's exit reach torchrun first: then a silent rank is among the others
    listed = failures(log)
    for rank in silent:
        if rank in listed:
            status, why = explain(*listed[rank])
            return status, f"rank {rank} of {world}, no result: {why}"
    if silent:
        return "failed", f"rank {silent[0]} of {world} ended without a result"
    victims = sorted((r.model_extra.get("at", 0.0), rank, r) for rank, r in ranks.items() if r.status != "ok")
    waiting = [v for v in victims if not v[2].model_extra.get("outside")]
    busy = [v for v in victims if v[2].model_extra.get("outside")]
    if busy and waiting:
        # the others failed in a collective (a timeout, say) while this rank was busy elsewhere: it is
        # the rank they waited for
        (_, rank, result), (_, first, cause) = busy[0], waiting[0]
        return result.status, f"rank {rank} of {world}: {result.error} (rank {first}: {cause.error})"
    if victims:
        _, rank, result = victims[0]
        return result.status, f"rank {rank} of {world}: {result.error}"
    return "failed", f"all {world} ranks finished but rank 0 wrote no result"


if __name__ == "__main__":
    from harness.lifeline import die_with_parent

    die_with_parent()
    from torch.distributed.run import main

    main(sys.argv[1:])
