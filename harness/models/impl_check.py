"""An implementation a suite names as `package.module:function` must compute what the reference
computes before anything is timed: one small random input through the model's first MoE layer, the
user's function against `loop` (the harness's layer) or against transformers' `eager` experts loop
(source hf). A mismatch fails the case with the size of the disagreement.
"""
from __future__ import annotations

import importlib

import torch
from torch import Tensor, nn

TOKENS = 64
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 3e-3}  # of the reference's largest value


class ImplementationMismatch(ValueError):
    """A user's implementation disagrees with the reference."""


def _compare(name: str, reference: Tensor, got: Tensor) -> float:
    if got.shape != reference.shape:
        raise ImplementationMismatch(f"{name} returned shape {tuple(got.shape)}, the reference {tuple(reference.shape)}")
    diff = float((got.float() - reference.float()).abs().max())
    scale = float(reference.float().abs().max()) or 1.0
    if not diff <= TOLERANCE[reference.dtype] * scale:
        raise ImplementationMismatch(f"{name} disagrees with the reference on {TOKENS} tokens: "
                                     f"max abs diff {diff:.3g} (reference max {scale:.3g})")
    return diff


def _function(name: str):
    module, _, function = name.partition(":")
    return getattr(importlib.import_module(module), function)


@torch.no_grad()
def check_native(layer: nn.Module, name: str) -> float:
    """`layer` (an MoELayer using `name`) against the same layer with the `loop` implementation."""
    from harness.models.moe.dispatch import get_impl

    weight = layer.experts.w_in
    x = torch.randn(TOKENS, layer.experts.d_model, device=weight.device, dtype=weight.dtype)
    was_training, impl = layer.training, layer.impl
    layer.eval()
    try:
        got, _ = layer(x)
        layer.impl = get_impl("loop")
        reference, _ = layer(x)
    finally:
        layer.impl = impl
        layer.train(was_training)
        layer.tally.reset()
    return _compare(f"moe.impl {name!r}", reference, got)


@torch.no_grad()
def check_hf(experts: nn.Module, name: str) -> float:
    """A transformers experts module: the user's function against the module's own eager loop."""
    param = next(experts.parameters())
    x = torch.randn(TOKENS, experts.hidden_dim, device=param.device, dtype=param.dtype)
    k = min(2, experts.num_experts)
    scores = torch.rand(TOKENS, experts.num_experts, device=param.device).softmax(-1)
    weights, index = scores.topk(k, dim=-1)
    reference = type(experts).forward.__wrapped__(experts, x, index, weights.to(param.dtype))
    got = _function(name)(experts, x, index, weights.to(param.dtype))
    return _compare(f"run.hf_experts_implementation {name!r}", reference, got)


def check(model: nn.Module, case) -> None:
    """Check the case's user implementation, if it names one; built-in ones are tested in tests/."""
    if case.moe is None:
        return
    if case.model.source == "hf":
        name = case.run.hf_experts_implementation
        if name and ":" in name:
            experts = next(m for n, m in model.hf.named_modules() if n.endswith("mlp.experts"))
            check_hf(experts, name)
    elif ":" in case.moe.impl:
        check_native(model.moe_layers()[0], case.moe.impl)
