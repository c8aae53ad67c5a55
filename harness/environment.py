"""The environment fingerprint of a run: enough to tell whether two runs may be compared."""
from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import harness
from harness.metrics import nvml

ENV_VARS = (
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "CUDA_LAUNCH_BLOCKING",
    "PYTORCH_CUDA_ALLOC_CONF", "TORCH_NUM_THREADS", "NVIDIA_TF32_OVERRIDE",
)

# The keys that must agree before two runs' numbers are compared (see compare and merge).
COMPARABLE_KEYS = ("device_name", "device_count", "cpu_model", "torch", "cuda", "threads")


def git_commit(cwd: Path | None = None) -> str | None:
    cwd = cwd or Path(harness.__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fingerprint() -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    # NVML, not torch, names the board: torch would create a CUDA context in the runner, holding
    # memory on GPU 0 and keeping it from idling while idle power is measured
    board = nvml.device_info(0) if cuda else {}
    info: dict[str, Any] = {
        "harness_version": harness.__version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "device_name": (board.get("gpu_name") or "unknown CUDA device") if cuda else "cpu",
        "device_count": torch.cuda.device_count() if cuda else 0,
        "driver": board.get("nvidia_driver"),
        "gpu_power_limit_w": board.get("gpu_power_limit_w"),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "env": {k: os.environ[k] for k in ENV_VARS if k in os.environ},
    }
    return info


def worker_threads(cases: Any) -> int | list[int]:
    """The intra-op thread count(s) the run's workers use (run.threads, else torch's default here):
    the fingerprint's `threads`, since the runner's own count says nothing about the measurements."""
    import torch

    used = sorted({c.run.threads or torch.get_num_threads() for c in cases})
    return used[0] if len(used) == 1 else used


def comparable(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The fingerprint keys on which two runs differ (empty: safe to compare)."""
    return [k for k in COMPARABLE_KEYS if a.get(k) != b.get(k)]
