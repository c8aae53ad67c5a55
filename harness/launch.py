"""Run one (case, workload) in a worker subprocess and turn whatever happens to it into a result.

The worker writes its result to a file; when there is none, the exit code, the signal and the
cgroup's OOM-kill counter say why: a crash, an out-of-memory kill or a timeout becomes a status and a
one-line reason, never a lost run.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness.config import Case
from harness.contracts import RESULT_VERSION, Calibration, WorkerJob, WorkerResult, read_versioned

SIGNAL_NAMES = {getattr(signal, n): n for n in ("SIGKILL", "SIGSEGV", "SIGABRT", "SIGBUS", "SIGTERM", "SIGINT", "SIGILL", "SIGFPE")}
OOM_EVENTS = Path("/sys/fs/cgroup/memory.events")


@dataclass(frozen=True)
class Job:
    case: Case
    workload: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.case.id, self.workload)


def oom_kills() -> int | None:
    """The cgroup's OOM-kill counter, when this machine exposes it (cgroup v2)."""
    try:
        for line in OOM_EVENTS.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        pass
    return None


def _signal_reason(returncode: int, oom_before: int | None, oom_after: int | None) -> tuple[str, str]:
    sig = -returncode
    name = SIGNAL_NAMES.get(sig, f"signal {sig}")
    if sig != signal.SIGKILL:
        return "failed", f"worker crashed with {name}"
    if oom_before is not None and oom_after is not None:
        if oom_after > oom_before:
            return "oom", "worker killed by the OS out-of-memory killer (cgroup oom_kill rose)"
        return "failed", f"worker killed by {name} (not by the cgroup OOM killer)"
    return "oom", f"worker killed by {name}, most likely the OS out-of-memory killer (cannot confirm on this machine)"


def _last_line(log: Path) -> str:
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1].strip()[:300] if lines else ""


def run_job(
    job: Job,
    run_dir: Path,
    echo_logs: bool = False,
    context: Calibration | None = None,
    pair_with: Case | None = None,
) -> WorkerResult:
    """Run one worker; always returns a result with a status, whatever happened to the worker.

    With `pair_with`, the worker times the two cases interleaved and returns both sides' samples.
    """
    logs = run_dir / "logs"
    logs.mkdir(exist_ok=True)
    suffix = f"-interleaved-{pair_with.id}" if pair_with else ""
    log_path = logs / f"{job.case.id}-{job.workload}{suffix}.log"
    payload = WorkerJob(case=job.case, workload=job.workload, context=context or Calibration(), pair_with=pair_with)
    with tempfile.TemporaryDirectory(prefix="harness-job-") as tmp:
        job_path, result_path = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job_path.write_text(payload.model_dump_json())
        cmd = [sys.executable, "-m", "harness.worker", str(job_path), str(result_path)]
        oom_before = oom_kills()
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                returncode = proc.wait(timeout=job.case.run.timeout_s)
            except subprocess.TimeoutExpired:
                _kill(proc)
                return WorkerResult(status="timeout",
                                    error=f"no result after the {job.case.run.timeout_s:g} s timeout (run.timeout_s)")
            except BaseException:
                _kill(proc)
                raise
        if echo_logs:
            sys.stderr.write(log_path.read_text(errors="replace"))
        if result_path.exists():
            return read_versioned(WorkerResult, json.loads(result_path.read_text()), RESULT_VERSION, str(result_path))
        if returncode < 0:
            status, reason = _signal_reason(returncode, oom_before, oom_kills())
        else:
            status, reason = "failed", f"worker exited with code {returncode} and no result"
        tail = _last_line(log_path)
        return WorkerResult(status=status, error=f"{reason}: {tail}" if tail else reason)


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
