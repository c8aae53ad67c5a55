"""One training step: forward, cross-entropy plus the MoE auxiliary losses, backward, AdamW step."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.config import Case
from harness.workloads import Workload, sample_tokens


def make(model: torch.nn.Module, case: Case, device: torch.device) -> Workload:
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=case.run.lr)
    batch = sample_tokens(case, device)
    inputs, targets = batch[:, :-1], batch[:, 1:]
    last: dict[str, float] = {}

    def step() -> None:
        logits, aux_loss = model(inputs)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))
        (loss + aux_loss).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.on_optimizer_step()
        last["loss"] = loss.detach()

    def last_loss() -> float | None:
        return float(last["loss"]) if "loss" in last else None

    return Workload(step, inputs.numel(), training=True, last_loss=last_loss)
