"""Memory: the analytic estimate against the peak a fresh worker measures, and how that peak is measured."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.memory_model import BASE, SPREAD, make_case, measure_peaks
from harness import memory_model
from harness.config import Case, ModelConfig, MoEConfig

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM and clear_refs are Linux's")

# A spread of vocabularies, widths, expert counts, implementations, capacities, architectures and workloads
# from the benchmark's table (docs/accounting.md); each exercises a different busiest moment: the loss's
# vocabulary-wide tensors, saved activations, the optimizer step, a capacity buffer, a KV cache.
CHECKED = ["dense V=4096", "dense swiglu rope gqa, 3 layers, forward", "MoE 8 top-2 grouped",
           "MoE 32 experts, batch 1 (optimizer peak)", "MoE 8 top-2 padded cf 2 forward",
           "MoE 4 top-2 loop swiglu decode", "MLA + Arctic dense residual, geglu"]


@pytest.fixture(scope="module")
def measured() -> dict[str, tuple[Case, str, dict]]:
    """Every checked case built, probed and stepped twice, one after another in one fresh process, by the
    worker's own code: the same window, warm-up and floor as a run's rows."""
    jobs = {}
    for name in CHECKED:
        model, moe, workload, batch, dtype = SPREAD[name]
        jobs[name] = (make_case(model, moe, batch, dtype), workload)
    peaks = measure_peaks(list(jobs.values()))
    return {name: (case, workload, peak) for (name, (case, workload)), peak in zip(jobs.items(), peaks)}


@linux_only
@pytest.mark.parametrize("name", CHECKED)
def test_estimate_within_15_percent_of_the_peak_measured_from_the_model_build(measured, name):
    case, workload, peak = measured[name]
    estimate = memory_model.case_estimate(case, workload, "cpu")
    assert peak["peak_memory_net_source"].startswith("vmhwm")
    assert 0.85 < estimate / peak["peak_memory_net_bytes"] < 1.15, (estimate, peak["peak_memory_net_bytes"])


# ------------------------------------------------------------------ the estimate's parts


def test_training_estimate_holds_four_vocabulary_wide_tensors_per_token():
    """Logits, log-probabilities and both their gradients: raising the vocabulary raises the estimate by
    4 x tokens x dV float32 elements beyond the weights and optimizer state it adds."""
    small, big = ModelConfig(**BASE), ModelConfig(**dict(BASE, vocab_size=4096))
    a, b = (memory_model.memory_estimate(m, None, 8, workload="train_step") for m in (small, big))
    tokens, dv = 8 * BASE["seq_len"], 4096 - BASE["vocab_size"]
    weights = 4 * dv * BASE["d_model"]
    assert b["total"] - a["total"] == pytest.approx(3 * weights + 4 * tokens * dv * 4, rel=0.01)


def test_forward_counts_the_logits_and_no_kv_cache_and_decode_counts_its_cache():
    model = ModelConfig(**dict(BASE, vocab_size=4096, n_kv_heads=2))
    forward = memory_model.memory_estimate(model, None, 8, workload="forward")
    assert "kv_cache" not in forward
    assert forward["working_set"] >= 8 * model.seq_len * model.vocab_size * 4
    decode = memory_model.memory_estimate(model, None, 8, seq_len=100, workload="decode")
    assert decode["kv_cache"] == 2 * model.n_layers * 2 * model.head_size * 8 * model.seq_len * 4
    assert decode["working_set"] == pytest.approx(forward["working_set"] * 100 / model.seq_len)


def test_optimizer_step_peak_depends_on_how_adamw_runs():
    """Weight-heavy: the optimizer step is the peak. CPU AdamW runs one tensor at a time (two temporaries
    of the largest parameter), CUDA's foreach kernels take one temporary of every parameter."""
    model = ModelConfig(**dict(BASE, vocab_size=512, d_model=128, d_ff=512, seq_len=64))
    moe = MoEConfig(num_experts=32, impl="grouped")
    cpu = memory_model.memory_estimate(model, moe, 1, workload="train_step", device="cpu")
    cuda = memory_model.memory_estimate(model, moe, 1, workload="train_step", device="cuda")
    experts = 32 * 512 * 128 * 4  # the stacked w_in (GELU: E x f x d), the largest parameter
    assert cpu["total"] == 4 * cpu["weights"] + 2 * experts
    assert cuda["total"] == 5 * cuda["weights"]


def test_bfloat16_keeps_router_weights_and_loss_in_float32():
    model, moe = ModelConfig(**BASE), MoEConfig(num_experts=8)
    from harness import accounting

    counts = accounting.param_counts(model, moe)
    bf16 = memory_model.memory_estimate(model, moe, 8, dtype="bfloat16", workload="forward")
    assert bf16["weights"] == 2 * (counts.total - counts.router) + 4 * counts.router


def test_skewed_share_matches_the_router_it_models():
    import torch

    from harness.models.moe.router import zipf_choice

    for experts, k in ((8, 1), (8, 2), (64, 8)):
        chosen = zipf_choice(100_000, k, experts, 1.2, torch.device("cpu"))
        drawn = (chosen == 0).any(-1).float().mean().item()
        assert memory_model.zipf_top_share(experts, k, 1.2) == pytest.approx(drawn, abs=0.005)


def test_case_estimate_is_none_for_a_users_own_workload():
    case = make_case(BASE, None, 2)
    assert memory_model.case_estimate(case, "mypkg.mod:make", "cpu") is None
    assert memory_model.case_estimate(case, "quality", "cpu") == memory_model.case_estimate(case, "train_step", "cpu")
    with pytest.raises(ValueError, match="unknown workload"):
        memory_model.memory_estimate(case.model, None, 1, workload="serve")


# ------------------------------------------------------------------ the measured peak


@linux_only
def test_net_peak_window_measures_what_it_holds_and_leaves_out_excluded_work():
    code = """
import json, torch
from harness.metrics.memory import NetPeak
window = NetPeak.open(torch.device("cpu"))
kept = torch.ones(32 * 2**20 // 4)                      # 32 MiB, alive at the close
with window.excluded():
    scratch = torch.ones(96 * 2**20 // 4); del scratch  # 96 MiB the window must not see
transient = torch.ones(16 * 2**20 // 4); del transient  # 16 MiB on top of kept, then freed
print(json.dumps(window.close()))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).parent.parent)
    row = json.loads(done.stdout)
    assert row["peak_memory_net_source"].startswith("vmhwm since the model build")
    assert 47 * 2**20 < row["peak_memory_net_bytes"] < 56 * 2**20


def test_net_peak_unavailable_without_proc(monkeypatch):
    import torch

    from harness.metrics import memory

    monkeypatch.setattr(memory.sys, "platform", "darwin")
    window = memory.NetPeak.open(torch.device("cpu"))
    assert window.close() == {"peak_memory_net_bytes": None,
                              "peak_memory_net_source": "unavailable: no resettable resident-memory peak on darwin"}


def test_cuda_net_peak_is_max_allocated_since_the_build(monkeypatch):
    import torch

    from harness.metrics import memory

    class Allocator:
        current, peak = 1000, 4000

        def hold(self, n: int) -> None:
            self.current += n
            self.peak = max(self.peak, self.current)

        def reset(self, device=None) -> None:
            self.peak = self.current

    fake = Allocator()
    monkeypatch.setattr(torch.cuda, "synchronize", lambda d=None: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", fake.reset)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda d=None: fake.current)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d=None: fake.peak)
    window = memory.NetPeak.open(torch.device("cuda", 0))  # the peak before it (4000) is not the case's
    fake.hold(5000)
    fake.hold(-1000)
    with window.excluded():  # nor is the probe's
        fake.hold(9000)
        fake.hold(-9000)
    fake.hold(2000)
    assert window.close() == {"peak_memory_net_bytes": 6000,
                              "peak_memory_net_source": "cuda_max_memory_allocated since the model build"}


def test_every_row_carries_its_estimate_even_when_the_worker_died():
    """An OOM row is where the estimate matters most: it says what the case would have needed."""
    from harness.contracts import WorkerResult
    from harness.rows import result_row
    from harness.sweep import Expansion

    case = make_case(BASE, dict(num_experts=8, top_k=2), 8)
    fingerprint = {"harness_version": "x", "torch": "x", "git_commit": "x", "device_count": 0}
    died = result_row(case, "train_step", WorkerResult(status="oom", error="killed"), Expansion(cases=[case]), "s", fingerprint)
    assert died["memory_estimate_bytes"] == memory_model.case_estimate(case, "train_step", "cpu")
    on_gpu = {**fingerprint, "device_count": 1}
    auto = case.model_copy(update={"run": case.run.model_copy(update={"device": "auto"})})
    row = result_row(auto, "train_step", WorkerResult(status="oom"), Expansion(cases=[auto]), "s", on_gpu)
    assert row["memory_estimate_bytes"] == memory_model.case_estimate(auto, "train_step", "cuda")
    ran = result_row(case, "forward", WorkerResult(status="ok", row={"device": "cpu"}), Expansion(cases=[case]), "s", fingerprint)
    assert ran["memory_estimate_bytes"] == memory_model.case_estimate(case, "forward", "cpu")


def test_a_multi_rank_rows_estimate_is_one_ranks_share():
    """Each rank holds its share of the global batch and 1/ep of the experts; the row estimates one rank."""
    from harness.config import ParallelConfig

    case = make_case(BASE, dict(num_experts=8, top_k=2), 8)
    ranked = case.model_copy(update={"parallel": ParallelConfig(nproc=4, expert=4)})
    one_rank = memory_model.memory_estimate(case.model, case.moe, 2, workload="train_step", ep_size=4)["total"]
    assert memory_model.case_estimate(ranked, "train_step", "cpu") == math.ceil(one_rank)
    assert memory_model.case_estimate(ranked, "train_step", "cpu") < memory_model.case_estimate(case, "train_step", "cpu")
