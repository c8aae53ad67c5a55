"""Why a worker died from a signal, and for SIGKILL whether the out-of-memory killer did it.

SIGKILL comes from the kernel's OOM killer, from a person (`kill -9`) or from another supervisor;
only evidence tells them apart, so a kill is recorded as `oom` only with evidence. The sources, in
order: the kernel log naming the worker's pid (where this user may read it), the memory cgroup's
OOM-kill counter (cgroup v2 `memory.events`, cgroup v1 `memory.oom_control` on kernels >= 4.13),
and on older cgroup v1 kernels `memory.failcnt` (the cgroup hit its limit). Without any of them the
reason says "cause unknown".
"""
from __future__ import annotations

import os
import re
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

SIGNAL_NAMES = {getattr(signal, n): n for n in ("SIGKILL", "SIGSEGV", "SIGABRT", "SIGBUS", "SIGTERM", "SIGINT", "SIGILL", "SIGFPE")}
MAX_KERNEL_LOG = 4 << 20


@dataclass(frozen=True)
class Sources:
    """Where this machine exposes the evidence; tests point it at a fake tree."""

    cgroup_root: Path = Path("/sys/fs/cgroup")
    proc_cgroup: Path = Path("/proc/self/cgroup")
    kernel_log: Path = Path("/dev/kmsg")


SOURCES = Sources()


@dataclass(frozen=True)
class Counters:
    """The memory cgroup's counters at one moment; None where this machine does not expose one."""

    oom_kill: Optional[int] = None
    failcnt: Optional[int] = None
    files: tuple[str, ...] = field(default=())


def memory_cgroup(sources: Sources) -> Optional[tuple[str, Path]]:
    """("v1" | "v2", folder) of this process's memory cgroup, or None when neither can be found.

    A v1 memory controller wins over the v2 line (hybrid hosts have both). Inside a container the
    listed path is often the host's, while the container sees its own cgroup at the mount root.
    """
    try:
        lines = sources.proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    v1 = v2 = None
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        relative = path.strip().lstrip("/")
        if "memory" in controllers.split(","):
            v1 = [sources.cgroup_root / "memory" / relative, sources.cgroup_root / "memory"]
        elif controllers == "":
            v2 = [sources.cgroup_root / relative, sources.cgroup_root]
    if v1:
        found = next((d for d in v1 if (d / "memory.failcnt").exists() or (d / "memory.oom_control").exists()), None)
        return ("v1", found) if found else None
    if v2:
        found = next((d for d in v2 if (d / "memory.events").exists()), None)
        return ("v2", found) if found else None
    return None


def _field(text: str, key: str) -> Optional[int]:
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _read(path: Path) -> Optional[str]:
    try:
        return path.read_text()
    except OSError:
        return None


def read_counters(sources: Optional[Sources] = None) -> Counters:
    found = memory_cgroup(sources or SOURCES)
    if found is None:
        return Counters()
    version, folder = found
    if version == "v2":
        text = _read(folder / "memory.events")
        return Counters(oom_kill=_field(text or "", "oom_kill"), files=(str(folder / "memory.events"),))
    control, failcnt = _read(folder / "memory.oom_control"), _read(folder / "memory.failcnt")
    try:
        fails = int(failcnt) if failcnt is not None else None
    except ValueError:
        fails = None
    return Counters(
        oom_kill=_field(control or "", "oom_kill"), failcnt=fails,
        files=(str(folder / "memory.oom_control"), str(folder / "memory.failcnt")),
    )


def kernel_log_kill(pid: int, sources: Optional[Sources] = None) -> Optional[str]:
    """The kernel log line that says the OOM killer killed `pid`, if this user may read the log.

    Inside a pid namespace the kernel logs the host's pid, so no line matches and other evidence decides.
    """
    pattern = re.compile(rf"(Killed process {pid} \(|oom-kill:.*[,:]pid={pid}[,\s])")
    try:
        fd = os.open((sources or SOURCES).kernel_log, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    found, read = None, 0
    try:
        while read < MAX_KERNEL_LOG:
            try:
                record = os.read(fd, 8192)
            except BlockingIOError:
                break  # no more records
            except BrokenPipeError:
                continue  # a record was overwritten while reading; go on with the next
            except OSError:
                break
            if not record:
                break
            read += len(record)
            for line in record.decode(errors="replace").splitlines():  # /dev/kmsg gives one record a read
                message = line.partition(";")[2].strip()
                if pattern.search(message):
                    found = message
    finally:
        os.close(fd)
    return found


def explain_signal(
    returncode: int, pid: int, before: Counters, after: Counters, sources: Optional[Sources] = None
) -> tuple[str, str]:
    """(status, reason) for a worker that died from signal -returncode."""
    sig = -returncode
    name = SIGNAL_NAMES.get(sig, f"signal {sig}")
    if sig != signal.SIGKILL:
        return "failed", f"worker crashed with {name}"
    line = kernel_log_kill(pid, sources)
    if line:
        return "oom", f"worker killed by the kernel's out-of-memory killer (kernel log: {line[:160]})"
    if before.oom_kill is not None and after.oom_kill is not None:
        if after.oom_kill > before.oom_kill:
            return "oom", f"worker killed by the out-of-memory killer (cgroup oom_kill rose, {after.files[0]})"
        return "failed", "worker killed by SIGKILL, not by the out-of-memory killer (the cgroup's oom_kill did not rise)"
    if before.failcnt is not None and after.failcnt is not None and after.failcnt > before.failcnt:
        return "oom", f"worker killed by SIGKILL while its cgroup hit the memory limit (memory.failcnt rose, {after.files[-1]})"
    return "failed", "worker killed by SIGKILL (cause unknown: no out-of-memory evidence readable on this machine)"
