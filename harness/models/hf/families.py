"""The Hugging Face transformers families the `hf` source builds, and how a case maps onto each.

Torch-free: the sweep uses it to fill a family's architecture into the keys a suite leaves unset,
to refuse every setting a family cannot express (each with its key and the reason), and to read a
local checkpoint's `config.json`; `build.py` turns `config_kwargs` into a model.

Mapping (every family): vocab_size, d_model -> hidden_size, n_layers -> num_hidden_layers, n_heads,
n_kv_heads, head_dim (always set), seq_len -> max_position_embeddings, tie_embeddings; SwiGLU (silu),
RoPE with the harness's base 10000, RMSNorm eps 1e-5 (OLMo: its weightless LayerNorm), full attention.
MoE: num_experts and top_k (after granularity), expert width, renormalize -> norm_topk_prob (Mixtral
always renormalises), aux_loss_coef -> router_aux_loss_coef; shared experts (Qwen2-MoE: one gated
shared expert of width num_shared_experts x d_shared), the dense-layer pattern (Qwen: mlp_only_layers)
and router jitter (Mixtral: router_jitter_noise) where the family has them. None of these families
has a capacity limit, a z-loss or another router, so those keys are refused.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from harness.config import ModelConfig, MoEConfig

ROPE_THETA = 10000.0  # the harness's rotary base (harness/models/attention.py)
RMS_EPS = 1e-5  # the harness's norm epsilon (harness/models/transformer.py)


@dataclass(frozen=True)
class Family:
    name: str  # `model.config` and transformers' model_type
    config_class: str
    lm_class: str
    dense_peer: Optional[str] = None  # MoE families: the family their dense baselines are built in
    norm: str = "rmsnorm"
    moe_defaults: dict[str, Any] = field(default_factory=dict)  # the config class's MoE semantics

    @property
    def is_moe(self) -> bool:
        return self.dense_peer is not None


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("mixtral", "MixtralConfig", "MixtralForCausalLM", "mistral",
               moe_defaults={"renormalize": True, "aux_loss_coef": 0.001}),
        Family("qwen2_moe", "Qwen2MoeConfig", "Qwen2MoeForCausalLM", "qwen2",
               moe_defaults={"renormalize": False, "aux_loss_coef": 0.001, "num_shared_experts": 1, "shared_gate": True}),
        Family("qwen3_moe", "Qwen3MoeConfig", "Qwen3MoeForCausalLM", "qwen3",
               moe_defaults={"renormalize": False, "aux_loss_coef": 0.001}),
        Family("olmoe", "OlmoeConfig", "OlmoeForCausalLM", "olmo",
               moe_defaults={"renormalize": False, "aux_loss_coef": 0.01}),
        Family("mistral", "MistralConfig", "MistralForCausalLM"),
        Family("qwen2", "Qwen2Config", "Qwen2ForCausalLM"),
        Family("qwen3", "Qwen3Config", "Qwen3ForCausalLM"),
        Family("olmo", "OlmoConfig", "OlmoForCausalLM", norm="layernorm"),
    )
}
MOE_FAMILIES = [name for name, f in FAMILIES.items() if f.is_moe]
# Whether a family has dense-FFN layers between its MoE layers (Qwen's mlp_only_layers).
_DENSE_LAYERS = {"qwen2_moe", "qwen3_moe"}


def defaults(family: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model keys, moe keys) of a family's architecture, for the keys a suite leaves unset."""
    f = FAMILIES[family]
    model = {"activation": "swiglu", "norm": f.norm, "positional": "rope", "tie_embeddings": False}
    moe = {"capacity_factor": None, "router": "topk_softmax", **f.moe_defaults} if f.is_moe else {}
    return model, moe


class Unexpressible(ValueError):
    """A case sets keys its family cannot express; the message names each key and why."""


def _problems(model: ModelConfig, moe: Optional[MoEConfig], f: Family) -> list[str]:
    found: list[str] = []

    def need(ok: bool, key: str, value: Any, why: str) -> None:
        if not ok:
            found.append(f"{key}={value!r}: {why}")

    need(model.activation == "swiglu", "model.activation", model.activation, f"{f.name} has a SwiGLU MLP")
    need(model.positional == "rope", "model.positional", model.positional, f"{f.name} uses rotary positions")
    need(model.attention == "gqa", "model.attention", model.attention, f"{f.name} has grouped-query attention")
    need(model.norm == f.norm, "model.norm", model.norm, f"{f.name} uses {f.norm}")
    if f.name == "olmoe":
        need(model.head_size * model.n_heads == model.d_model, "model.head_dim", model.head_dim,
             "olmoe's q/k norms need n_heads x head_dim == d_model")
    if moe is None:
        need(not f.is_moe, "model.config", f.name, f"an MoE family; its dense peer is {f.dense_peer}")
        return found
    if not f.is_moe:
        found.append(f"model.config={f.name!r}: a dense family; an MoE case needs one of {', '.join(MOE_FAMILIES)}")
        return found
    need(moe.router == "topk_softmax", "moe.router", moe.router, f"{f.name} routes by the top-k of a softmax")
    need(moe.dense_residual is None, "moe.dense_residual", moe.dense_residual, f"{f.name} has no dense residual MLP")
    need(moe.routing_mode == "learned", "moe.routing_mode", moe.routing_mode, f"{f.name} has no forced routing")
    need(moe.capacity_factor is None, "moe.capacity_factor", moe.capacity_factor,
         f"{f.name} routes dropless (no capacity); set moe.capacity_factor: null")
    need(moe.z_loss_coef == 0, "moe.z_loss_coef", moe.z_loss_coef, f"transformers' {f.name} has no router z-loss")
    need(moe.setting("importance_loss_coef") == 0, "moe.importance_loss_coef", moe.importance_loss_coef,
         f"transformers' {f.name} has no importance loss")
    if f.name == "mixtral":
        need(moe.setting("renormalize"), "moe.renormalize", moe.renormalize, "mixtral always renormalises its top-k weights")
    else:
        need(moe.jitter_eps == 0, "moe.jitter_eps", moe.jitter_eps, f"{f.name} has no router jitter")
    if f.name == "qwen2_moe":
        need(moe.num_shared_experts > 0, "moe.num_shared_experts", moe.num_shared_experts, "qwen2_moe always has a shared expert")
        need(moe.shared_gate, "moe.shared_gate", moe.shared_gate, "qwen2_moe gates its shared expert")
    else:
        need(moe.num_shared_experts == 0, "moe.num_shared_experts", moe.num_shared_experts, f"{f.name} has no shared experts")
    if f.name not in _DENSE_LAYERS:
        need(moe.every == 1, "moe.every", moe.every, f"every {f.name} layer is MoE")
        need(moe.first_dense == 0, "moe.first_dense", moe.first_dense, f"every {f.name} layer is MoE")
    return found


def check(model: ModelConfig, moe: Optional[MoEConfig]) -> None:
    """Raise `Unexpressible` listing every key of this case that `model.config`'s family cannot express."""
    if model.config is None:
        raise Unexpressible("model.config: the hf source needs a family (or model.path, a checkpoint)")
    problems = _problems(model, moe, FAMILIES[model.config])
    if problems:
        raise Unexpressible(f"transformers' {model.config} cannot express " + "; ".join(problems))


def config_kwargs(model: ModelConfig, moe: Optional[MoEConfig]) -> dict[str, Any]:
    """Keyword arguments of the family's config class for this (checked) case."""
    check(model, moe)
    f = FAMILIES[model.config]
    kw: dict[str, Any] = dict(
        vocab_size=model.vocab_size, hidden_size=model.d_model, num_hidden_layers=model.n_layers,
        num_attention_heads=model.n_heads, num_key_value_heads=model.kv_heads, head_dim=model.head_size,
        max_position_embeddings=model.seq_len, tie_word_embeddings=model.tie_embeddings, hidden_act="silu",
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA}, attention_dropout=0.0,
        intermediate_size=model.d_ff,
    )
    if f.norm == "rmsnorm":
        kw["rms_norm_eps"] = RMS_EPS
    if f.name in ("mistral", "mixtral"):
        kw["sliding_window"] = None
    if f.name.startswith("qwen"):
        kw["use_sliding_window"] = False
    if f.name in ("qwen3", "qwen3_moe", "olmo", "olmoe"):
        kw["attention_bias"] = False
    if f.name in ("olmo", "olmoe"):
        kw["clip_qkv"] = None
    if moe is None:
        return kw
    width = moe.expert_width(model)
    kw.update(num_experts_per_tok=moe.k, router_aux_loss_coef=moe.setting("aux_loss_coef"))
    if f.name == "mixtral":
        kw.update(num_local_experts=moe.experts, intermediate_size=width, router_jitter_noise=moe.jitter_eps)
    elif f.name == "olmoe":
        kw.update(num_experts=moe.experts, intermediate_size=width, norm_topk_prob=moe.setting("renormalize"))
    else:
        kw.update(num_experts=moe.experts, moe_intermediate_size=width, norm_topk_prob=moe.setting("renormalize"),
                  decoder_sparse_step=1, mlp_only_layers=[i for i in range(model.n_layers) if not moe.is_moe_layer(i)])
        if f.name == "qwen2_moe":
            kw["shared_expert_intermediate_size"] = moe.num_shared_experts * moe.shared_width(model)
    return kw


# --- local checkpoints -------------------------------------------------------------------------


def read_checkpoint_config(path: str) -> dict[str, Any]:
    config = Path(path) / "config.json"
    try:
        return json.loads(config.read_text())
    except OSError as exc:
        raise Unexpressible(f"model.path: cannot read {config} ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise Unexpressible(f"model.path: {config} is not valid JSON ({exc.msg})") from None


def _moe_layers(cfg: dict[str, Any]) -> tuple[int, int]:
    """(first_dense, every) of a Qwen checkpoint's MoE-layer pattern."""
    step = int(cfg.get("decoder_sparse_step", 1) or 1)
    dense = sorted(cfg.get("mlp_only_layers") or [])
    if not dense:
        return step - 1, step
    if step == 1 and dense == list(range(len(dense))):
        return len(dense), 1
    raise Unexpressible(f"model.path: its MoE layers (mlp_only_layers={dense}, decoder_sparse_step={step}) "
                        "are not a leading dense block followed by MoE layers every n-th layer")


def from_checkpoint(path: str) -> tuple[dict[str, Any], Optional[dict[str, Any]]]:
    """The model (and moe) keys a checkpoint's config.json fixes; `seq_len` stays the suite's choice."""
    cfg = read_checkpoint_config(path)
    name = cfg.get("model_type")
    if name not in FAMILIES:
        raise Unexpressible(f"model.path: model_type {name!r} is not a supported family ({', '.join(FAMILIES)})")
    f = FAMILIES[name]
    if cfg.get("hidden_act", "silu") not in ("silu", "swish"):
        raise Unexpressible(f"model.path: hidden_act {cfg['hidden_act']!r}; the hf source maps SwiGLU (silu) models")
    heads = cfg["num_attention_heads"]
    model: dict[str, Any] = {
        "config": name, "vocab_size": cfg["vocab_size"], "d_model": cfg["hidden_size"],
        "n_layers": cfg["num_hidden_layers"], "n_heads": heads, "n_kv_heads": cfg.get("num_key_value_heads") or heads,
        "head_dim": cfg.get("head_dim") or cfg["hidden_size"] // heads, "d_ff": cfg["intermediate_size"],
        "tie_embeddings": bool(cfg.get("tie_word_embeddings", False)),
        "activation": "swiglu", "norm": f.norm, "positional": "rope",
    }
    if not f.is_moe:
        return model, None
    moe: dict[str, Any] = {
        "top_k": cfg["num_experts_per_tok"], "capacity_factor": None, "router": "topk_softmax",
        "aux_loss_coef": cfg.get("router_aux_loss_coef", f.moe_defaults["aux_loss_coef"]), "granularity": 1,
        "renormalize": True if name == "mixtral" else bool(cfg.get("norm_topk_prob", False)),
    }
    if name == "mixtral":
        moe.update(num_experts=cfg["num_local_experts"], d_expert=cfg["intermediate_size"],
                   jitter_eps=cfg.get("router_jitter_noise", 0.0))
    elif name == "olmoe":
        moe.update(num_experts=cfg["num_experts"], d_expert=cfg["intermediate_size"])
    else:
        experts = cfg.get("num_experts", cfg.get("num_local_experts"))
        first_dense, every = _moe_layers(cfg)
        moe.update(num_experts=experts, d_expert=cfg["moe_intermediate_size"], first_dense=first_dense, every=every)
        if name == "qwen2_moe":
            moe.update(num_shared_experts=1, d_shared=cfg["shared_expert_intermediate_size"], shared_gate=True)
    return model, moe


def checkpoint_conflicts(model: ModelConfig, moe: Optional[MoEConfig]) -> None:
    """Raise when a case built on `model.path` sets a key away from what the checkpoint fixes
    (`seq_len` is free; `n_layers` may be fewer: the checkpoint's first layers are loaded)."""
    fixed_model, fixed_moe = from_checkpoint(model.path)
    problems = []
    for key, value in fixed_model.items():
        have = getattr(model, key)
        if key == "n_layers" and have <= value:
            continue
        if have != value:
            problems.append(f"model.{key}={have!r} (the checkpoint has {value!r})")
    if (fixed_moe is None) != (moe is None):
        problems.append("the checkpoint is " + ("dense; a suite's cases are MoE models" if fixed_moe is None else "an MoE model"))
    for key, value in (fixed_moe or {}).items():
        have = getattr(moe, key) if moe is not None else None
        if moe is not None and have != value:
            problems.append(f"moe.{key}={have!r} (the checkpoint has {value!r})")
    if problems:
        raise Unexpressible(f"model.path {model.path}: a checkpoint fixes its shapes; " + "; ".join(problems))
