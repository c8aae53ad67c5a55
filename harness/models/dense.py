"""The dense feed-forward block (GELU MLP or SwiGLU), also the shape of one expert and of shared experts.

Convention (shared with `moe/experts.py`, relied on by parameter accounting): no biases.
- GELU:   `w_in` is d_model -> d_ff, `w_out` is d_ff -> d_model: 2 * d_model * d_ff parameters.
- SwiGLU and GeGLU: `w_in` is d_model -> 2*d_ff (gate and up projections fused, gate first), `w_out`
  is d_ff -> d_model: 3 * d_model * d_ff parameters; the gate goes through silu (SwiGLU) or the exact
  gelu (GeGLU, as Grok-1; Grok's JAX code uses gelu's tanh approximation, the same FLOPs and parameters).
Fusing gate and up into one matrix gives one GEMM instead of two, and the experts use the same layout,
so dense and MoE FFNs do the same kind of work per token.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from harness.config import GATED, Activation


def in_width(activation: Activation, d_ff: int) -> int:
    """Output width of the input projection: 2*d_ff for gated activations (gate and up fused)."""
    return 2 * d_ff if GATED[activation] else d_ff


def activate(h: Tensor, activation: Activation) -> Tensor:
    """Apply the FFN nonlinearity to the input projection's output (`[..., in_width]` -> `[..., d_ff]`)."""
    if activation == "gelu":
        return F.gelu(h)
    if activation == "swiglu":
        gate, up = h.chunk(2, dim=-1)
        return F.silu(gate) * up
    if activation == "geglu":
        gate, up = h.chunk(2, dim=-1)
        return F.gelu(gate) * up
    raise ValueError(f"unknown activation {activation!r}")


class FeedForward(nn.Module):
    """`w_out(act(w_in(x)))`, bias-free."""

    def __init__(self, d_model: int, d_ff: int, activation: Activation = "gelu"):
        super().__init__()
        self.activation = activation
        self.d_ff = d_ff
        self.w_in = nn.Linear(d_model, in_width(activation, d_ff), bias=False)
        self.w_out = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_out(activate(self.w_in(x), self.activation))
