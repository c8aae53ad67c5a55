"""Causal self-attention with grouped-query attention (GQA), via `F.scaled_dot_product_attention`.

Bias-free projections: q is d_model -> n_heads*head_size, k and v are d_model -> kv_heads*head_size
each, o is n_heads*head_size -> d_model. The q width may differ from d_model when `head_dim` is set.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from harness.config import ModelConfig


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.kv_heads, self.head_size = cfg.n_heads, cfg.kv_heads, cfg.head_size
        self.q = nn.Linear(cfg.d_model, self.n_heads * self.head_size, bias=False)
        self.k = nn.Linear(cfg.d_model, self.kv_heads * self.head_size, bias=False)
        self.v = nn.Linear(cfg.d_model, self.kv_heads * self.head_size, bias=False)
        self.o = nn.Linear(self.n_heads * self.head_size, cfg.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.n_heads, self.head_size).transpose(1, 2)
        k = self.k(x).view(B, T, self.kv_heads, self.head_size).transpose(1, 2)
        v = self.v(x).view(B, T, self.kv_heads, self.head_size).transpose(1, 2)
        if self.kv_heads != self.n_heads:
            # repeat_interleave instead of `enable_gqa=True`, which not every SDPA backend accepts.
            rep = self.n_heads // self.kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_size))
