"""One training step: forward, cross-entropy plus the MoE auxiliary losses, backward, AdamW step.

Every step's loss and coefficient-free auxiliary losses are logged by keeping references to the
tensors (no host synchronisation and no reduction inside the timed step); `step_log` reads them after.
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
    moe_layers = model.moe_layers()
    history: list[tuple[torch.Tensor, list[dict[str, torch.Tensor]]]] = []

    def step() -> None:
        logits, aux_loss = model(inputs)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))
        (loss + aux_loss).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.on_optimizer_step()
        history.append((loss.detach(), [layer.last_losses for layer in moe_layers]))

    def last_loss() -> float | None:
        return float(history[-1][0]) if history else None

    def step_log() -> list[dict[str, float]]:
        return [{"step": i, "loss": float(loss), **routing.mean_losses(layers)} for i, (loss, layers) in enumerate(history)]

    return Workload(step, inputs.numel(), training=True, last_loss=last_loss, step_log=step_log, optimizer=optimizer)
