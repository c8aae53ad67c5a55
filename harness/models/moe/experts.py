"""Routed expert weights, stacked so every dispatch implementation can address them as tensors.

Both matrices keep d_model as the last dimension: `w_in[e]` is `[in_width, d_model]` (`y = x @ w_in[e].T`,
`nn.Linear`'s layout) and `w_out[e]` is `[d_ff, d_model]` (`out = h @ w_out[e]`). With MKL these are
the faster layouts for the small per-expert GEMMs (measured: up to ~20% at 128 rows per expert).
Same bias-free convention as `harness/models/dense.py`: an expert has 2*d*f parameters (GELU) or
3*d*f (SwiGLU, gate and up fused in `w_in`, gate first).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from harness.config import Activation
from harness.models.dense import activate, in_width


class Experts(nn.Module):
    def __init__(self, num_experts: int, d_model: int, d_ff: int, activation: Activation = "gelu"):
        super().__init__()
        self.num_experts, self.d_model, self.d_ff, self.activation = num_experts, d_model, d_ff, activation
        self.w_in = nn.Parameter(torch.empty(num_experts, in_width(activation, d_ff), d_model))
        self.w_out = nn.Parameter(torch.empty(num_experts, d_ff, d_model))
        self.reset_parameters()

    def reset_parameters(self, std: float | None = None) -> None:
        """Same scale as `nn.Linear`'s default (uniform, bound 1/sqrt(fan_in)) unless `std` is given."""
        for w, fan_in in ((self.w_in, self.d_model), (self.w_out, self.d_ff)):
            if std is None:
                bound = 1.0 / math.sqrt(fan_in)
                nn.init.uniform_(w, -bound, bound)
            else:
                nn.init.normal_(w, std=std)

    def act(self, h: Tensor) -> Tensor:
        return activate(h, self.activation)

    def expert(self, x: Tensor, e: int) -> Tensor:
        """Run expert `e` on the rows of `x`."""
        return self.act(x @ self.w_in[e].t()) @ self.w_out[e]
