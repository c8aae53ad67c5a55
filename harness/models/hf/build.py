"""Build a Hugging Face `*ForCausalLM` for a case, behind the harness's model interface.

- From a family's config class (`model.config`): random weights, no download. The harness's own
  `TransformerLM` of the same case is built first from the same seed and its weights are copied in,
  so both sources hold identical weights and route identical tokens to identical experts; parameters
  only the Hugging Face model has (Qwen2's q/k/v biases, Qwen3's and OLMoE's q/k norms) keep
  transformers' initialisation (zeros and ones).
- From a local checkpoint (`model.path`): its own weights, offline (`local_files_only`), the first
  `model.n_layers` layers.

`run.hf_experts_implementation` picks transformers' experts implementation (the names the installed
transformers registers, plus `eager`), or registers a user's `package.module:function` under that name.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from typing import Optional

import torch
from torch import Tensor, nn

from harness.config import Case
from harness.models.hf import families

MIN_TRANSFORMERS = (5, 10)  # oldest checked: 5.10.4 (5.0-5.3 cannot run a model on the meta device)
INSTALL = "pip install 'moe-harness[hf]' (transformers>=5.10)"


def transformers_problem() -> Optional[str]:
    """Why the hf source cannot run here (without importing transformers), or None."""
    try:
        found = importlib.util.find_spec("transformers") is not None
    except (ImportError, ValueError):  # blocked, or a broken entry in sys.modules
        found = False
    if not found:
        return f"Hugging Face transformers is not installed: {INSTALL}"
    version = importlib.metadata.version("transformers")
    parts = version.split(".")[:2]
    if not all(p.isdigit() for p in parts) or tuple(map(int, parts)) < MIN_TRANSFORMERS:
        return f"transformers {version} is too old for the hf source: {INSTALL}"
    return None


def require_transformers() -> None:
    problem = transformers_problem()
    if problem:
        raise ImportError(problem)


def experts_implementations() -> list[str]:
    """The experts implementations the installed transformers offers (its registry, plus `eager`)."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    return ["eager", *ALL_EXPERTS_FUNCTIONS.valid_keys()]


def register_experts_implementation(name: str) -> None:
    """Register a user's `package.module:function` (signature `(experts, hidden_states, top_k_index,
    top_k_weights) -> hidden_states`, as transformers' own) in transformers' registry under `name`."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    module, _, function = name.partition(":")
    ALL_EXPERTS_FUNCTIONS.register(name, getattr(importlib.import_module(module), function))


def hf_config(case: Case):
    """The transformers config of a case: its family's config class, or the checkpoint's own."""
    import transformers

    model, moe = case.model, case.moe
    if model.path is not None:
        return transformers.AutoConfig.from_pretrained(model.path, local_files_only=True, num_hidden_layers=model.n_layers)
    family = families.FAMILIES[model.config]
    return getattr(transformers, family.config_class)(**families.config_kwargs(model, moe))


def _mlp(prefix: str, ffn: nn.Module) -> dict[str, Tensor]:
    """A harness FeedForward (gate and up fused in w_in, gate first) as transformers' gate/up/down_proj."""
    gate, up = ffn.w_in.weight.chunk(2, dim=0)
    return {f"{prefix}gate_proj.weight": gate, f"{prefix}up_proj.weight": up, f"{prefix}down_proj.weight": ffn.w_out.weight}


def native_state(native: nn.Module) -> dict[str, Tensor]:
    """The harness model's weights under transformers' parameter names (the layout of all eight families)."""
    out = {"model.embed_tokens.weight": native.tok_emb.weight, "model.norm.weight": native.norm.weight,
           "lm_head.weight": native.lm_head.weight}
    for i, block in enumerate(native.blocks):
        p = f"model.layers.{i}."
        out[f"{p}input_layernorm.weight"] = block.norm1.weight
        out[f"{p}post_attention_layernorm.weight"] = getattr(block.norm2, "norm", block.norm2).weight  # MoE: Float32Norm
        for name in "qkvo":
            out[f"{p}self_attn.{name}_proj.weight"] = getattr(block.attn, name).weight
        ffn = block.ffn
        if not block.is_moe:
            out.update(_mlp(f"{p}mlp.", ffn))
            continue
        out[f"{p}mlp.gate.weight"] = ffn.router.weight
        out[f"{p}mlp.experts.gate_up_proj"] = ffn.experts.w_in
        out[f"{p}mlp.experts.down_proj"] = ffn.experts.w_out.transpose(1, 2)
        if ffn.shared is not None:
            out.update(_mlp(f"{p}mlp.shared_expert.", ffn.shared))
        if ffn.shared_gate is not None:
            out[f"{p}mlp.shared_expert_gate.weight"] = ffn.shared_gate.weight
    return out


# Parameters only the Hugging Face model has; they keep transformers' initialisation.
HF_ONLY = ("_proj.bias", "q_norm.weight", "k_norm.weight")


@torch.no_grad()
def copy_native_weights(native: nn.Module, hf: nn.Module) -> None:
    """Copy every harness weight into the transformers model; refuse anything left unmatched."""
    theirs = dict(hf.named_parameters(remove_duplicate=False))
    ours = native_state(native)
    weightless_norms = native.config.norm == "layernorm"  # OLMo's LayerNorm has no weights (ours are 1 and 0 at init)
    for name, tensor in ours.items():
        if name not in theirs:
            if weightless_norms and name.endswith("norm.weight"):
                continue
            raise ValueError(f"transformers' model has no parameter {name!r} to copy the harness's weight into")
        if theirs[name].shape != tensor.shape:
            raise ValueError(f"{name}: transformers' shape {tuple(theirs[name].shape)} != harness {tuple(tensor.shape)}")
        theirs[name].copy_(tensor)
    left = [name for name in theirs if name not in ours and not name.endswith(HF_ONLY)]
    if left:
        raise ValueError(f"transformers' parameters without a harness weight: {left[:5]}")


def build(case: Case, device: torch.device | str = "cpu") -> nn.Module:
    """The case's transformers model in `run.dtype` on `device`, wrapped in `HFCausalLM`.

    Seed torch before calling: the random weights are those of the harness's model for that seed."""
    require_transformers()
    import transformers

    from harness.models.hf.model import HFCausalLM
    from harness.models.transformer import TransformerLM

    dtype = getattr(torch, case.run.dtype)
    impl = case.run.hf_experts_implementation
    if impl is not None and ":" in impl:
        register_experts_implementation(impl)
    options = {"dtype": dtype, **({"experts_implementation": impl} if impl and case.moe is not None else {})}
    config = hf_config(case)
    if case.model.path is not None:
        hf = transformers.AutoModelForCausalLM.from_pretrained(case.model.path, config=config, local_files_only=True, **options)
    else:
        native = TransformerLM(case.model, case.moe)
        hf = transformers.AutoModelForCausalLM.from_config(config, **options)
        copy_native_weights(native, hf)
        del native
    return HFCausalLM(hf, case).to(device)
