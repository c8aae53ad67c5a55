"""Expert computation: turn kept assignments into the MoE output. Every implementation computes
`y[t] = sum over kept (t, e, w) of w * expert_e(x[t])` and must agree with `loop`.

- `loop`: per-expert boolean selection and `index_add_`, the readable reference (HF eager style).
- `grouped`: tokens in expert order, one grouped matmul per projection, weighted scatter-add back
  (`grouped.py`: `F.grouped_mm` on CUDA bf16 sm90+ with aligned widths, else per-expert `torch.mm` with the gather and
  scatter fused in, after one `.tolist()` of the counts).
- `padded`: GShard/Switch capacity buffer `[E, C, d]` and two batched matmuls; padding rows are
  computed and discarded, which is the cost capacity factors buy static shapes with.

To add one: a function `(x [T, d], plan, experts) -> [T, d]` and one line in `IMPLS`, or, without
editing the harness, name it in a suite as `moe.impl: package.module:function`; the worker then checks
it against `loop` on a small input before timing (`harness/models/impl_check.py`).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor

from harness.models.moe.experts import Experts
from harness.models.moe.grouped import grouped_ffn
from harness.models.moe.router import Routing


@dataclass
class DispatchPlan:
    """Kept assignments sorted by expert (stable, so capacity priority order is kept within an expert)."""

    token: Tensor  # [N] long
    expert: Tensor  # [N] long, non-decreasing
    weight: Tensor  # [N] float32
    counts: Tensor  # [E] long, kept assignments per expert
    capacity: Optional[int]  # rows per expert when capacity-limited; None = dropless
    _sizes: Optional[list[int]] = field(default=None, repr=False)

    @property
    def sizes(self) -> list[int]:
        """Counts on the host (one device sync per plan, cached)."""
        if self._sizes is None:
            self._sizes = self.counts.tolist()
        return self._sizes

    @property
    def position(self) -> Tensor:
        """Row of each assignment inside its expert's group."""
        start = self.counts.cumsum(0) - self.counts
        return torch.arange(self.token.numel(), device=self.token.device) - start[self.expert]


def make_plan(routing: Routing, counts: Tensor, capacity: Optional[int]) -> DispatchPlan:
    """Sort assignments by expert and drop those past `capacity` (position within the expert, in
    priority order). `counts` [E] = assignments per expert. With `capacity=None` nothing is dropped."""
    order = torch.argsort(routing.expert, stable=True)
    expert = routing.expert.index_select(0, order)
    if capacity is not None:
        start = counts.cumsum(0) - counts
        position = torch.arange(order.numel(), device=order.device) - start[expert]
        keep = (position < capacity).nonzero().squeeze(1)
        order, expert = order.index_select(0, keep), expert.index_select(0, keep)
        counts = counts.clamp(max=capacity)
    return DispatchPlan(
        token=routing.token.index_select(0, order),
        expert=expert,
        weight=routing.weight.index_select(0, order),
        counts=counts,
        capacity=capacity,
    )


def _combine(x: Tensor, plan: DispatchPlan, y: Tensor) -> Tensor:
    """Weighted scatter-add of per-assignment outputs back to their tokens."""
    y = y * plan.weight.unsqueeze(1).to(y.dtype)
    return torch.zeros_like(x).index_add_(0, plan.token, y)


def loop(x: Tensor, plan: DispatchPlan, experts: Experts) -> Tensor:
    out = torch.zeros_like(x)
    for e in range(experts.num_experts):
        idx = (plan.expert == e).nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        token = plan.token[idx]
        y = experts.expert(x[token], e) * plan.weight[idx].unsqueeze(1).to(x.dtype)
        out.index_add_(0, token, y)
    return out


def grouped(x: Tensor, plan: DispatchPlan, experts: Experts) -> Tensor:
    return grouped_ffn(x, experts.w_in, experts.w_out, experts.act, plan.token, plan.weight, plan.counts,
                       lambda: plan.sizes)


def padded(x: Tensor, plan: DispatchPlan, experts: Experts) -> Tensor:
    E, d = experts.num_experts, x.shape[1]
    capacity = plan.capacity if plan.capacity is not None else max(plan.sizes, default=0)
    if capacity == 0:
        return torch.zeros_like(x)
    row = plan.expert * capacity + plan.position
    buf = x.new_zeros(E * capacity, d).index_copy(0, row, x.index_select(0, plan.token))
    h = experts.act(torch.bmm(buf.view(E, capacity, d), experts.w_in.transpose(1, 2)))
    y = torch.bmm(h, experts.w_out).view(E * capacity, d)
    return _combine(x, plan, y.index_select(0, row))


Impl = Callable[[Tensor, DispatchPlan, Experts], Tensor]
IMPLS: dict[str, Impl] = {"loop": loop, "grouped": grouped, "padded": padded}


def get_impl(name: str) -> Impl:
    """A built-in implementation by name, or a user's `package.module:function`."""
    if ":" in name:
        module, _, function = name.partition(":")
        return getattr(importlib.import_module(module), function)
    try:
        return IMPLS[name]
    except KeyError:
        raise ValueError(f"unknown MoE implementation {name!r}; known: {sorted(IMPLS)}") from None
