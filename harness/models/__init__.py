"""Models: the decoder-only transformer, its dense FFN and the MoE layer (`harness.models.moe`)."""
from harness.models.transformer import TransformerLM, build_model

__all__ = ["TransformerLM", "build_model"]
