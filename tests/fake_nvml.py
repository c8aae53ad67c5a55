"""A fake `pynvml` module that replays a known power trace, so expected joules are known exactly.

Time comes from a clock the test controls (a FakeClock that only moves when told, or a real one).
Like real boards, the energy counter is an integer of mJ that only updates every `update_period_s`,
and power is an integer of mW.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Callable, Optional


class FakeClock:
    """Seconds that advance only when the test (or a fake step, or sleep) says so."""

    def __init__(self, start: float = 0.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    sleep = advance


@dataclass(frozen=True)
class PowerTrace:
    """Piecewise-linear watts through (time, watts) points; constant before the first and after the last."""

    points: tuple[tuple[float, float], ...]

    @classmethod
    def constant(cls, watts: float) -> "PowerTrace":
        return cls(((0.0, watts),))

    def power(self, t: float) -> float:
        times = [p[0] for p in self.points]
        i = bisect.bisect_right(times, t)
        if i == 0:
            return self.points[0][1]
        if i == len(self.points):
            return self.points[-1][1]
        (t0, w0), (t1, w1) = self.points[i - 1], self.points[i]
        return w0 + (w1 - w0) * (t - t0) / (t1 - t0)

    def energy(self, t0: float, t1: float) -> float:
        """Exact joules between t0 and t1 (the integral of a piecewise-linear function)."""
        knots = sorted({t0, t1, *(p[0] for p in self.points if t0 < p[0] < t1)})
        return sum(0.5 * (self.power(a) + self.power(b)) * (b - a) for a, b in zip(knots, knots[1:]))


@dataclass
class FakeGpu:
    uuid: str
    trace: PowerTrace
    name: str = "NVIDIA H100 80GB HBM3"
    counter_supported: bool = True
    update_period_s: float = 0.1
    temperature_c: int = 41
    sm_clock_mhz: int = 1980
    memory_used_bytes: int = 1 << 30
    power_limit_mw: int = 700_000
    mig_parent: Optional[int] = None  # index of the board this MIG instance lives on
    origin_s: float = 0.0  # when the driver loaded: the counter counts from here
    compute_pids: tuple[int, ...] = ()  # processes with a CUDA context on this board
    throttle_mask: int = 0  # nvmlClocksEventReason* bits set now


class NVMLError(Exception):
    pass


class NVMLError_NotSupported(NVMLError):
    pass


class NVMLError_NotFound(NVMLError):
    pass


class NVMLError_Uninitialized(NVMLError):
    pass


@dataclass
class FakeNvml:
    """Module-like: pass as `lib=` wherever harness code takes an NVML library."""

    gpus: list[FakeGpu]
    clock: Callable[[], float] = field(default_factory=FakeClock)
    init_error: Optional[str] = None
    inits: int = 0
    shutdowns: int = 0

    NVMLError = NVMLError
    NVMLError_NotSupported = NVMLError_NotSupported
    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1

    def nvmlInit(self) -> None:
        if self.init_error:
            raise NVMLError(self.init_error)
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def _live(self) -> None:
        if self.inits <= self.shutdowns:
            raise NVMLError_Uninitialized("Uninitialized")

    def nvmlDeviceGetCount(self) -> int:
        self._live()
        return sum(g.mig_parent is None for g in self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self._live()
        boards = [i for i, g in enumerate(self.gpus) if g.mig_parent is None]
        if not 0 <= index < len(boards):
            raise NVMLError_NotFound("Not Found")
        return boards[index]

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> int:
        self._live()
        for i, g in enumerate(self.gpus):
            if g.uuid == uuid:
                return i
        raise NVMLError_NotFound("Not Found")

    def nvmlDeviceIsMigDeviceHandle(self, handle: int) -> bool:
        return self.gpus[handle].mig_parent is not None

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, handle: int) -> int:
        parent = self.gpus[handle].mig_parent
        if parent is None:
            raise NVMLError("Invalid Argument")
        return parent

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return self.gpus[handle].uuid

    def nvmlDeviceGetName(self, handle: int) -> str:
        return self.gpus[handle].name

    def nvmlSystemGetDriverVersion(self) -> str:
        return "550.54.15"

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        self._live()
        gpu = self.gpus[handle]
        if not gpu.counter_supported or gpu.mig_parent is not None:
            raise NVMLError_NotSupported("Not Supported")
        period = gpu.update_period_s
        last_update = math.floor((self.clock() - gpu.origin_s) / period + 1e-9) * period + gpu.origin_s
        return round(gpu.trace.energy(gpu.origin_s, last_update) * 1e3)

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        self._live()
        return round(self.gpus[handle].trace.power(self.clock()) * 1e3)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        assert sensor == self.NVML_TEMPERATURE_GPU
        return self.gpus[handle].temperature_c

    def nvmlDeviceGetClockInfo(self, handle: int, clock_type: int) -> int:
        assert clock_type == self.NVML_CLOCK_SM
        return self.gpus[handle].sm_clock_mhz

    def nvmlDeviceGetMemoryInfo(self, handle: int):
        used = self.gpus[handle].memory_used_bytes

        class Info:
            pass

        info = Info()
        info.used = used
        return info

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int):
        self._live()

        class Process:
            def __init__(self, pid: int):
                self.pid = pid
                self.usedGpuMemory = 1 << 28

        return [Process(pid) for pid in self.gpus[handle].compute_pids]

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: int) -> int:
        self._live()
        return self.gpus[handle].throttle_mask

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: int) -> int:
        return self.gpus[handle].power_limit_mw
