"""Run one (case, workload) in a worker subprocess and turn whatever happens to it into a result.

The worker writes its result to a file; when there is none, the exit code, the signal and the
out-of-memory evidence (`oom.py`) say why: a crash, an out-of-memory kill or a timeout becomes a
status and a one-line reason, never a lost run.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from harness import forkserver, oom
from harness.config import Case
from harness.contracts import RESULT_VERSION, Calibration, WorkerJob, WorkerResult, read_versioned
from harness.parallel import launcher
from harness.parallel.launcher import Rendezvous

JOB_PREFIX = "harness-job-"


@dataclass(frozen=True)
class Job:
    case: Case
    workload: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.case.id, self.workload)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def clean_stale_job_folders(tmp: Path | None = None, max_age_s: float = 86400) -> list[Path]:
    """Remove this user's job folders whose runner is gone: a runner killed with SIGKILL cannot clean
    up after itself. The folder name carries the runner's pid; a name without one (older versions)
    is removed once it is a day old."""
    removed = []
    for path in Path(tmp or tempfile.gettempdir()).glob(JOB_PREFIX + "*"):
        try:
            info = path.stat()
        except OSError:
            continue
        if info.st_uid != os.getuid() or not path.is_dir():
            continue
        pid, sep, _ = path.name[len(JOB_PREFIX):].partition("-")
        if sep and pid.isdigit():
            if pid_alive(int(pid)):
                continue
        elif time.time() - info.st_mtime < max_age_s:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


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
    code: Path | None = None,
    process: int = 1,
    rendezvous: Rendezvous = Rendezvous(),
) -> WorkerResult:
    """Run one worker; always returns a result with a status, whatever happened to the worker.

    With `code`, the worker imports `harness` from that source tree (another commit's worktree, for
    `ab --base-ref/--head-ref`) instead of this one.

    With `pair_with`, the worker times the two cases interleaved and returns both sides' samples.
    `process` numbers the worker among the case's run.processes (its own log file past the first).
    A case with `parallel.nproc` > 1 runs as a group of ranks under torchrun (`harness.parallel.launcher`),
    the whole group being one of those processes; on a node other than node 0 (several nodes) an ok
    group returns a result marked `elsewhere`: its row is stored by node 0's runner, which holds rank 0.
    """
    logs = run_dir / "logs"
    logs.mkdir(exist_ok=True)
    suffix = (f"-interleaved-{pair_with.id}" if pair_with else "") + (f"-p{process}" if process > 1 else "")
    log_path = logs / f"{job.case.id}-{job.workload}{suffix}.log"
    payload = WorkerJob(case=job.case, workload=job.workload, context=context or Calibration(), pair_with=pair_with,
                        process=process, run_dir=str(run_dir.resolve()))
    with tempfile.TemporaryDirectory(prefix=f"{JOB_PREFIX}{os.getpid()}-") as tmp:
        job_path, result_path = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job_path.write_text(payload.model_dump_json())
        group = job.case.parallel.nproc > 1 and pair_with is None
        worker_args = [str(job_path), str(result_path)]
        cmd = (launcher.command(job.case.parallel.nproc, worker_args, rendezvous)
               if group else [sys.executable, "-m", "harness.worker", *worker_args])
        memory_before = oom.read_counters()
        proc = (forkserver.start(worker_args, log_path) if code is None and not group and forkserver.serves(job.case)
                else _start(cmd, log_path, code))
        try:
            returncode = proc.wait(timeout=job.case.run.timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            return WorkerResult(status="timeout",
                                error=f"no result after the {job.case.run.timeout_s:g} s timeout (run.timeout_s)")
        except BaseException:
            proc.kill()
            raise
        if echo_logs:
            sys.stderr.write(log_path.read_text(errors="replace"))
        if result_path.exists():
            return read_versioned(WorkerResult, json.loads(result_path.read_text()), RESULT_VERSION, str(result_path))
        if group:
            return _group_result(job, result_path, log_path, rendezvous, memory_before)
        if returncode < 0:
            status, reason = oom.explain_signal(returncode, proc.pid, memory_before, oom.read_counters())
        else:
            status, reason = "failed", f"worker exited with code {returncode} and no result"
        tail = _last_line(log_path)
        return WorkerResult(status=status, error=f"{reason}: {tail}" if tail else reason)


def _group_result(job: Job, result_path: Path, log_path: Path, rendezvous: Rendezvous,
                  memory_before: oom.Counters) -> WorkerResult:
    ranks = launcher.rank_results(result_path)
    local = job.case.parallel.nproc
    if rendezvous.node_rank > 0 and len(ranks) == local and all(r.status == "ok" for r in ranks.values()):
        return WorkerResult(status="ok", elsewhere=True)

    def explain(returncode: int, pid: int) -> tuple[str, str]:
        return oom.explain_signal(returncode, pid, memory_before, oom.read_counters())

    world = local * rendezvous.nnodes
    status, reason = launcher.group_failure(ranks, world, log_path.read_text(errors="replace"), explain)
    return WorkerResult(status=status, error=reason)


class _Started:
    """A worker or torchrun group in a fresh interpreter, in its own session."""

    def __init__(self, popen: subprocess.Popen):
        self._popen = popen
        self.pid = popen.pid

    def wait(self, timeout: float | None = None) -> int:
        return self._popen.wait(timeout=timeout)

    def kill(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._popen.wait()


def _start(cmd: list[str], log_path: Path, code: Path | None) -> _Started:
    env = None
    if code is not None:  # and run there: `python -m` puts the working directory first on sys.path
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(code), os.environ.get("PYTHONPATH"))))}
    with open(log_path, "w") as log:
        return _Started(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                         env=env, cwd=code))
