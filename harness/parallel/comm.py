"""Every collective of a multi-rank case goes through a `CommRecorder`: it times and byte-counts it
per step and turns a failure into a `CollectiveError`.

Timing adds no synchronisation: on CPU (gloo, whose collectives block) a perf_counter pair around
the call; on CUDA a pair of events on the current stream, which waits for the collective, read only
after the timed steps. Either way a collective's time includes waiting for the slowest peer to
arrive, which is where a straggler's cost shows up on the other ranks.

Bytes are the payload this rank hands to other ranks (its own chunk of an all-to-all stays local);
for an all-reduce, the buffer size (what goes over the wire depends on the algorithm: a ring sends
2(n-1)/n of it).
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd import Function

# the kinds that make up the expert-parallel exchange (all_to_all_ms)
EXCHANGE = ("counts", "dispatch", "combine", "dispatch_backward", "combine_backward")


class CollectiveError(RuntimeError):
    """A collective failed: a peer died, hung past the timeout, or the transport broke. The rank that
    reports it is usually a victim of another rank's failure."""


class CommRecorder:
    """Seconds and bytes of this rank's collectives, by kind, for each step since `start_step`."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._steps: list[dict[str, Any]] = []
        self._current: Optional[dict[str, Any]] = None
        self.blocked_s = 0.0
        """Host seconds spent inside collectives, recorded or not (the contention reading leaves them out)."""
        self.inside = 0
        """Collectives this rank is inside now: a rank stopped outside one was not waiting on a peer."""

    def start_step(self) -> None:
        self._current = {"time": defaultdict(list), "bytes": defaultdict(int), "expert_rows": 0}
        self._steps.append(self._current)

    def stop(self) -> None:
        """Collectives from here on are not recorded (probe, energy pass)."""
        self._current = None

    def reset(self) -> None:
        self._steps, self._current = [], None

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """Around a blocking collective (gloo; NCCL calls return at once): its host time counts in
        `blocked_s`, and the rank is `inside` one meanwhile."""
        self.inside += 1
        start = time.perf_counter()
        try:
            yield
        finally:
            self.inside -= 1
            self.blocked_s += time.perf_counter() - start

    def run(self, kind: str, sent_bytes: int, call: Callable[[], Any]) -> Any:
        step = self._current
        start = time.perf_counter()
        if step is not None and self.cuda:
            events = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            events[0].record()
        try:
            with self.waiting():
                result = call()
        except Exception as exc:  # noqa: BLE001 - re-raised with the collective named
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CollectiveError(f"{kind} collective failed: {first}") from exc
        if step is not None:
            if self.cuda:
                events[1].record()
                step["time"][kind].append(events)
            else:
                step["time"][kind].append(time.perf_counter() - start)
            step["bytes"][kind] += sent_bytes
        return result

    def add_expert_rows(self, rows: int) -> None:
        if self._current is not None:
            self._current["expert_rows"] += rows

    def steps(self) -> list[dict[str, float]]:
        """Per recorded step: `<kind>_s` and `<kind>_bytes` for every kind seen, and `expert_rows`."""
        if self.cuda and self._steps:
            torch.cuda.synchronize()
        out = []
        for step in self._steps:
            record: dict[str, float] = {"expert_rows": step["expert_rows"]}
            for kind, times in step["time"].items():
                seconds = [a.elapsed_time(b) / 1e3 for a, b in times] if self.cuda else times
                record[f"{kind}_s"] = float(sum(seconds))
            for kind, sent in step["bytes"].items():
                record[f"{kind}_bytes"] = sent
            out.append(record)
        return out

    # ------------------------------------------------------------------ collectives

    def all_to_all(self, x: Tensor, out_splits: list[int], in_splits: list[int], group: Any, kind: str) -> Tensor:
        """Rows `in_splits[j]` of `x` go to rank j; rows `out_splits[j]` come from rank j."""
        x = x.contiguous()
        out = x.new_empty((sum(out_splits), *x.shape[1:]))
        row_bytes = x.shape[1:].numel() * x.element_size()
        sent = (sum(in_splits) - in_splits[dist.get_rank(group)]) * row_bytes
        self.run(kind, sent, lambda: dist.all_to_all_single(out, x, out_splits, in_splits, group=group))
        return out

    def all_gather(self, x: Tensor, group: Any, kind: str) -> Tensor:
        """`[group size, *x.shape]`: every rank's `x`."""
        size = dist.get_world_size(group)
        parts = [torch.empty_like(x) for _ in range(size)]
        self.run(kind, (size - 1) * x.numel() * x.element_size(), lambda: dist.all_gather(parts, x.contiguous(), group=group))
        return torch.stack(parts)

    def all_reduce(self, x: Tensor, group: Any, kind: str) -> Tensor:
        """Sum over the group, in place."""
        self.run(kind, x.numel() * x.element_size(), lambda: dist.all_reduce(x, group=group))
        return x


class _AllToAll(Function):
    """Differentiable all-to-all: the backward is the reverse all-to-all of the gradient.

    `anchor` is never read; it ties the node into the graph on every rank, so the backward
    collective runs on a rank even when its input carries no gradient there (a rank whose experts
    got no tokens), as it must for the other ranks' backward to complete.
    """

    @staticmethod
    def forward(ctx, x, anchor, out_splits, in_splits, group, recorder, kind):  # noqa: ARG004 - anchor: see docstring
        ctx.args = out_splits, in_splits, group, recorder, kind
        return recorder.all_to_all(x, out_splits, in_splits, group, kind)

    @staticmethod
    def backward(ctx, grad):
        out_splits, in_splits, group, recorder, kind = ctx.args
        back = recorder.all_to_all(grad, in_splits, out_splits, group, f"{kind}_backward")
        return back, None, None, None, None, None, None


def all_to_all(x: Tensor, out_splits: list[int], in_splits: list[int], group: Any, recorder: CommRecorder,
               kind: str, anchor: Optional[Tensor] = None) -> Tensor:
    return _AllToAll.apply(x, anchor, out_splits, in_splits, group, recorder, kind)


def group_total(parts: list[Tensor], group: Any, recorder: CommRecorder) -> list[Tensor]:
    """Sums over the group of per-rank tensors, in one all-reduce.

    The value is the group's sum; the gradient flows into this rank's own part, scaled by the group
    size. Data parallelism averages gradients over ranks, so each rank's share of a loss computed on
    the group's sums then adds up to that loss's full gradient.
    """
    size = dist.get_world_size(group)
    flat = torch.cat([p.detach().float().reshape(-1) for p in parts])
    recorder.all_reduce(flat, group, "moe_stats")
    out, offset = [], 0
    for p in parts:
        total = flat[offset:offset + p.numel()].view_as(p).to(p.dtype)
        out.append(total + size * (p - p.detach()) if p.requires_grad else total)
        offset += p.numel()
    return out
