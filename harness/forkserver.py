"""Start CPU workers by forking a process that has already imported torch and the worker.

A smoke worker lives about 6 s, and importing torch and the worker is 2.6-3.3 s of it: in a suite of
48 workers that import is most of the wall time. multiprocessing's forkserver imports `PRELOAD` once
per run; every worker is then a fork of it: a fresh process with its own pid, session, log file,
timeout and exit status, whose timings, CPU time and memory peaks are its own, but which skips the
import. The worker code is the same as `python -m harness.worker`'s.

Only CPU cases are forked: a process that touched CUDA cannot be forked safely, so GPU workers and
torchrun groups still start a fresh interpreter (their import is small next to the case). A worker
whose environment differs from the one the forkserver imported under (a variable set after it
started, e.g. OMP_NUM_THREADS, which the OpenMP runtime reads when torch loads it) replaces itself
with a fresh interpreter at once, so it never runs under settings its imports did not see.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path

from harness.config import Case

PRELOAD = [
    "harness.worker",
    "harness.accounting",
    "harness.metrics.contention",
    "harness.metrics.energy",
    "harness.metrics.flops",
    "harness.metrics.memory",
    "harness.metrics.nvml",
    "harness.metrics.routing",
    "harness.metrics.stability",
    "harness.metrics.statistics",
    "harness.metrics.timing",
    "harness.metrics.utilisation",
    "harness.models.compile",
    "harness.models.impl_check",
    "harness.models.transformer",
    "harness.workloads",
]


def serves(case: Case) -> bool:
    """Whether this case's worker may be forked: one process on the CPU, from a runner whose
    `__main__` the fork would not run again."""
    if case.parallel.nproc > 1 or not main_is_rerun_free(sys.modules.get("__main__")):
        return False
    if case.run.device == "cpu":
        return True
    if case.run.device != "auto":
        return False
    import torch

    return not torch.cuda.is_available()


def main_is_rerun_free(main: object) -> bool:
    """multiprocessing imports the parent's `__main__` again in every child, as `__mp_main__`, unless
    it is a package's `__main__` (`python -m harness`, `python -m pytest`) or has no file (a notebook).
    A user's script that calls the harness without an `if __name__ == "__main__"` guard would run
    again in each worker, so such a runner starts fresh interpreters instead."""
    spec = getattr(main, "__spec__", None)
    if spec is not None:
        return spec.name == "__main__" or spec.name.endswith(".__main__")
    return getattr(main, "__file__", None) is None


class ForkedWorker:
    """A forked worker with the part of `subprocess.Popen` the launcher uses: pid, wait, kill."""

    def __init__(self, process: multiprocessing.process.BaseProcess):
        self._process = process

    @property
    def pid(self) -> int:
        return self._process.pid

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired("harness.worker", timeout)
        return self._process.exitcode

    def kill(self) -> None:
        """SIGKILL the worker's session (it and anything it started); the worker itself if it was
        killed before it could start one."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            self._process.kill()
        self._process.join()


def start(worker_args: list[str], log_path: Path) -> ForkedWorker:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    process = context.Process(target=_worker, args=(worker_args, str(log_path), dict(os.environ), os.getcwd()),
                              name="harness.worker", daemon=False)
    process.start()
    return ForkedWorker(process)


def _worker(worker_args: list[str], log_path: str, environ: dict[str, str], cwd: str) -> None:
    """The forked child: its own session, output to the log, then the worker as `python -m` runs it
    (the working directory first on sys.path)."""
    os.setsid()
    from harness.lifeline import die_with_parent

    die_with_parent()
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.chdir(cwd)
    if environ != dict(os.environ):
        os.execve(sys.executable, [sys.executable, "-m", "harness.worker", *worker_args], environ)
    sys.path.insert(0, cwd)
    from harness import worker

    sys.exit(worker.main(worker_args, start="forkserver"))
