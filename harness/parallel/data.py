"""Data parallelism: gradients summed over the ranks that hold a parameter, before each optimizer step.

Each rank's loss is the mean over its 1/W of the global batch, so the single-process gradient is the
sum over ranks divided by W. A replicated parameter sums over all W ranks; an expert sums over its
expert-data-parallel group (the dp ranks that hold it), since the all-to-all backward has already
brought it the gradients of every rank in its EP group. Either way: all-reduce (sum), then divide by W.

One flat all-reduce per bucket of about 25 MiB (DDP's default bucket size), after the whole backward:
simpler than DDP's overlap with the backward pass, and the same for MoE and dense cases. State that
is a sum over tokens and must stay identical on every rank (the sigmoid_bias router's pending load)
is summed over all ranks at the same point.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from harness.models.moe.router import SigmoidBiasRouter
from harness.parallel.comm import CommRecorder

BUCKET_BYTES = 25 * 2**20


def buckets(params: list[nn.Parameter], limit: int = BUCKET_BYTES) -> list[list[nn.Parameter]]:
    """Consecutive parameters of one dtype, each bucket at most `limit` bytes (or one larger parameter)."""
    out: list[list[nn.Parameter]] = []
    size = 0
    for p in params:
        nbytes = p.numel() * p.element_size()
        if not out or size + nbytes > limit or out[-1][0].dtype != p.dtype:
            out.append([])
            size = 0
        out[-1].append(p)
        size += nbytes
    return out


class GradientSync:
    """Call after backward and before the optimizer step (`attach` registers it as a step pre-hook)."""

    def __init__(self, model: nn.Module, expert_params: list[nn.Parameter], world: Any, expert_dp: Any,
                 world_size: int, recorder: CommRecorder):
        expert_ids = {id(p) for p in expert_params}
        shared = [p for p in model.parameters() if p.requires_grad and id(p) not in expert_ids]
        experts = [p for p in expert_params if p.requires_grad]
        self.groups = [(world, b) for b in buckets(shared)] + [(expert_dp, b) for b in buckets(experts)]
        self.world, self.world_size, self.recorder = world, world_size, recorder
        # routers, not their buffers: moving the model to a device replaces the buffer tensors
        self.bias_routers = [m for m in model.modules() if isinstance(m, SigmoidBiasRouter)]

    def attach(self, optimizer: Optional[torch.optim.Optimizer]) -> None:
        if optimizer is None:
            raise ValueError("this workload has no optimizer to synchronise gradients for; it cannot run data-parallel")
        optimizer.register_step_pre_hook(lambda *_: self())

    @torch.no_grad()
    def __call__(self) -> None:
        for group, params in self.groups:
            # an expert that got no rows on this rank has no gradient here but may have one elsewhere
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            flat = torch.cat([g.reshape(-1) for g in grads])
            if group is not None:
                self.recorder.all_reduce(flat, group, "grad_sync")
            flat.div_(self.world_size)
            offset = 0
            for p in params:
                p.grad = flat[offset:offset + p.numel()].view_as(p)
                offset += p.numel()
        if self.bias_routers and self.world is not None:
            pending = [router.pending_load for router in self.bias_routers]
            flat = torch.cat(pending)
            self.recorder.all_reduce(flat, self.world, "grad_sync")
            for buffer, total in zip(pending, flat.split([b.numel() for b in pending])):
                buffer.copy_(total)
