"""Multi-rank cases end to end: the runner launches them through torchrun, a rank killed mid-step is
a row naming it, an interrupt ends the whole group and the run resumes; plus the pure pieces (the
group's row from per-rank records, which rank failed first). Each group of ranks costs seconds to
start (torchrun and every rank import torch), so these use three groups in all."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pandas as pd
import pytest

from harness.cli import main
from harness.contracts import WorkerResult
from harness.parallel.launcher import Rendezvous, command, group_failure, root_cause
from harness.parallel.measure import merge, merge_steps
from harness.pooling import PER_PROCESS
from harness.store import RunStore
from tests.test_runner import _wait_for_rows, _workers_with

# one MoE case at EP 2 and its dense baseline at DP 2 (the same 2 gloo ranks and global batch)
SUITE = """
name: par
model: {vocab_size: 64, d_model: 16, n_layers: 2, n_heads: 2, d_ff: 32, seq_len: 8}
moe: {num_experts: 4, top_k: 2, impl: grouped}
run: {batch_size: 4, warmup: 1, repeats: 2, timeout_s: 120, device: cpu, measure_energy: false, threads: 1, processes: 2}
parallel: {nproc: 2, expert: 2, timeout_s: 60}
workloads: [train_step]
"""


@pytest.fixture(scope="module")
def interrupted_then_resumed(tmp_path_factory):
    """Start the run, interrupt it while a group runs, then resume it to the end."""
    root = tmp_path_factory.mktemp("parallel_run")
    suite, out, mark = root / "par.yaml", root / "run", uuid.uuid4().hex
    suite.write_text(SUITE)
    env = {**os.environ, "HARNESS_TEST_MARK": mark}
    proc = subprocess.Popen([sys.executable, "-m", "harness", "run", str(suite), "--out", str(out), "--no-report"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    store = RunStore(out)
    _wait_for_rows(store, 1, proc, timeout=240)
    time.sleep(1.0)  # into the next group: torchrun and its ranks are starting or running
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    deadline = time.monotonic() + 20
    while _workers_with(mark) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = _workers_with(mark)
    stored = len(store.rows())
    code = main(["run", "--resume", str(out), "--no-report", "--quiet"])
    return proc.returncode, err, left, stored, code, out


def test_interrupt_ends_the_group_and_the_run_resumes(interrupted_then_resumed):
    returncode, err, left, stored, code, out = interrupted_then_resumed
    assert returncode == 130 and "--resume" in err
    assert left == [], "ranks or torchrun outlived the interrupted runner"
    assert stored == 1
    assert code == 0
    rows = RunStore(out).rows()
    assert sorted(r["kind"] for r in rows) == ["dense", "moe"]


def test_moe_and_dense_rows_carry_the_group_columns(interrupted_then_resumed):
    out = interrupted_then_resumed[-1]
    frame = pd.read_csv(out / "results.csv")
    trained = frame[frame["workload"] == "train_step"].set_index("kind")
    assert (trained["status"] == "ok").all()
    assert (trained["world_size"] == 2).all() and (trained["backend"] == "gloo").all()
    assert trained.loc["moe", "ep_size"] == 2 and trained.loc["moe", "dp_size"] == 1
    assert trained.loc["dense", "ep_size"] == 1 and trained.loc["dense", "dp_size"] == 2
    assert (trained["tokens_per_step"] == 4 * 8).all()  # the global batch
    moe = trained.loc["moe"]
    assert moe["all_to_all_ms"] > 0 and 0 < moe["all_to_all_share"] < 1 and moe["all_to_all_bytes_per_rank"] > 0
    assert trained.loc["dense", "all_to_all_ms"] == 0 and trained.loc["dense", "all_to_all_bytes_per_rank"] == 0
    for kind in ("moe", "dense"):
        row = trained.loc[kind]
        assert row["grad_sync_ms"] > 0 and row["grad_sync_bytes_per_rank"] > 0
        assert row["straggler_ratio"] >= 1.0
        assert len(str(row["rank_step_ms"]).split()) == 2
        per_rank = [int(v) for v in str(row["rank_peak_memory_bytes"]).split()]
        assert row["peak_memory_bytes"] == max(per_rank)
    assert len(str(moe["rank_expert_rows"]).split()) == 2 and moe["expert_rank_imbalance"] >= 1.0
    # run.processes 2: each process is one whole group of 2 ranks, and the row pools both groups
    assert (trained["processes"] == 2).all() and (trained["repeats"] >= 2 * 2).all()
    assert trained["contended"].notna().all() and trained["cpu_share"].notna().all()
    for row in RunStore(out).rows():
        groups = row[PER_PROCESS]
        assert len(groups) == 2 and all(g["world_size"] == 2 and len(g["samples_s"]) >= 2 for g in groups)


def test_a_killed_rank_is_a_row_naming_it_and_the_run_goes_on(tmp_path, write_suite):
    suite = SUITE.replace("workloads: [train_step]", 'workloads: ["tests.faults:kills_rank1"]\nbaselines: []')
    out = tmp_path / "run"
    assert main(["run", str(write_suite(suite)), "--out", str(out), "--no-report", "--quiet"]) == 1
    (killed,) = RunStore(out).rows()
    assert killed["status"] == "failed"
    assert "rank 1 of 2" in killed["error"] and "SIGKILL" in killed["error"], killed["error"]


def test_a_hung_rank_ends_the_group_at_the_collective_timeout_and_is_named(tmp_path, write_suite):
    suite = SUITE.replace("workloads: [train_step]", 'workloads: ["tests.faults:hangs_rank1"]\nbaselines: []')
    suite = suite.replace("timeout_s: 60}", "timeout_s: 3}")
    out = tmp_path / "run"
    started = time.monotonic()
    assert main(["run", str(write_suite(suite)), "--out", str(out), "--no-report", "--quiet"]) == 1
    assert time.monotonic() - started < 100  # ended by the 3 s collective timeout, not run.timeout_s (120 s)
    (hung,) = RunStore(out).rows()
    assert hung["status"] == "failed"
    assert hung["error"].startswith("rank 1 of 2: stopped by torchrun (SIGTERM) outside any collective"), hung["error"]
    assert "(rank 0: CollectiveError" in hung["error"]


def test_a_rank_without_its_own_gpu_is_refused_before_touching_it(monkeypatch):
    import torch

    from harness import worker
    from harness.config import Case

    case = Case.model_validate({"kind": "dense", "model": {}, "run": {"batch_size": 2},
                                "parallel": {"nproc": 2, "backend": "nccl"}})
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(worker, "resolve_device", lambda requested: torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: pytest.fail("set a device it does not have"))
    with pytest.raises(RuntimeError, match="local rank 1 needs its own GPU, and this node has 1"):
        worker.start_rank(case)


# ----------------------------------------------------------------------------- pure pieces

def _record(rank: int, samples: list[float], comm: list[dict], peak: int, loss: float) -> dict:
    row = {"samples_s": samples, "tokens_per_step": 10, "peak_memory_bytes": peak, "train_loss": loss,
           "device": "cpu"}
    return {"rank": rank, "local_rank": rank, "row": row, "comm": comm,
            "steps": [{"step": 0, "loss": loss, "grad_norm": 1.0}]}


def test_merge_takes_the_slowest_rank_per_step_and_sums_the_batch():
    comm0 = [{"dispatch_s": 0.01, "combine_s": 0.01, "dispatch_bytes": 100, "grad_sync_s": 0.002,
              "grad_sync_bytes": 40, "expert_rows": 30}] * 3
    comm1 = [{"dispatch_s": 0.03, "combine_s": 0.01, "dispatch_bytes": 300, "grad_sync_s": 0.002,
              "grad_sync_bytes": 40, "expert_rows": 10}] * 3
    records = [_record(0, [0.10, 0.20, 0.10], comm0, 500, 2.0), _record(1, [0.15, 0.10, 0.30], comm1, 700, 4.0)]
    row = merge(records, ep_size=2, backend="gloo", seed=0)
    assert row["samples_s"] == [0.15, 0.20, 0.30]
    assert row["latency_ms_median"] == pytest.approx(200.0)
    assert row["tokens_per_step"] == 20 and row["tokens_per_s"] == pytest.approx(100.0)
    assert row["straggler_ratio"] == pytest.approx(0.15 / 0.125)  # medians 0.10 and 0.15
    assert row["all_to_all_ms"] == pytest.approx((20 + 40) / 2)
    assert row["all_to_all_share"] == pytest.approx((0.02 / 0.10 + 0.04 / 0.15) / 2)
    assert row["all_to_all_bytes_per_rank"] == 200
    assert row["grad_sync_ms"] == pytest.approx(2.0) and row["grad_sync_bytes_per_rank"] == 40
    assert row["peak_memory_bytes"] == 700 and row["rank_peak_memory_bytes"] == "500 700"
    assert row["rank_expert_rows"] == "30.0 10.0" and row["expert_rank_imbalance"] == pytest.approx(1.5)
    assert row["train_loss"] == pytest.approx(3.0)
    assert (row["world_size"], row["ep_size"], row["dp_size"]) == (2, 2, 1)
    assert merge_steps(records)[0]["loss"] == pytest.approx(3.0)


def test_merge_sums_gpu_energy_over_ranks_and_reads_a_host_meter_once_per_node():
    records = []
    for rank in range(4):
        rec = _record(rank, [0.1], [], 1, 1.0)
        rec["local_rank"] = rank % 2  # two nodes of two ranks
        rec["row"].update(device=f"cuda:{rank % 2}", energy_source="nvml_counter", energy_j=10.0,
                          energy_above_idle_j=4.0, avg_power_w=100.0, idle_power_w=60.0, cpu_energy_j=50.0,
                          cpu_energy_above_idle_j=5.0, cpu_avg_power_w=500.0, cpu_idle_power_w=450.0)
        records.append(rec)
    row = merge(records, ep_size=1, backend="nccl", seed=0)
    assert row["energy_j"] == 40.0 and row["energy_j_per_token"] == pytest.approx(1.0)
    assert row["cpu_energy_j"] == 100.0 and row["cpu_avg_power_w"] == 1000.0
    records[3]["row"]["energy_j"] = None  # one device unmeasured: the group's energy is unknown, not 30 J
    assert merge(records, ep_size=1, backend="nccl", seed=0)["energy_j"] is None


def test_merge_flags_the_group_as_disturbed_as_its_worst_rank():
    records = [_record(0, [0.1], [], 1, 1.0), _record(1, [0.1], [], 1, 1.0)]
    records[0]["row"].update(contended=False, contention_reason=None, cpu_share=0.95)
    records[1]["row"].update(contended=True, contention_reason="cpu share 0.40 of 1 thread", cpu_share=0.40)
    row = merge(records, ep_size=2, backend="gloo", seed=0)
    assert row["contended"] and row["contention_reason"] == "rank 1: cpu share 0.40 of 1 thread"
    assert row["cpu_share"] == pytest.approx(0.40)


def test_processes_of_a_multi_rank_case_pool_as_whole_groups():
    """Each process is one torchrun group whose rank 0 merged its row: timing pools over the groups'
    step times; group readings take the median over the groups, per-rank ones rank by rank."""
    from harness.pooling import pool

    def group(samples, straggler, a2a, steps, peaks, contended=False):
        return {"samples_s": samples, "tokens_per_step": 32, "tokens_per_s": 32 / samples[0], "world_size": 2,
                "straggler_ratio": straggler, "all_to_all_ms": a2a, "all_to_all_share": a2a / 100,
                "all_to_all_bytes_per_rank": 1000, "grad_sync_ms": 1.0, "rank_step_ms": steps,
                "rank_peak_memory_bytes": peaks, "peak_memory_bytes": max(map(int, peaks.split())),
                "rank_expert_rows": "10.0 6.0", "contended": contended,
                "contention_reason": "rank 1: cpu share 0.40 of 1 thread" if contended else None}

    row = pool([group([0.10, 0.12], 1.1, 20.0, "100.000 110.000", "500 700"),
                group([0.20, 0.22], 1.5, 40.0, "200.000 150.000", "600 650", contended=True),
                group([0.10, 0.11], 1.2, 30.0, "120.000 130.000", "550 600")])
    assert row["processes"] == 3 and row["repeats"] == 6 and len(row["samples_s"]) == 3
    assert row["tokens_per_s"] == pytest.approx(32 / 0.115)  # global batch over the pooled median step
    assert row["straggler_ratio"] == pytest.approx(1.2) and row["all_to_all_ms"] == pytest.approx(30.0)
    assert row["rank_step_ms"] == "120.000 130.000" and row["rank_peak_memory_bytes"] == "600 700"
    assert row["peak_memory_bytes"] == 700 and row["all_to_all_bytes_per_rank"] == 1000
    assert row["contended"] and row["contention_reason"] == "process 2: rank 1: cpu share 0.40 of 1 thread"


TORCHRUN_TAIL = """
Root Cause (first observed failure):
[0]:
  time      : 2026-11-30_00:26:48
  host      : box
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 4242)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 4242
"""


def test_group_failure_names_the_rank_that_failed_first():
    victim = WorkerResult(status="failed", error="CollectiveError: agree collective failed", victim=True, at=2.0)
    own = WorkerResult(status="oom", error="OutOfMemoryError: CUDA out of memory", at=5.0)
    # a rank's own error wins over the collective errors it caused, even when they were written first
    assert group_failure({0: victim, 1: own}, 2, "") == ("oom", "rank 1 of 2: OutOfMemoryError: CUDA out of memory")
    # a rank that left no file: torchrun's root cause says how it ended
    assert root_cause(TORCHRUN_TAIL) == (1, -9, 4242)
    assert group_failure({0: victim}, 2, TORCHRUN_TAIL) == ("failed", "rank 1 of 2, no result: killed by SIGKILL")
    oom = group_failure({0: victim}, 2, TORCHRUN_TAIL, explain=lambda code, pid: ("oom", f"{code} {pid} evidence"))
    assert oom == ("oom", "rank 1 of 2, no result: -9 4242 evidence")
    assert group_failure({0: victim}, 2, "")[1] == "rank 1 of 2 ended without a result"
    # on a busy machine the victim's exit can reach torchrun first: the silent rank is among the others listed
    late = TORCHRUN_TAIL.replace("rank      : 1 (local_rank: 1)", "rank      : 0 (local_rank: 0)")
    late = "Failures:\n[1]:\n  rank      : 1 (local_rank: 1)\n  exitcode  : -9 (pid: 4242)\n" + late.replace(
        "exitcode  : -9 (pid: 4242)", "exitcode  : 1 (pid: 4241)")
    assert root_cause(late)[0] == 0
    assert group_failure({0: victim}, 2, late) == ("failed", "rank 1 of 2, no result: killed by SIGKILL")
    assert group_failure({0: victim, 1: WorkerResult(status="ok")}, 2, "")[1].startswith("rank 0 of 2: Collective")
    # a rank stopped while busy outside any collective is the one the others' collectives waited for
    busy = WorkerResult(status="failed", error="stopped by torchrun (SIGTERM) outside any collective", victim=True,
                        outside=True, at=3.0)
    assert group_failure({0: victim, 1: busy}, 2, "") == (
        "failed", "rank 1 of 2: stopped by torchrun (SIGTERM) outside any collective "
                  "(rank 0: CollectiveError: agree collective failed)")
    assert group_failure({0: own, 1: busy}, 2, "")[1].startswith("rank 0 of 2: OutOfMemoryError")


def test_torchrun_command_single_node_and_static_rendezvous():
    single = command(2, ["job.json", "result.json"])
    assert single[1:3] == ["-m", "harness.parallel.launcher"] and "--standalone" in single
    assert single[single.index("--nproc-per-node") + 1] == "2"
    assert single[-4:] == ["-m", "harness.worker", "job.json", "result.json"]
    multi = command(8, ["j", "r"], Rendezvous(nnodes=2, node_rank=1, endpoint="node0:29500"))
    assert "--standalone" not in multi
    flags = dict(zip(multi[3:-4:2], multi[4:-4:2]))
    assert flags["--nnodes"] == "2" and flags["--node-rank"] == "1"
    assert flags["--master-addr"] == "node0" and flags["--master-port"] == "29500"
    with pytest.raises(ValueError, match="rdzv-endpoint"):
        Rendezvous(nnodes=2)
    with pytest.raises(ValueError, match="node-rank"):
        Rendezvous(nnodes=2, node_rank=2, endpoint="node0:29500")
    with pytest.raises(ValueError, match="HOST:PORT"):
        Rendezvous(nnodes=2, endpoint="node0")
