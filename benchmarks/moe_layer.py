"""One MoE layer against its FLOP-matched dense FFN (d_ff = top_k * expert d_ff), per implementation.

    python -m benchmarks.moe_layer                      # the docs/performance.md table (CPU, fp32)
    python -m benchmarks.moe_layer --experts 8 --top-k 2 --tokens 4096 --impl grouped

Times forward (no grad) and forward+backward (sum of outputs as loss, input and weight grads) with
`harness.metrics.timing.time_steps`, one dense step then one step of each MoE implementation, repeated:
it prints the median time of each and the median of the paired MoE/dense ratios, so that load from
other processes (which slows small GEMMs disproportionately) hits both sides of a ratio alike. Routing is forced `balanced` by
default (random router weights route unlike trained ones); the router itself still runs.
"""
from __future__ import annotations

import argparse
import os
import statistics
from typing import Callable

import torch

from harness.config import ModelConfig, MoEConfig
from harness.metrics.timing import time_steps
from harness.models.dense import FeedForward
from harness.models.moe.dispatch import IMPLS
from harness.models.moe.layer import MoELayer


def phase_steps(module: torch.nn.Module, x: torch.Tensor, one_sequence: bool = False) -> dict[str, Callable[[], None]]:
    """The two timed phases of a layer on `x` [tokens, d_model]: a no-grad forward, and forward plus backward.
    `one_sequence`: the module takes [batch, seq, d_model] (transformers' blocks), so it gets x as one sequence."""
    def call():
        out = module(x[None] if one_sequence else x)
        return out[0] if isinstance(out, tuple) else out

    def forward():
        with torch.no_grad():
            call()

    def forward_backward():
        module.zero_grad(set_to_none=True)
        x.grad = None
        call().sum().backward()

    return {"fwd": forward, "fwd+bwd": forward_backward}


def measure(experts: int, top_k: int, impls: list[str], args) -> list[dict]:
    torch.manual_seed(0)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    model = ModelConfig(d_model=args.d_model, d_ff=args.d_ff, activation=args.activation)
    dense = FeedForward(args.d_model, top_k * args.d_ff, args.activation).to(device, dtype)
    modules = {"dense": dense}
    for impl in impls:
        moe = MoEConfig(num_experts=experts, top_k=top_k, capacity_factor=args.capacity_factor, impl=impl,
                        routing_mode=args.routing_mode, aux_loss_coef=0.0)
        modules[impl] = MoELayer(model, moe).to(device, dtype)
    x = torch.randn(args.tokens, args.d_model, device=device, dtype=dtype, requires_grad=True)
    steps = {name: phase_steps(m, x) for name, m in modules.items()}
    rows = []
    for phase in ("fwd", "fwd+bwd"):
        for name in modules:  # warm-up
            time_steps(steps[name][phase], device, warmup=1, repeats=1)
        times: dict[str, list[float]] = {name: [] for name in modules}
        ratios: dict[str, list[float]] = {name: [] for name in modules}
        for _ in range(args.pairs):
            # Dense and each MoE step back to back: a paired ratio sees the same machine load.
            dense_s = time_steps(steps["dense"][phase], device, warmup=0, repeats=1).seconds[0]
            times["dense"].append(dense_s)
            ratios["dense"].append(1.0)
            for name in impls:
                moe_s = time_steps(steps[name][phase], device, warmup=0, repeats=1).seconds[0]
                times[name].append(moe_s)
                ratios[name].append(moe_s / dense_s)
        for name in modules:
            rows.append(dict(experts=experts, top_k=top_k, phase=phase, impl=name,
                             ms=statistics.median(times[name]) * 1e3, ratio=statistics.median(ratios[name])))
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experts", type=int, nargs="+", default=[8, 64])
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--impl", nargs="+", default=list(IMPLS), choices=list(IMPLS))
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--d-ff", type=int, default=1024, help="expert width")
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--activation", default="gelu", choices=["gelu", "swiglu"])
    p.add_argument("--capacity-factor", type=lambda s: None if s == "none" else float(s), default=None,
                   help="'none' (default) = dropless")
    p.add_argument("--routing-mode", default="balanced", choices=["learned", "balanced", "skewed"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--pairs", type=int, default=9, help="timed (dense, MoE) step pairs per phase")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, {args.dtype}, "
          f"d_model {args.d_model}, expert d_ff {args.d_ff}, tokens {args.tokens}, {args.activation}, "
          f"routing {args.routing_mode}, capacity_factor {args.capacity_factor}")
    print(f"load average before: {_load()}  (other processes slow small GEMMs down; compare with `uptime`)")
    print(f"{'experts':>7} {'top_k':>5} {'phase':>8} {'impl':>8} {'ms':>9} {'MoE/dense':>9}")
    for experts in args.experts:
        for r in measure(experts, args.top_k, args.impl, args):
            print(f"{r['experts']:>7} {r['top_k']:>5} {r['phase']:>8} {r['impl']:>8} "
                  f"{r['ms']:>9.2f} {r['ratio']:>9.3f}", flush=True)
    print(f"load average after: {_load()}")


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unavailable"


if __name__ == "__main__":
    main()
