"""run.compile: the model is compiled in place, FLOPs are still counted on the eager model, and the
compile time is reported apart from step time."""
from __future__ import annotations

import pytest
import torch

from harness import accounting
from harness.config import Case, ModelConfig, MoEConfig, RunSettings
from harness.models.compile import compile_seconds, torch_problem
from harness.suite import SuiteError, build_suite

pytestmark = pytest.mark.skipif(torch_problem() is not None, reason="run.compile needs torch >= 2.6")


@pytest.fixture
def eager_backend(monkeypatch):
    """Dynamo traces as under any backend, but skips inductor's C++ build (minutes on 2 cores)."""
    compile_ = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compile_(self, backend="eager", **kw))
    torch._dynamo.reset()


def test_compiled_case_reports_compile_time_apart_and_counts_eager_flops(eager_backend, one_thread):
    from harness.worker import measure

    model = ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, d_ff=64, seq_len=16)
    moe = MoEConfig(num_experts=4, top_k=2, capacity_factor=None, impl="loop")
    run = RunSettings(device="cpu", batch_size=2, warmup=1, repeats=2, measure_energy=False, compile=True)
    before = compile_seconds()
    row = measure(Case(kind="moe", model=model, moe=moe, run=run), "forward")["row"]
    assert row["compile_s"] > 0 and row["compile_s"] <= compile_seconds() - before + 1e-9
    assert row["measured_flops_per_token"] == pytest.approx(accounting.forward_flops(model, moe).total)
    assert row["router_entropy"] > 0  # the routing tallies still count under compile
    assert row["latency_ms_median"] > 0


def test_uncompiled_case_has_no_compile_time(one_thread):
    from harness.worker import measure

    case = Case(kind="dense", model=ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, d_ff=64, seq_len=16),
                run=RunSettings(device="cpu", batch_size=2, warmup=1, repeats=2, measure_energy=False))
    assert "compile_s" not in measure(case, "forward")["row"]


def test_compile_setting_values():
    assert build_suite({"name": "x", "run": {"compile": "max-autotune"}}).run.compile == "max-autotune"
    assert build_suite({"name": "x", "run": {"compile": True}}).run.compile is True
    with pytest.raises(SuiteError, match="run.compile"):
        build_suite({"name": "x", "run": {"compile": "fast"}})
