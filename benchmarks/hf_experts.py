"""The harness's MoE layer against every experts implementation of Hugging Face transformers, on the
same shapes, the same weights and therefore the same routing (one Mixtral sparse block per
implementation, its weights copied from the harness layer as the hf source copies them).

    python -m benchmarks.hf_experts                     # the docs/hf.md table (CPU, fp32)
    python -m benchmarks.hf_experts --device cuda --dtype bfloat16

Times forward (no grad) and forward+backward (sum of outputs as loss, input and weight grads), each
implementation once per round right after the harness's `grouped`, and prints the median time and the
median of the paired ratios to `grouped` (> 1: slower than the harness), so machine load hits both
sides of a ratio alike. Routing is learned (the router's random weights), identical for all rows.
Implementations transformers registers that cannot run here (e.g. CUDA-only kernels on a CPU) are
listed with the reason instead of a time; so is `batched_mm` when its per-assignment copies of the
expert weights (tokens x top_k x 3 x d_model x d_ff elements, made by design for small inputs) would
exceed --max-gather-gib.
"""
from __future__ import annotations

import argparse
import os
import statistics

import torch

from benchmarks.moe_layer import phase_steps
from harness.config import ModelConfig, MoEConfig
from harness.metrics.timing import time_steps
from harness.models.hf.build import experts_implementations
from harness.models.moe.layer import MoELayer

REFERENCE = "grouped"


def hf_blocks(layer: MoELayer, args, impls: list[str]) -> dict[str, torch.nn.Module]:
    """One transformers Mixtral block per experts implementation, all sharing one copy of the weights."""
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    blocks = {}
    shared = None
    for impl in impls:
        config = MixtralConfig(hidden_size=args.d_model, intermediate_size=args.d_ff, num_local_experts=layer.num_experts,
                               num_experts_per_tok=layer.k)
        config._experts_implementation = impl
        block = MixtralSparseMoeBlock(config).to(layer.experts.w_in.device, layer.experts.w_in.dtype)
        if shared is None:
            with torch.no_grad():
                block.gate.weight.copy_(layer.router.weight)
                block.experts.gate_up_proj.copy_(layer.experts.w_in)
                block.experts.down_proj.copy_(layer.experts.w_out.transpose(1, 2))
            shared = block
        else:
            block.gate.weight = shared.gate.weight
            block.experts.gate_up_proj = shared.experts.gate_up_proj
            block.experts.down_proj = shared.experts.down_proj
        blocks[f"hf:{impl}"] = block
    return blocks


def gather_gib(tokens: int, args, dtype: torch.dtype) -> float:
    """Memory batched_mm's weight gathers take: one [2f, d] and one [d, f] matrix per (token, slot)."""
    return tokens * args.top_k * 3 * args.d_model * args.d_ff * torch.finfo(dtype).bits / 8 / 2**30


def measure(experts: int, tokens: int, args) -> list[dict]:
    torch.manual_seed(0)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    model = ModelConfig(d_model=args.d_model, d_ff=args.d_ff, activation="swiglu")
    modules: dict[str, torch.nn.Module] = {}
    for impl in args.harness_impls:
        moe = MoEConfig(num_experts=experts, top_k=args.top_k, capacity_factor=None, impl=impl, renormalize=True,
                        aux_loss_coef=0.0)
        torch.manual_seed(0)
        modules[impl] = MoELayer(model, moe).to(device, dtype)
    rows, unavailable = [], {}
    hf_impls = experts_implementations()
    if "batched_mm" in hf_impls and gather_gib(tokens, args, dtype) > args.max_gather_gib:
        hf_impls.remove("batched_mm")
        unavailable["hf:batched_mm"] = (f"its per-assignment weight copies need {gather_gib(tokens, args, dtype):.3g} GiB "
                                        f"(> --max-gather-gib {args.max_gather_gib:g})")
    modules.update(hf_blocks(modules[REFERENCE], args, hf_impls))
    x = torch.randn(tokens, args.d_model, device=device, dtype=dtype, requires_grad=True)
    steps = {name: phase_steps(m, x, one_sequence=not isinstance(m, MoELayer)) for name, m in modules.items()}
    for phase in ("fwd", "fwd+bwd"):
        for name in list(steps):  # warm-up until step times settle; one that cannot run here drops out
            try:
                time_steps(steps[name][phase], device, warmup=2, repeats=1, max_warmup=5)
            except Exception as exc:  # noqa: BLE001 - reported, not fatal
                unavailable[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:100]}"
                del steps[name]
        times: dict[str, list[float]] = {name: [] for name in steps}
        ratios: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(args.pairs):
            reference = time_steps(steps[REFERENCE][phase], device, warmup=0, repeats=1).seconds[0]
            times[REFERENCE].append(reference)
            ratios[REFERENCE].append(1.0)
            for name in steps:
                if name != REFERENCE:
                    seconds = time_steps(steps[name][phase], device, warmup=0, repeats=1).seconds[0]
                    times[name].append(seconds)
                    ratios[name].append(seconds / reference)
        for name in steps:
            rows.append(dict(experts=experts, tokens=tokens, phase=phase, impl=name,
                             ms=statistics.median(times[name]) * 1e3, ratio=statistics.median(ratios[name])))
    rows += [dict(experts=experts, tokens=tokens, phase="-", impl=name, unavailable=why) for name, why in unavailable.items()]
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experts", type=int, nargs="+", default=[8, 64])
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--harness-impls", nargs="+", default=["grouped", "loop"], help=f"must include {REFERENCE}")
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--d-ff", type=int, default=1024, help="expert width (SwiGLU)")
    p.add_argument("--tokens", type=int, nargs="+", default=[64, 4096], help="64: decode-sized, 4096: prefill-sized")
    p.add_argument("--max-gather-gib", type=float, default=4.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--pairs", type=int, default=7, help="timed rounds per phase")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = p.parse_args(argv)
    if REFERENCE not in args.harness_impls:
        p.error(f"--harness-impls must include {REFERENCE}")
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads, "
          f"{args.device}, {args.dtype}, d_model {args.d_model}, expert d_ff {args.d_ff} (SwiGLU), "
          f"top-{args.top_k}, dropless, learned routing")
    print(f"load average before: {_load()}")
    print(f"{'experts':>7} {'tokens':>6} {'phase':>8} {'impl':>16} {'ms':>9} {'/grouped':>9}")
    for experts in args.experts:
        for tokens in args.tokens:
            for r in measure(experts, tokens, args):
                head = f"{r['experts']:>7} {r['tokens']:>6}"
                if "unavailable" in r:
                    print(f"{head} {'':>8} {r['impl']:>16}  not run: {r['unavailable']}")
                else:
                    print(f"{head} {r['phase']:>8} {r['impl']:>16} {r['ms']:>9.2f} {r['ratio']:>9.3f}", flush=True)
    print(f"load average after: {_load()}")


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unavailable"


if __name__ == "__main__":
    main()
