"""Which rank holds what: the layout of a multi-rank case and its process groups.

Ranks are numbered as torchrun numbers them. With world size W and expert-parallel degree `ep`
(which divides the ranks of a node, so an EP group never spans nodes):

- every rank reads its own 1/W of the global batch, and non-expert parameters are replicated on all
  W ranks (data parallel);
- the EP group of rank r is the `ep` consecutive ranks around it; its experts are split evenly
  across them (rank j of the group holds experts j*E/ep .. (j+1)*E/ep - 1);
- the `dp = W / ep` ranks with the same position in their EP groups hold the same experts (expert
  data parallel) and sum those experts' gradients.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Layout:
    world_size: int
    ep_size: int
    rank: int

    def __post_init__(self) -> None:
        if self.world_size % self.ep_size:
            raise ValueError(f"parallel.expert ({self.ep_size}) must divide the world size ({self.world_size})")

    @property
    def dp_size(self) -> int:
        """Copies of each expert (expert data parallel degree); W for a dense model."""
        return self.world_size // self.ep_size

    @property
    def ep_rank(self) -> int:
        return self.rank % self.ep_size

    def ep_ranks(self, group: int) -> list[int]:
        return list(range(group * self.ep_size, (group + 1) * self.ep_size))

    def expert_dp_ranks(self, position: int) -> list[int]:
        return list(range(position, self.world_size, self.ep_size))

    def local_experts(self, num_experts: int) -> range:
        if num_experts % self.ep_size:
            raise ValueError(f"parallel.expert ({self.ep_size}) must divide the number of experts ({num_experts})")
        per_rank = num_experts // self.ep_size
        return range(self.ep_rank * per_rank, (self.ep_rank + 1) * per_rank)

    def shard(self, rows: int) -> slice:
        """This rank's rows of a global batch of `rows` sequences."""
        if rows % self.world_size:
            raise ValueError(f"run.batch_size ({rows}) is the global batch; it must be divisible by the world size "
                             f"({self.world_size})")
        per_rank = rows // self.world_size
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)


@dataclass(frozen=True)
class ProcessGroups:
    """The groups this rank communicates in; None where a group would hold this rank alone."""

    layout: Layout
    world: Optional[dist.ProcessGroup]
    ep: Optional[dist.ProcessGroup]
    expert_dp: Optional[dist.ProcessGroup]


def backend_for(requested: str, device: torch.device) -> str:
    if requested != "auto":
        return requested
    return "nccl" if device.type == "cuda" else "gloo"


def init_from_env(ep_size: int, backend: str, timeout_s: float) -> ProcessGroups:
    """Join the group torchrun started (RANK, WORLD_SIZE, MASTER_ADDR/PORT in the environment).

    Every group gets `timeout_s`: a collective that waits longer for a peer raises, so a hung rank
    ends the case instead of the whole run. (Groups created without an explicit timeout, such as
    DeviceMesh's, wait the 30-minute default.)
    """
    timeout = datetime.timedelta(seconds=timeout_s)
    dist.init_process_group(backend, timeout=timeout)
    layout = Layout(dist.get_world_size(), ep_size, dist.get_rank())
    ep = expert_dp = None
    # new_group is collective: every rank creates every group, in the same order
    for group in range(layout.dp_size):
        created = dist.new_group(layout.ep_ranks(group), timeout=timeout) if layout.ep_size > 1 else None
        if layout.rank // layout.ep_size == group:
            ep = created
    for position in range(layout.ep_size):
        created = dist.new_group(layout.expert_dp_ranks(position), timeout=timeout) if layout.dp_size > 1 else None
        if layout.ep_rank == position:
            expert_dp = created
    world = dist.group.WORLD if layout.world_size > 1 else None
    return ProcessGroups(layout, world, ep, expert_dp)


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_world_size() -> int:
    """Ranks of the group on this machine (torchrun's LOCAL_WORLD_SIZE)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def local_rows(batch: torch.Tensor) -> torch.Tensor:
    """This rank's rows of a global batch, or the whole batch in a single process. Workloads call it
    the way `DistributedSampler` asks the default group, so they need no extra argument."""
    if not (dist.is_available() and dist.is_initialized()):
        return batch
    return batch[Layout(dist.get_world_size(), 1, dist.get_rank()).shard(batch.shape[0])]
