"""Workers forked from the preloaded forkserver behave as workers started in a fresh interpreter."""
import random
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import pandas as pd
import pytest
import yaml

from harness import forkserver
from harness.launch import Job, pid_alive, run_job
from harness.suite import build_suite
from harness.sweep import expand

pytestmark = pytest.mark.slow

TINY = """
name: t
model: {vocab_size: 32, d_model: 16, n_layers: 1, n_heads: 2, d_ff: 32, seq_len: 8}
moe: {num_experts: 4, top_k: 1, capacity_factor: 1.0}
run: {batch_size: 2, warmup: 1, repeats: 2, device: cpu, measure_energy: false, threads: 1, processes: 1}
workloads: [train_step]
baselines: []
"""


def tiny_case(**run):
    suite = build_suite({
        "name": "t", "model": {"vocab_size": 32, "d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32, "seq_len": 8},
        "moe": {"num_experts": 4, "top_k": 1, "capacity_factor": 1.0},
        "run": {"batch_size": 2, "warmup": 1, "repeats": 2, "device": "cpu", "measure_energy": False, "threads": 1,
                **run},
        "baselines": [],
    })
    return expand(suite).cases[0]


def test_a_forked_worker_measures_what_a_fresh_interpreter_does(tmp_path, monkeypatch):
    """A runner of its own (this test process's forkserver may have started under another environment,
    which sends its workers to a fresh interpreter), against a worker started fresh here."""
    suite = tmp_path / "tiny.yaml"
    suite.write_text(TINY)
    subprocess.run([sys.executable, "-m", "harness", "run", str(suite), "--out", str(tmp_path / "run"), "--no-report",
                    "--quiet"], check=True, capture_output=True)
    forked = pd.read_csv(tmp_path / "run" / "results.csv").iloc[0]
    monkeypatch.setattr(forkserver, "serves", lambda case: False)
    case = expand(build_suite(yaml.safe_load(TINY))).cases[0]
    fresh = run_job(Job(case, "train_step"), tmp_path)
    assert forked["status"] == fresh.status == "ok"
    assert (forked["worker_start"], fresh.row["worker_start"]) == ("forkserver", "exec")
    for column in ("train_loss", "measured_flops_per_token", "dropped_fraction", "load_cv", "torch_threads",
                   "tokens_per_step"):
        assert forked[column] == pytest.approx(fresh.row[column], rel=1e-12, abs=0), column


def test_output_goes_to_the_log_and_a_failure_to_a_row(tmp_path):
    result = run_job(Job(tiny_case(), "tests.faults:raises"), tmp_path)
    assert result.status == "failed" and "deliberate failure" in result.error
    log = next((tmp_path / "logs").glob("*tests.faults:raises*.log")).read_text()
    assert "Traceback" in log and "deliberate failure for testing" in log


def test_a_variable_set_after_the_forkserver_started_reaches_the_worker(tmp_path, monkeypatch):
    run_job(Job(tiny_case(), "tests.faults:noop"), tmp_path)  # the forkserver is running from here on
    value = f"probe-{random.randrange(10**9)}"
    monkeypatch.setenv("HARNESS_TEST_PROBE", value)
    result = run_job(Job(tiny_case(), "tests.faults:reports_environment"), tmp_path)
    assert result.status == "failed" and f"HARNESS_TEST_PROBE={value}" in result.error


def test_a_timed_out_worker_and_its_session_are_killed(tmp_path):
    seed = random.randrange(10**9)
    tells = Path(tempfile.gettempdir()) / f"harness-sleeper-{seed}"
    started = time.monotonic()
    result = run_job(Job(tiny_case(seed=seed, timeout_s=8), "tests.faults:sleeps_and_tells"), tmp_path)
    assert result.status == "timeout" and time.monotonic() - started < 60
    pid = int(tells.read_text())
    tells.unlink()
    deadline = time.monotonic() + 10
    while pid_alive(pid) and not _is_zombie(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(pid) or _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


@pytest.mark.parametrize("main, rerun_free", [
    (types.SimpleNamespace(__spec__=types.SimpleNamespace(name="harness.__main__"), __file__="harness/__main__.py"), True),
    (types.SimpleNamespace(__spec__=types.SimpleNamespace(name="pytest.__main__"), __file__="pytest/__main__.py"), True),
    (types.SimpleNamespace(__spec__=types.SimpleNamespace(name="my_benchmarks"), __file__="my_benchmarks.py"), False),
    (types.SimpleNamespace(__spec__=None, __file__="/home/me/script.py"), False),
    (types.SimpleNamespace(__spec__=None), True),
])
def test_only_a_main_that_would_not_run_again_is_forked_from(main, rerun_free):
    assert forkserver.main_is_rerun_free(main) is rerun_free
