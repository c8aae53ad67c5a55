"""Routers: score every token against every expert and decide which (token, expert) pairs run.

A router returns a `Routing`: fp32 logits and a per-token distribution (for the balance loss and the
entropy statistic), plus a flat list of assignments `(token, expert, weight)`. Token-choice routers
list assignments slot-major (every token's first choice, then every token's second choice, ...): that
is the priority order in which capacity is filled, so first choices are dropped last (GShard). Expert
choice lists each expert's picked tokens and needs no capacity step.

All router math runs in float32 whatever the model dtype (Switch "selective precision"): its weights and
buffers stay float32 when the model is cast (`Float32Module`), and it reads its input in float32.

`moe.routing_mode` replaces the learned *selection* (never the router computation, whose cost is part
of the MoE) for speed benchmarks: `balanced` is MegaBlocks' round-robin `uniform_expert_assignment`,
`skewed` draws each token's experts from a Zipf(`skew_exponent`) law with a fixed seed. Combine
weights are still the router's scores at the forced experts, so gradients keep flowing.

To add a router: subclass `Router`, implement `route`, add one line to `ROUTERS`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.config import MoEConfig
from harness.models.precision import Float32Module


@dataclass
class Routing:
    logits: Tensor  # [T, E] float32
    probs: Tensor  # [T, E] float32, sums to 1 per token: P_i of the balance loss, router entropy
    token: Tensor  # [S] long, assignments in capacity-priority order
    expert: Tensor  # [S] long
    weight: Tensor  # [S] float32 combine weight (differentiable)
    load: Optional[Tensor] = None  # [E] smooth load estimate for the CV^2 loss (noisy gating, training)
    token_choice: bool = True  # False: the router already enforces capacity (expert choice)


def round_robin(num_tokens: int, k: int, num_experts: int, device: torch.device) -> Tensor:
    """`[T, k]` expert ids `(t*k + j) % E`: perfectly balanced, distinct per token when k <= E."""
    return (torch.arange(num_tokens * k, device=device) % num_experts).view(num_tokens, k)


def zipf_choice(num_tokens: int, k: int, num_experts: int, exponent: float, device: torch.device) -> Tensor:
    """`[T, k]` distinct expert ids per token, drawn without replacement with P(e) ~ 1/(e+1)^exponent.

    Gumbel-top-k with a fixed seed, so every step of a benchmark sees the same skew.
    """
    ranks = torch.arange(1, num_experts + 1, device=device, dtype=torch.float32)
    logp = -exponent * ranks.log()
    gen = torch.Generator(device=device).manual_seed(0)
    u = torch.rand(num_tokens, num_experts, generator=gen, device=device).clamp_(1e-20, 1 - 1e-7)
    return (logp - (-u.log()).log()).topk(k, dim=-1).indices


def histogram(index: Tensor, bins: int) -> Tensor:
    """Counts of each value in `index` (int64, on its device). Unlike `torch.bincount`, which reads the
    maximum back to size its output, this never synchronises with the host."""
    return torch.zeros(bins, dtype=torch.long, device=index.device).index_add_(0, index, torch.ones_like(index))


def slot_major(idx: Tensor, weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Flatten `[T, k]` choices into assignment lists ordered slot-major."""
    T, k = idx.shape
    token = torch.arange(T, device=idx.device).repeat(k)
    return token, idx.t().reshape(-1), weight.t().reshape(-1)


class Router(Float32Module):
    """Base: the linear scoring `W_r x` (no bias) in fp32, jitter, and forced selection modes."""

    causal = True  # False when a token's routing depends on other tokens of the batch

    def __init__(self, moe: MoEConfig, d_model: int):
        super().__init__()
        self.num_experts, self.k = moe.experts, moe.k
        self.renormalize = moe.setting("renormalize")
        self.jitter_eps = moe.jitter_eps
        self.mode, self.skew_exponent = moe.routing_mode, moe.skew_exponent
        self.weight = nn.Parameter(torch.empty(self.num_experts, d_model))
        if moe.router_init_std is None:
            nn.init.uniform_(self.weight, -1 / math.sqrt(d_model), 1 / math.sqrt(d_model))
        else:
            nn.init.normal_(self.weight, std=moe.router_init_std)

    def router_input(self, x: Tensor) -> Tensor:
        """fp32 copy of the input, with multiplicative jitter U(1-eps, 1+eps) in training (router only)."""
        x = x.float()
        if self.training and self.jitter_eps > 0:
            x = x * torch.empty_like(x).uniform_(1 - self.jitter_eps, 1 + self.jitter_eps)
        return x

    def scores(self, x32: Tensor) -> Tensor:
        return x32 @ self.weight.t()

    def select(self, scores: Tensor) -> Tensor:
        """`[T, k]` chosen experts: the top-k of `scores`, unless a benchmark routing mode forces them."""
        T = scores.shape[0]
        if self.mode == "balanced":
            return round_robin(T, self.k, self.num_experts, scores.device)
        if self.mode == "skewed":
            return zipf_choice(T, self.k, self.num_experts, self.skew_exponent, scores.device)
        return scores.topk(self.k, dim=-1).indices

    def finish(self, w: Tensor) -> Tensor:
        return w / w.sum(-1, keepdim=True) if self.renormalize else w

    def route(self, x: Tensor) -> Routing:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Routing:
        return self.route(x)


class TopKSoftmaxRouter(Router):
    """Softmax over experts, keep the top-k; weights renormalised to sum 1 if `moe.renormalize`
    (Mixtral) or left as the softmax probabilities (MegaBlocks' default)."""

    def route(self, x: Tensor) -> Routing:
        logits = self.scores(self.router_input(x))
        probs = logits.softmax(-1)
        idx = self.select(probs)
        token, expert, weight = slot_major(idx, self.finish(probs.gather(1, idx)))
        return Routing(logits, probs, token, expert, weight)


class SwitchRouter(TopKSoftmaxRouter):
    """Switch Transformer top-1: `y = p_i(x) E_i(x)`, i = argmax. Never renormalised (that would make
    the weight 1 and cut the router's gradient: the config refuses it)."""

    def __init__(self, moe: MoEConfig, d_model: int):
        super().__init__(moe, d_model)
        if self.k != 1:
            raise ValueError(f"the switch router is top-1; got top_k*granularity = {self.k}")


class NoisyTopKRouter(Router):
    """Shazeer et al. 2017: `H = W_g x + N(0,1) * softplus(W_noise x)` in training only,
    `G = softmax(KeepTopK(H, k))`. Also yields the smooth load estimate for the load CV^2 loss."""

    def __init__(self, moe: MoEConfig, d_model: int):
        super().__init__(moe, d_model)
        self.noise_weight = nn.Parameter(torch.zeros(self.num_experts, d_model))

    def route(self, x: Tensor) -> Routing:
        x32 = self.router_input(x)
        logits = self.scores(x32)
        noisy, load = logits, None
        if self.training:
            std = F.softplus(x32 @ self.noise_weight.t())
            noisy = logits + torch.randn_like(logits) * std
            if self.k < self.num_experts:
                load = self.smooth_load(logits, noisy, std)
        idx = self.select(noisy)
        token, expert, weight = slot_major(idx, noisy.gather(1, idx).softmax(-1))
        return Routing(logits, logits.softmax(-1), token, expert, weight, load=load)

    def smooth_load(self, clean: Tensor, noisy: Tensor, std: Tensor) -> Tensor:
        """Sum over tokens of P(expert i stays in the top-k when only its own noise is redrawn)."""
        top = noisy.topk(self.k + 1, dim=-1).values
        threshold_in, threshold_out = top[:, self.k : self.k + 1], top[:, self.k - 1 : self.k]
        threshold = torch.where(noisy > threshold_in, threshold_in, threshold_out)
        normal = torch.distributions.Normal(0.0, 1.0)
        return normal.cdf((clean - threshold) / std).sum(0)


class ExpertChoiceRouter(Router):
    """Zhou et al. 2022: each expert takes its top-C tokens by softmax score, C = ceil(cf*T*k/E)
    (cf = 1 when null). Perfect balance by construction; a token may get no expert or several.

    Not causal: a token's experts depend on the other tokens in the batch, including later positions,
    so it cannot be used for autoregressive decoding and its training results leak future information.
    """

    causal = False

    def __init__(self, moe: MoEConfig, d_model: int):
        super().__init__(moe, d_model)
        if self.mode != "learned":
            raise ValueError("expert_choice is balanced by construction; routing_mode must be 'learned'")
        self.capacity_factor = moe.capacity_factor if moe.capacity_factor is not None else 1.0

    def route(self, x: Tensor) -> Routing:
        logits = self.scores(self.router_input(x))
        probs = logits.softmax(-1)
        T, E = probs.shape
        capacity = min(T, math.ceil(self.capacity_factor * T * self.k / E))
        weight, token = probs.t().topk(capacity, dim=-1)
        expert = torch.arange(E, device=x.device).repeat_interleave(capacity)
        return Routing(logits, probs, token.reshape(-1), expert, weight.reshape(-1), token_choice=False)


class SigmoidBiasRouter(Router):
    """DeepSeek-V3 auxiliary-loss-free balancing: sigmoid affinities, selection by top-k of
    `score + bias`, weights from the unbiased scores (renormalised if `moe.renormalize`). The bias is
    not trained by gradient: `update_bias()` (after each optimizer step) moves it by
    `bias_update_rate * sign(mean load - load_i)` using the loads seen since the last update; the bias
    stays float32 with the router (updates of 1e-3 would round away in bfloat16).
    """

    def __init__(self, moe: MoEConfig, d_model: int):
        super().__init__(moe, d_model)
        self.update_rate = moe.bias_update_rate
        self.register_buffer("expert_bias", torch.zeros(self.num_experts))
        self.register_buffer("pending_load", torch.zeros(self.num_experts), persistent=False)

    def route(self, x: Tensor) -> Routing:
        logits = self.scores(self.router_input(x))
        scores = logits.sigmoid()
        idx = self.select(scores + self.expert_bias)
        if self.training:
            with torch.no_grad():
                self.pending_load += histogram(idx.reshape(-1), self.num_experts)
        token, expert, weight = slot_major(idx, self.finish(scores.gather(1, idx)))
        return Routing(logits, scores / scores.sum(-1, keepdim=True), token, expert, weight)

    @torch.no_grad()
    def update_bias(self) -> None:
        # with no pending load (no training step since the last update) the sign is 0: bias unchanged
        self.expert_bias += self.update_rate * torch.sign(self.pending_load.mean() - self.pending_load)
        self.pending_load.zero_()


ROUTERS: dict[str, Callable[[MoEConfig, int], Router]] = {
    "topk_softmax": TopKSoftmaxRouter,
    "switch": SwitchRouter,
    "noisy_topk": NoisyTopKRouter,
    "expert_choice": ExpertChoiceRouter,
    "sigmoid_bias": SigmoidBiasRouter,
}


def build_router(moe: MoEConfig, d_model: int) -> Router:
    try:
        return ROUTERS[moe.router](moe, d_model)
    except KeyError:
        raise ValueError(f"unknown router {moe.router!r}; known: {sorted(ROUTERS)}") from None
