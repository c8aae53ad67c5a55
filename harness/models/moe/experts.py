"""Routed expert weights, stacked so every dispatch implementation can address them as tensors.

`w_in[e]` is `[d_model, in_width]` and `w_out[e]` is `[d_ff, d_model]`, i.e. laid out for `x @ w`
(the transpose of `nn.Linear.weight`). Same bias-free convention as `harness/models/dense.py`: an expert
has 2*d*f parameters (GELU) or 3*d*f (SwiGLU, gate and up fused in `w_in`, gate first).
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
        self.w_in = nn.Parameter(torch.empty(num_experts, d_model, in_width(activation, d_ff)))
        self.w_out = nn.Parameter(torch.empty(num_experts, d_ff, d_model))
        self.reset_parameters()

    def reset_parameters(self, std: float | None = None) -> None:
        """Same scale as `nn.Linear`'s default (uniform, bound 1/sqrt(fan_in)) unless `std` is given."""
        for w in (self.w_in, self.w_out):
            if std is None:
                bound = 1.0 / math.sqrt(w.shape[1])
                nn.init.uniform_(w, -bound, bound)
            else:
                nn.init.normal_(w, std=std)

    def act(self, h: Tensor) -> Tensor:
        return activate(h, self.activation)

    def expert(self, x: Tensor, e: int) -> Tensor:
        """Run expert `e` on the rows of `x`."""
        return self.act(x @ self.w_in[e]) @ self.w_out[e]
