"""One training step: forward, cross-entropy plus the MoE auxiliary losses, backward, AdamW step.

Every step's loss and coefficient-free auxiliary losses are logged (as tensors, so logging adds no
host synchronisation to the timed step) and handed to the worker by `step_log`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.config import Case
from harness.metrics import routing
from harness.workloads import Workload, sample_tokens


def make(model: torch.nn.Module, case: Case, device: torch.device) -> Workload:
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=case.run.lr)
    batch = sample_tokens(case, device)
    inputs, targets = batch[:, :-1], batch[:, 1:]
    history: list[dict[str, torch.Tensor]] = []

    def step() -> None:
        logits, aux_loss = model(inputs)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))
        (loss + aux_loss).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.on_optimizer_step()
        history.append({"loss": loss.detach(), **routing.last_losses(model)})

    def last_loss() -> float | None:
        return float(history[-1]["loss"]) if history else None

    def step_log() -> list[dict[str, float]]:
        return [{"step": i, **{name: float(v) for name, v in entry.items()}} for i, entry in enumerate(history)]

    return Workload(step, inputs.numel(), training=True, last_loss=last_loss, step_log=step_log)
