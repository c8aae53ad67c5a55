"""What the machine was doing while a row was measured, and whether that disturbed the measurement.

A stalled or crowded process can produce tight, wrong timings (a 31x "win" from one dense process
that got a fraction of a core), so the spread of the samples (`noisy`) cannot catch it. This module
reads what the operating system and the GPU say about the timed window instead:

- CPU share: the process's CPU time over wall time x threads. A process that ran alone gets close
  to 1 (per thread that has work); one that waited for a core, was stopped or slept gets less.
- Run-queue wait (`/proc/<pid>/task/*/schedstat`): time the process's threads were runnable but
  had no CPU: the direct sign of another job on the same cores.
- Steal (`/proc/stat`): time the hypervisor gave this VM's CPUs to someone else.
- Load average before and after, against the cores the machine has.
- A small calibration matmul before and after the timed steps: the machine's speed should not
  change while one row is measured.
- On CUDA (NVML): other processes on the device, and clock-throttle reasons (thermal, power brake,
  hardware slowdown) at the start and end of the window.

`Window` and `judge` are pure; the readers return None where the machine does not expose a source,
and a missing source is never read as "fine" or as "contended", it is simply not used.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

CPU_SHARE_MIN = 0.80
"""Below this share of wall x threads the process did not get its CPUs (or stalled)."""
RUN_QUEUE_WAIT_MAX = 0.10
"""Above this fraction of wall x threads spent waiting on the run queue, another job took the cores."""
STEAL_MAX = 0.05
"""Above this fraction of CPU time stolen by the hypervisor, the VM's cores were shared."""
LOAD_SLACK = 0.5
"""Load average above cores + this: more runnable work than cores while the row was measured."""
MATMUL_DRIFT_MAX = 0.5
"""Calibration matmul after vs before the timed steps differing by more than this: the machine changed speed.
A 50 ms probe varies by up to ~25% on an idle 2-core VM, so only a larger change counts."""
GPU_THROTTLE_BITS = {
    0x4: "sw_power_cap", 0x8: "hw_slowdown", 0x20: "sw_thermal_slowdown", 0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
}
"""NVML clocks-event (throttle) reasons that are recorded; all but the power cap count as disturbance."""
GPU_DISTURBING = {"hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown"}


@dataclass(frozen=True)
class Reading:
    """One instant: wall clock, the process's CPU time and what the OS says about the machine."""

    wall: float
    cpu: float
    load: Optional[float] = None
    cpu_jiffies: Optional[int] = None
    steal_jiffies: Optional[int] = None
    run_wait_s: Optional[float] = None


@dataclass(frozen=True)
class Window:
    """What happened between two readings of one process that ran `threads` intra-op threads."""

    wall_s: float
    cpu_share: Optional[float]
    run_wait_share: Optional[float]
    steal_fraction: Optional[float]
    load_start: Optional[float]
    load_end: Optional[float]

    @classmethod
    def between(cls, before: Reading, after: Reading, threads: int, waited_s: float = 0.0) -> "Window":
        """`waited_s`: time the process spent blocked on its peers (a rank of a multi-rank case in its
        collectives), which it could not have used a CPU for; the shares count the rest of the window."""
        wall = after.wall - before.wall
        capacity = max(wall - waited_s, 0.0) * max(threads, 1)
        share = (after.cpu - before.cpu) / capacity if capacity > 0 else None
        wait = None
        if before.run_wait_s is not None and after.run_wait_s is not None and capacity > 0:
            wait = max(after.run_wait_s - before.run_wait_s, 0.0) / capacity
        steal = None
        if None not in (before.cpu_jiffies, after.cpu_jiffies, before.steal_jiffies, after.steal_jiffies):
            total = after.cpu_jiffies - before.cpu_jiffies
            steal = (after.steal_jiffies - before.steal_jiffies) / total if total > 0 else None
        return cls(wall, share, wait, steal, before.load, after.load)


@dataclass(frozen=True)
class GpuState:
    """Other compute processes on the device and the clock-throttle reasons seen (NVML)."""

    other_processes: Optional[int] = None
    throttle: tuple[str, ...] = ()
    unavailable: Optional[str] = None


@dataclass(frozen=True)
class Contention:
    """The contention columns of one process's timed window, and the verdict on them."""

    reasons: tuple[str, ...]
    columns: dict[str, Any] = field(default_factory=dict)

    @property
    def contended(self) -> bool:
        return bool(self.reasons)


def judge(
    window: Window,
    threads: int,
    cores: int,
    matmul_before: Optional[float] = None,
    matmul_after: Optional[float] = None,
    gpu: Optional[GpuState] = None,
    busy_cores: bool = True,
    run_queue: bool = True,
) -> Contention:
    """Which readings say the measurement was disturbed, each as a short human reason.

    `busy_cores=False` for a CUDA device, whose host thread mostly waits on the GPU: its CPU share
    is expected to be low and says nothing there. `run_queue=False` where the process's own peers
    fill the cores (the ranks of a multi-rank case on CPU): its threads then wait for theirs, so
    run-queue wait is recorded but cannot tell another job from the group itself.
    """
    reasons: list[str] = []
    plural = "s" if threads != 1 else ""
    if busy_cores and window.cpu_share is not None and window.cpu_share < CPU_SHARE_MIN:
        reasons.append(f"cpu share {window.cpu_share:.2f} of {threads} thread{plural}")
    if busy_cores and run_queue and window.run_wait_share is not None and window.run_wait_share > RUN_QUEUE_WAIT_MAX:
        reasons.append(f"waited for a CPU {window.run_wait_share:.0%} of the time")
    if window.steal_fraction is not None and window.steal_fraction > STEAL_MAX:
        reasons.append(f"hypervisor steal {window.steal_fraction:.0%}")
    loads = [v for v in (window.load_start, window.load_end) if v is not None]
    if loads and max(loads) > cores + LOAD_SLACK:
        reasons.append(f"load avg {max(loads):.1f} on {cores} cores")
    drift = None
    if matmul_before and matmul_after:
        drift = matmul_after / matmul_before - 1
        if abs(drift) > MATMUL_DRIFT_MAX:
            reasons.append(f"calibration matmul {matmul_after / matmul_before:.2f}x after vs before")
    if gpu is not None:
        if gpu.other_processes:
            reasons.append(f"{gpu.other_processes} other process{'es' if gpu.other_processes > 1 else ''} on the GPU")
        disturbing = [r for r in gpu.throttle if r in GPU_DISTURBING]
        if disturbing:
            reasons.append("GPU clocks throttled: " + ", ".join(disturbing))
    columns = {
        "load_avg_start": window.load_start,
        "load_avg_end": window.load_end,
        "cpu_share": window.cpu_share,
        "run_queue_wait_share": window.run_wait_share,
        "steal_fraction": window.steal_fraction,
        "matmul_drift": drift,
        "gpu_other_processes": gpu.other_processes if gpu else None,
        "gpu_throttle_reasons": (", ".join(gpu.throttle) or "none") if gpu and gpu.unavailable is None else
                                (f"unavailable: {gpu.unavailable}" if gpu else None),
    }
    return Contention(tuple(reasons), columns)


def combine(parts: Sequence[dict[str, Any]], label: str = "process") -> dict[str, Any]:
    """The row's contention columns from its processes' (each a `row_columns` dict): the worst reading
    of each kind, and every contended process's reasons, labelled with its number (`label` 'rank':
    the ranks of one multi-rank group, numbered from 0 as torch.distributed does)."""
    if not parts:
        return {}

    def worst(key: str, pick: Callable) -> Any:
        values = [p.get(key) for p in parts if p.get(key) is not None]
        return pick(values) if values else None

    first = 0 if label == "rank" else 1
    reasons = [f"{label} {i + first}: {p['contention_reason']}" if len(parts) > 1 else p["contention_reason"]
               for i, p in enumerate(parts) if p.get("contended")]
    throttles = sorted({r for p in parts for r in str(p.get("gpu_throttle_reasons") or "").split(", ")
                        if r and r != "none" and not r.startswith("unavailable")})
    return {
        "contended": bool(reasons),
        "contention_reason": "; ".join(reasons) or None,
        "load_avg_start": worst("load_avg_start", max),
        "load_avg_end": worst("load_avg_end", max),
        "cpu_share": worst("cpu_share", min),
        "run_queue_wait_share": worst("run_queue_wait_share", max),
        "steal_fraction": worst("steal_fraction", max),
        "matmul_drift": worst("matmul_drift", lambda v: max(v, key=abs)),
        "gpu_other_processes": worst("gpu_other_processes", max),
        "gpu_throttle_reasons": ", ".join(throttles) if throttles else worst("gpu_throttle_reasons", lambda v: v[0]),
    }


def row_columns(contention: Contention) -> dict[str, Any]:
    return {"contended": contention.contended, "contention_reason": "; ".join(contention.reasons) or None,
            **contention.columns}


# ---------------------------------------------------------------------------------------------
# Readers (Linux /proc; None where absent)


def load_average() -> Optional[float]:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def cpu_jiffies(stat: Path = Path("/proc/stat")) -> tuple[Optional[int], Optional[int]]:
    """(all CPU time, steal time) of the machine in jiffies, from the aggregate 'cpu' line."""
    try:
        fields = stat.read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None, None
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        return None, None
    values = [int(v) for v in fields[1:]]
    # guest time (fields 9, 10) is already counted in user/nice
    return sum(values[:8]), values[7]


def run_queue_wait_s(pid: int | str = "self", proc: Path = Path("/proc")) -> Optional[float]:
    """Seconds all threads of a process spent runnable but waiting for a CPU (schedstat field 2)."""
    total = 0
    try:
        tasks = list((proc / str(pid) / "task").iterdir())
    except OSError:
        return None
    for task in tasks:
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return total / 1e9 if tasks else None


def read() -> Reading:
    jiffies, steal = cpu_jiffies()
    return Reading(time.perf_counter(), time.process_time(), load_average(), jiffies, steal, run_queue_wait_s())


def cores() -> int:
    """CPUs of the machine: what the (machine-wide) load average is measured against."""
    return os.cpu_count() or 1


def matmul_probe(seconds: float = 0.05, size: int = 384, device: Any = "cpu") -> float:
    """Median GFLOP/s of a small fp32 matmul over `seconds`, at the current thread count.

    The median, not the best: the probe must slow down when the process is sharing its cores,
    which a best-of-many hides.
    """
    import statistics

    import torch

    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    sync = (lambda: torch.cuda.synchronize(device)) if str(device).startswith("cuda") else (lambda: None)
    torch.matmul(a, b)
    sync()
    times: list[float] = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds or len(times) < 3:
        t0 = time.perf_counter()
        torch.matmul(a, b)
        sync()
        times.append(time.perf_counter() - t0)
    return 2 * size**3 / statistics.median(times) / 1e9


# ---------------------------------------------------------------------------------------------
# GPU (NVML; `lib` is pynvml or a fake)


def gpu_state(device: Any, lib: Any = None, env: Optional[dict[str, str]] = None, own_pids: Sequence[int] = ()) -> GpuState:
    """Foreign compute processes on the device and the throttle reasons set right now."""
    from harness.metrics.nvml import NvmlUnavailable, open_nvml, torch_uuid

    own = {os.getpid(), *own_pids}
    try:
        with open_nvml(lib) as nvml:
            handle = nvml.handle(device, env, torch_uuid(device))
            others = None
            try:
                others = sum(p.pid not in own for p in nvml.lib.nvmlDeviceGetComputeRunningProcesses(handle))
            except Exception:  # noqa: BLE001 - NVMLError subclasses vary by driver; unsupported stays None
                pass
            return GpuState(others, _throttle(nvml.lib, handle))
    except NvmlUnavailable as exc:
        return GpuState(unavailable=str(exc))


def _throttle(lib: Any, handle: Any) -> tuple[str, ...]:
    for name in ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"):
        query = getattr(lib, name, None)
        if query is None:
            continue
        try:
            mask = int(query(handle))
        except Exception:  # noqa: BLE001 - not supported on this board
            return ()
        return tuple(label for bit, label in GPU_THROTTLE_BITS.items() if mask & bit)
    return ()


def merge_gpu(*states: GpuState) -> GpuState:
    """The union of what several readings saw (start and end of a window)."""
    seen = [s for s in states if s.unavailable is None]
    if not seen:
        return states[0] if states else GpuState(unavailable="not read")
    counts = [s.other_processes for s in seen if s.other_processes is not None]
    throttle = tuple(dict.fromkeys(r for s in seen for r in s.throttle))
    return GpuState(max(counts) if counts else None, throttle)


def watch(run: Callable[[], Any], device: Any, threads: int, probe_s: float = 0.05,
          waited: Optional[Callable[[], float]] = None, peers: int = 0) -> tuple[Any, dict[str, Any]]:
    """Run a timed pass between two readings (and two calibration probes); returns its result and
    the contention columns of that window. For a rank of a multi-rank case: `waited`, a running
    total of the seconds it spent blocked on its peers (its collectives), left out of the CPU and
    run-queue shares; `peers`, the other ranks on this machine, which with it may fill the cores."""
    cuda = getattr(device, "type", str(device)) == "cuda"
    before = matmul_probe(probe_s, device=device)
    gpu_start = gpu_state(device) if cuda else None
    waited_before = waited() if waited else 0.0
    start = read()
    result = run()
    end = read()
    waited_s = (waited() - waited_before) if waited else 0.0
    gpu = merge_gpu(gpu_start, gpu_state(device)) if cuda else None
    after = matmul_probe(probe_s, device=device)
    crowded = (peers + 1) * threads >= cores() if peers else False
    verdict = judge(Window.between(start, end, threads, waited_s), threads, cores(), before, after, gpu,
                    busy_cores=not cuda, run_queue=not crowded)
    return result, row_columns(verdict)
