"""Decoder-only transformer LM (nanoGPT shape) whose FFN is dense or MoE per layer.

Parameter convention (what `harness.accounting` must reproduce exactly):
- token embedding `vocab_size x d_model`; learned absolute positions `seq_len x d_model` when
  `model.positional == "learned"` (rope: rotary q/k in attention, no parameters; none: nothing);
- per block: two norms and attention (gqa: q: d*H*hs, k and v: d*kv*hs each, o: H*hs*d; mla: see
  `LatentAttention`, plus RMSNorm weights on its latents) and an FFN;
  norms are LayerNorm with weight and bias (2*d) or RMSNorm with weight only (d);
- every linear is bias-free (attention, FFN, experts, router, LM head);
- dense FFN: 2*d*f (GELU) or 3*d*f (SwiGLU, GeGLU); MoE FFN: router E*d (noisy_topk adds a second E*d
  noise projection) + E*c*d*f_e experts (c = 2 GELU, 3 gated) + shared c*d*(s*f_s) + d for the shared gate
  when `moe.shared_gate` + a third norm and c*d*w for `moe.dense_residual` (width w); sigmoid_bias's
  expert bias is a buffer, not a parameter;
- final norm; LM head `vocab_size x d_model` unless tied to the token embedding.
"""
from __future__ import annotations

import torch
from torch import LongTensor, Tensor, nn

from harness.config import Case, ModelConfig, MoEConfig
from harness.models.attention import KVCache, make_attention, make_cache
from harness.models.dense import FeedForward
from harness.models.moe.experts import Experts
from harness.models.moe.layer import MoELayer
from harness.models.moe.router import SigmoidBiasRouter
from harness.models.precision import Float32Norm


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.d_model, eps=1e-5)
    return nn.LayerNorm(cfg.d_model, eps=1e-5)


class Block(nn.Module):
    """Pre-norm: x + attn(norm(x)), then x + ffn(norm(x)). An MoE layer's norm runs in float32, so its
    router sees the normalised input unrounded whatever the model dtype."""

    def __init__(self, model: ModelConfig, moe: MoEConfig | None, layer: int):
        super().__init__()
        self.is_moe = moe is not None and moe.is_moe_layer(layer)
        self.norm1 = make_norm(model)
        self.norm2 = Float32Norm(make_norm(model)) if self.is_moe else make_norm(model)
        self.attn = make_attention(model)
        self.ffn = (MoELayer(model, moe) if self.is_moe
                    else FeedForward(model.d_model, model.d_ff, model.activation))
        residual = moe.dense_residual if self.is_moe else None
        self.residual_norm = make_norm(model) if residual else None
        self.residual = FeedForward(model.d_model, residual, model.activation) if residual else None

    def forward(self, x: Tensor, cache: KVCache | None = None, start: int = 0) -> tuple[Tensor, Tensor | None]:
        h = x + self.attn(self.norm1(x), cache, start)
        if not self.is_moe:
            return h + self.ffn(self.norm2(h)), None
        if self.residual is None:
            y, aux = self.ffn(self.norm2(h))
            return h + y, aux
        # Arctic's residual MoE: a dense MLP on the attention output, the MoE on the block's input, in parallel
        y, aux = self.ffn(self.norm2(x))
        return h + self.residual(self.residual_norm(h)) + y, aux


class TransformerLM(nn.Module):
    def __init__(self, model: ModelConfig, moe: MoEConfig | None):
        super().__init__()
        self.config, self.moe_config = model, moe
        self.tok_emb = nn.Embedding(model.vocab_size, model.d_model)
        self.pos_emb = nn.Embedding(model.seq_len, model.d_model) if model.positional == "learned" else None
        self.blocks = nn.ModuleList(Block(model, moe, i) for i in range(model.n_layers))
        self.num_moe_layers = sum(block.is_moe for block in self.blocks)
        self.norm = make_norm(model)
        self.lm_head = nn.Linear(model.d_model, model.vocab_size, bias=False)
        self.apply(self._init)
        if model.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight

    @staticmethod
    def _init(module: nn.Module) -> None:
        """GPT-2 style N(0, 0.02) for embeddings, linears and routed experts alike, so an MoE and its
        dense baseline start from the same weight scale (a fair quality comparison)."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        elif isinstance(module, Experts):
            module.reset_parameters(std=0.02)

    def routing_layers(self) -> list[tuple[int, MoELayer]]:
        """(transformer layer index, MoE layer) for every MoE layer, in model order."""
        return [(i, b.ffn) for i, b in enumerate(self.blocks) if b.is_moe]

    def moe_layers(self) -> list[MoELayer]:
        return [layer for _, layer in self.routing_layers()]

    def make_caches(self, batch: int, device, dtype) -> list[KVCache]:
        """One KV cache per block, long enough for the model's full sequence."""
        return [make_cache(self.config, batch, device, dtype) for _ in self.blocks]

    def forward(
        self, tokens: LongTensor, caches: list[KVCache] | None = None, start: int = 0
    ) -> tuple[Tensor, Tensor]:
        """tokens [B, T] at positions start..start+T-1 -> (logits [B, T, V], the coefficient-weighted aux
        losses of the MoE layers, summed or averaged as `moe.loss_reduction` says). With `caches` (see `make_caches`), earlier positions are
        read from and new ones written to the caches: incremental decoding."""
        B, T = tokens.shape
        if start + T > self.config.seq_len:
            raise ValueError(f"sequence length {start + T} exceeds model.seq_len {self.config.seq_len}")
        x = self.tok_emb(tokens)
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(start, start + T, device=tokens.device))
        aux = torch.zeros((), device=tokens.device)
        for i, block in enumerate(self.blocks):
            x, layer_aux = block(x, caches[i] if caches is not None else None, start)
            if layer_aux is not None:
                aux = aux + layer_aux
        if self.moe_config is not None and self.moe_config.loss_reduction == "mean":
            aux = aux / self.num_moe_layers
        return self.lm_head(self.norm(x)), aux

    @torch.no_grad()
    def on_optimizer_step(self) -> None:
        """Per-step updates outside the gradient: DeepSeek-V3's expert-bias balancing."""
        for layer in self.moe_layers():
            if isinstance(layer.router, SigmoidBiasRouter):
                layer.router.update_bias()


def build_model(case: Case, device: torch.device | str = "cpu") -> nn.Module:
    """The case's model in `run.dtype` on `device`: the harness's own, or a Hugging Face one (source hf)."""
    if case.model.source == "hf":
        from harness.models.hf.build import build

        return build(case, device)
    return TransformerLM(case.model, case.moe).to(device=device, dtype=getattr(torch, case.run.dtype))
