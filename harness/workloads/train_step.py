"""One training step: forward, cross-entropy plus the MoE auxiliary losses, backward, AdamW step.

Every step's loss and coefficient-free auxiliary losses (and the gradient norm when `run.grad_clip`
computes it) are logged by keeping references to tensors (no host synchronisation inside the timed
step); `step_log` reads them after.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.config import Case
from harness.workloads import Workload, sample_tokens
from harness.workloads.training import StepLog, make_optimizer, update


def make(model: torch.nn.Module, case: Case, device: torch.device) -> Workload:
    model.train()
    optimizer = make_optimizer(model, case.run)
    batch = sample_tokens(case, device)
    inputs, targets = batch[:, :-1], batch[:, 1:]
    log = StepLog(model)

    def step() -> None:
        logits, aux_loss = model(inputs)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))
        log.record(loss, update(model, optimizer, loss + aux_loss, case.run.grad_clip))

    def last_loss() -> float | None:
        return float(log.entries[-1][0]) if len(log) else None

    return Workload(step, inputs.numel(), training=True, last_loss=last_loss, step_log=log.rows, optimizer=optimizer)
