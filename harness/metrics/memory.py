"""Peak memory of one case: the CUDA caching allocator's peaks on GPU, the process's resident memory on CPU.

Raw columns: `peak_memory_bytes` is max_memory_allocated (tensors) on GPU and ru_maxrss, the worker's
lifetime peak (interpreter, torch and allocator fragmentation included), on CPU;
`peak_memory_reserved_bytes` (max_memory_reserved: what the allocator holds, the number that decides OOM)
and `nvml_memory_used_bytes` (the whole board as NVML sees it) are GPU-only.

`peak_memory_net_bytes` is what the case itself needed: the peak from just before the model is built
to the end of its first two steps (the FLOP probe's counting pass left out), net of what the process
held before. On GPU that is
max_memory_allocated over that window. On Linux it is the resident-set high-water mark VmHWM, which
writing "5" to /proc/self/clear_refs resets to the current RSS, minus that RSS (the floor: Python,
torch, and the runtime state a tiny copy of the case warmed up). While the window is open, glibc's
malloc hands every block of 64 KiB or more back to the OS when it is freed, so the high-water mark
follows live memory; left alone, its adaptive thresholds keep freed blocks in a heap that fragments
and grows step after step (measured: a 131 MiB training step reached 366 MiB of RSS after 15 steps).
Closing the window sets the thresholds where glibc's adaptation ends (32 MiB mmap, 64 MiB trim), so
the timed steps run as they would have (measured on the idle 2-core VM: step times within noise).
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import platform
import resource
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
# glibc <malloc.h>
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
WINDOW_MMAP_THRESHOLD = 64 * 1024
TIMED_MMAP_THRESHOLD = 32 * 2**20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit
TIMED_TRIM_THRESHOLD = 2 * TIMED_MMAP_THRESHOLD


def reset_peak(device: torch.device) -> None:
    """Start a new peak for `peak_memory_bytes` (GPU only: on CPU that column is the lifetime ru_maxrss)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def rss_peak_bytes() -> int:
    """ru_maxrss is KiB on Linux and bytes on macOS."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def status_bytes(field: str, status: Optional[str] = None) -> int:
    """A `VmXXX:  N kB` field of /proc/self/status, in bytes."""
    text = status if status is not None else STATUS.read_text()
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(f"{field} not in /proc/self/status")


def _glibc() -> Optional[ctypes.CDLL]:
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _set_malloc_thresholds(mmap_threshold: int, trim_threshold: int) -> bool:
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(libc.mallopt(M_TRIM_THRESHOLD, trim_threshold))


@dataclass
class NetPeak:
    """An open measurement window; `close()` returns the `peak_memory_net_*` columns."""

    device: torch.device
    floor: Optional[int]
    source: str
    peak: int = 0  # the highest peak of the window's segments that have ended

    @classmethod
    def open(cls, device: torch.device, warm_up: Optional[Callable[[], None]] = None) -> "NetPeak":
        """Start the window. `warm_up` (CPU only) runs first, so one-time runtime allocations (lazy imports,
        kernel caches) fall into the floor rather than into the case's peak."""
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            return cls(device, int(torch.cuda.memory_allocated(device)), "cuda_max_memory_allocated since the model build")
        if not sys.platform.startswith("linux"):
            return cls(device, None, f"unavailable: no resettable resident-memory peak on {sys.platform}")
        warm_note = ""
        if warm_up is not None:
            try:
                warm_up()
            except Exception as exc:  # noqa: BLE001 - a failed warm-up only makes the floor lower
                warm_note = f" (runtime warm-up failed: {type(exc).__name__})"
        gc.collect()
        exact = _set_malloc_thresholds(WINDOW_MMAP_THRESHOLD, WINDOW_MMAP_THRESHOLD)
        try:
            CLEAR_REFS.write_text("5")
        except OSError as exc:
            _set_malloc_thresholds(TIMED_MMAP_THRESHOLD, TIMED_TRIM_THRESHOLD)
            return cls(device, None, f"unavailable: cannot reset VmHWM ({exc.strerror or exc})")
        allocator = "" if exact else " (not glibc: allocator fragmentation included)"
        return cls(device, status_bytes("VmRSS"), f"vmhwm since the model build{allocator}{warm_note}")

    def _segment_peak(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device))
        return status_bytes("VmHWM")

    @contextlib.contextmanager
    def excluded(self) -> Iterator[None]:
        """Leave out what runs inside (the worker's FLOP probe: FlopCounterMode's bookkeeping is not the
        case's memory): the peak so far is kept and a new one starts afterwards."""
        if self.floor is None:
            yield
            return
        self.peak = max(self.peak, self._segment_peak())
        yield
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            CLEAR_REFS.write_text("5")

    def close(self) -> dict[str, Any]:
        if self.floor is None:
            return {"peak_memory_net_bytes": None, "peak_memory_net_source": self.source}
        peak = max(self.peak, self._segment_peak())
        if self.device.type != "cuda":
            _set_malloc_thresholds(TIMED_MMAP_THRESHOLD, TIMED_TRIM_THRESHOLD)
        return {"peak_memory_net_bytes": max(0, peak - self.floor), "peak_memory_net_source": self.source}


def nvml_memory_used(device: torch.device, lib: Any = None) -> Optional[int]:
    from harness.metrics.nvml import NvmlUnavailable, open_nvml, torch_uuid

    try:
        with open_nvml(lib) as nvml:
            return nvml.memory_used_bytes(nvml.handle(device, torch_uuid=torch_uuid(device)))
    except NvmlUnavailable:
        return None
    except Exception:  # noqa: BLE001 - an NVMLError from the query itself: not measurable here
        return None


def peak_memory(device: torch.device, lib: Any = None) -> dict[str, Any]:
    """Raw peak memory columns since the last `reset_peak(device)`; None where a source does not apply."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return {
            "peak_memory_bytes": int(torch.cuda.max_memory_allocated(device)),
            "memory_source": "cuda_max_memory_allocated",
            "peak_memory_reserved_bytes": int(torch.cuda.max_memory_reserved(device)),
            "nvml_memory_used_bytes": nvml_memory_used(device, lib),
        }
    return {
        "peak_memory_bytes": rss_peak_bytes(),
        "memory_source": "ru_maxrss",
        "peak_memory_reserved_bytes": None,
        "nvml_memory_used_bytes": None,
    }
