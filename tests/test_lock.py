"""One writer per run folder: a second one is refused naming the holder; a dead holder's lock is taken over."""
import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from harness.lock import LOCK_NAME, FolderInUse, RunLock

HOLD = """
import sys, time
from pathlib import Path
from harness.lock import RunLock
lock = RunLock(Path(sys.argv[1]), "test holder").acquire()
print("held", flush=True)
time.sleep(600)
"""


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_second_holder_is_refused_naming_the_first(tmp_path):
    with RunLock(tmp_path / "run", "run suite.yaml"):
        with pytest.raises(FolderInUse) as info:
            RunLock(tmp_path / "run", "run --resume").acquire()
    message = str(info.value)
    assert f"pid {os.getpid()} on {socket.gethostname()} since " in message and "(run suite.yaml)" in message
    assert not (tmp_path / "run" / LOCK_NAME).exists()  # released
    with RunLock(tmp_path / "run", "again") as lock:
        assert lock.took_over is None


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderInUse, match=f"pid {holder.pid} on "):
            RunLock(folder, "second").acquire()
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        assert (folder / LOCK_NAME).exists()  # left behind by the kill
        with RunLock(folder, "third") as lock:
            assert lock.took_over is not None and lock.took_over.pid == holder.pid
            assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_file_with_a_dead_pid_is_taken_over(tmp_path):
    tmp_path.joinpath(LOCK_NAME).write_text(json.dumps(
        {"pid": dead_pid(), "host": socket.gethostname(), "started": "2026-01-01T00:00:00+00:00", "command": "run"}
    ))
    with RunLock(tmp_path, "run") as lock:
        assert lock.took_over is not None and lock.took_over.started.startswith("2026-01-01")


@pytest.mark.parametrize("content", ["", "garbage", "[1, 2]", '{"pid": "x"}'])
def test_unreadable_lock_file_without_a_holder_is_taken(tmp_path, content):
    tmp_path.joinpath(LOCK_NAME).write_text(content)
    with RunLock(tmp_path, "run") as lock:
        assert lock.took_over is None


def test_lock_from_another_machine_is_not_taken_silently(tmp_path):
    tmp_path.joinpath(LOCK_NAME).write_text(json.dumps(
        {"pid": 1234, "host": "some-other-node", "started": "2026-01-01T00:00:00+00:00", "command": "run"}
    ))
    with pytest.raises(FolderInUse, match="some-other-node.*delete .*" + LOCK_NAME):
        RunLock(tmp_path, "run").acquire()


def test_concurrent_acquirers_get_exactly_one_lock(tmp_path):
    """Many processes race for one folder (with releases in between): never two holders at once."""
    script = """
import sys, time, os
from pathlib import Path
from harness.lock import RunLock, FolderInUse
folder, log = Path(sys.argv[1]), Path(sys.argv[2])
got = 0
deadline = time.time() + 1.5
while time.time() < deadline:
    try:
        with RunLock(folder, "race"):
            marker = folder / "inside"
            assert not marker.exists(), "two holders"
            marker.touch(); time.sleep(0.002); marker.unlink()
            got += 1
    except FolderInUse:
        pass
with open(log, "a") as f:
    f.write(f"{got}\\n")
"""
    log = tmp_path / "log"
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "run"), str(log)], stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    errors = [p.communicate(timeout=60)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    assert sum(int(n) for n in log.read_text().split()) > 0
