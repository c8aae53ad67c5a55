"""Peak memory of one case: the CUDA caching allocator's peaks on GPU, the process's peak RSS on CPU.

GPU columns: `peak_memory_bytes` (max_memory_allocated: tensors), `peak_memory_reserved_bytes`
(max_memory_reserved: what the allocator holds, the number that decides OOM) and
`nvml_memory_used_bytes` (the whole board as NVML sees it, CUDA context and other processes included).
CPU: `peak_memory_bytes` is ru_maxrss, the process's lifetime peak; each case runs in a fresh worker,
so the peak is that case's, but it includes the interpreter, torch and the model weights.
"""
from __future__ import annotations

import resource
import sys
from typing import Any, Optional

import torch


def reset_peak(device: torch.device) -> None:
    """Start a new peak. On CPU ru_maxrss cannot be reset; the fresh worker per case stands in for it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def rss_peak_bytes() -> int:
    """ru_maxrss is KiB on Linux and bytes on macOS."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


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
    """Peak memory columns since the last `reset_peak(device)`; None where a source does not apply."""
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
