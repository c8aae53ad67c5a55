"""The layer micro-benchmarks as pytest-benchmark tests: one MoE layer per implementation and its
FLOP-matched dense FFN, forward and forward+backward, at the docs/performance.md shapes.

    pytest benchmarks/ --benchmark-json=bench.json                 # measure, save pytest-benchmark JSON
    pytest benchmarks/ --benchmark-compare=0001 --benchmark-compare-fail=median:10%   # gate on a saved run
    BENCH_TOKENS=512 pytest benchmarks/                            # smaller shapes for a quick look

They live outside `tests/` (the default test run never times anything). `python -m
benchmarks.moe_layer` prints the paired MoE/dense ratios; these give each implementation's own timing
distribution in the format CI tools read. Routing is forced `balanced`, as in that command.
"""
from __future__ import annotations

import os

import pytest
import torch

from benchmarks.moe_layer import phase_steps
from harness.config import ModelConfig, MoEConfig
from harness.models.dense import FeedForward
from harness.models.moe.dispatch import IMPLS
from harness.models.moe.layer import MoELayer

D_MODEL, D_FF, TOP_K = 512, 1024, 2
TOKENS = int(os.environ.get("BENCH_TOKENS", "4096"))
EXPERTS = [int(e) for e in os.environ.get("BENCH_EXPERTS", "8,64").split(",")]
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "9"))


def _module(impl: str, experts: int) -> torch.nn.Module:
    torch.manual_seed(0)
    if impl == "dense":
        return FeedForward(D_MODEL, TOP_K * D_FF, "gelu")
    moe = MoEConfig(num_experts=experts, top_k=TOP_K, capacity_factor=None, impl=impl, routing_mode="balanced",
                    aux_loss_coef=0.0)
    return MoELayer(ModelConfig(d_model=D_MODEL, d_ff=D_FF, activation="gelu"), moe)


CASES = [("dense", e) for e in EXPERTS[:1]] + [(impl, e) for impl in IMPLS for e in EXPERTS]


@pytest.mark.parametrize("phase", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize(("impl", "experts"), CASES, ids=[f"{i}-E{e}" if i != "dense" else "dense" for i, e in CASES])
def test_layer(benchmark, impl, experts, phase):
    module = _module(impl, experts)
    x = torch.randn(TOKENS, D_MODEL, requires_grad=True)
    step = phase_steps(module, x)[phase]
    benchmark.group = f"{phase} tokens={TOKENS}"
    benchmark.extra_info.update(impl=impl, experts=experts if impl != "dense" else None, top_k=TOP_K,
                                d_model=D_MODEL, d_ff=D_FF, tokens=TOKENS, threads=torch.get_num_threads())
    benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=1, iterations=1)
