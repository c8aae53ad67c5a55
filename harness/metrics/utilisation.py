"""Achieved model FLOP/s and model FLOPs utilisation (MFU) against the device's peak.

Achieved FLOP/s = analytic FLOPs per token (harness.accounting) x measured tokens/s: the FLOPs the
model needs, not what the kernels happened to execute (padding, recomputation and dropped tokens
do not count). The peak is, in order: the suite's `run.peak_tflops`; the NVIDIA datasheet dense
(no 2:4 sparsity) figure for the GPU and dtype; on CPU, a calibration matmul measured once per run.
Without a peak MFU is None with the reason in `peak_tflops_source`.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Optional

# Dense peak TFLOP/s at boost clock, from NVIDIA datasheets; where a datasheet lists Tensor Core
# figures "with sparsity" only, the dense figure is half of it. float32 is the CUDA-core FP32 rate
# (PyTorch's default matmul precision); tfloat32 applies when float32 matmuls may use TF32.
# RTX 4090 (a GeForce part) runs FP16/BF16 with FP32 accumulate at half its FP16-accumulate rate;
# PyTorch accumulates in FP32, so that rate is listed (Ada Lovelace architecture whitepaper).
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    # NVIDIA H100 Tensor Core GPU datasheet (SXM5 / PCIe / NVL); H200 datasheet (SXM / NVL)
    "H100 SXM": {"float32": 67.0, "tfloat32": 494.5, "bfloat16": 989.5, "float16": 989.5},
    "H100 PCIe": {"float32": 51.0, "tfloat32": 378.0, "bfloat16": 756.5, "float16": 756.5},
    "H100 NVL": {"float32": 60.0, "tfloat32": 417.5, "bfloat16": 835.5, "float16": 835.5},
    "H200 SXM": {"float32": 67.0, "tfloat32": 494.5, "bfloat16": 989.5, "float16": 989.5},
    "H200 NVL": {"float32": 60.0, "tfloat32": 417.5, "bfloat16": 835.5, "float16": 835.5},
    # NVIDIA A100 Tensor Core GPU datasheet (same peaks for 40/80 GB, SXM and PCIe)
    "A100": {"float32": 19.5, "tfloat32": 156.0, "bfloat16": 312.0, "float16": 312.0},
    # NVIDIA A10 datasheet
    "A10": {"float32": 31.2, "tfloat32": 62.5, "bfloat16": 125.0, "float16": 125.0},
    # NVIDIA L4 datasheet
    "L4": {"float32": 30.3, "tfloat32": 60.0, "bfloat16": 121.0, "float16": 121.0},
    # NVIDIA L40S / L40 datasheets
    "L40S": {"float32": 91.6, "tfloat32": 183.0, "bfloat16": 362.05, "float16": 362.05},
    "L40": {"float32": 90.5, "tfloat32": 90.5, "bfloat16": 181.05, "float16": 181.05},
    # NVIDIA Ada GPU architecture whitepaper (GeForce RTX 4090, FP32 accumulate)
    "RTX 4090": {"float32": 82.6, "tfloat32": 82.6, "bfloat16": 165.2, "float16": 165.2},
    # NVIDIA V100 datasheet (no bfloat16 Tensor Cores; TF32 did not exist before Ampere)
    "V100 SXM2": {"float32": 15.7, "tfloat32": 15.7, "float16": 125.0},
    "V100S PCIe": {"float32": 16.4, "tfloat32": 16.4, "float16": 130.0},
    "V100 PCIe": {"float32": 14.0, "tfloat32": 14.0, "float16": 112.0},
    # NVIDIA T4 datasheet
    "T4": {"float32": 8.1, "tfloat32": 8.1, "float16": 65.0},
}

# torch.cuda.get_device_name() -> table key; first match wins, so specific names come first.
_NAME_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"H200.*NVL", "H200 NVL"),
    (r"H200", "H200 SXM"),
    (r"H100.*NVL", "H100 NVL"),
    (r"H100.*PCIe", "H100 PCIe"),
    (r"H100", "H100 SXM"),  # "NVIDIA H100 80GB HBM3", "NVIDIA H100 SXM5 ..."
    (r"A100", "A100"),
    (r"\bA10\b(?!G)", "A10"),
    (r"L40S", "L40S"),
    (r"\bL40\b", "L40"),
    (r"\bL4\b", "L4"),
    (r"RTX 4090", "RTX 4090"),
    (r"V100S", "V100S PCIe"),
    (r"V100.*SXM", "V100 SXM2"),
    (r"V100", "V100 PCIe"),
    (r"\bT4\b", "T4"),
)


def gpu_key(device_name: str) -> Optional[str]:
    for pattern, key in _NAME_PATTERNS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return key
    return None


@dataclass(frozen=True)
class Peak:
    tflops: Optional[float]
    source: str  # 'suite' | 'datasheet: <gpu> <dtype>' | 'calibration_matmul <dtype>' | 'unavailable: <reason>'


def tf32_enabled() -> bool:
    import torch

    return torch.get_float32_matmul_precision() != "highest" or bool(torch.backends.cuda.matmul.allow_tf32)


def datasheet_peak(device_name: str, dtype: str, tf32: bool = False) -> Peak:
    key = gpu_key(device_name)
    if key is None:
        return Peak(None, f"unavailable: no datasheet peak for {device_name!r}; set run.peak_tflops")
    column = "tfloat32" if dtype == "float32" and tf32 else dtype
    value = PEAK_TFLOPS[key].get(column)
    if value is None:
        return Peak(None, f"unavailable: {key} has no {column} peak; set run.peak_tflops")
    return Peak(value, f"datasheet: {key} {column}")


def calibrate_matmul_tflops(
    dtype: str = "float32", size: int = 1024, min_time_s: float = 0.5, device: str = "cpu"
) -> float:
    """The best FLOP/s of an n x n matmul over a short run: the practical peak of this CPU (or GPU).

    Uses torch's current thread count, so call it where cases run with the same settings.
    """
    import torch

    dt = getattr(torch, dtype)
    a = torch.randn(size, size, dtype=dt, device=device)
    b = torch.randn(size, size, dtype=dt, device=device)
    sync = (lambda: torch.cuda.synchronize(device)) if str(device).startswith("cuda") else (lambda: None)
    torch.matmul(a, b)
    sync()
    best = float("inf")
    started = time.perf_counter()
    while time.perf_counter() - started < min_time_s or best == float("inf"):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best / 1e12


def calibration_key(dtype: str, threads: int) -> str:
    """CPU peaks depend on the thread count as much as on the dtype."""
    return f"{dtype}@{threads}threads"


def device_peak(
    device_type: str,
    device_name: str,
    dtype: str,
    override_tflops: Optional[float] = None,
    calibrated: Optional[dict[str, float]] = None,
    tf32: Optional[bool] = None,
    threads: int = 1,
) -> Peak:
    """The peak a case's MFU is measured against; `calibrated` maps `calibration_key(dtype, threads)` ->
    TFLOP/s from the fingerprint, measured at the thread count the case runs with."""
    if override_tflops is not None:
        return Peak(float(override_tflops), "suite")
    if device_type == "cuda":
        return datasheet_peak(device_name, dtype, tf32_enabled() if tf32 is None else tf32)
    key = calibration_key(dtype, threads)
    if calibrated and calibrated.get(key):
        return Peak(float(calibrated[key]), f"calibration_matmul {dtype}, {threads} threads")
    return Peak(None, f"unavailable: no {key} calibration matmul in the run fingerprint; set run.peak_tflops")


def achieved_tflops(flops_per_token: float, tokens_per_s: float) -> float:
    return flops_per_token * tokens_per_s / 1e12


def utilisation_columns(flops_per_token: float, tokens_per_s: float, peak: Peak) -> dict[str, Any]:
    achieved = achieved_tflops(flops_per_token, tokens_per_s)
    return {
        "achieved_tflops": achieved,
        "peak_tflops": peak.tflops,
        "peak_tflops_source": peak.source,
        "mfu": achieved / peak.tflops if peak.tflops else None,
    }
