"""Energy meters: NVML's energy counter, NVML power sampling and RAPL, behind one interface, and the
registry that opens the first one that works for a device.

Every meter answers one question, "joules consumed since an arbitrary origin" (`read_j`), so a
window is two reads and a difference whatever the source. A source that cannot measure here raises
`EnergyUnavailable`; `open_meter` then returns `Unavailable` with every source's reason, never a guess.
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
