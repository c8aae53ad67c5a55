"""End to end: real worker subprocesses, failures isolated, nothing lost on kill, resume, shards, merge."""
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest

from harness.cli import main
from harness.merge import merge
from harness.results import COLUMNS
from harness.runner import jobs_for
from harness.store import RunStore
from harness.suite import SuiteError, build_suite, load_suite
from harness.sweep import expand
from tests.conftest import TINY_SUITE

pytestmark = pytest.mark.slow

REQUIRED = [
    "case_id", "kind", "num_experts", "top_k", "capacity_factor", "matched_to", "params_total", "params_active",
    "flops_per_token", "flop_match_error", "workload", "batch_size", "seq_len", "dtype", "device", "tokens_per_s",
    "latency_ms_median", "latency_ms_p90", "peak_memory_bytes", "status", "error",
]

# timeout_s: long enough for a worker to import torch on a loaded 2-core machine (6+ s measured at load 7),
# short enough for the sleeping workload to reach it
FAULTY = """
name: faulty
model: {vocab_size: 32, d_model: 16, n_layers: 1, n_heads: 2, d_ff: 32, seq_len: 8}
moe: {num_experts: 2, top_k: 1, impl: loop}
run: {batch_size: 1, warmup: 1, repeats: 1, timeout_s: 30, memory_limit_mb: 2500, device: cpu, measure_energy: false, processes: 1}
workloads: [forward, "tests.faults:raises", "tests.faults:allocates", "tests.faults:sleeps", "tests.faults:segfaults"]
baselines: []
"""

SLOW = """
name: slow
model: {vocab_size: 32, d_model: 16, n_layers: 1, n_heads: 2, d_ff: 32, seq_len: 8}
moe: {num_experts: 4, top_k: 1, impl: loop}
run: {batch_size: 1, warmup: 1, repeats: 2, device: cpu, measure_energy: false, processes: 1}
workloads: ["tests.faults:slow"]
baselines: []
sweep: {grid: {moe.top_k: [1, 2], moe.num_experts: [2, 4]}}
"""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    suite = root / "tiny.yaml"
    suite.write_text(TINY_SUITE)
    out = root / "run"
    code = main(["run", str(suite), "--out", str(out), "--no-report", "--quiet"])
    return code, out


def test_end_to_end_files_and_columns(tiny_run):
    code, out = tiny_run
    assert code == 0
    for name in ("results.csv", "results.parquet", "run.json", "routing_layers.csv", "steps.csv"):
        assert (out / name).exists(), name
    frame = pd.read_csv(out / "results.csv")
    parquet = pd.read_parquet(out / "results.parquet")
    assert len(frame) == len(parquet) == 8  # (2 moe + 2 dense) x 2 workloads
    for column in REQUIRED:
        assert column in frame, column
    assert set(frame["status"]) == {"ok"}
    assert (frame["tokens_per_s"] > 0).all() and (frame["peak_memory_bytes"] > 0).all()
    assert (frame["latency_ms_p90"] >= frame["latency_ms_median"]).all()
    moe = frame[frame["kind"] == "moe"]
    dense = frame[frame["kind"] == "dense"].set_index(["case_id", "workload"])
    for _, row in moe.iterrows():
        base = dense.loc[(row["matched_to"], row["workload"])]
        assert row["case_id"] in base["matched_to"].split()
        assert abs(base["flops_per_token"] - row["flops_per_token"]) / row["flops_per_token"] < 0.01
        assert row["flop_match_error"] < 0.01
    steps = pd.read_csv(out / "steps.csv")
    assert set(steps["workload"]) == {"train_step"}
    journal = {(r["case_id"], r["workload"]): r for r in RunStore(out).rows()}
    for (case_id, _), log in steps.groupby(["case_id", "workload"]):
        row = frame[(frame["case_id"] == case_id) & (frame["workload"] == "train_step")].iloc[0]
        # the step log is the first process's (later processes re-time the same seeded steps)
        first = journal[(case_id, "train_step")]["process_rows"][0]
        assert row["processes"] == len(journal[(case_id, "train_step")]["process_rows"]) == 2
        assert list(log["step"]) == list(range(len(log))) and len(log) >= 1 + first["warmup_iterations"] + first["repeats"]
        assert log["loss"].iloc[0] == pytest.approx(row["train_loss"])
        if row["kind"] == "moe":
            assert log["aux_loss"].notna().all() and log["aux_loss"].iloc[0] == pytest.approx(row["aux_loss"])
        else:
            assert "aux_loss" not in log or log["aux_loss"].isna().all()
    meta = json.loads((out / "run.json").read_text())
    for key in ("python", "torch", "device_name", "cpu_model", "threads", "git_commit"):
        assert key in meta["fingerprint"]
    assert meta["started"] and meta["finished"]
    assert meta["suite"]["name"] == "tiny"


def test_every_column_is_documented(tiny_run):
    _, out = tiny_run
    frame = pd.read_csv(out / "results.csv")
    undocumented = [c for c in frame.columns if c not in COLUMNS]
    assert not undocumented
    readme = Path("README.md").read_text()
    missing = [c for c in frame.columns if f"`{c}`" not in readme]
    assert not missing, f"columns missing from README: {missing}"


def test_failures_become_rows_and_the_run_goes_on(tmp_path, write_suite):
    out = tmp_path / "run"
    code = main(["run", str(write_suite(FAULTY)), "--out", str(out), "--no-report", "--quiet"])
    assert code == 1
    frame = pd.read_csv(out / "results.csv").set_index("workload")
    assert frame.loc["forward", "status"] == "ok"
    assert frame.loc["tests.faults:raises", "status"] == "failed"
    assert "deliberate failure" in frame.loc["tests.faults:raises", "error"]
    assert frame.loc["tests.faults:allocates", "status"] == "oom"
    assert frame.loc["tests.faults:sleeps", "status"] == "timeout"
    assert "timeout" in frame.loc["tests.faults:sleeps", "error"]
    assert frame.loc["tests.faults:segfaults", "status"] == "failed"
    assert "SIGSEGV" in frame.loc["tests.faults:segfaults", "error"]
    for error in frame["error"].dropna():
        assert "\n" not in error
    # --allow-failures turns the exit code green; --resume --rerun-failed retries only the failures
    code = main(["run", "--resume", str(out), "--rerun-failed", "--allow-failures", "--no-report", "--quiet"])
    assert code == 0
    assert len(RunStore(out).rows()) == 5


def _workers_with(mark: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if f"HARNESS_TEST_MARK={mark}".encode() in (proc / "environ").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _start_runner(suite: Path, out: Path, mark: str) -> subprocess.Popen:
    env = {**os.environ, "HARNESS_TEST_MARK": mark}
    cmd = [sys.executable, "-m", "harness", "run", str(suite), "--out", str(out), "--no-report"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_rows(store: RunStore, n: int, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while len(store.rows()) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "runner made no progress"
        time.sleep(0.2)


def test_sigkill_then_resume_loses_nothing_and_duplicates_nothing(tmp_path, write_suite):
    out, mark = tmp_path / "run", uuid.uuid4().hex
    proc = _start_runner(write_suite(SLOW), out, mark)
    store = RunStore(out)
    _wait_for_rows(store, 1, proc)
    before = {(r["case_id"], r["workload"]): r for r in store.rows()}
    proc.kill()
    proc.wait()
    # the worker in flight dies with its runner: at once once it has asked for PR_SET_PDEATHSIG, or when it
    # reaches that request and sees its parent gone (a worker still starting Python on a busy machine)
    deadline = time.monotonic() + 20
    while _workers_with(mark) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _workers_with(mark) == []
    # the journal is the record; the table is replaced atomically after it, so it may lag by the
    # row whose rebuild the kill interrupted, but it is never half-written
    if (out / "results.csv").exists():
        table = pd.read_csv(out / "results.csv")
        assert set(zip(table["case_id"], table["workload"])) <= set(before)
    code = main(["run", "--resume", str(out), "--no-report", "--quiet"])
    assert code == 0
    rows = store.rows()
    keys = [(r["case_id"], r["workload"]) for r in rows]
    assert len(keys) == len(set(keys)) == 4
    lines = [json.loads(line) for line in store.journal.read_text().splitlines() if line.strip()]
    assert len(lines) == 4  # resumed cases were not measured twice
    for key, row in before.items():
        assert next(r for r in rows if (r["case_id"], r["workload"]) == key) == row


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_cleanly(tmp_path, write_suite, sig):
    out, mark = tmp_path / "run", uuid.uuid4().hex
    proc = _start_runner(write_suite(SLOW), out, mark)
    store = RunStore(out)
    _wait_for_rows(store, 1, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "--resume" in err and "Traceback" not in err
    assert _workers_with(mark) == []
    meta = json.loads((out / "run.json").read_text())
    assert meta["interrupted"] == sig.name
    assert 1 <= len(pd.read_csv(out / "results.csv")) < 4


def test_shards_partition_the_cases():
    suite = load_suite("suites/smoke.yaml")
    expansion = expand(suite)
    full = {job.key for job in jobs_for(suite, expansion, None)}
    parts = [{job.key for job in jobs_for(suite, expansion, (i, 3))} for i in (1, 2, 3)]
    assert set().union(*parts) == full
    assert sum(len(p) for p in parts) == len(full)
    assert {job.key for job in jobs_for(suite, expansion, (1, 1))} == full


def _fake_run(root: Path, suite_name: str, rows: list[dict], shard=None, finished="2026-01-01T00:01:00") -> Path:
    store = RunStore(root)
    store.write_meta({
        "shard": shard,
        "suite": build_suite({"name": suite_name}).model_dump(mode="json"),
        "fingerprint": {"device_name": "cpu", "torch": "x", "cpu_model": "y", "threads": 2},
        "started": "2026-01-01T00:00:00", "finished": finished,
    })
    for row in rows:
        store.append(row)
    return root


def test_merge_unions_shards_and_refuses_other_suites(tmp_path):
    a = _fake_run(tmp_path / "a", "s", [{"case_id": "1", "workload": "forward", "status": "ok", "kind": "moe"}])
    b = _fake_run(tmp_path / "b", "s", [{"case_id": "2", "workload": "forward", "status": "ok", "kind": "dense"}])
    merged = merge([a, b], tmp_path / "m")
    assert sorted(r["case_id"] for r in merged.rows()) == ["1", "2"]
    assert json.loads((tmp_path / "m" / "run.json").read_text())["merged_from"] == [str(a), str(b)]
    other = _fake_run(tmp_path / "c", "other", [])
    with pytest.raises(SuiteError, match="different suite"):
        merge([a, other], tmp_path / "m2")


def test_same_seed_reproduces_params_flops_routing_and_loss():
    from harness.worker import measure

    suite = build_suite({
        "name": "r", "model": {"vocab_size": 64, "d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64, "seq_len": 16},
        "moe": {"num_experts": 4, "top_k": 2, "capacity_factor": 1.0, "impl": "grouped"},
        "run": {"batch_size": 2, "warmup": 1, "repeats": 2, "device": "cpu", "measure_energy": False},
    })
    case = expand(suite).cases[0]
    keys = ("train_loss", "measured_flops_per_token", "dropped_fraction", "load_cv", "router_entropy", "aux_loss")
    runs = [measure(case, "train_step")["row"] for _ in range(2)]
    for key in keys:
        assert runs[0][key] == runs[1][key], key
    other = Case_with_seed(case, 1)
    assert measure(other, "train_step")["row"]["train_loss"] != runs[0]["train_loss"]


def Case_with_seed(case, seed):
    from harness.config import Case

    return Case.model_validate({**case.model_dump(), "run": {**case.run.model_dump(), "seed": seed}})


def test_interleaved_ratio_has_its_own_ci(tmp_path, write_suite):
    suite = write_suite("""
        name: inter
        model: {vocab_size: 32, d_model: 16, n_layers: 1, n_heads: 2, d_ff: 32, seq_len: 8}
        moe: {num_experts: 2, top_k: 1, impl: loop}
        run: {batch_size: 1, warmup: 1, repeats: 6, device: cpu, measure_energy: false}
        workloads: [forward]
        interleave: true
        """)
    out = tmp_path / "run"
    assert main(["run", str(suite), "--out", str(out), "--no-report", "--quiet"]) == 0
    frame = pd.read_csv(out / "results.csv")
    moe = frame[frame["kind"] == "moe"].iloc[0]
    assert moe["throughput_ratio_ci_method"] == "interleaved"
    assert moe["throughput_ratio_ci_low"] <= moe["interleaved_throughput_ratio"] <= moe["throughput_ratio_ci_high"]
    assert (out / "logs" / f"{moe['case_id']}-forward-interleaved-{moe['matched_to']}.log").exists()
    assert "seed" in frame and (frame["seed"] == 0).all()


@pytest.mark.parametrize("process", [1, 2, 3, 4])
def test_interleaved_order_swaps_between_processes_and_samples_keep_their_side(process, monkeypatch):
    """Even processes build and step the baseline first; samples_a is the MoE case's either way."""
    from types import SimpleNamespace

    import harness.metrics.timing
    import harness.worker as worker

    suite = build_suite({
        "name": "t", "model": {"vocab_size": 32, "d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32, "seq_len": 8},
        "moe": {"num_experts": 2, "top_k": 1}, "run": {"device": "cpu", "measure_energy": False}, "workloads": ["forward"],
    })
    expansion = expand(suite)
    moe = next(c for c in expansion.cases if c.kind == "moe")
    dense = next(c for c in expansion.cases if c.kind == "dense")
    built = []

    def prepare(case, workload_name, device):
        built.append(case.kind)
        return None, SimpleNamespace(step=case.kind)

    monkeypatch.setattr(worker, "prepare", prepare)
    monkeypatch.setattr(harness.metrics.timing, "time_pair", lambda first, second, *a, **k: ([first], [second]))
    out = worker.measure_interleaved(moe, dense, "forward", process)
    assert built == (["dense", "moe"] if process % 2 == 0 else ["moe", "dense"])
    assert (out["samples_a"], out["samples_b"]) == (["moe"], ["dense"])


def test_readme_column_table_is_current():
    from harness.results import markdown_table

    assert markdown_table() in Path("README.md").read_text()


def test_run_threads_sets_worker_threads():
    from harness.worker import measure

    suite = build_suite({
        "name": "t", "model": {"vocab_size": 32, "d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32, "seq_len": 8},
        "moe": {"num_experts": 2, "top_k": 1}, "run": {"batch_size": 1, "warmup": 1, "repeats": 1, "device": "cpu",
                                                      "measure_energy": False, "threads": 1},
    })
    import torch

    before = torch.get_num_threads()
    try:
        assert measure(expand(suite).cases[0], "forward")["row"]["torch_threads"] == 1
    finally:
        torch.set_num_threads(before)


def test_resume_refuses_other_machines_and_conflicting_flags(tmp_path):
    run = _fake_run(tmp_path / "r", "s", [{"case_id": "1", "workload": "forward", "status": "ok", "kind": "moe"}])
    with pytest.raises(SuiteError, match="differs from the run"):
        main_raising(["run", "--resume", str(run)])
    with pytest.raises(SuiteError, match="drop --out and --shard"):
        main_raising(["run", "--resume", str(run), "--shard", "1/2"])


def main_raising(argv):
    """Run the `run` command without the CLI's error-to-exit-code mapping, to see the SuiteError."""
    from harness.cli import build_parser
    from harness.runner import main as run_main

    return run_main(build_parser().parse_args(argv))


def test_merge_refuses_missing_or_unfinished_shards(tmp_path):
    row = {"case_id": "1", "workload": "forward", "status": "ok", "kind": "moe"}
    one = _fake_run(tmp_path / "1", "s", [row], shard=[1, 3])
    two = _fake_run(tmp_path / "2", "s", [{**row, "case_id": "2"}], shard=[2, 3], finished=None)
    with pytest.raises(SuiteError, match=r"shard\(s\) 3/3 missing.*shard 2/3 did not finish"):
        merge([one, two], tmp_path / "m")
    merged = merge([one, two], tmp_path / "m", allow_partial=True)
    assert json.loads((merged.root / "run.json").read_text())["incomplete"]
    assert len(merged.rows()) == 2


def test_summary_pairs_by_the_rule_the_suite_used():
    import tempfile

    from harness.analysis import load
    from harness.summary import ratios
    from tests.report_fixtures import make_run

    with tempfile.TemporaryDirectory() as tmp:
        df = load(make_run(Path(tmp) / "r"))
    table = ratios(df)
    moe = df[df["kind"] == "moe"]
    assert len(table) == len(moe) and set(table["baseline"].dropna()) == {"flop_matched"}
    assert ratios(df[df["kind"] == "dense"]).empty  # a dense-only shard prints nothing, and does not crash
