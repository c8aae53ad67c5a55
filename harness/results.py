"""What one result row holds: the documented column set and the columns that describe a case.

A row is one (case, workload). Measured columns come from the worker; everything here is known
before anything runs. Missing measurements stay empty (NaN) and a `*_source` or `error` column says why.
"""
from __future__ import annotations

from typing import Any

from harness import accounting
from harness.config import Case
from harness.sweep import Expansion

COLUMNS: dict[str, str] = {
    # identity and outcome
    "case_id": "12-hex hash of the resolved case config; stable across runs",
    "kind": "'moe' or 'dense'",
    "baseline": "for a dense row: the rule that derived it ('flop_matched' or 'param_matched')",
    "matched_to": "MoE row: id of its flop-matched baseline (else its first baseline); dense row: space-separated ids of the MoE cases it serves",
    "param_matched_to": "MoE row: id of its param-matched baseline, when the suite asks for one",
    "workload": "'train_step' (forward+backward+AdamW) or 'forward' (inference over full sequences)",
    "status": "'ok', 'failed', 'oom' or 'timeout'",
    "error": "one-line reason when status is not 'ok'",
    "suite": "suite name",
    "seed": "random seed of weights and data",
    # configuration
    "num_experts": "routed experts (after fine-grained splitting); empty for dense",
    "top_k": "experts per token (after fine-grained splitting); empty for dense",
    "capacity_factor": "expert capacity factor; empty for dense and for dropless MoE (see `dropless`)",
    "dropless": "True when the MoE has no capacity limit",
    "router": "router name (MoE only)",
    "impl": "MoE implementation: loop, grouped or padded (MoE only)",
    "routing_mode": "learned, balanced or skewed (MoE only)",
    "granularity": "fine-grained expert split G (MoE only)",
    "num_shared_experts": "always-on shared experts (MoE only)",
    "d_model": "model width",
    "n_layers": "transformer blocks",
    "d_ff": "dense FFN width (for a baseline: the matched width)",
    "d_expert": "routed expert width after splitting (MoE only)",
    "activation": "gelu or swiglu",
    "seq_len": "tokens per sequence",
    "batch_size": "sequences per step",
    "dtype": "parameter and activation dtype",
    "device": "torch device the case ran on (resolved from 'auto')",
    "device_name": "GPU name, or 'cpu'",
    # accounting (analytic)
    "params_total": "all parameters",
    "params_active": "parameters used per token (top-k routed experts, shared experts, router)",
    "flops_per_token": "analytic forward FLOPs per token (see Accounting); MoE counts active experts and the router",
    "train_flops_per_token": "analytic training FLOPs per token (forward + backward)",
    "baseline_flops_per_token": "MoE row: forward FLOPs per token of its matched dense baseline; dense row: its own",
    "flop_match_error": "|dense - moe| / moe forward FLOPs per token for the pair; dense row: the largest over the cases it serves",
    # timing
    "tokens_per_s": "tokens per second from the median step latency",
    "latency_ms_median": "median step latency",
    "latency_ms_p90": "90th percentile step latency",
    "latency_ms_iqr": "interquartile range of step latency",
    "latency_ms_ci_low": "lower bound of the 95% bootstrap confidence interval of the median latency",
    "latency_ms_ci_high": "upper bound of that interval",
    "repeats": "timed steps",
    "warmup_iterations": "untimed steps run first (until timings settle, capped)",
    "noisy": "True when IQR / median latency > 10%",
    "timer": "perf_counter (CPU) or cuda_event (GPU)",
    "tokens_per_step": "batch_size * seq_len",
    "train_loss": "cross-entropy of the last timed training step (train_step only)",
    "achieved_tflops": "analytic FLOPs per token (training or forward) x tokens/s, in TFLOP/s",
    "torch_threads": "torch intra-op threads in the worker",
    # memory
    "peak_memory_bytes": "peak memory of the worker: torch.cuda.max_memory_allocated on GPU, process peak RSS on CPU (includes the Python and torch runtime)",
    "memory_source": "how peak_memory_bytes was measured",
    # routing (MoE only; see harness.metrics.routing)
    "dropped_fraction": "fraction of token-slots over capacity and dropped",
    "load_cv": "coefficient of variation of tokens per expert",
    "max_mean_load": "max over mean tokens per expert",
    "experts_unused": "experts that received no tokens (mean over layers)",
    "router_entropy": "mean entropy of the router distribution (nats)",
    "realized_capacity_factor": "max tokens per expert / (k * T / E)",
    "aux_loss": "Switch load-balancing loss without its coefficient (1.0 = perfectly balanced)",
    "causal": "False when the router looks across the batch (expert choice): unfit for decoding",
    # provenance
    "harness_version": "moe-harness version",
    "torch_version": "torch version in the worker",
    "git_commit": "commit of the harness checkout, '+dirty' when modified",
}


def case_columns(case: Case, expansion: Expansion, suite_name: str) -> dict[str, Any]:
    """Everything about a case that is known without running it."""
    m, moe = case.model, case.moe
    own = accounting.summary(m, moe)
    row: dict[str, Any] = {
        "case_id": case.id,
        "kind": case.kind,
        "baseline": case.baseline,
        "suite": suite_name,
        "seed": case.run.seed,
        "d_model": m.d_model,
        "n_layers": m.n_layers,
        "d_ff": m.d_ff,
        "activation": m.activation,
        "seq_len": m.seq_len,
        "batch_size": case.run.batch_size,
        "dtype": case.run.dtype,
        **own,
    }
    by_id = expansion.by_id()
    if moe is not None:
        baselines = expansion.baseline_of.get(case.id, {})
        main_rule = "flop_matched" if "flop_matched" in baselines else next(iter(baselines), None)
        row.update(
            num_experts=moe.experts,
            top_k=moe.k,
            capacity_factor=moe.capacity_factor,
            dropless=moe.capacity_factor is None,
            router=moe.router,
            impl=moe.impl,
            routing_mode=moe.routing_mode,
            granularity=moe.granularity,
            num_shared_experts=moe.num_shared_experts,
            d_expert=moe.expert_width(m),
            matched_to=baselines.get(main_rule),
            param_matched_to=baselines.get("param_matched"),
        )
        if main_rule is not None:
            dense = by_id[baselines[main_rule]]
            dense_flops = accounting.forward_flops(dense.model, None).total
            row["baseline_flops_per_token"] = dense_flops
            row["flop_match_error"] = accounting.match_error(dense_flops, own["flops_per_token"])
    else:
        served = expansion.serves.get(case.id, [])
        row["matched_to"] = " ".join(served)
        row["baseline_flops_per_token"] = own["flops_per_token"]
        errors = [
            accounting.match_error(own["flops_per_token"], accounting.forward_flops(by_id[i].model, by_id[i].moe).total)
            for i in served
        ]
        row["flop_match_error"] = max(errors) if errors and case.baseline == "flop_matched" else None
    return row
