"""Parameters and FLOPs of a Hugging Face model, counted on the built module rather than by formula,
so FLOP and parameter matching work for any family transformers builds.

The model is built on the meta device (no memory, no weights) and run once on a meta batch of one
`seq_len` sequence under `FlopCounterMode`, with the `batched_mm` experts implementation, which computes
exactly top_k experts per token (the eager loop needs real routing decisions, which meta tensors lack).
Same conventions as `harness.accounting`: matmul FLOPs only, attention scores over the full sequence,
training = 3 x forward; active parameters count top_k / num_experts of each MoE layer's experts.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional

from harness.config import Case, ModelConfig, MoEConfig, RunSettings
from harness.metrics.flops import count_flops

TRAIN_TO_FORWARD = 3.0


def _meta_model(model: ModelConfig, moe: Optional[MoEConfig]):
    import torch
    import transformers

    from harness.models.hf.build import hf_config, require_transformers

    require_transformers()
    config = hf_config(Case(kind="moe" if moe else "dense", model=model, moe=moe, run=RunSettings()))
    options = {"experts_implementation": "batched_mm"} if moe is not None else {}
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(config, **options).eval()


@lru_cache(maxsize=512)
def _counts(model_json: str, moe_json: Optional[str], seq_len: int) -> tuple[int, int, float]:
    import torch

    model = ModelConfig.model_validate_json(model_json)
    moe = MoEConfig.model_validate_json(moe_json) if moe_json else None
    hf = _meta_model(model, moe)
    total = sum(p.numel() for p in hf.parameters())
    experts = sum(p.numel() for name, p in hf.named_parameters() if ".mlp.experts." in name)
    active = total - experts + (round(experts * moe.k / moe.experts) if moe is not None else 0)
    tokens = torch.zeros(1, seq_len, dtype=torch.long, device="meta")
    with torch.no_grad():
        flops = count_flops(hf, input_ids=tokens)  # its default cache keeps the meta run free of data checks
    return total, active, flops / seq_len


def counts(model: ModelConfig, moe: Optional[MoEConfig], seq_len: Optional[int] = None) -> tuple[int, int, float]:
    """(total parameters, active parameters, forward FLOPs per token at `seq_len`, default model.seq_len)."""
    return _counts(model.model_dump_json(), moe.model_dump_json() if moe else None, seq_len or model.seq_len)


def summary(model: ModelConfig, moe: Optional[MoEConfig] = None) -> dict:
    total, active, flops = counts(model, moe)
    return {"params_total": total, "params_active": active, "flops_per_token": flops,
            "train_flops_per_token": TRAIN_TO_FORWARD * flops}
