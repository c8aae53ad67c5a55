"""What the training workloads share: the optimizer update and the per-step record.

The update is AdamW on cross-entropy plus the MoE auxiliary losses, with optional global gradient-norm
clipping (`run.grad_clip`). The gradient norm (clipping computes it anyway) and the router health of
each MoE layer are recorded when the record asks for `health`: the quality workload does, to show how a
run trained; `train_step` does not, so its timed step does nothing beyond the training step itself.

The record keeps references to 0-dim tensors only (no `.item()`, no host synchronisation inside the
timed step); `StepLog.rows` turns them into numbers after timing.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

from harness.config import RunSettings
from harness.metrics.routing import moe_layers
from harness.models.moe.layer import LOSS_NAMES

HEALTH_NAMES = ("router_logit_max", "router_logit_mean", "load_cv")


def make_optimizer(model: nn.Module, run: RunSettings) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=run.lr)


def total_norm(grads: list[Tensor]) -> Tensor:
    """Global L2 norm of the gradients (what clipping compares with `run.grad_clip`)."""
    if hasattr(nn.utils, "get_total_norm"):  # torch >= 2.6
        return nn.utils.get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def update(model: nn.Module, optimizer: torch.optim.Optimizer, objective: Tensor, grad_clip: Optional[float],
           want_norm: bool = False) -> Optional[Tensor]:
    """Backward, clip (if asked), step, zero; returns the gradient norm before clipping, when it was
    computed (clipping, or `want_norm`)."""
    objective.backward()
    norm = None
    if grad_clip is not None or want_norm:
        params = [p for p in model.parameters() if p.grad is not None]
        if grad_clip is None:
            norm = total_norm([p.grad for p in params])
        else:
            norm = nn.utils.clip_grad_norm_(params, grad_clip)
        norm = norm.detach()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.on_optimizer_step()
    return norm


class StepLog:
    """One entry per training step: loss, gradient norm, and each MoE layer's aux losses and router health.

    Row columns: `step`, `loss`, and `grad_norm` when it was computed; for an MoE model the
    coefficient-free `aux_loss`, `z_loss`, `importance_loss` (means over MoE layers) and, with `health`,
    `router_logit_mean` and `load_cv` (means over MoE layers), `router_logit_max` (max over MoE layers),
    and `router_logit_max_l<i>`, `router_logit_mean_l<i>`, `load_cv_l<i>` for the MoE layer at
    transformer layer i.
    """

    def __init__(self, model: nn.Module, health: bool = False):
        self.layers = moe_layers(model)
        self.health = health
        for _, layer in self.layers:
            layer.track_health = health
        self.entries: list[tuple[Tensor, Optional[Tensor], list[dict[str, Tensor]]]] = []
        self.extra: dict[int, dict[str, Any]] = {}

    def record(self, loss: Tensor, grad_norm: Optional[Tensor] = None) -> None:
        per_layer = [{**layer.last_losses, **layer.last_router} for _, layer in self.layers]
        self.entries.append((loss.detach(), grad_norm, per_layer))

    def annotate(self, step: int, **values: Any) -> None:
        """Extra columns on one step's row (the quality workload's held-out loss)."""
        self.extra.setdefault(step, {}).update(values)

    def __len__(self) -> int:
        return len(self.entries)

    def rows(self, limit: Optional[int] = None) -> list[dict[str, Any]]:
        entries = self.entries[:limit]
        if not entries:
            return []
        columns: dict[str, list[float]] = {"loss": _host([e[0] for e in entries])}
        if all(e[1] is not None for e in entries):
            columns["grad_norm"] = _host([e[1] for e in entries])
        if self.layers:
            for name in LOSS_NAMES:
                columns[name] = _host([torch.stack([layer[name] for layer in e[2]]).mean() for e in entries])
        if self.layers and self.health:
            for j, (index, _) in enumerate(self.layers):
                for name in HEALTH_NAMES:
                    columns[f"{name}_l{index}"] = _host([e[2][j][name] for e in entries])
            for name in HEALTH_NAMES:
                per_layer = [columns[f"{name}_l{index}"] for index, _ in self.layers]
                pool = max if name == "router_logit_max" else (lambda v: sum(v) / len(v))
                columns[name] = [pool(values) for values in zip(*per_layer)]
        rows = []
        for i in range(len(entries)):
            row: dict[str, Any] = {"step": i, **{name: values[i] for name, values in columns.items()}}
            row.update(self.extra.get(i, {}))
            rows.append(row)
        return rows


def _host(values: list[Tensor]) -> list[float]:
    """One device-to-host copy for a whole column."""
    return torch.stack([v.float() for v in values]).tolist()
