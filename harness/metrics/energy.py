"""Energy per step, measured: NVML's energy counter, else NVML power sampling, on GPUs; RAPL on CPUs.

The meters live in `energy_meters`; this module runs the measurement passes with them. Where nothing
can measure, the columns are None and `energy_source` says `unavailable: <reason>`; nothing here estimates.

The NVML counter updates only every ~100 ms, so a window repeats the step until it lasts at least
`min_window_s` (default 1 s) and divides by the count; the window length and count are recorded.
Energy runs in its own pass after timing, so neither measurement perturbs the other.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Mapping, Optional, Union

from harness.metrics.energy_meters import EnergyMeter, Unavailable, open_meter


def _device_sync(device: Any) -> Callable[[], None]:
    if getattr(device, "type", None) == "cuda":
        import torch

        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def _open_pair(device: Any, **options: Any) -> dict[str, Union[EnergyMeter, Unavailable]]:
    """The device's meter and the CPU packages' meter (the same object on a CPU device)."""
    meters = {"device": open_meter(device, **options)}
    meters["cpu"] = meters["device"] if _is_cpu(device) else open_meter("cpu", **options)
    return meters


def _close_all(meters: dict[str, Union[EnergyMeter, Unavailable]]) -> None:
    for m in {id(m): m for m in meters.values()}.values():
        if not isinstance(m, Unavailable):
            m.close()


def _read_all(meters: dict[str, Union[EnergyMeter, Unavailable]]) -> dict[str, Union[float, Unavailable]]:
    """Each live meter's reading; a read that fails mid-run becomes Unavailable, never a lost case."""
    readings: dict[str, Union[float, Unavailable]] = {}
    for key, meter in meters.items():
        if isinstance(meter, Unavailable):
            continue
        try:
            readings[key] = meter.read_j()
        except Exception as exc:  # noqa: BLE001 - NVMLError, OSError: the timing must survive a meter fault
            readings[key] = Unavailable(f"{meter.source} read failed: {type(exc).__name__}: {exc}")
    return readings


def _joules(meter: Union[EnergyMeter, Unavailable], start: Any, end: Any, seconds: float) -> tuple[str, Optional[float]]:
    """(source, joules) of one window, or (unavailable reason, None)."""
    for value in (start, end):
        if isinstance(value, Unavailable):
            return value.source, None
    if start is None or end is None:
        return meter.source, None
    joules = end - start
    if joules <= 0:
        return f"unavailable: {meter.source} read {joules:.6g} J over a {seconds:.3f} s window", None
    return meter.source, joules


def measure_idle(
    device: Any,
    duration_s: float = 5.0,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.perf_counter,
    **options: Any,
) -> dict[str, Any]:
    """Idle watts of the device and of the CPU packages, measured once per run before any case.

    The runner passes this dict to every worker. A value is None (never 0) when its meter is
    unavailable or read no energy; with no meter at all nothing sleeps.
    """
    meters = _open_pair(device, clock=clock, **options)
    try:
        t0, start = clock(), _read_all(meters)
        if start:
            sleep(duration_s)
        seconds, end = clock() - t0, _read_all(meters)
    finally:
        _close_all(meters)

    device_source, device_j = _joules(meters["device"], start.get("device"), end.get("device"), seconds)
    cpu_source, cpu_j = _joules(meters["cpu"], start.get("cpu"), end.get("cpu"), seconds)
    return {
        "idle_power_w": device_j / seconds if device_j is not None else None,
        "cpu_idle_power_w": cpu_j / seconds if cpu_j is not None else None,
        "idle_window_s": seconds if start else None,
        "idle_source": device_source,
        "cpu_idle_source": cpu_source,
    }


def _is_cpu(device: Any) -> bool:
    return getattr(device, "type", str(device)) == "cpu"


def energy_columns(
    source: str, joules: Optional[float], seconds: float, iterations: int, tokens_per_step: int,
    idle_power_w: Optional[float], prefix: str = "",
) -> dict[str, Any]:
    """The result columns of one window: raw and idle-subtracted joules per step and per token."""
    ok = joules is not None and joules > 0 and iterations > 0 and seconds > 0
    per_step = joules / iterations if ok else None
    above = (joules - idle_power_w * seconds) / iterations if ok and idle_power_w is not None else None
    return {
        f"{prefix}energy_source": source,
        f"{prefix}energy_j": per_step,
        f"{prefix}energy_j_per_token": per_step / tokens_per_step if per_step is not None else None,
        f"{prefix}energy_above_idle_j": above,
        f"{prefix}energy_above_idle_j_per_token": above / tokens_per_step if above is not None else None,
        f"{prefix}avg_power_w": joules / seconds if ok else None,
        f"{prefix}idle_power_w": idle_power_w,
    }


def measure_energy(
    step: Callable[[], Any],
    device: Any,
    tokens_per_step: int,
    min_window_s: float = 1.0,
    idle_power_w: Optional[float] = None,
    cpu_idle_power_w: Optional[float] = None,
    *,
    meters: Optional[Mapping[str, Union[EnergyMeter, Unavailable]]] = None,
    sync: Optional[Callable[[], None]] = None,
    clock: Callable[[], float] = time.perf_counter,
    **options: Any,
) -> dict[str, Any]:
    """Repeat `step` for at least `min_window_s`, synchronised before each read; energy columns per step.

    `meters` ({"device": ..., "cpu": ...}) passed in stay open (the caller owns them); otherwise they
    are opened and closed here. `cpu_energy_*` come from RAPL on every device (the same meter as
    `energy_*` on a CPU device). The CPU-side loop check needs no per-step sync: the closing sync
    only lengthens the window, which is then re-checked. With no meter at all the step does not run.
    """
    owned = meters is None
    pair = dict(meters) if meters is not None else _open_pair(device, clock=clock, **options)
    if all(isinstance(m, Unavailable) for m in pair.values()):
        return {
            **energy_columns(pair["device"].source, None, 0.0, 0, tokens_per_step, idle_power_w),
            **energy_columns(pair["cpu"].source, None, 0.0, 0, tokens_per_step, cpu_idle_power_w, prefix="cpu_"),
            "energy_window_s": None,
            "energy_iterations": None,
        }
    sync = sync or _device_sync(device)
    try:
        sync()
        t0, start = clock(), _read_all(pair)
        iterations = 0
        while True:
            step()
            iterations += 1
            if clock() - t0 >= min_window_s:
                sync()
                seconds = clock() - t0
                if seconds >= min_window_s:
                    break
        end = _read_all(pair)
    finally:
        if owned:
            _close_all(pair)

    def window(key: str) -> tuple[str, Optional[float]]:
        return _joules(pair[key], start.get(key), end.get(key), seconds)

    return {
        **energy_columns(*window("device"), seconds, iterations, tokens_per_step, idle_power_w),
        **energy_columns(*window("cpu"), seconds, iterations, tokens_per_step, cpu_idle_power_w, prefix="cpu_"),
        "energy_window_s": seconds,
        "energy_iterations": iterations,
    }


def skipped(reason: str) -> dict[str, Any]:
    """The energy columns when the energy pass did not run (e.g. `measure_energy: false` in the suite)."""
    columns = {
        **energy_columns(f"unavailable: {reason}", None, 0.0, 0, 1, None),
        **energy_columns(f"unavailable: {reason}", None, 0.0, 0, 1, None, prefix="cpu_"),
    }
    return {**columns, "energy_window_s": None, "energy_iterations": None}


def cooldown(seconds: float, sleep: Callable[[float], None] = time.sleep) -> None:
    """Idle between cases so the board starts each one from a similar temperature (Zeus's cooldown)."""
    if seconds > 0:
        sleep(seconds)
