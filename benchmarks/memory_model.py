"""The memory estimate (`harness.memory_model`) against the peak the worker measures, case by case.

    python -m benchmarks.memory_model            # the docs/accounting.md table (CPU)

Every case is built, probed and stepped twice by the worker's own code (`build_and_probe`: the same
window, runtime warm-up and floor as a run's `peak_memory_net_bytes`), each in a fresh process as a run
does. Memory does not depend on machine load, so this needs no quiet machine. `tests/test_memory.py`
checks a subset within 15%, all in one process to stay fast.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

from harness import memory_model
from harness.config import Case, ModelConfig, MoEConfig, RunSettings

RUN = RunSettings(batch_size=8, warmup=0, repeats=1, measure_energy=False, threads=1, device="cpu")
BASE = dict(vocab_size=1024, d_model=256, n_layers=2, d_ff=1024, seq_len=128)
SWIGLU = dict(BASE, activation="swiglu", norm="rmsnorm", positional="rope")

# name -> (model, moe, workload, batch, dtype)
SPREAD: dict[str, tuple[dict, Optional[dict], str, int, str]] = {
    "dense V=1024": (BASE, None, "train_step", 8, "float32"),
    "dense V=4096": (dict(BASE, vocab_size=4096), None, "train_step", 8, "float32"),
    "dense V=4096 forward": (dict(BASE, vocab_size=4096), None, "forward", 8, "float32"),
    "dense swiglu rope gqa, 3 layers, forward": (
        dict(SWIGLU, vocab_size=2048, n_layers=3, n_heads=8, n_kv_heads=2, d_ff=512, tie_embeddings=False),
        None, "forward", 8, "float32"),
    "dense swiglu rope gqa, 3 layers, decode": (
        dict(SWIGLU, vocab_size=2048, n_layers=3, n_heads=8, n_kv_heads=2, d_ff=512, tie_embeddings=False),
        None, "decode", 8, "float32"),
    "MoE 8 top-2 grouped": (BASE, dict(num_experts=8, top_k=2, impl="grouped"), "train_step", 8, "float32"),
    "MoE 8 top-2 loop": (BASE, dict(num_experts=8, top_k=2, impl="loop"), "train_step", 8, "float32"),
    "MoE 8 top-2 padded cf 2": (BASE, dict(num_experts=8, top_k=2, impl="padded", capacity_factor=2.0),
                                "train_step", 8, "float32"),
    "MoE 8 top-2 padded cf 2 forward": (BASE, dict(num_experts=8, top_k=2, impl="padded", capacity_factor=2.0),
                                        "forward", 8, "float32"),
    "MoE 8 top-2 padded dropless skewed": (
        BASE, dict(num_experts=8, top_k=2, impl="padded", capacity_factor=None, routing_mode="skewed"),
        "train_step", 8, "float32"),
    "MoE 8 top-2 padded dropless learned": (
        BASE, dict(num_experts=8, top_k=2, impl="padded", capacity_factor=None), "train_step", 8, "float32"),
    "MoE 32 experts, batch 1 (optimizer peak)": (
        dict(BASE, vocab_size=512, d_model=128, d_ff=512, seq_len=64), dict(num_experts=32, impl="grouped"),
        "train_step", 1, "float32"),
    "MoE 8x4 fine-grained, first layer dense": (
        dict(BASE, n_layers=3), dict(num_experts=8, top_k=1, granularity=4, first_dense=1, capacity_factor=1.0),
        "train_step", 8, "float32"),
    "MoE swiglu expert choice + shared": (
        dict(SWIGLU, d_ff=512), dict(num_experts=8, top_k=2, router="expert_choice", num_shared_experts=1),
        "train_step", 8, "float32"),
    "MoE 4 top-2 loop swiglu decode": (SWIGLU, dict(num_experts=4, top_k=2, impl="loop"), "decode", 8, "float32"),
    "MLA + Arctic dense residual, geglu": (
        dict(BASE, activation="geglu", norm="rmsnorm", positional="rope", attention="mla", kv_lora_rank=128,
             rope_head_dim=32, d_ff=512), dict(num_experts=8, top_k=2, dense_residual=256), "train_step", 8, "float32"),
    "dense V=4096 bfloat16": (dict(BASE, vocab_size=4096), None, "train_step", 8, "bfloat16"),
    "MoE 8 top-2 bfloat16": (BASE, dict(num_experts=8, top_k=2), "train_step", 8, "bfloat16"),
    "MoE 8 top-2 bfloat16 forward": (BASE, dict(num_experts=8, top_k=2), "forward", 8, "bfloat16"),
}

MEASURE = """
import json, sys, torch
from harness.config import Case
from harness.worker import build_and_probe
for line in sys.stdin:
    job = json.loads(line)
    _, _, _, peak = build_and_probe(Case.model_validate(job["case"]), job["workload"], torch.device("cpu"))
    print(json.dumps(peak), flush=True)
"""


def make_case(model: dict, moe: Optional[dict], batch_size: int, dtype: str = "float32") -> Case:
    return Case(kind="moe" if moe else "dense", model=ModelConfig(**model), moe=MoEConfig(**moe) if moe else None,
                run=RUN.model_copy(update={"batch_size": batch_size, "dtype": dtype}))


def measure_peaks(jobs: list[tuple[Case, str]], one_process: bool = True) -> list[dict[str, Any]]:
    """`peak_memory_net_*` of every (case, workload): one after another in one fresh process, or each in
    its own fresh process as a run does (`one_process=False`; later cases in one process find some of the
    runtime's buffers already allocated, which lowers their peaks by up to a few MiB)."""
    if not one_process:
        return [peak for job in jobs for peak in measure_peaks([job])]
    stdin = "".join(json.dumps({"case": c.model_dump(mode="json"), "workload": w}) + "\n" for c, w in jobs)
    done = subprocess.run([sys.executable, "-c", MEASURE], input=stdin, capture_output=True, text=True,
                          cwd=Path(__file__).parent.parent)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return [json.loads(line) for line in done.stdout.splitlines()]


def main() -> int:
    jobs = {name: (make_case(m, e, batch, dtype), workload) for name, (m, e, workload, batch, dtype) in SPREAD.items()}
    peaks = measure_peaks(list(jobs.values()), one_process=False)
    print("| case | workload | dtype | estimate MiB | measured MiB | estimate / measured |")
    print("|---|---|---|---|---|---|")
    for (name, (case, workload)), peak in zip(jobs.items(), peaks):
        estimate = memory_model.case_estimate(case, workload, "cpu")
        measured = peak["peak_memory_net_bytes"]
        print(f"| {name} | {workload} | {case.run.dtype} | {estimate / 2**20:.1f} | {measured / 2**20:.1f} | "
              f"{estimate / measured:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
