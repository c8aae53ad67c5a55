"""MoELayer: router -> capacity -> dispatch (an implementation from `dispatch.IMPLS`) -> combine,
plus shared experts, auxiliary losses and routing tallies.

- Capacity (token choice): C = ceil(capacity_factor * T * k / E) rows per expert, T = all tokens of
  the layer's batch (B*seq; under expert parallelism every token of the EP group, see
  `harness.parallel`). Assignments past C are dropped in slot-major priority (first choices last) and
  contribute 0, so the token keeps only its residual path. `capacity_factor: null` = dropless.
- Shared experts (DeepSeekMoE): `num_shared_experts` always-on experts of width
  `moe.shared_width(model)`, added unweighted, or scaled by `sigmoid(x @ w_gate)` (one bias-free
  d_model -> 1 gate per layer) with `moe.shared_gate` (Qwen-MoE). They are stored as one FFN of width
  `num_shared_experts * shared_width`, which is the same function and parameter count as separate
  experts summed (bias-free).
- Auxiliary losses (coefficient-free values in `last_losses`, the coefficient-weighted sum returned):
  * `aux_loss` (Switch): E * sum_i f_i P_i, f over all assignments before capacity, P the mean router
    distribution; 1 at perfect balance.
  * `z_loss` (ST-MoE): mean_t logsumexp(logits_t)^2.
  * `importance_loss` (Shazeer 2017): CV^2(importance) + CV^2(load), importance = per-expert sum of
    combine weights, load = the noisy router's smooth estimate in training, else assignment counts.
    Both terms share `importance_loss_coef` (Shazeer used equal weights). CV^2 = var/mean^2 (population).
- Training health (`last_router`, training forwards with `track_health` on): the largest and the mean
  |router logit| and the CV of the expert load, as 0-dim tensors (no host sync), for the per-step record
  of the quality workload; growing router logits are what ST-MoE's z-loss exists to damp. Off by default,
  so the timed training step of `train_step` does no work it would not do anyway.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from harness.config import ModelConfig, MoEConfig
from harness.models.dense import FeedForward
from harness.models.moe.dispatch import get_impl, make_plan
from harness.models.moe.experts import Experts
from harness.models.moe.router import Routing, build_router, histogram
from harness.models.moe.stats import RoutingTally

LOSS_NAMES = ("aux_loss", "z_loss", "importance_loss")


def _cv2(v: Tensor) -> Tensor:
    return v.var(unbiased=False) / (v.mean() ** 2 + 1e-10)


def router_health(logits: Tensor, routed: Tensor) -> dict[str, Tensor]:
    """Max and mean |logit| and the load CV (population std / mean of assignments per expert)."""
    magnitude = logits.detach().abs()
    load = routed.float()
    return {
        "router_logit_max": magnitude.max(),
        "router_logit_mean": magnitude.mean(),
        "load_cv": load.std(unbiased=False) / load.mean().clamp(min=1e-10),
    }


def _local(parts: list[Tensor]) -> list[Tensor]:
    return parts


@dataclass
class BatchCounts:
    """What the layer's batch routed: the local tokens, or under expert parallelism those of the whole
    EP group. `total` turns per-rank sums into the batch's sums (the identity on one process)."""

    tokens: int
    routed: Tensor  # [E] assignments per expert before capacity
    kept: Tensor  # [E] assignments per expert after capacity
    capacity: Optional[int]
    total: Callable[[list[Tensor]], list[Tensor]] = _local


def aux_losses(routing: Routing, batch: BatchCounts) -> tuple[dict[str, Tensor], Tensor]:
    """Coefficient-free auxiliary losses of one routing decision (fp32 scalars) and the batch's summed
    router entropy (for the tallies). Per-token sums are formed first and totalled once, so under
    expert parallelism one small collective gives every loss over the whole EP group."""
    E = routing.probs.shape[1]
    importance = torch.zeros(E, device=routing.probs.device).index_add(0, routing.expert, routing.weight.float())
    parts = [
        routing.probs.sum(0),
        torch.logsumexp(routing.logits, dim=-1).pow(2).sum().unsqueeze(0),
        torch.special.entr(routing.probs.detach()).sum().unsqueeze(0),
        importance,
    ]
    if routing.load is not None:
        parts.append(routing.load)
    prob_sum, z_sum, entropy, importance, *load = batch.total(parts)
    f = batch.routed.float() / batch.routed.sum().clamp(min=1)
    load = load[0] if load else batch.routed.float()
    losses = {
        "aux_loss": E * (f * prob_sum / batch.tokens).sum(),
        "z_loss": z_sum[0] / batch.tokens,
        "importance_loss": _cv2(importance) + _cv2(load),
    }
    return losses, entropy[0].detach()


def local_dispatch(layer: "MoELayer", x: Tensor, routing: Routing) -> tuple[Tensor, BatchCounts]:
    """Capacity, dispatch plan and expert computation on this process's tokens."""
    T = x.shape[0]
    routed = histogram(routing.expert, layer.num_experts)
    capacity = layer.capacity(T) if routing.token_choice else None
    plan = make_plan(routing, routed, capacity)
    return layer.impl(x, plan, layer.experts), BatchCounts(T, routed, plan.counts, plan.capacity)


class MoELayer(nn.Module):
    def __init__(self, model: ModelConfig, moe: MoEConfig):
        super().__init__()
        self.num_experts, self.k = moe.experts, moe.k
        self.capacity_factor = moe.capacity_factor
        self.coefs = {"aux_loss": moe.setting("aux_loss_coef"), "z_loss": moe.z_loss_coef,
                      "importance_loss": moe.setting("importance_loss_coef")}
        self.router = build_router(moe, model.d_model)
        self.experts = Experts(moe.experts, model.d_model, moe.expert_width(model), model.activation)
        self.shared = (
            FeedForward(model.d_model, moe.num_shared_experts * moe.shared_width(model), model.activation)
            if moe.num_shared_experts else None
        )
        self.shared_gate = (
            nn.Linear(model.d_model, 1, bias=False) if moe.num_shared_experts and moe.shared_gate else None
        )
        self.impl_name = moe.impl
        self.impl = get_impl(moe.impl)
        # how routed tokens reach their experts; `harness.parallel` swaps in the all-to-all version
        self.dispatch: Callable[[MoELayer, Tensor, Routing], tuple[Tensor, BatchCounts]] = local_dispatch
        # a capacity limit makes routing depend on the other tokens of the batch (later positions can
        # take an earlier token's slot), so only dropless token choice is causal
        self.tally = RoutingTally(moe.experts, causal=self.router.causal and moe.capacity_factor is None)
        self.last_losses: dict[str, Tensor] = {}
        self.last_router: dict[str, Tensor] = {}
        self.track_health = False

    def capacity(self, num_tokens: int) -> Optional[int]:
        if self.capacity_factor is None:
            return None
        return math.ceil(self.capacity_factor * num_tokens * self.k / self.num_experts)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """`x` [..., d] -> (output [..., d] in the experts' dtype, coefficient-weighted aux loss, a 0-dim
        fp32 tensor). The router reads `x` in float32; the experts read it in their own dtype."""
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        routing = self.router(x)  # on x as given: a float32 input routes unrounded in any model dtype
        x = x.to(self.experts.w_in.dtype)
        y, batch = self.dispatch(self, x, routing)
        if self.shared is not None:
            shared = self.shared(x)
            y = y + (shared if self.shared_gate is None else torch.sigmoid(self.shared_gate(x)) * shared)

        losses, entropy = aux_losses(routing, batch)
        self.last_losses = {name: value.detach() for name, value in losses.items()}
        if self.training and self.track_health:
            self.last_router = router_health(routing.logits, batch.routed)
        total = sum((self.coefs[n] * losses[n] for n in LOSS_NAMES if self.coefs[n] > 0),
                    torch.zeros((), device=x.device))
        self._tally(routing, batch, entropy)
        return y.view(shape), total

    @torch.no_grad()
    def _tally(self, routing: Routing, batch: BatchCounts, entropy: Tensor) -> None:
        T = batch.tokens
        if routing.token_choice:
            slots = drop_total = T * self.k
            dropped = batch.routed.sum() - batch.kept.sum()
            rows = batch.routed.new_tensor(batch.capacity) if batch.capacity is not None else batch.routed.max()
        else:
            slots, drop_total = T * self.k, T
            dropped = T - histogram(routing.token, T).count_nonzero()
            rows = batch.kept.max()
        losses = self.last_losses
        scalars = torch.stack([dropped.float(), rows.float(), entropy,
                               losses["aux_loss"], losses["z_loss"], losses["importance_loss"]])
        self.tally.update(tokens=T, slots=slots, drop_total=drop_total, routed=batch.routed, scalars=scalars)
