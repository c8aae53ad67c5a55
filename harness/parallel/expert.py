"""Expert parallelism: the MoE dispatch across an EP group, used by `MoELayer` in place of its local one.

Per MoE layer and forward, on every rank of the EP group:

1. Route the local tokens (the router is replicated) and count assignments per (slot, expert).
2. Exchange the counts (one all-gather of `[k, E]` per rank). Every rank now knows what every rank
   routed, so it can apply the capacity and derive the all-to-all split sizes itself: no host has
   to guess a buffer size, and dropless routing works.
3. Capacity is per expert over the whole EP group's tokens: C = ceil(cf * T_group * k / E), filled
   in the single-process priority order (slot-major; within a slot, rank 0's tokens first), so the
   kept assignments are exactly those a single process would keep for the concatenated batch.
4. Dispatch: the kept rows, sorted by expert and so by owning rank, go out in one
   `all_to_all_single`; each rank receives its experts' rows grouped by source rank.
5. The local experts run through the configured impl (`loop`, `grouped`, `padded`), whose gather and
   scatter put the rows in expert order and back, unweighted.
6. Combine: the reverse all-to-all returns each row to its token's rank, where the combine weight is
   applied and rows are summed per token. Router gradients therefore stay local.

Autograd runs through both all-to-alls (`comm.all_to_all`). Auxiliary losses and routing tallies use
the EP group's totals (`comm.group_total`), so they too equal the single-process layer's.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from harness.models.moe.dispatch import DispatchPlan
from harness.models.moe.layer import BatchCounts
from harness.models.moe.router import Routing, histogram
from harness.parallel.comm import CommRecorder, all_to_all, group_total

if TYPE_CHECKING:
    from harness.models.moe.layer import MoELayer


def kept_counts(counts: Tensor, capacity: int | None) -> Tensor:
    """`[ranks, E]` assignments each rank keeps per expert, from everyone's `[ranks, k, E]` counts.

    An assignment's place in its expert's queue is: every assignment of earlier slots (all ranks),
    then those of earlier ranks in the same slot, then its place among its rank's own.
    """
    if capacity is None:
        return counts.sum(1)
    per_slot = counts.sum(0)
    offset = (per_slot.cumsum(0) - per_slot).unsqueeze(0) + (counts.cumsum(0) - counts)
    return (capacity - offset).clamp(min=0).minimum(counts).sum(1)


def source_plan(routing: Routing, counts: Tensor, rank: int, capacity: int | None, num_tokens: int) -> DispatchPlan:
    """This rank's kept assignments sorted by expert (hence by owning rank), as a `DispatchPlan`."""
    order = torch.argsort(routing.expert, stable=True)
    expert = routing.expert.index_select(0, order)
    token, weight = routing.token.index_select(0, order), routing.weight.index_select(0, order)
    mine = counts[rank]
    if capacity is not None:
        slot = torch.div(order, num_tokens, rounding_mode="floor")  # assignments are listed slot-major
        per_expert = mine.sum(0)
        start = (per_expert.cumsum(0) - per_expert)[expert] + (mine.cumsum(0) - mine)[slot, expert]
        own_place = torch.arange(order.numel(), device=order.device) - start
        per_slot = counts.sum(0)
        offset = (per_slot.cumsum(0) - per_slot) + (counts.cumsum(0) - counts)[rank]
        keep = ((offset[slot, expert] + own_place) < capacity).nonzero().squeeze(1)
        token, expert, weight = token.index_select(0, keep), expert.index_select(0, keep), weight.index_select(0, keep)
    return DispatchPlan(token=token, expert=expert, weight=weight, counts=kept_counts(counts, capacity)[rank],
                        capacity=capacity)


def expert_plan(received: list[list[int]], capacity: int | None, device: torch.device) -> DispatchPlan:
    """Plan for the local experts over the received rows, which arrive grouped by source rank and
    then by expert; `token` lists them in expert order (source-rank order within an expert)."""
    lens = torch.tensor(received, dtype=torch.long)  # [sources, local experts]
    starts = (lens.reshape(-1).cumsum(0) - lens.reshape(-1)).view_as(lens)
    lens_e, starts_e = lens.t().reshape(-1), starts.t().reshape(-1)  # expert-major segments
    segment = torch.repeat_interleave(torch.arange(lens_e.numel()), lens_e)
    first = lens_e.cumsum(0) - lens_e
    rows = torch.arange(segment.numel()) - first[segment] + starts_e[segment]
    counts = lens.sum(0)
    return DispatchPlan(
        token=rows.to(device),
        expert=torch.div(segment, lens.shape[0], rounding_mode="floor").to(device),
        weight=torch.ones(segment.numel(), device=device),
        counts=counts.to(device),
        capacity=capacity,
        _sizes=counts.tolist(),
    )


class ExpertParallelDispatch:
    """`MoELayer.dispatch` over an EP group; the layer's `experts` hold only this rank's experts."""

    def __init__(self, group, rank: int, size: int, recorder: CommRecorder):
        self.group, self.rank, self.size, self.recorder = group, rank, size, recorder

    def total(self, parts: list[Tensor]) -> list[Tensor]:
        return group_total(parts, self.group, self.recorder)

    def __call__(self, layer: "MoELayer", x: Tensor, routing: Routing) -> tuple[Tensor, BatchCounts]:
        if not routing.token_choice:
            raise ValueError("expert_choice routing picks tokens across the whole batch; it cannot run expert-parallel")
        T, E, k = x.shape[0], layer.num_experts, layer.k
        local_experts = E // self.size
        slot = torch.div(torch.arange(routing.expert.numel(), device=x.device), T, rounding_mode="floor")
        mine = histogram(slot * E + routing.expert, k * E).view(k, E)
        counts = self.recorder.all_gather(mine, self.group, "counts")  # [ranks, k, E]
        capacity = layer.capacity(T * self.size)
        kept = kept_counts(counts, capacity)
        kept_host = kept.view(self.size, self.size, local_experts).tolist()  # [source, owner, local expert]
        send = [sum(row) for row in kept_host[self.rank]]
        received = [kept_host[source][self.rank] for source in range(self.size)]
        recv_splits = [sum(row) for row in received]
        plan = source_plan(routing, counts, self.rank, capacity, T)

        rows = all_to_all(x.index_select(0, plan.token), recv_splits, send, self.group, self.recorder, "dispatch")
        self.recorder.add_expert_rows(rows.shape[0])
        out = layer.impl(rows, expert_plan(received, capacity, x.device), layer.experts)
        back = all_to_all(out, send, recv_splits, self.group, self.recorder, "combine", anchor=rows)
        y = torch.zeros_like(x).index_add_(0, plan.token, back * plan.weight.unsqueeze(1).to(back.dtype))
        return y, BatchCounts(T * self.size, counts.sum((0, 1)), kept.sum(0), capacity, self.total)
