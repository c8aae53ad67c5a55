"""Energy per step, measured: NVML's energy counter, else NVML power sampling, on GPUs; RAPL on CPUs.

Every meter answers one question, "joules consumed since an arbitrary origin" (`read_j`), so a
window is two reads and a difference whatever the source. Where nothing can measure, the columns
are None and `energy_source` says `unavailable: <reason>`; nothing here estimates.

The NVML counter updates only every ~100 ms, so a window repeats the step until it lasts at least
`min_window_s` (default 1 s) and divides by the count; the window length and count are recorded.
Energy runs in its own pass after timing, so neither measurement perturbs the other.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Protocol, Union

from harness.metrics import nvml as nvml_mod
from harness.metrics.nvml import NvmlUnavailable, open_nvml

RAPL_ROOT = Path("/sys/class/powercap")


class EnergyUnavailable(Exception):
    """This source cannot measure here; the message becomes `unavailable: <reason>`."""


class EnergyMeter(Protocol):
    source: str

    def read_j(self) -> float:
        """Joules consumed since an arbitrary origin fixed when the meter opened."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class Unavailable:
    reason: str

    @property
    def source(self) -> str:
        return f"unavailable: {self.reason}"


# ----------------------------------------------------------------------------- NVML energy counter

class NvmlCounterMeter:
    source = "nvml_counter"

    def __init__(self, nvml: nvml_mod.Nvml, handle: Any, close: Callable[[], None]):
        self._nvml, self._handle, self._close = nvml, handle, close
        self._origin = nvml.total_energy_j(handle)

    def read_j(self) -> float:
        return self._nvml.total_energy_j(self._handle) - self._origin

    def close(self) -> None:
        self._close()


# ----------------------------------------------------------------------------- NVML power sampling

class TrapezoidIntegrator:
    """Integrates (time, watts) samples with the trapezoid rule: exact for power that is linear in time."""

    def __init__(self) -> None:
        self.joules = 0.0
        self._last: Optional[tuple[float, float]] = None

    def add(self, t: float, watts: float) -> float:
        if self._last is not None:
            t0, w0 = self._last
            self.joules += 0.5 * (w0 + watts) * (t - t0)
        self._last = (t, watts)
        return self.joules


class NvmlSamplingMeter:
    """Polls `nvmlDeviceGetPowerUsage` in a background thread, for boards without the energy counter.

    Each `read_j` also takes a sample, so a window's ends are exact sample points.
    """

    source = "nvml_power_sampling"

    def __init__(
        self,
        nvml: nvml_mod.Nvml,
        handle: Any,
        close: Callable[[], None],
        interval_s: float = 0.01,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self._nvml, self._handle, self._close, self._clock = nvml, handle, close, clock
        self._integrator = TrapezoidIntegrator()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sample()
        self._thread = threading.Thread(target=self._poll, args=(interval_s,), name="nvml-power", daemon=True)
        self._thread.start()

    def _sample(self) -> float:
        with self._lock:
            watts = self._nvml.power_w(self._handle)
            return self._integrator.add(self._clock(), watts)

    def _poll(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self._sample()

    def read_j(self) -> float:
        return self._sample()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._close()


# ----------------------------------------------------------------------------- RAPL (CPU packages)

@dataclass(frozen=True)
class RaplDomain:
    name: str
    energy_file: Path
    max_range_uj: int


def rapl_domains(root: Path = RAPL_ROOT) -> list[RaplDomain]:
    """Top-level package domains (intel-rapl:N, named package-*); psys would double count, so it is skipped."""
    domains = []
    for zone in sorted(root.glob("intel-rapl:*")):
        if zone.name.count(":") != 1:
            continue
        name = _read_text(zone / "name")
        if not name.startswith("package"):
            continue
        domains.append(RaplDomain(f"{zone.name}/{name}", zone / "energy_uj", int(_read_text(zone / "max_energy_range_uj"))))
    return domains


def _read_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except PermissionError:
        raise EnergyUnavailable(f"{path} is not readable (permission denied; RAPL needs root since Linux 5.10)") from None
    except OSError as exc:
        raise EnergyUnavailable(f"cannot read {path}: {exc.strerror}") from None


class RaplMeter:
    """Sums the package counters, undoing wrap-around at max_energy_range_uj.

    A counter can wrap at most once between reads for this to be right: at 250 W a typical 262 kJ
    range takes ~17 minutes, far longer than any energy window.
    """

    source = "rapl"

    def __init__(self, domains: list[RaplDomain]):
        if not domains:
            raise EnergyUnavailable("no RAPL package domains found")
        self._domains = domains
        self._last = [self._raw(d) for d in domains]
        self._total_uj = 0

    @staticmethod
    def _raw(domain: RaplDomain) -> int:
        return int(_read_text(domain.energy_file))

    def read_j(self) -> float:
        for i, domain in enumerate(self._domains):
            raw = self._raw(domain)
            delta = raw - self._last[i]
            if delta < 0:
                delta += domain.max_range_uj
            self._total_uj += delta
            self._last[i] = raw
        return self._total_uj / 1e6

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------- registry

def _open_nvml_handle(device: Any, lib: Any, env: Optional[Mapping[str, str]]) -> tuple[nvml_mod.Nvml, Any, Callable[[], None]]:
    session = open_nvml(lib)
    try:
        nvml = session.__enter__()
    except NvmlUnavailable as exc:
        raise EnergyUnavailable(str(exc)) from None
    try:
        handle = nvml.handle(device, env, nvml_mod.torch_uuid(device))
    except NvmlUnavailable as exc:
        session.__exit__(None, None, None)
        raise EnergyUnavailable(str(exc)) from None
    return nvml, handle, lambda: session.__exit__(None, None, None)


def _nvml_counter(device: Any, *, lib: Any = None, env: Optional[Mapping[str, str]] = None, **_: Any) -> EnergyMeter:
    nvml, handle, close = _open_nvml_handle(device, lib, env)
    try:
        return NvmlCounterMeter(nvml, handle, close)
    except nvml.lib.NVMLError as exc:
        close()
        raise EnergyUnavailable(f"energy counter not supported ({exc})") from None


def _nvml_power_sampling(
    device: Any, *, lib: Any = None, env: Optional[Mapping[str, str]] = None, interval_s: float = 0.01,
    clock: Callable[[], float] = time.perf_counter, **_: Any,
) -> EnergyMeter:
    nvml, handle, close = _open_nvml_handle(device, lib, env)
    try:
        return NvmlSamplingMeter(nvml, handle, close, interval_s, clock)
    except nvml.lib.NVMLError as exc:
        close()
        raise EnergyUnavailable(f"power reading not supported ({exc})") from None


def _rapl(device: Any, *, rapl_root: Path = RAPL_ROOT, **_: Any) -> EnergyMeter:
    if not rapl_root.exists():
        raise EnergyUnavailable(f"{rapl_root} does not exist (no powercap RAPL interface on this host)")
    return RaplMeter(rapl_domains(rapl_root))


METERS: dict[str, Callable[..., EnergyMeter]] = {
    "nvml_counter": _nvml_counter,
    "nvml_power_sampling": _nvml_power_sampling,
    "rapl": _rapl,
}
SOURCES_BY_DEVICE_TYPE = {"cuda": ("nvml_counter", "nvml_power_sampling"), "cpu": ("rapl",)}


def open_meter(device: Any, sources: Optional[tuple[str, ...]] = None, **options: Any) -> Union[EnergyMeter, Unavailable]:
    """The first source that works for this device, or Unavailable listing why each one did not.

    `options` go to every source: `lib` (an NVML module or fake), `env`, `rapl_root`, `interval_s`, `clock`.
    """
    kind = getattr(device, "type", str(device))
    sources = sources if sources is not None else SOURCES_BY_DEVICE_TYPE.get(kind, ())
    if not sources:
        return Unavailable(f"no energy source for device type {kind!r}")
    reasons = []
    for name in sources:
        try:
            return METERS[name](device, **options)
        except EnergyUnavailable as exc:
            reasons.append(f"{name}: {exc}")
    return Unavailable("; ".join(reasons))


# ----------------------------------------------------------------------------- measurements

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


def idle_baseline(
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
