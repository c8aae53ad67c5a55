"""Peak memory of a case as a pure function of its config: what the worker's measured peak should be.

The model follows what the harness's own code allocates, in eager PyTorch without recomputation
(docs/accounting.md, "Memory estimates", explains it and shows it against measured peaks):

- Training (`train_step`, `quality`): the weights and AdamW's two moments stay resident (all in the
  parameter dtype, as plain `torch.optim.AdamW` keeps them). On top of them the step peaks at one of
  three moments: at the start of backward (every saved activation plus the vocabulary-wide tensors of
  the loss: logits, log-probabilities and both their gradients); inside backward, where the saved
  activations of the lower blocks meet the gradients already made for the upper ones; or at the
  optimizer step (all gradients plus AdamW's temporaries: two of the largest parameter on CPU, where it
  runs one tensor at a time, one of every parameter with CUDA's foreach kernels).
- Inference (`forward`): the weights plus the largest working set of one phase of the forward pass
  (an attention, an FFN or MoE layer, or the LM head's `tokens x vocab` logits). Nothing is kept
  between layers without autograd, and there is no KV cache.
- `decode`: the weights, the KV cache (every layer's keys and values for `batch x model.seq_len`
  positions) and the working set of the prefill, a forward pass over the prompt (`seq_len` here).

Element counts are per token; the router's tensors and the loss's are float32 whatever the model dtype.
"""
from __future__ import annotations

import math
from typing import Optional

from harness.accounting import BYTES_PER_ELEMENT, block_params, param_counts, params_per_rank, routed_per_token
from harness.config import BUILTIN_WORKLOADS, GATED, TRAINING_WORKLOADS, Case, ModelConfig, MoEConfig

F32 = 4


def _hidden(model: ModelConfig) -> int:
    """FFN hidden elements per row at once: GELU keeps pre- and post-activation, SwiGLU the fused
    gate-and-up output (2f), silu(gate) and the product."""
    return 4 if GATED[model.activation] else 2


def _norm_saved(model: ModelConfig) -> int:
    d = model.d_model
    return 2 * d + 2 if model.norm == "layernorm" else 3 * d + 1  # RMSNorm also keeps x * rstd


def zipf_top_share(num_experts: int, k: int, exponent: float, points: int = 400) -> float:
    """Probability that the most popular expert is among a token's k choices under `routing_mode:
    skewed` (k distinct experts drawn with P(e) ~ 1/(e+1)^exponent by Gumbel-top-k).

    Given the top expert's Gumbel noise, u = exp(-noise) ~ Exp(1) and expert j outranks it with
    probability 1 - exp(-(w_j/w_0) u), independently; the top expert is chosen when fewer than k do.
    """
    ratios = [(j + 1) ** -exponent for j in range(1, num_experts)]
    total = 0.0
    for i in range(points):  # midpoint rule over the Exp(1) quantiles
        u = -math.log(1 - (i + 0.5) / points)
        fewer = [1.0] + [0.0] * (k - 1)  # P(exactly n of the experts seen so far outrank it), n < k
        for a in ratios:
            p = 1 - math.exp(-a * u)
            fewer = [fewer[0] * (1 - p)] + [fewer[n] * (1 - p) + fewer[n - 1] * p for n in range(1, k)]
        total += sum(fewer)
    return total / points


def busiest_share(moe: MoEConfig) -> float:
    """Fraction of the tokens the busiest expert computes: exact for balanced, skewed and expert-choice
    routing; learned routing is taken as balanced, since its loads depend on the router's weights
    (`realized_capacity_factor` measures them)."""
    if moe.router == "expert_choice":
        return min(1.0, routed_per_token(moe) / moe.experts)
    if moe.routing_mode == "skewed":
        return zipf_top_share(moe.experts, moe.k, moe.skew_exponent)
    return moe.k / moe.experts


def _moe_rows(moe: MoEConfig) -> float:
    """Expert rows per token the implementation computes: the routed assignments, or for `padded` the
    whole `[E, C]` buffer, C from the capacity factor or, dropless, the busiest expert's load."""
    rows = routed_per_token(moe)
    if moe.impl != "padded" or moe.router == "expert_choice":
        return rows
    if moe.capacity_factor is not None:
        return max(rows, moe.k * moe.capacity_factor)
    return moe.experts * busiest_share(moe)


def block_saved(model: ModelConfig, moe: Optional[MoEConfig], layer: int) -> float:
    """Elements per token one block saves for backward (activations in the model dtype).

    Both norms' input, statistics and output; q, k and v (k and v after repeating the kv heads, as our
    attention does), the attention output and its log-sum-exp (fused SDPA: no seq_len^2 scores); the FFN
    hidden tensors. An MoE layer instead saves the router's logits and probabilities and, per routed row,
    its hidden tensors and (loop and padded, not grouped, which fuses gather and scatter into its GEMMs)
    the gathered token, the expert output and its weighted copy, plus the shared experts' hidden tensors.
    """
    d = model.d_model
    saved = 2 * _norm_saved(model) + _attention_saved(model)
    if moe is None or not moe.is_moe_layer(layer):
        return saved + _hidden(model) * model.d_ff
    copies = 0 if moe.impl == "grouped" else 3 * d
    saved += 3 * moe.experts + 3 * moe.k + _moe_rows(moe) * (copies + _hidden(model) * moe.expert_width(model) + 2)
    if moe.dense_residual:  # its norm, and its hidden tensors
        saved += _norm_saved(model) + _hidden(model) * moe.dense_residual
    return saved + moe.num_shared_experts * _hidden(model) * moe.shared_width(model)


def _attention_saved(model: ModelConfig) -> float:
    """gqa: q, k, v (k and v repeated to every head), the output and its log-sum-exp. mla: the latents
    with their RMSNorms' statistics and outputs; q, k, the padded values and the padded output (all
    `hd + r` wide per head), the log-sum-exp and the output's copy for o."""
    h, hd = model.n_heads, model.head_size
    if model.attention != "mla":
        return 4 * h * hd + h
    r, c, cq = model.rope_head_dim, model.kv_lora_rank, model.q_lora_rank or 0
    return 4 * h * (hd + r) + h * hd + h + (c + r) + 2 * c + 1 + (3 * cq + 1 if cq else 0)


def _attention_working_set(model: ModelConfig) -> float:
    """Elements per token at the busiest moment of an attention forward without autograd, beside the
    block input and its norm: gqa: q, k, v (repeated to every head), the output, its copy and o(.);
    mla: q, k, the padded values and output, the up-projected keys and values, the latent, the output's
    copy and o(.)."""
    d, h, hd = model.d_model, model.n_heads, model.head_size
    if model.attention != "mla":
        return d + 5 * h * hd
    r, c, cq = model.rope_head_dim, model.kv_lora_rank, model.q_lora_rank or 0
    return d + 4 * h * (hd + r) + 3 * h * hd + c + r + 2 * cq


def kv_cache_elements(model: ModelConfig) -> int:
    """Cached key and value elements per token and layer (mla caches per-head keys and values)."""
    if model.attention == "mla":
        return model.n_heads * (2 * model.head_size + model.rope_head_dim)
    return 2 * model.kv_heads * model.head_size


def _forward_working_set(model: ModelConfig, moe: Optional[MoEConfig], layer: int) -> float:
    """Elements per token alive at the busiest moment of one block's forward pass without autograd.

    The FFN half also holds the block's input (the caller still refers to it) beside the residual
    stream after attention and its norm."""
    d = model.d_model
    attention = 2 * d + _attention_working_set(model)
    if moe is None or not moe.is_moe_layer(layer):
        return max(attention, 3 * d + _hidden(model) * model.d_ff)
    shared = d + moe.num_shared_experts * _hidden(model) * moe.shared_width(model)
    if moe.impl == "padded":
        rows, f = _moe_rows(moe), moe.expert_width(model)
        # the [E*C, d] buffer with its hidden tensors; then buffer, activation, output and the combine's copies
        routed = max(rows * (d + _hidden(model) * f), rows * (2 * d + f) + 2 * routed_per_token(moe) * d + d)
    else:  # loop and grouped run one expert's rows at a time: gathered, hidden, output, weighted
        routed = d + busiest_share(moe) * (3 * d + _hidden(model) * moe.expert_width(model))
    # a dense residual runs after the MoE: input, attention output, MoE output, its norm, hidden, output
    residual = 5 * d + _hidden(model) * moe.dense_residual if moe.dense_residual else 0
    return max(attention, 3 * d + 3 * moe.experts + max(routed, shared), residual)


def _weight_bytes(model: ModelConfig, moe: Optional[MoEConfig], width: int, ep_size: int = 1) -> int:
    """One rank's weights (1/ep of the routed experts); router weights stay float32 in any model dtype."""
    router = param_counts(model, moe).router
    return (params_per_rank(model, moe, ep_size) - router) * width + router * F32


def _block_params_on_rank(model: ModelConfig, moe: Optional[MoEConfig], layer: int, ep_size: int) -> int:
    own = block_params(model, moe, layer)
    if ep_size == 1 or moe is None or not moe.is_moe_layer(layer):
        return own
    experts = param_counts(model, moe).experts // sum(moe.is_moe_layer(i) for i in range(model.n_layers))
    return own - experts + experts // ep_size


def _exchanged(model: ModelConfig, moe: Optional[MoEConfig], layer: int, ep_size: int) -> float:
    """Elements per token the expert-parallel exchange keeps for backward: per routed assignment the
    received row and the returned row."""
    if ep_size == 1 or moe is None or not moe.is_moe_layer(layer):
        return 0.0
    return routed_per_token(moe) * 2 * model.d_model


def _largest_param(model: ModelConfig, moe: Optional[MoEConfig]) -> int:
    """Elements of the largest parameter tensor (stacked routed experts count as one)."""
    d = model.d_model
    gated = 2 if GATED[model.activation] else 1
    ffn_in = gated * model.d_ff * d
    largest = max(model.vocab_size * d, model.n_heads * model.head_size * d, ffn_in)
    if moe is not None:
        largest = max(largest, moe.experts * gated * moe.expert_width(model) * d,
                      gated * moe.num_shared_experts * moe.shared_width(model) * d,
                      gated * (moe.dense_residual or 0) * d)
    return largest


def _training(model: ModelConfig, moe: Optional[MoEConfig], tokens: int, width: int, device: str,
              ep_size: int) -> dict:
    weights = _weight_bytes(model, moe, width, ep_size)
    layers = range(model.n_layers)
    saved = [tokens * (block_saved(model, moe, i) + _exchanged(model, moe, i, ep_size)) * width for i in layers]
    grads = [_block_params_on_rank(model, moe, i, ep_size) * width for i in layers]
    head_saved = tokens * (_norm_saved(model) * width + model.vocab_size * F32)  # final norm, log-probs
    # logits (model dtype) while the loss's float32 log-probs, their gradient and the logits' gradient live
    loss = tokens * model.vocab_size * (width + 2 * F32)
    head_grads = weights - sum(grads)
    at_loss = sum(saved) + head_saved + loss
    # block i's backward: saved tensors of blocks 0..i, gradients of blocks i..L-1 and of the head
    in_backward = max(sum(saved[: i + 1]) + sum(grads[i:]) + head_grads for i in layers)
    optimizer_temps = weights if device == "cuda" else 2 * _largest_param(model, moe) * width
    at_optimizer = weights + optimizer_temps
    peak = max(at_loss, in_backward, at_optimizer)
    return {
        "weights": weights,
        "optimizer": 2 * weights,
        "activations": sum(saved) + head_saved,
        "step_peak": peak - (sum(saved) + head_saved),
        "total": 3 * weights + peak,
    }


def _forward(model: ModelConfig, moe: Optional[MoEConfig], tokens: int, width: int) -> float:
    d = model.d_model
    head = 2 * d + model.vocab_size
    return tokens * max(head, *(_forward_working_set(model, moe, i) for i in range(model.n_layers))) * width


def memory_estimate(
    model: ModelConfig,
    moe: Optional[MoEConfig],
    batch_size: int,
    seq_len: Optional[int] = None,
    dtype: str = "float32",
    workload: str = "train_step",
    device: str = "cpu",
    ep_size: int = 1,
) -> dict:
    """Estimated peak bytes of one case's workload on one rank, by part; `total` is the peak.

    Training parts: `weights`, `optimizer` (AdamW's moments), `activations` (saved for backward) and
    `step_peak` (what the step's busiest moment holds beyond those: the loss's vocabulary-wide tensors,
    gradients, optimizer temporaries). Inference parts: `weights`, `working_set` and, for decode,
    `kv_cache`. `build`: the peak of building the model (on CPU in a 16-bit dtype, the float32 weights
    before the cast), which `total` never falls below. `device` ("cpu" or "cuda") decides that and how
    AdamW runs (one tensor at a time, or foreach). `ep_size` > 1: the rank holds 1/ep of the routed
    experts and, in training, keeps the rows the expert-parallel exchange sent and received.
    `seq_len` (default `model.seq_len`) is the tokens per sequence a pass runs on: for decode, the prompt.
    """
    if dtype not in BYTES_PER_ELEMENT:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(BYTES_PER_ELEMENT)}")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}; expected cpu or cuda")
    width = BYTES_PER_ELEMENT[dtype]
    seq = seq_len or model.seq_len
    tokens = batch_size * seq
    if workload in TRAINING_WORKLOADS:
        out = _training(model, moe, tokens, width, device, ep_size)
    elif workload == "forward":
        out = {"weights": _weight_bytes(model, moe, width, ep_size), "working_set": _forward(model, moe, tokens, width)}
        out["total"] = sum(out.values())
    elif workload == "decode":
        out = {
            "weights": _weight_bytes(model, moe, width, ep_size),
            "kv_cache": model.n_layers * kv_cache_elements(model) * batch_size * model.seq_len * width,
            "working_set": _forward(model, moe, tokens, width),
        }
        out["total"] = sum(out.values())
    else:
        raise ValueError(f"unknown workload {workload!r}; expected train_step, quality, forward or decode")
    out["build"] = _build_peak(model, moe, width, device)
    out["total"] = max(out["total"], out["build"])
    return out


def _build_peak(model: ModelConfig, moe: Optional[MoEConfig], width: int, device: str) -> int:
    """The model is built in float32 and then cast: on CPU the float32 weights and the parameter being
    converted coexist. On CUDA the cast happens on the way to the device, which never holds the float32 copy."""
    if device == "cuda" or width == F32:
        return 0
    return param_counts(model, moe).total * F32 + _largest_param(model, moe) * width


def case_estimate(case: Case, workload: str, device: str) -> Optional[int]:
    """Estimated peak bytes of `case` under a built-in workload as the worker runs it (decode prefills
    `model.seq_len - run.decode_tokens` tokens), on one rank of its layout (its share of the batch and
    of the experts); None for a user's own workload."""
    if workload not in BUILTIN_WORKLOADS:
        return None
    seq = case.model.seq_len - case.run.decode_tokens if workload == "decode" else case.model.seq_len
    batch = case.run.batch_size // case.parallel.nproc
    return math.ceil(memory_estimate(case.model, case.moe, batch, max(1, seq), case.run.dtype,
                                     workload, device, case.parallel.expert)["total"])
