"""Calibration: what the runner measures once, before any case, and passes to every worker as its context.

- idle power of each device type the run uses (NVML board, RAPL packages), for idle-subtracted energy;
- on CPU, the matmul TFLOP/s per dtype and thread count that MFU is measured against (kept in the fingerprint).

Both happen in the runner, with no case running, so every case is measured against the same reference.
The result is a `contracts.Calibration`, stored in run.json under `calibration`.

Apart from these, a few short matmul probes at the start and again at the end of the run (run.json
`speed`): their spread is this machine's noise right now, and a change between start and end beyond it
is a warning that rows measured early and late may not compare.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional

from harness.config import Case
from harness.contracts import Calibration, IdlePower

IDLE_SECONDS = 5.0
CALIBRATION_SECONDS = 0.3


def device_type(requested: str) -> str:
    """What a worker's `resolve_device` will pick, without initialising CUDA here for 'cpu'."""
    if requested == "cpu":
        return "cpu"
    import torch

    return "cuda" if requested == "cuda" or torch.cuda.is_available() else "cpu"


def calibrate(
    cases: Iterable[Case],
    previous: Optional[Calibration] = None,
    idle_seconds: float = IDLE_SECONDS,
    **energy_options: Any,
) -> Calibration:
    """Idle power per device type and CPU matmul TFLOP/s per '<dtype>@<n>threads' for these cases.

    Idle power is measured again on every call (a resumed run gets a fresh one; each row records the
    value it used); the calibration is kept from `previous`, since it belongs to the run's fingerprint.
    """
    from harness.metrics.energy import measure_idle
    from harness.metrics.utilisation import calibrate_matmul_tflops, calibration_key

    cases = list(cases)
    types = {device_type(c.run.device) for c in cases}
    idle = {}
    for kind in sorted(types):
        if any(c.run.measure_energy for c in cases if device_type(c.run.device) == kind):
            device = "cpu" if kind == "cpu" else _cuda0()
            idle[kind] = IdlePower(**measure_idle(device, idle_seconds, **energy_options))

    import torch

    default_threads = torch.get_num_threads()  # what a worker without run.threads gets on this machine
    matmul = dict(previous.matmul_tflops) if previous is not None else {}
    wanted = {(c.run.dtype, c.run.threads or default_threads) for c in cases
              if device_type(c.run.device) == "cpu" and c.run.peak_tflops is None}
    for dtype, threads in sorted(wanted):
        key = calibration_key(dtype, threads)
        if key not in matmul:
            torch.set_num_threads(threads)
            try:
                matmul[key] = calibrate_matmul_tflops(dtype, min_time_s=CALIBRATION_SECONDS)
            finally:
                torch.set_num_threads(default_threads)
    return Calibration(idle=idle, matmul_tflops=matmul)


def _cuda0() -> Any:
    import torch

    return torch.device("cuda", 0)


SPEED_PROBES = 5
DRIFT_FLOOR = 0.10
"""The run's start and end probes must differ by more than this (and than their own spread) to warn."""


def speed_probes(threads: int, probes: int = SPEED_PROBES, seconds: float = 0.05) -> list[float]:
    """A few short matmul probes (GFLOP/s) at the workers' thread count."""
    import torch

    from harness.metrics.contention import matmul_probe

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return [round(matmul_probe(seconds), 2) for _ in range(probes)]
    finally:
        torch.set_num_threads(before)


def speed_drift(start: list[float], end: list[float]) -> dict[str, Any]:
    """{'drift': end / start - 1 of the medians, 'spread': the larger relative range of the two series,
    'warning': a sentence when the machine's speed changed by more than that spread (and DRIFT_FLOOR)}."""
    import statistics

    if not start or not end:
        return {"drift": None, "spread": None, "warning": None}
    s, e = statistics.median(start), statistics.median(end)
    spread = max((max(x) - min(x)) / statistics.median(x) for x in (start, end))
    drift = e / s - 1
    warning = None
    if abs(drift) > max(spread, DRIFT_FLOOR):
        warning = (f"the calibration matmul ran at {e / s:.2f}x its start speed at the end of the run "
                   f"({s:.0f} -> {e:.0f} GFLOP/s, beyond its {spread:.0%} spread): the machine's speed changed "
                   "during the run, so rows measured early and late may not compare")
    return {"drift": drift, "spread": spread, "warning": warning}
