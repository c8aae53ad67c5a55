"""Parameters, FLOPs and memory of a model as pure functions of its config: no weights are built.

Conventions (docs/accounting.md explains them for users):
- A matmul of (m x n) by (n x p) costs 2*m*n*p FLOPs; element-wise work (activations, norms, softmax,
  residual adds, the top-k combine) is not counted, as in torch's FlopCounterMode.
- Attention scores are counted over the full seq_len x seq_len matrix (the PaLM convention): causal
  masking is NOT credited, so a token's scores cost 4 * seq_len * n_heads * head_dim per layer.
- Routed experts count top_k experts per token (useful FLOPs): capacity padding and dropped tokens are
  execution effects measured at run time, not part of the model's FLOPs.
- The router (d_model x experts per MoE layer) is counted, on the MoE side of every comparison.
- Training FLOPs are 3x forward (backward = 2x forward: gradients w.r.t. inputs and weights).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal, Optional

from harness.config import GATED, TRAINING_WORKLOADS, ModelConfig, MoEConfig

BYTES_PER_ELEMENT = {"float32": 4, "bfloat16": 2, "float16": 2}
TRAIN_TO_FORWARD = 3.0

MatchRule = Literal["flop_matched", "param_matched"]


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts by component; `active` counts what one token's forward pass touches."""

    embedding: int
    positional: int
    attention: int
    norms: int
    dense_ffn: int
    router: int
    experts: int
    experts_active: int
    shared: int
    lm_head: int
    dense_residual: int = 0

    @property
    def total(self) -> int:
        return (self.embedding + self.positional + self.attention + self.norms + self.dense_ffn
                + self.router + self.experts + self.shared + self.lm_head + self.dense_residual)

    @property
    def active(self) -> int:
        return self.total - self.experts + self.experts_active

    @property
    def active_non_embedding(self) -> int:
        """Active parameters without the input lookups (token embedding, learned positions): DeepSeek's
        convention. The LM head stays in, as a matmul every token runs; a tied embedding counts once, as
        the head."""
        lookup = self.embedding if self.lm_head else 0
        return self.active - lookup - self.positional


@dataclass(frozen=True)
class FlopBreakdown:
    """Forward FLOPs per token, by component."""

    attn_proj: float
    attn_scores: float
    router: float
    routed_experts: float
    shared_experts: float
    dense_ffn: float
    lm_head: float
    dense_residual: float = 0.0

    @property
    def total(self) -> float:
        return sum(getattr(self, f.name) for f in fields(self))


def _ffn_matrices(model: ModelConfig) -> int:
    return 3 if GATED[model.activation] else 2


def _ffn_params(model: ModelConfig, width: int) -> int:
    return _ffn_matrices(model) * model.d_model * width


def _norm_params(model: ModelConfig) -> int:
    return (2 if model.norm == "layernorm" else 1) * model.d_model


def _attention_params(model: ModelConfig) -> int:
    """Matmul weights of one attention layer.

    gqa: q `d x H*hd`, k and v `d x KV*hd`, o `H*hd x d`.
    mla: queries `d x H*(hd+r)` (or through a latent: `d x q_lora` then `q_lora x H*(hd+r)`), the joint
    down-projection `d x (kv_lora + r)` (the latent and the shared rotary key), the up-projection
    `kv_lora x H*2hd` (per-head keys and values) and o `H*hd x d`; r = rope_head_dim.
    """
    d, h, hd = model.d_model, model.n_heads, model.head_size
    if model.attention == "mla":
        r, c, cq = model.rope_head_dim, model.kv_lora_rank, model.q_lora_rank
        q = d * h * (hd + r) if cq is None else d * cq + cq * h * (hd + r)
        return q + d * (c + r) + c * h * 2 * hd + h * hd * d
    q, kv = h * hd, model.kv_heads * hd
    return d * q + 2 * d * kv + q * d


def _latent_norm_params(model: ModelConfig) -> int:
    """mla: the RMSNorm weights on its key-value (and query) latents."""
    return model.kv_lora_rank + (model.q_lora_rank or 0) if model.attention == "mla" else 0


def _score_flops(model: ModelConfig, ctx: int) -> float:
    """q.k over `ctx` keys and the weighted sum of values, per token and layer (full matrix, no causal credit)."""
    qk = model.head_size + (model.rope_head_dim if model.attention == "mla" else 0)
    return 2.0 * ctx * model.n_heads * (qk + model.head_size)


def _moe_ffn_params(model: ModelConfig, moe: MoEConfig) -> dict[str, int]:
    """One MoE layer's parameters by component (`norms`: the dense residual's own norm)."""
    residual = moe.dense_residual
    return {
        "router": _router_params(model, moe),
        "experts": moe.experts * _ffn_params(model, moe.expert_width(model)),
        "shared": moe.num_shared_experts * _ffn_params(model, moe.shared_width(model))
        + (model.d_model if moe.shared_gate and moe.num_shared_experts else 0),
        "dense_residual": _ffn_params(model, residual) if residual else 0,
        "norms": _norm_params(model) if residual else 0,
    }


def _moe_layers(model: ModelConfig, moe: Optional[MoEConfig]) -> int:
    if moe is None:
        return 0
    return sum(moe.is_moe_layer(i) for i in range(model.n_layers))


def routed_per_token(moe: MoEConfig) -> float:
    """Expert evaluations per token: top_k for token-choice routers; for expert choice each expert takes
    cf x k x T / E tokens, but never more than all T (the router clamps), so at most every expert."""
    if moe.router == "expert_choice":
        return min(float(moe.experts), moe.k * (moe.capacity_factor if moe.capacity_factor is not None else 1.0))
    return float(moe.k)


def _router_params(model: ModelConfig, moe: MoEConfig) -> int:
    """W_r (experts x d_model, no bias); noisy_topk adds its noise projection W_noise of the same shape."""
    return (2 if moe.router == "noisy_topk" else 1) * model.d_model * moe.experts


def _router_flops(model: ModelConfig, moe: MoEConfig, training: bool) -> float:
    """The noise projection of noisy_topk runs only in training."""
    runs = 2 if moe.router == "noisy_topk" and training else 1
    return runs * 2.0 * model.d_model * moe.experts


def param_counts(model: ModelConfig, moe: Optional[MoEConfig] = None) -> ParamCounts:
    n_moe = _moe_layers(model, moe)
    n_dense = model.n_layers - n_moe
    layer = {"router": 0, "experts": 0, "shared": 0, "dense_residual": 0, "norms": 0}
    experts_active = 0
    if moe is not None and n_moe:
        layer = _moe_ffn_params(model, moe)
        experts_active = round(n_moe * routed_per_token(moe) * _ffn_params(model, moe.expert_width(model)))
    return ParamCounts(
        embedding=model.vocab_size * model.d_model,
        positional=model.seq_len * model.d_model if model.positional == "learned" else 0,
        attention=model.n_layers * _attention_params(model),
        norms=(2 * model.n_layers + 1) * _norm_params(model) + model.n_layers * _latent_norm_params(model)
        + n_moe * layer["norms"],
        dense_ffn=n_dense * _ffn_params(model, model.d_ff),
        router=n_moe * layer["router"],
        experts=n_moe * layer["experts"],
        experts_active=experts_active,
        shared=n_moe * layer["shared"],
        lm_head=0 if model.tie_embeddings else model.vocab_size * model.d_model,
        dense_residual=n_moe * layer["dense_residual"],
    )


def block_params(model: ModelConfig, moe: Optional[MoEConfig], layer: int) -> int:
    """Parameters of transformer block `layer`: its attention, norms and dense or MoE FFN."""
    own = _attention_params(model) + 2 * _norm_params(model) + _latent_norm_params(model)
    if moe is None or not moe.is_moe_layer(layer):
        return own + _ffn_params(model, model.d_ff)
    return own + sum(_moe_ffn_params(model, moe).values())


def forward_flops(
    model: ModelConfig, moe: Optional[MoEConfig] = None, seq_len: Optional[int] = None, training: bool = False
) -> FlopBreakdown:
    """Forward FLOPs per token for a sequence of `seq_len` tokens (default model.seq_len).

    `training=True` counts the forward pass of a training step, which differs only for noisy_topk (its
    noise projection runs in training only)."""
    ctx = seq_len or model.seq_len
    n_moe = _moe_layers(model, moe)
    n_dense = model.n_layers - n_moe
    router = routed = shared = residual = 0.0
    if moe is not None and n_moe:
        layer = _moe_ffn_params(model, moe)
        router = n_moe * _router_flops(model, moe, training)
        routed = n_moe * routed_per_token(moe) * 2.0 * _ffn_params(model, moe.expert_width(model))
        shared = n_moe * 2.0 * layer["shared"]
        residual = n_moe * 2.0 * layer["dense_residual"]
    return FlopBreakdown(
        attn_proj=model.n_layers * 2.0 * _attention_params(model),
        attn_scores=model.n_layers * _score_flops(model, ctx),
        router=router,
        routed_experts=routed,
        shared_experts=shared,
        dense_ffn=n_dense * 2.0 * _ffn_params(model, model.d_ff),
        lm_head=2.0 * model.vocab_size * model.d_model,
        dense_residual=residual,
    )


def train_flops_per_token(model: ModelConfig, moe: Optional[MoEConfig] = None) -> float:
    """Forward + backward FLOPs per token: 3x the training forward (backward computes gradients with
    respect to both inputs and weights, two matmuls per forward matmul)."""
    return TRAIN_TO_FORWARD * forward_flops(model, moe, training=True).total


def match_error(a: float, b: float) -> float:
    """Relative error of `a` against the target `b`."""
    return abs(a - b) / abs(b)


def dense_peer(model: ModelConfig) -> ModelConfig:
    """The dense architecture an MoE model's baselines are built in: the same model, or for a Hugging
    Face family its dense peer family (Mixtral -> Mistral, ...), built from a config (no checkpoint)."""
    if model.source != "hf":
        return model
    from harness.models.hf.families import FAMILIES

    peer = FAMILIES[model.config].dense_peer
    return model.model_copy(update={"config": peer, "path": None, "norm": FAMILIES[peer].norm})


def matched_dense(model: ModelConfig, moe: MoEConfig, rule: MatchRule) -> ModelConfig:
    """The dense peer of an MoE model (`dense_peer`) with one uniform d_ff chosen by `rule`.

    flop_matched: forward FLOPs/token equal the MoE's (router, shared experts and dense layers included).
    param_matched: total parameters equal the MoE's.
    Both quantities are affine in d_ff, so d_ff is solved for directly and rounded to the nearest integer.
    Hugging Face models are counted on the built module (`harness.models.hf.accounting`), the rest by formula.
    """
    keys = {"flop_matched": "flops_per_token", "param_matched": "params_total"}
    if rule not in keys:
        raise ValueError(f"unknown baseline rule {rule!r}; expected 'flop_matched' or 'param_matched'")
    peer = dense_peer(model)
    measure = lambda d_ff: summary(peer.model_copy(update={"d_ff": d_ff}), None)[keys[rule]]  # noqa: E731
    target = summary(model, moe)[keys[rule]]
    at_one = measure(1)
    slope = measure(2) - at_one
    d_ff = max(1, round(1 + (target - at_one) / slope))
    return peer.model_copy(update={"d_ff": d_ff})


def summary(model: ModelConfig, moe: Optional[MoEConfig] = None) -> dict:
    """Total and active parameters, forward and training FLOPs per token."""
    if model.source == "hf":
        from harness.models.hf.accounting import summary as counted

        return counted(model, moe)
    params = param_counts(model, moe)
    flops = forward_flops(model, moe).total
    return {
        "params_total": params.total,
        "params_active": params.active,
        "params_active_non_embedding": params.active_non_embedding,
        "flops_per_token": flops,
        "train_flops_per_token": train_flops_per_token(model, moe),
    }


def step_flops_per_token(
    model: ModelConfig, moe: Optional[MoEConfig], training: bool, seq_len: Optional[int] = None
) -> float:
    """FLOPs per token of one step: training (3 x forward) or a forward over `seq_len` tokens of context."""
    if model.source == "hf":
        from harness.models.hf.accounting import TRAIN_TO_FORWARD, counts

        forward = counts(model, moe, None if training else seq_len)[2]
        return TRAIN_TO_FORWARD * forward if training else forward
    if training:
        return train_flops_per_token(model, moe)
    return forward_flops(model, moe, seq_len=seq_len).total


# ----------------------------------------------------------------------------- expert and data parallelism

def moe_layer_count(model: ModelConfig, moe: Optional[MoEConfig]) -> int:
    return _moe_layers(model, moe)


def params_per_rank(model: ModelConfig, moe: Optional[MoEConfig], ep_size: int) -> int:
    """Parameters one rank holds: every non-expert parameter (replicated) and 1/ep of the experts."""
    counts = param_counts(model, moe)
    return counts.total - counts.experts + counts.experts // ep_size


def all_to_all_bytes_per_token(model: ModelConfig, moe: Optional[MoEConfig], ep_size: int, dtype: str,
                               training: bool) -> float:
    """Bytes one rank sends to other ranks per token of its batch, per MoE layer: each routed
    assignment's hidden state goes out once (dispatch) and its expert output comes back once
    (combine); in training the backward sends both gradients again (the reverse all-to-alls).

    Assumes uniform routing (an assignment lands on another rank with probability (ep-1)/ep) and no
    drops, so it is the dropless, balanced volume; a capacity limit can only lower it.
    """
    if moe is None or ep_size == 1:
        return 0.0
    remote = (ep_size - 1) / ep_size
    forward = 2 * routed_per_token(moe) * model.d_model * BYTES_PER_ELEMENT[dtype] * remote
    return forward * (2 if training else 1)


def parallel_footprint(model: ModelConfig, moe: Optional[MoEConfig], batch_size: int, world_size: int,
                       ep_size: int, dtype: str = "float32", workload: str = "train_step",
                       device: str = "cuda") -> dict:
    """Per-rank parameters, memory and communication of one step, with `batch_size` the global batch
    split evenly over `world_size` ranks and the experts over `ep_size`.

    Memory: `harness.memory_model.memory_estimate` for this rank's share of the batch and its 1/ep of
    the experts (in training it also keeps the rows the expert-parallel exchange sent and received).
    Gradient sync: the gradient bytes each rank all-reduces per step (replicated parameters, and
    experts when more than one rank holds each); a ring all-reduce sends 2(n-1)/n of that.
    """
    width = BYTES_PER_ELEMENT[dtype]
    training = workload in TRAINING_WORKLOADS
    if batch_size % world_size:
        raise ValueError(f"the global batch ({batch_size}) must be divisible by the world size ({world_size})")
    local_batch = batch_size // world_size
    tokens = local_batch * model.seq_len
    from harness.memory_model import memory_estimate  # it builds on this module's counts

    per_rank = params_per_rank(model, moe, ep_size)
    memory = memory_estimate(model, moe, local_batch, model.seq_len, dtype, workload, device, ep_size)
    counts = param_counts(model, moe)
    dp_size = world_size // ep_size
    synced = 0
    if training and world_size > 1:
        synced = (counts.total - counts.experts) + (counts.experts // ep_size if dp_size > 1 else 0)
    a2a_token = all_to_all_bytes_per_token(model, moe, ep_size, dtype, training)
    return {
        "world_size": world_size,
        "ep_size": ep_size,
        "dp_size": dp_size,
        "params_per_rank": per_rank,
        "memory_per_rank": memory,
        "all_to_all_bytes_per_token_layer": a2a_token,
        "all_to_all_bytes_per_rank_step": a2a_token * tokens * moe_layer_count(model, moe),
        "grad_sync_bytes_per_rank_step": synced * width,
    }
