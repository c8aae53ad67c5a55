"""A workload whose measurement the test disturbs on purpose (`tests.disturb:forward`).

`HARNESS_TEST_DISTURB` selects the disturbance; the worker inherits it from the test's environment:
- unset: a plain forward pass;
- `busy`: the MoE side starts a busy loop pinned to the worker's own core for the whole measurement
  (another job on the same core), and the worker pins itself to that core;
- `stall:PATH`: the first process of the run to create PATH sleeps inside every one of its steps, so
  its timings are tight but slow (a stalled process), and every other process runs normally.
"""
import atexit
import os
import subprocess
import sys
import time

import torch

from harness.workloads import Workload, sample_tokens

STALL_S = 0.05


def forward(model, case, device):
    tokens = sample_tokens(case, device)[:, :-1]
    mode = os.environ.get("HARNESS_TEST_DISTURB", "")
    stalled = mode.startswith("stall:") and _claim(mode.partition(":")[2])
    if mode == "busy" and case.kind == "moe":
        _busy_neighbour()
    model.eval()

    def step():
        with torch.no_grad():
            model(tokens)
        if stalled:
            time.sleep(STALL_S)

    return Workload(step, tokens_per_step=tokens.numel(), training=False)


def _claim(path: str) -> bool:
    """True in the one process that claims PATH first, on every call: a worker builds its workload more
    than once (the memory warm-up on a tiny model, then the measured case)."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        with open(path) as f:
            return f.read() == str(os.getpid())
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def _busy_neighbour() -> None:
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    loop = subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=_die_with_parent)
    os.sched_setaffinity(loop.pid, {core})
    atexit.register(lambda: (loop.kill(), loop.wait()))


def _die_with_parent() -> None:
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
