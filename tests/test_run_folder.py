"""The runner with careless use: one runner per folder, unusable --out paths, early Ctrl-C, a full disk,
killed workers classified by evidence, stale temp folders; every refusal is one line and exit 2."""
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import oom
from harness.cli import main
from harness.launch import JOB_PREFIX, clean_stale_job_folders
from harness.store import RunFolderError, RunStore

pytestmark = pytest.mark.slow

TINY = """
name: tiny
model: {vocab_size: 32, d_model: 16, n_layers: 1, n_heads: 2, d_ff: 32, seq_len: 8}
moe: {num_experts: 2, top_k: 1, impl: loop}
run: {batch_size: 1, warmup: 1, repeats: 1, timeout_s: 60, device: cpu, measure_energy: false, processes: 1}
baselines: []
"""
SLOW = TINY + 'workloads: ["tests.faults:slow"]\nsweep: {grid: {moe.top_k: [1, 2]}}\n'


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def wait_for_rows(store: RunStore, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while len(store.rows()) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "runner made no progress"
        time.sleep(0.2)


def test_a_second_runner_on_a_folder_in_use_is_refused(tmp_path, write_suite, capsys):
    suite, out = write_suite(SLOW), tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "harness", "run", str(suite), "--out", str(out), "--no-report", "--quiet"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    store = RunStore(out)
    try:
        wait_for_rows(store, 1, first)
        assert main(["run", str(suite), "--out", str(out), "--no-report", "--quiet"]) == 2
        assert f"is in use by pid {first.pid} on " in one_line_error(capsys)
        assert main(["run", "--resume", str(out), "--no-report", "--quiet"]) == 2
        assert f"pid {first.pid}" in one_line_error(capsys)
        assert main(["merge", str(out), "--out", str(out)]) == 2
        one_line_error(capsys)
        _, err = first.communicate(timeout=180)
    finally:
        first.kill()
    assert first.returncode == 0, err  # the refused runners did not disturb it
    assert len(store.rows()) == 2 and len(store.journal.read_text().splitlines()) == 2
    assert not (out / ".lock").exists()


@pytest.mark.parametrize("make_out, expected", [
    (lambda tmp: (tmp / "file").write_text("x") and tmp / "file", "is not a folder"),
    (lambda tmp: tmp / ("x" * 300), "File name too long"),
    (lambda tmp: Path("/proc/hostile-run"), "/proc/hostile-run"),
])
def test_unusable_out_is_one_line(tmp_path, write_suite, capsys, make_out, expected):
    out = make_out(tmp_path)
    assert main(["run", str(write_suite(TINY)), "--out", str(out), "--no-report", "--quiet"]) == 2
    assert expected in one_line_error(capsys)


def _loaded(pid: int, library: str) -> bool:
    try:
        return library in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def test_ctrl_c_in_the_first_seconds_has_no_traceback(tmp_path, write_suite):
    """From the moment the command's own code runs (pydantic is its first compiled import; before that
    is the interpreter's start-up, which Python itself reports), through torch's import and set-up."""
    suite = write_suite(TINY)
    for delay in (0.0, 0.3, 1.0, 2.0):
        out = tmp_path / f"run-{delay}"
        proc = subprocess.Popen([sys.executable, "-m", "harness", "run", str(suite), "--out", str(out), "--no-report"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        while not _loaded(proc.pid, "pydantic_core") and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode in (130, 0), err  # 0: it finished first
        assert "Traceback" not in err, err
        assert not (out / ".lock").exists()


def test_a_full_disk_stops_the_run_with_one_line(tmp_path, write_suite, capsys, monkeypatch):
    def full(self, *args, **kwargs):
        raise RunFolderError(f"{self.meta_path}: cannot write ({os.strerror(errno.ENOSPC)}); ...")

    monkeypatch.setattr(RunStore, "write_meta", full)
    out = tmp_path / "run"
    assert main(["run", str(write_suite(TINY + "workloads: [forward]\n")), "--out", str(out), "--no-report", "--quiet"]) == 2
    assert "No space left on device" in one_line_error(capsys)
    assert not (out / ".lock").exists() and not list(out.glob(".*.tmp"))


def test_killed_workers_are_classified_by_evidence(tmp_path, write_suite, monkeypatch):
    """cgroup v1 host (fake tree): a kill that raises oom_kill is 'oom'; one that does not is 'failed'."""
    folder = tmp_path / "cg" / "memory" / "job"
    folder.mkdir(parents=True)
    control = folder / "memory.oom_control"
    control.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
    (folder / "memory.failcnt").write_text("0\n")
    (tmp_path / "cgroup").write_text("4:memory:/job\n0::/\n")
    monkeypatch.setattr(oom, "SOURCES", oom.Sources(tmp_path / "cg", tmp_path / "cgroup", tmp_path / "no-kmsg"))
    monkeypatch.setenv("HARNESS_FAKE_OOM_CONTROL", str(control))
    suite = write_suite(TINY + 'workloads: ["tests.faults:oom_killed", "tests.faults:killed"]\n')
    assert main(["run", str(suite), "--out", str(tmp_path / "run"), "--no-report", "--quiet"]) == 1
    rows = {row["workload"]: row for row in RunStore(tmp_path / "run").rows()}
    assert rows["tests.faults:oom_killed"]["status"] == "oom" and "oom_kill rose" in rows["tests.faults:oom_killed"]["error"]
    assert rows["tests.faults:killed"]["status"] == "failed"
    assert "not by the out-of-memory killer" in rows["tests.faults:killed"]["error"]


def test_stale_job_folders_are_cleaned(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    names = {
        "dead": f"{JOB_PREFIX}{dead.pid}-abc", "alive": f"{JOB_PREFIX}{os.getpid()}-def",
        "old": f"{JOB_PREFIX}k2j3h4", "recent": f"{JOB_PREFIX}x8y9z0",
    }
    for name in names.values():
        (tmp_path / name).mkdir()
        (tmp_path / name / "job.json").write_text("{}")
    old = time.time() - 2 * 86400
    os.utime(tmp_path / names["old"], (old, old))
    removed = {p.name for p in clean_stale_job_folders(tmp_path)}
    assert removed == {names["dead"], names["old"]}
    assert {p.name for p in tmp_path.iterdir()} == {names["alive"], names["recent"]}


def test_min_time_cap_is_recorded_in_the_row(tmp_path, write_suite):
    suite = write_suite(TINY.replace("repeats: 1,", "repeats: 1, min_time_s: 3600,") + 'workloads: ["tests.faults:noop"]\n')
    main(["run", str(suite), "--out", str(tmp_path / "run"), "--no-report", "--quiet"])
    (row,) = RunStore(tmp_path / "run").rows()
    assert row["status"] == "ok" and row["repeats"] == 1000 and row["min_time_capped"] is True
    assert json.loads((tmp_path / "run" / "run.json").read_text())["finished"]
