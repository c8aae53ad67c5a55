"""A thin wrapper over NVML (`pynvml`, from nvidia-ml-py) that finds the right board for a torch device.

Everything takes the NVML module as an argument (`lib`), so tests pass a fake that replays a known
power trace; nothing here imports torch's CUDA runtime or needs a GPU to import.

Mapping a torch device to an NVML handle is the part that goes wrong silently: torch counts only
the devices in CUDA_VISIBLE_DEVICES (in CUDA's order), NVML counts every board (in PCI bus order).
The order of preference is therefore (1) the device UUID torch reports, (2) the CUDA_VISIBLE_DEVICES
entry, by UUID (full or the prefix CUDA accepts) or by index, (3) the torch index itself.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Optional, Union


class NvmlUnavailable(Exception):
    """NVML cannot be used here; the message is the reason a result row records."""


Target = Union[int, str]  # an NVML index, or a UUID (possibly a prefix) starting with GPU- or MIG-


def visible_devices(env: Mapping[str, str]) -> Optional[list[str]]:
    """CUDA_VISIBLE_DEVICES as CUDA reads it: None when unset; parsing stops at the first invalid entry."""
    raw = env.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return None
    entries: list[str] = []
    for token in (t.strip() for t in raw.split(",")):
        if token.lstrip("-").isdigit():
            if int(token) < 0:
                break
            entries.append(str(int(token)))
        elif token.startswith(("GPU-", "MIG-")):
            entries.append(token)
        else:
            break
    return entries


def nvml_target(torch_index: int, env: Mapping[str, str], torch_uuid: Optional[str] = None) -> tuple[Target, str]:
    """What to look up in NVML for torch device `cuda:torch_index`, and a note on how it was mapped."""
    if torch_uuid:
        uuid = torch_uuid if torch_uuid.startswith(("GPU-", "MIG-")) else f"GPU-{torch_uuid}"
        return uuid, "uuid from torch"
    visible = visible_devices(env)
    if visible is None:
        return torch_index, "index (CUDA_VISIBLE_DEVICES unset)"
    if torch_index >= len(visible):
        raise NvmlUnavailable(
            f"cuda:{torch_index} is not among CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES')!r}"
        )
    entry = visible[torch_index]
    if entry.isdigit():
        ordered = env.get("CUDA_DEVICE_ORDER") == "PCI_BUS_ID"
        note = "CUDA_VISIBLE_DEVICES index" + ("" if ordered else " (CUDA_DEVICE_ORDER is not PCI_BUS_ID: order may differ)")
        return int(entry), note
    return entry, "CUDA_VISIBLE_DEVICES uuid"


@dataclass(frozen=True)
class Nvml:
    """An initialised NVML library (real or fake); use `open_nvml()` so it is shut down again."""

    lib: Any

    def handle(self, device: Any, env: Optional[Mapping[str, str]] = None, torch_uuid: Optional[str] = None) -> Any:
        """The board handle for a torch device (or its index); a MIG instance maps to its parent board."""
        index = device if isinstance(device, int) else (getattr(device, "index", None) or 0)
        env = os.environ if env is None else env
        if torch_uuid:
            try:
                return self._resolve(nvml_target(index, env, torch_uuid)[0])
            except NvmlUnavailable:
                pass  # e.g. a UUID format this driver does not know: the environment still says which board
        return self._resolve(nvml_target(index, env)[0])

    def _resolve(self, target: Target) -> Any:
        try:
            if isinstance(target, int):
                handle = self.lib.nvmlDeviceGetHandleByIndex(target)
            else:
                handle = self._by_uuid(target)
            if target_is_mig(target) or self._is_mig(handle):
                handle = self.lib.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(handle)
        except self.lib.NVMLError as exc:
            raise NvmlUnavailable(f"no NVML device for {target!r}: {exc}") from None
        return handle

    def _by_uuid(self, target: str) -> Any:
        try:
            return self.lib.nvmlDeviceGetHandleByUUID(target)
        except self.lib.NVMLError:
            pass
        matches = []
        for i in range(self.lib.nvmlDeviceGetCount()):
            handle = self.lib.nvmlDeviceGetHandleByIndex(i)
            if _text(self.lib.nvmlDeviceGetUUID(handle)).startswith(target):
                matches.append(handle)
        if len(matches) != 1:
            raise NvmlUnavailable(f"CUDA_VISIBLE_DEVICES entry {target!r} matches {len(matches)} NVML devices")
        return matches[0]

    def _is_mig(self, handle: Any) -> bool:
        try:
            return bool(self.lib.nvmlDeviceIsMigDeviceHandle(handle))
        except (AttributeError, self.lib.NVMLError):
            return False

    def name(self, handle: Any) -> str:
        return _text(self.lib.nvmlDeviceGetName(handle))

    def temperature_c(self, handle: Any) -> float:
        return float(self.lib.nvmlDeviceGetTemperature(handle, self.lib.NVML_TEMPERATURE_GPU))

    def sm_clock_mhz(self, handle: Any) -> float:
        return float(self.lib.nvmlDeviceGetClockInfo(handle, self.lib.NVML_CLOCK_SM))

    def memory_used_bytes(self, handle: Any) -> int:
        return int(self.lib.nvmlDeviceGetMemoryInfo(handle).used)

    def power_w(self, handle: Any) -> float:
        return self.lib.nvmlDeviceGetPowerUsage(handle) / 1e3

    def total_energy_j(self, handle: Any) -> float:
        """Energy since the driver loaded (mJ counter, Volta and newer); raises NVMLError where unsupported."""
        return self.lib.nvmlDeviceGetTotalEnergyConsumption(handle) / 1e3

    def power_limit_w(self, handle: Any) -> float:
        return self.lib.nvmlDeviceGetEnforcedPowerLimit(handle) / 1e3

    def driver_version(self) -> str:
        return _text(self.lib.nvmlSystemGetDriverVersion())


def target_is_mig(target: Target) -> bool:
    return isinstance(target, str) and target.startswith("MIG-")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def load_library(lib: Any = None) -> Any:
    if lib is not None:
        return lib
    try:
        import pynvml
    except ImportError:
        raise NvmlUnavailable("pynvml (nvidia-ml-py) is not installed") from None
    return pynvml


@contextmanager
def open_nvml(lib: Any = None) -> Iterator[Nvml]:
    """Initialise NVML for the duration of a block; NvmlUnavailable says why it could not be."""
    lib = load_library(lib)
    try:
        lib.nvmlInit()
    except lib.NVMLError as exc:
        raise NvmlUnavailable(f"NVML could not initialise: {exc}") from None
    try:
        yield Nvml(lib)
    finally:
        try:
            lib.nvmlShutdown()
        except lib.NVMLError:
            pass


def torch_uuid(device: Any) -> Optional[str]:
    """The UUID torch reports for a CUDA device, only if CUDA is already initialised (never initialises it)."""
    try:
        import torch

        if getattr(device, "type", None) != "cuda" or not torch.cuda.is_initialized():
            return None
        uuid = getattr(torch.cuda.get_device_properties(device), "uuid", None)
        return str(uuid) if uuid else None
    except Exception:  # noqa: BLE001 - the env mapping is a complete fallback
        return None


def gpu_state(device: Any, lib: Any = None, env: Optional[Mapping[str, str]] = None) -> dict[str, Any]:
    """Temperature and SM clock of the board now: recorded before and after each case."""
    if getattr(device, "type", "cuda") != "cuda":
        return {"gpu_temp_c": None, "gpu_sm_clock_mhz": None}
    try:
        with open_nvml(lib) as nvml:
            handle = nvml.handle(device, env, torch_uuid(device))
            return {"gpu_temp_c": _maybe(nvml.temperature_c, handle), "gpu_sm_clock_mhz": _maybe(nvml.sm_clock_mhz, handle)}
    except NvmlUnavailable:
        return {"gpu_temp_c": None, "gpu_sm_clock_mhz": None}


def device_info(device: Any, lib: Any = None, env: Optional[Mapping[str, str]] = None) -> dict[str, Any]:
    """Board facts for the run fingerprint: name, driver, enforced power limit, how the handle was found."""
    index = device if isinstance(device, int) else (getattr(device, "index", None) or 0)
    env = os.environ if env is None else env
    try:
        with open_nvml(lib) as nvml:
            uuid = torch_uuid(device)
            handle = nvml.handle(device, env, uuid)
            return {
                "gpu_name": _maybe(nvml.name, handle),
                "nvidia_driver": _maybe(lambda _: nvml.driver_version(), handle),
                "gpu_power_limit_w": _maybe(nvml.power_limit_w, handle),
                "nvml_mapping": nvml_target(index, env, uuid)[1],
            }
    except NvmlUnavailable as exc:
        return {"nvml": f"unavailable: {exc}"}


def _maybe(read: Any, handle: Any) -> Any:
    """One optional reading: None when the board does not support it (never a made-up value)."""
    try:
        return read(handle)
    except Exception:  # noqa: BLE001 - NVMLError subclasses vary by query and driver
        return None
