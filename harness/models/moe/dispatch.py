"""Expert computation: turn kept assignments into the MoE output. Every implementation computes
`y[t] = sum over kept (t, e, w) of w * expert_e(x[t])` and must agree with `loop`.

- `loop`: per-expert boolean selection and `index_add_`, the readable reference (HF eager style).
- `grouped`: gather tokens in expert order, one grouped matmul per projection, scatter-add back.
  Uses `torch.nn.functional.grouped_mm` on CUDA bf16 (sm80+), where it is one kernel; otherwise
  per-expert `torch.mm` on contiguous slices after a single `.tolist()` of the counts (on CPU this
  beats the composite `grouped_mm` fallback).
- `padded`: GShard/Switch capacity buffer `[E, C, d]` and two batched matmuls; padding rows are
  computed and discarded, which is the cost capacity factors buy static shapes with.

To add one: a function `(x [T, d], plan, experts) -> [T, d]` and one line in `IMPLS`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from harness.models.moe.experts import Experts
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


def _native_grouped_mm(a: Tensor, w: Tensor) -> bool:
    if not hasattr(F, "grouped_mm") or a.device.type != "cuda" or a.dtype != torch.bfloat16:
        return False
    return torch.cuda.get_device_capability(a.device) >= (8, 0)


class _SplitMM(torch.autograd.Function):
    """Per-group `torch.mm` writing straight into one output buffer, and the same for the two backward
    products (a `cat` of per-expert outputs costs about half as much again as the matmuls on CPU).
    `w` is `[E, out, in]` when `transposed` else `[E, in, out]`; `sizes` are host ints (no sync)."""

    @staticmethod
    def forward(ctx, a: Tensor, w: Tensor, sizes: list[int], transposed: bool) -> Tensor:
        ctx.save_for_backward(a, w)
        ctx.sizes, ctx.transposed = sizes, transposed
        out = a.new_empty(a.shape[0], w.shape[1] if transposed else w.shape[2])
        for e, (a_e, out_e) in enumerate(zip(a.split(sizes), out.split(sizes))):
            if a_e.shape[0]:
                torch.mm(a_e, w[e].t() if transposed else w[e], out=out_e)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        a, w = ctx.saved_tensors
        sizes, transposed = ctx.sizes, ctx.transposed
        grad = grad.contiguous()
        grad_a = torch.empty_like(a) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros_like(w) if ctx.needs_input_grad[1] else None
        grad_a_parts = grad_a.split(sizes) if grad_a is not None else [None] * len(sizes)
        for e, (a_e, g_e, ga_e) in enumerate(zip(a.split(sizes), grad.split(sizes), grad_a_parts)):
            if not a_e.shape[0]:
                continue
            if ga_e is not None:
                torch.mm(g_e, w[e] if transposed else w[e].t(), out=ga_e)
            if grad_w is not None:
                torch.mm(*((g_e.t(), a_e) if transposed else (a_e.t(), g_e)), out=grad_w[e])
        return grad_a, grad_w, None, None


def grouped_matmul(a: Tensor, w: Tensor, plan: DispatchPlan, transposed: bool,
                   native: Optional[bool] = None) -> Tensor:
    """Rows of `a` grouped by expert (sizes `plan.counts`), each group times its expert's matrix:
    `a_e @ w[e].T` if `transposed` (w `[E, out, in]`) else `a_e @ w[e]` (w `[E, in, out]`).

    `native` forces (True) or forbids (False) `F.grouped_mm`; by default it is used where it is fast.
    """
    if native if native is not None else _native_grouped_mm(a, w):
        offsets = plan.counts.cumsum(0).to(torch.int32)
        return F.grouped_mm(a, w.transpose(-2, -1) if transposed else w, offs=offsets)
    return _SplitMM.apply(a, w, plan.sizes, transposed)


def grouped(x: Tensor, plan: DispatchPlan, experts: Experts) -> Tensor:
    xs = x.index_select(0, plan.token)
    h = experts.act(grouped_matmul(xs, experts.w_in, plan, transposed=True))
    return _combine(x, plan, grouped_matmul(h, experts.w_out, plan, transposed=False))


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
    try:
        return IMPLS[name]
    except KeyError:
        raise ValueError(f"unknown MoE implementation {name!r}; known: {sorted(IMPLS)}") from None
