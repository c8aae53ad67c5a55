"""Causal self-attention with grouped-query attention (GQA), via `F.scaled_dot_product_attention`.

Bias-free projections: q is d_model -> n_heads*head_size, k and v are d_model -> kv_heads*head_size
each, o is n_heads*head_size -> d_model. The q width may differ from d_model when `head_dim` is set.
With `model.positional == "rope"`, rotary embeddings (rotate-half form, base 10000) turn q and k
before the product; their tables are non-persistent buffers, not parameters.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.config import ModelConfig


class Rotary(nn.Module):
    def __init__(self, head_size: int, max_len: int, base: float = 10000.0):
        super().__init__()
        if head_size % 2:
            raise ValueError(f"rope needs an even head size, got {head_size}")
        inv_freq = base ** (-torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq).repeat(1, 2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: Tensor, start: int = 0) -> Tensor:
        """x [B, heads, T, head_size] at positions start..start+T-1 -> rotated by position."""
        T = x.shape[-2]
        cos, sin = self.cos[start : start + T].to(x.dtype), self.sin[start : start + T].to(x.dtype)
        first, second = x.chunk(2, dim=-1)
        return x * cos + torch.cat((-second, first), dim=-1) * sin


class KVCache:
    """Preallocated keys and values of one attention layer, so decoding reads past tokens instead of
    recomputing them; positions are written in place, so one prefix can be decoded from repeatedly."""

    def __init__(self, batch: int, kv_heads: int, max_len: int, head_size: int, device, dtype):
        self.k = torch.zeros(batch, kv_heads, max_len, head_size, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)

    def update(self, k: Tensor, v: Tensor, start: int) -> tuple[Tensor, Tensor]:
        end = start + k.shape[-2]
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.kv_heads, self.head_size = cfg.n_heads, cfg.kv_heads, cfg.head_size
        self.q = nn.Linear(cfg.d_model, self.n_heads * self.head_size, bias=False)
        self.k = nn.Linear(cfg.d_model, self.kv_heads * self.head_size, bias=False)
        self.v = nn.Linear(cfg.d_model, self.kv_heads * self.head_size, bias=False)
        self.o = nn.Linear(self.n_heads * self.head_size, cfg.d_model, bias=False)
        self.rotary = Rotary(self.head_size, cfg.seq_len) if cfg.positional == "rope" else None

    def forward(self, x: Tensor, cache: KVCache | None = None, start: int = 0) -> Tensor:
        """x [B, T, d] at positions start..start+T-1; with a cache, attends to all cached positions too."""
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.n_heads, self.head_size).transpose(1, 2)
        k = self.k(x).view(B, T, self.kv_heads, self.head_size).transpose(1, 2)
        v = self.v(x).view(B, T, self.kv_heads, self.head_size).transpose(1, 2)
        if self.rotary is not None:
            q, k = self.rotary(q, start), self.rotary(k, start)
        if cache is not None:
            k, v = cache.update(k, v, start)
        if self.kv_heads != self.n_heads:
            # repeat_interleave instead of `enable_gqa=True`, which not every SDPA backend accepts.
            rep = self.n_heads // self.kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        if start == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif T == 1:  # one new token sees every cached position: no mask, so fused kernels apply
            y = F.scaled_dot_product_attention(q, k, v)
        else:  # query i sits at position start+i and sees keys 0..start+i
            mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(start)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_size))
