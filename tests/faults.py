"""Workloads that misbehave on purpose, to test that the runner isolates them (`tests.faults:NAME`)."""
import os
import signal
import time

import torch

from harness.workloads import Workload


def _make(step):
    def make(model, case, device):
        return Workload(step, tokens_per_step=1, training=False)

    return make


def _raise():
    raise ValueError("deliberate failure for testing")


def _allocate():
    hoard = []
    while True:
        hoard.append(torch.ones(64 * 2**20, dtype=torch.uint8))


def _sleep():
    time.sleep(3600)


def _segfault():
    os.kill(os.getpid(), signal.SIGSEGV)


raises = _make(_raise)
allocates = _make(_allocate)
sleeps = _make(_sleep)
segfaults = _make(_segfault)
slow = _make(lambda: time.sleep(0.3))


def _killed():
    """Killed by SIGKILL, as a person or a supervisor would."""
    os.kill(os.getpid(), signal.SIGKILL)


def _oom_killed():
    """Killed as the OOM killer would: the fake cgroup file named by HARNESS_FAKE_OOM_CONTROL counts it."""
    path = os.environ["HARNESS_FAKE_OOM_CONTROL"]
    lines = open(path).read().splitlines()
    with open(path, "w") as f:
        f.write("\n".join(f"oom_kill {int(line.split()[1]) + 1}" if line.startswith("oom_kill ") else line for line in lines) + "\n")
    os.kill(os.getpid(), signal.SIGKILL)


killed = _make(_killed)
oom_killed = _make(_oom_killed)
noop = _make(lambda: None)


def _kills_rank1(model, case, device):
    """Rank 1 of a multi-rank case dies by SIGKILL at its third step (the probe's is the first); the
    ranks meet between steps, so rank 0 is then waiting on it."""
    calls = []

    def step():
        calls.append(1)
        if os.environ.get("RANK") == "1" and len(calls) == 3:
            os.kill(os.getpid(), signal.SIGKILL)

    return Workload(step, tokens_per_step=1, training=False)


kills_rank1 = _kills_rank1


def _hangs_rank1(model, case, device):
    """Rank 1 of a multi-rank case stops making progress at its third step, outside any collective:
    rank 0's next collective times out after parallel.timeout_s."""
    calls = []

    def step():
        calls.append(1)
        if os.environ.get("RANK") == "1" and len(calls) == 3:
            time.sleep(3600)

    return Workload(step, tokens_per_step=1, training=False)


hangs_rank1 = _hangs_rank1


def _sleeps_and_tells(model, case, device):
    """Writes its pid where the test can find it (a file named by the case's seed), then sleeps."""
    import tempfile

    with open(os.path.join(tempfile.gettempdir(), f"harness-sleeper-{case.run.seed}"), "w") as f:
        f.write(str(os.getpid()))
    return Workload(_sleep, tokens_per_step=1, training=False)


def _reports_environment(model, case, device):
    """Fails with the value of HARNESS_TEST_PROBE in the message: which environment the worker ran in."""
    raise ValueError(f"HARNESS_TEST_PROBE={os.environ.get('HARNESS_TEST_PROBE')}")


sleeps_and_tells = _sleeps_and_tells
reports_environment = _reports_environment
