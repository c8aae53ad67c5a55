"""One writer per run folder: `run`, `run --resume` and `merge --out` hold `D/.lock` while they write D.

The lock is an advisory `flock` on the file, so the kernel drops it when its holder dies, even by
SIGKILL: a lock file left behind by a dead runner is stale by construction and is taken over. The
file's text names the holder (pid, host, start time, command) for the refusal message. A lock file
written on another host whose holder this machine cannot check is not taken over silently (a
network filesystem may not share flocks between hosts); the message says how to remove it.
"""
from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import os
import socket
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from harness.errors import UserError

LOCK_NAME = ".lock"


class FolderInUse(UserError):
    """Another process holds the run folder."""


@dataclass(frozen=True)
class Holder:
    pid: int
    host: str
    started: str
    command: str

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} since {self.started} ({self.command})"

    @classmethod
    def parse(cls, text: str) -> Optional["Holder"]:
        try:
            data = json.loads(text)
            return cls(int(data["pid"]), str(data["host"]), str(data["started"]), str(data.get("command", "?")))
        except (ValueError, KeyError, TypeError):
            return None


class RunLock:
    """Held from `acquire` to `release` (or the end of a `with` block); `took_over` names a stale holder."""

    def __init__(self, folder: Path, command: str):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.command = command
        self.took_over: Optional[Holder] = None
        self._fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise FolderInUse(self._in_use_message(self._read_holder())) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the previous holder removed the file between our open and our flock: retry
                os.close(fd)
                continue
            self._fd = fd
            try:
                self._claim()
            except BaseException:
                self.release()
                raise
            return self
        raise FolderInUse(f"{self.folder}: could not take {self.path} (another process keeps replacing it)")

    def _claim(self) -> None:
        previous = Holder.parse(os.pread(self._fd, 4096, 0).decode(errors="replace"))
        here = socket.gethostname()
        if previous is not None and previous.pid != os.getpid():
            if previous.host != here:
                raise FolderInUse(
                    f"{self.folder} is locked by {previous.describe()}, on another machine whose process this one "
                    f"cannot check; if that run has ended, delete {self.path}"
                )
            self.took_over = previous
        holder = Holder(os.getpid(), here, dt.datetime.now().astimezone().isoformat(timespec="seconds"), self.command)
        data = json.dumps(asdict(holder)).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)
        os.fsync(self._fd)

    def _read_holder(self) -> Optional[Holder]:
        try:
            return Holder.parse(self.path.read_text(errors="replace")[:4096])
        except OSError:
            return None

    def _in_use_message(self, holder: Optional[Holder]) -> str:
        who = holder.describe() if holder else "another process (its lock file does not say which)"
        return f"{self.folder} is in use by {who}; wait for it to finish or stop it, then try again"

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink()  # while still holding the flock, so nobody can be mid-claim on this inode
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def note_takeover(lock: RunLock) -> None:
    if lock.took_over is not None:
        print(f"note: {lock.folder}: took over the lock of {lock.took_over.describe()}, which is no longer running", file=sys.stderr)
