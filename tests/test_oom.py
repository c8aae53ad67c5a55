"""A SIGKILLed worker is `oom` only with evidence: kernel log, cgroup v2 or v1 counters (fake trees here)."""
import os
import signal
import subprocess
import sys

import pytest

from harness.oom import Counters, Sources, explain_signal, kernel_log_kill, memory_cgroup, read_counters

KILLED = -signal.SIGKILL


def v1_tree(tmp_path, oom_kill=0, failcnt=3, with_oom_kill=True, cgroup="/user.slice/job-7"):
    folder = tmp_path / "cg" / "memory" / cgroup.lstrip("/")
    folder.mkdir(parents=True)
    control = "oom_kill_disable 0\nunder_oom 0\n" + (f"oom_kill {oom_kill}\n" if with_oom_kill else "")
    (folder / "memory.oom_control").write_text(control)
    (folder / "memory.failcnt").write_text(f"{failcnt}\n")
    proc = tmp_path / "cgroup"
    proc.write_text(f"12:pids:{cgroup}\n5:memory:{cgroup}\n1:name=systemd:{cgroup}\n0::/\n")
    return Sources(cgroup_root=tmp_path / "cg", proc_cgroup=proc, kernel_log=tmp_path / "no-kmsg"), folder


def v2_tree(tmp_path, oom_kill=0, cgroup="/system.slice/runner.service"):
    folder = tmp_path / "cg" / cgroup.lstrip("/")
    folder.mkdir(parents=True)
    (folder / "memory.events").write_text(f"low 0\nhigh 0\nmax 4\noom 1\noom_kill {oom_kill}\noom_group_kill 0\n")
    proc = tmp_path / "cgroup"
    proc.write_text(f"0::{cgroup}\n")
    return Sources(cgroup_root=tmp_path / "cg", proc_cgroup=proc, kernel_log=tmp_path / "no-kmsg"), folder


def bump(path, key, by=1):
    lines = path.read_text().splitlines()
    path.write_text("\n".join(f"{key} {int(v) + by}" if k == key else line
                              for line in lines for k, _, v in [line.partition(" ")]) + "\n")


def test_cgroup_v1_oom_kill_counter(tmp_path):
    sources, folder = v1_tree(tmp_path)
    assert memory_cgroup(sources) == ("v1", folder)
    before = read_counters(sources)
    assert before.oom_kill == 0 and before.failcnt == 3
    bump(folder / "memory.oom_control", "oom_kill")
    status, reason = explain_signal(KILLED, 4242, before, read_counters(sources), sources)
    assert status == "oom" and "oom_kill rose" in reason
    status, reason = explain_signal(KILLED, 4242, read_counters(sources), read_counters(sources), sources)
    assert status == "failed" and "not by the out-of-memory killer" in reason


def test_cgroup_v1_without_oom_kill_uses_failcnt(tmp_path):
    sources, folder = v1_tree(tmp_path, with_oom_kill=False)
    before = read_counters(sources)
    assert before.oom_kill is None and before.failcnt == 3
    assert explain_signal(KILLED, 1, before, read_counters(sources), sources) == (
        "failed", "worker killed by SIGKILL (cause unknown: no out-of-memory evidence readable on this machine)")
    (folder / "memory.failcnt").write_text("9\n")
    status, reason = explain_signal(KILLED, 1, before, read_counters(sources), sources)
    assert status == "oom" and "memory.failcnt rose" in reason


def test_cgroup_v1_in_a_container_sees_its_cgroup_at_the_root(tmp_path):
    sources, folder = v1_tree(tmp_path, cgroup="/")
    sources.proc_cgroup.write_text("5:memory:/docker/0123abcd\n")  # the host's path, not mounted here
    assert folder == tmp_path / "cg" / "memory"
    assert memory_cgroup(sources) == ("v1", folder)


def test_cgroup_v2(tmp_path):
    sources, folder = v2_tree(tmp_path, oom_kill=2)
    before = read_counters(sources)
    assert before.oom_kill == 2 and before.failcnt is None
    bump(folder / "memory.events", "oom_kill")
    assert explain_signal(KILLED, 1, before, read_counters(sources), sources)[0] == "oom"


def test_no_evidence_means_cause_unknown_never_oom(tmp_path):
    sources = Sources(cgroup_root=tmp_path / "none", proc_cgroup=tmp_path / "missing", kernel_log=tmp_path / "none")
    assert read_counters(sources) == Counters()
    status, reason = explain_signal(KILLED, 1, Counters(), Counters(), sources)
    assert status == "failed" and reason.startswith("worker killed by SIGKILL (cause unknown")


def test_other_signals_are_crashes(tmp_path):
    sources, folder = v2_tree(tmp_path)
    bump(folder / "memory.events", "oom_kill")  # even with the counter moving, a SIGSEGV is a crash
    assert explain_signal(-signal.SIGSEGV, 1, Counters(oom_kill=0), read_counters(sources), sources) == (
        "failed", "worker crashed with SIGSEGV")


def test_kernel_log_names_the_pid(tmp_path):
    log = tmp_path / "kmsg"
    log.write_text(
        "6,100,5000,-;eth0: link up\n"
        "3,101,6000,-;Memory cgroup out of memory: Killed process 4243 (python) total-vm:1000kB\n"
        "3,102,7000,-;Out of memory: Killed process 4242 (python) total-vm:2000kB, anon-rss:1500kB\n"
    )
    sources = Sources(cgroup_root=tmp_path / "none", proc_cgroup=tmp_path / "none", kernel_log=log)
    assert "Killed process 4242 (python)" in kernel_log_kill(4242, sources)
    assert kernel_log_kill(424, sources) is None
    status, reason = explain_signal(KILLED, 4242, Counters(), Counters(), sources)
    assert status == "oom" and "kernel log" in reason


@pytest.mark.skipif(not os.path.exists("/dev/kmsg"), reason="no kernel log device")
def test_real_kernel_log_is_read_without_blocking():
    proc = subprocess.run([sys.executable, "-c", "from harness.oom import kernel_log_kill; print(kernel_log_kill(1))"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
