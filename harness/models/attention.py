"""Causal self-attention, via `F.scaled_dot_product_attention`: grouped-query attention (GQA) or
DeepSeek-V2's multi-head latent attention (MLA), chosen by `model.attention` (`make_attention`).

GQA, bias-free projections: q is d_model -> n_heads*head_size, k and v are d_model -> kv_heads*head_size
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

    def __init__(self, batch: int, kv_heads: int, max_len: int, head_size: int, device, dtype,
                 v_size: int | None = None):
        self.k = torch.zeros(batch, kv_heads, max_len, head_size, device=device, dtype=dtype)
        self.v = torch.zeros(batch, kv_heads, max_len, v_size or head_size, device=device, dtype=dtype)

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
        y = causal_attention(q, k, v, start)
        return self.o(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_size))


def causal_attention(q: Tensor, k: Tensor, v: Tensor, start: int) -> Tensor:
    """Queries at positions start..start+T-1 over keys 0..start+T-1, each seeing its past only."""
    T = q.shape[-2]
    if start == 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if T == 1:  # one new token sees every cached position: no mask, so fused kernels apply
        return F.scaled_dot_product_attention(q, k, v)
    # query i sits at position start+i and sees keys 0..start+i
    mask = torch.ones(T, start + T, dtype=torch.bool, device=q.device).tril(start)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class LatentAttention(nn.Module):
    """DeepSeek-V2's multi-head latent attention (MLA, arXiv:2405.04434, section 2.1).

    Keys and values come from one compressed latent per token: `kv_down` maps x to the latent (width
    `kv_lora_rank`, RMS-normalised) and a rotary key of `rope_head_dim` shared by every head; `kv_up` maps
    the latent to each head's key and value (`head_size` each). Queries are projected directly (`q`) or
    through their own latent (`q_down`, `q_norm`, `q_up`) when `q_lora_rank` is set, to `head_size` +
    `rope_head_dim` per head. Scores use all `head_size + rope_head_dim` dimensions, with rotary
    positions on the rope part only when `model.positional == "rope"`.

    Values are zero-padded to the query-key width for the attention product, as Hugging Face's
    flash-attention path does, so SDPA's fused kernels apply (FlopCounterMode counts the padded product:
    `2 x seq x H x rope_head_dim` FLOPs per token and layer above the useful ones). The KV cache holds the
    per-head keys and values after the up-projection, as Hugging Face's implementation does; caching the latent instead (with the up-projections absorbed into q and o) is
    an inference optimisation this model does not implement. Bias-free like every linear here.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, self.n_heads, self.head_size = cfg.d_model, cfg.n_heads, cfg.head_size
        self.rope_size, self.latent = cfg.rope_head_dim, cfg.kv_lora_rank
        q_width = self.n_heads * (self.head_size + self.rope_size)
        if cfg.q_lora_rank is None:
            self.q = nn.Linear(d, q_width, bias=False)
        else:
            self.q = nn.Sequential(nn.Linear(d, cfg.q_lora_rank, bias=False), nn.RMSNorm(cfg.q_lora_rank, eps=1e-6),
                                   nn.Linear(cfg.q_lora_rank, q_width, bias=False))
        self.kv_down = nn.Linear(d, self.latent + self.rope_size, bias=False)
        self.kv_norm = nn.RMSNorm(self.latent, eps=1e-6)
        self.kv_up = nn.Linear(self.latent, self.n_heads * 2 * self.head_size, bias=False)
        self.o = nn.Linear(self.n_heads * self.head_size, d, bias=False)
        self.rotary = Rotary(self.rope_size, cfg.seq_len) if cfg.positional == "rope" else None

    def forward(self, x: Tensor, cache: KVCache | None = None, start: int = 0) -> Tensor:
        B, T, _ = x.shape
        H, hd, r = self.n_heads, self.head_size, self.rope_size
        q_nope, q_rope = self.q(x).view(B, T, H, hd + r).transpose(1, 2).split([hd, r], dim=-1)
        latent, k_rope = self.kv_down(x).split([self.latent, r], dim=-1)
        k_nope, v = self.kv_up(self.kv_norm(latent)).view(B, T, H, 2 * hd).transpose(1, 2).split([hd, hd], dim=-1)
        k_rope = k_rope.unsqueeze(1)  # [B, 1, T, r]: one rotary key for every head
        if self.rotary is not None:
            q_rope, k_rope = self.rotary(q_rope, start), self.rotary(k_rope, start)
        q = torch.cat([q_nope, q_rope], dim=-1)
        k = torch.cat([k_nope, k_rope.expand(B, H, T, r)], dim=-1)
        if cache is not None:
            k, v = cache.update(k, v, start)
        # values padded to the query-key width: SDPA's fused kernels need equal widths (else it falls back
        # to materialising the seq x seq scores); the padding's products are computed and discarded
        y = causal_attention(q, k, F.pad(v, (0, r)), start)[..., :hd]
        return self.o(y.transpose(1, 2).reshape(B, T, H * hd))


def make_attention(cfg: ModelConfig) -> nn.Module:
    return LatentAttention(cfg) if cfg.attention == "mla" else CausalSelfAttention(cfg)


def make_cache(cfg: ModelConfig, batch: int, device, dtype) -> KVCache:
    """A KV cache for one layer of `cfg`'s attention, long enough for the model's full sequence."""
    if cfg.attention == "mla":
        return KVCache(batch, cfg.n_heads, cfg.seq_len, cfg.head_size + cfg.rope_head_dim, device, dtype,
                       v_size=cfg.head_size)
    return KVCache(batch, cfg.kv_heads, cfg.seq_len, cfg.head_size, device, dtype)
