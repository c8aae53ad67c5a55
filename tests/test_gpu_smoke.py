"""The GPU smoke check's suite, checks and tables, exercised without a GPU."""
from __future__ import annotations

import pandas as pd
import torch

from harness import gpu_smoke
from harness.suite import load_suite
from harness.sweep import expand


def test_suite_is_valid_and_small():
    suite = load_suite(gpu_smoke.SUITE, overrides=("run.device=cpu",))  # 'cuda' is rejected without a GPU
    cases = list(expand(suite))
    assert len(cases) * len(suite.workloads) == 12  # 2 MoE + 2 dense, x train_step, forward, decode
    assert suite.run.measure_energy and suite.run.energy_window_s >= 1.0 and suite.run.dtype == "bfloat16"


def row(**kw):
    base = dict(case_id="a" * 12, kind="moe", top_k=2, workload="forward", status="ok", error=None,
                tokens_per_s=1e5, mfu=0.3, energy_j_per_token=1e-3, avg_power_w=400.0,
                energy_source="nvml_counter", peak_tflops_source="datasheet: H100 SXM bfloat16")
    base.update(kw)
    return base


def test_checks_pass_a_good_run_and_name_every_bad_row():
    good = pd.DataFrame([row(), row(case_id="b" * 12, kind="dense", top_k=None)])
    assert gpu_smoke.problems(good) == []
    bad = pd.DataFrame([
        row(case_id="c" * 12, energy_source="unavailable: nvml_counter: NVML could not initialise", energy_j_per_token=None),
        row(case_id="d" * 12, mfu=1.7),
        row(case_id="e" * 12, mfu=None, peak_tflops_source="unavailable: no datasheet peak"),
        row(case_id="f" * 12, status="oom", error="CUDA out of memory"),
    ])
    found = gpu_smoke.problems(bad)
    assert len(found) == 4
    assert "energy not measured by NVML" in found[0] and "c" * 12 in found[0]
    assert "outside (0, 1]" in found[1]
    assert "MFU missing (unavailable: no datasheet peak)" in found[2]
    assert "status oom" in found[3]


def test_tables_show_missing_values_as_dashes():
    frame = pd.DataFrame([row(), row(case_id="b" * 12, kind="dense", top_k=pd.NA, mfu=None)])
    text = gpu_smoke.rows_table(frame)
    assert "30.0%" in text and "nvml_counter" in text and " -" in text
    pairs = frame.iloc[:1].assign(throughput_ratio=1.25, energy_per_token_ratio=0.8)
    assert "1.250" in gpu_smoke.ratios_table(pairs) and "0.800" in gpu_smoke.ratios_table(pairs)


def test_without_a_gpu_it_runs_nothing_and_exits_2(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_smoke.main(["--out", str(tmp_path / "run")]) == 2
    assert "nothing was run" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_multi_gpu_suite_is_an_ep2_case_and_its_dp2_baseline():
    suite = load_suite(gpu_smoke.MULTI_SUITE, overrides=("run.device=cpu", "parallel.backend=gloo"))
    cases = {case.kind: case for case in expand(suite)}
    assert set(cases) == {"moe", "dense"}
    assert (cases["moe"].parallel.nproc, cases["moe"].parallel.expert) == (2, 2)
    assert (cases["dense"].parallel.nproc, cases["dense"].parallel.expert) == (2, 1)
    assert load_suite(gpu_smoke.MULTI_SUITE, overrides=("run.device=cpu",)).parallel.backend == "nccl"


def test_multi_gpu_checks_name_a_group_that_did_not_measure_its_exchange():
    group = dict(world_size=2, ep_size=2, dp_size=1, backend="nccl", straggler_ratio=1.02, all_to_all_ms=3.0,
                 all_to_all_share=0.2, all_to_all_bytes_per_rank=1 << 20, rank_step_ms="15.0 15.3")
    good = pd.DataFrame([row(**group), row(case_id="b" * 12, kind="dense", top_k=None,
                                          **{**group, "ep_size": 1, "dp_size": 2, "all_to_all_share": 0.0,
                                             "all_to_all_bytes_per_rank": 0})])
    assert gpu_smoke.problems(good) == []
    assert "a2a share" in gpu_smoke.group_table(good) and "15.0 15.3" in gpu_smoke.group_table(good)
    bad = pd.DataFrame([row(**{**group, "backend": "gloo", "all_to_all_share": 0.0, "straggler_ratio": None})])
    found = gpu_smoke.problems(bad)
    assert len(found) == 3
    assert "not nccl" in found[0] and "straggler" in found[1] and "not timed" in found[2]


def test_multi_without_two_gpus_runs_nothing_and_exits_2(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert gpu_smoke.main(["--multi", "--out", str(tmp_path / "run")]) == 2
    assert "needs 2 CUDA GPUs, 1 visible" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
