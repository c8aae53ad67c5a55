"""Contention readings and the rule that flags a disturbed measurement."""
import os
import subprocess
import sys
import time

import pytest

from harness.metrics import contention
from harness.metrics.contention import GpuState, Reading, Window, combine, judge, row_columns
from tests.fake_nvml import FakeGpu, FakeNvml, PowerTrace


def _window(share=1.0, wait=0.0, steal=0.0, load=(0.5, 0.6), wall=2.0, threads=1):
    before = Reading(0.0, 0.0, load[0], 1000, 10, 0.0)
    after = Reading(wall, share * wall * threads, load[1], 1000 + 400, 10 + int(steal * 400), wait * wall * threads)
    return Window.between(before, after, threads)


def test_window_arithmetic():
    w = _window(share=0.5, wait=0.25, steal=0.1, threads=2)
    assert w.cpu_share == pytest.approx(0.5) and w.run_wait_share == pytest.approx(0.25)
    assert w.steal_fraction == pytest.approx(0.1) and (w.load_start, w.load_end) == (0.5, 0.6)
    missing = Window.between(Reading(0.0, 0.0), Reading(1.0, 1.0), 1)
    assert missing.steal_fraction is None and missing.run_wait_share is None and missing.load_start is None


def test_an_undisturbed_window_is_not_contended():
    verdict = judge(_window(share=0.97, wait=0.01), threads=1, cores=2, matmul_before=100, matmul_after=104)
    assert not verdict.contended and verdict.columns["matmul_drift"] == pytest.approx(0.04)


@pytest.mark.parametrize("kwargs, expected", [
    (dict(window=_window(share=0.41, threads=2), threads=2), "cpu share 0.41 of 2 threads"),
    (dict(window=_window(wait=0.4)), "waited for a CPU 40% of the time"),
    (dict(window=_window(steal=0.2)), "hypervisor steal 20%"),
    (dict(window=_window(load=(3.9, 3.1))), "load avg 3.9 on 2 cores"),
    (dict(window=_window(), matmul_before=100, matmul_after=40), "calibration matmul 0.40x after vs before"),
])
def test_each_source_alone_flags_contention(kwargs, expected):
    args = {"threads": 1, "cores": 2, **kwargs}
    verdict = judge(**args)
    assert verdict.contended and verdict.reasons == (expected,)


def test_gpu_processes_and_throttling():
    quiet = judge(_window(share=0.1), 1, 2, gpu=GpuState(0, ("sw_power_cap",)), busy_cores=False)
    assert not quiet.contended  # host thread waits on the GPU; a power cap is normal full-load behaviour
    assert quiet.columns["gpu_throttle_reasons"] == "sw_power_cap"
    busy = judge(_window(), 1, 2, gpu=GpuState(2, ("hw_thermal_slowdown",)), busy_cores=False)
    assert busy.reasons == ("2 other processes on the GPU", "GPU clocks throttled: hw_thermal_slowdown")


def test_gpu_state_from_fake_nvml_excludes_our_own_processes():
    gpu = FakeGpu("GPU-c0ffee", PowerTrace.constant(100.0), compute_pids=(os.getpid(), 4242, 4343),
                  throttle_mask=0x4 | 0x40)
    state = contention.gpu_state(0, lib=FakeNvml([gpu]), env={})
    assert state.other_processes == 2
    assert state.throttle == ("sw_power_cap", "hw_thermal_slowdown")
    own = contention.gpu_state(0, lib=FakeNvml([gpu]), env={}, own_pids=(4242, 4343))
    assert own.other_processes == 0
    broken = FakeNvml([gpu], init_error="driver not loaded")
    assert contention.gpu_state(0, lib=broken, env={}).unavailable.startswith("NVML could not initialise")
    merged = contention.merge_gpu(GpuState(0, ("sw_power_cap",)), GpuState(1, ("hw_slowdown",)))
    assert merged == GpuState(1, ("sw_power_cap", "hw_slowdown"))


def test_combine_keeps_the_worst_reading_and_labels_processes():
    calm = row_columns(judge(_window(share=0.98), 1, 2))
    stalled = row_columns(judge(_window(share=0.30), 1, 2))
    row = combine([calm, stalled])
    assert row["contended"] and row["contention_reason"] == "process 2: cpu share 0.30 of 1 thread"
    assert row["cpu_share"] == pytest.approx(0.30)
    assert combine([calm])["contended"] is False and combine([calm])["contention_reason"] is None
    assert combine([]) == {}


def test_time_a_rank_waited_on_its_peers_is_not_counted_as_a_denied_cpu():
    # 2 s window, 0.9 s of CPU, 1 s blocked in collectives: the rank used 0.9 of the 1 s it could run
    before, after = Reading(0.0, 0.0, None, None, None, 0.0), Reading(2.0, 0.9, None, None, None, 0.05)
    assert Window.between(before, after, 1).cpu_share == pytest.approx(0.45)
    waited = Window.between(before, after, 1, waited_s=1.0)
    assert waited.cpu_share == pytest.approx(0.9) and waited.run_wait_share == pytest.approx(0.05)
    assert not judge(waited, 1, 2).contended
    assert Window.between(before, after, 1, waited_s=5.0).cpu_share is None  # nothing left to judge


def test_ranks_filling_the_cores_record_run_queue_wait_without_judging_it():
    crowded = _window(wait=0.4)
    assert judge(crowded, 1, 2).reasons == ("waited for a CPU 40% of the time",)
    own_group = judge(crowded, 1, 2, run_queue=False)
    assert not own_group.contended and own_group.columns["run_queue_wait_share"] == pytest.approx(0.4)
    assert judge(_window(share=0.5, wait=0.4), 1, 2, run_queue=False).reasons == ("cpu share 0.50 of 1 thread",)


def test_combine_labels_the_ranks_of_a_group_from_zero():
    calm = row_columns(judge(_window(share=0.98), 1, 2))
    stalled = row_columns(judge(_window(share=0.30), 1, 2))
    assert combine([calm, stalled], label="rank")["contention_reason"] == "rank 1: cpu share 0.30 of 1 thread"


def test_proc_readers(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 800 10 0 5 35 0 0\ncpu0 1 2 3\n")
    assert contention.cpu_jiffies(stat) == (1000, 35)
    stat.write_text("garbage\n")
    assert contention.cpu_jiffies(stat) == (None, None)
    assert contention.cpu_jiffies(tmp_path / "absent") == (None, None)
    if not os.path.exists("/proc/self/task"):
        pytest.skip("no /proc on this machine")
    assert contention.run_queue_wait_s() is not None
    assert contention.run_queue_wait_s(pid=2**22 + 7) is None


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_a_busy_loop_on_the_same_core_shows_as_lost_cpu_share():
    """A real busy loop pinned to this process's core: the process gets about half of it."""
    core = min(os.sched_getaffinity(0))
    before_affinity = os.sched_getaffinity(0)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(busy.pid, {core})
        os.sched_setaffinity(0, {core})
        time.sleep(0.2)
        start = contention.read()
        deadline = time.perf_counter() + 0.6
        while time.perf_counter() < deadline:
            pass
        window = Window.between(start, contention.read(), threads=1)
    finally:
        busy.kill()
        busy.wait()
        os.sched_setaffinity(0, before_affinity)
    verdict = judge(window, threads=1, cores=contention.cores())
    assert verdict.contended, window
    assert window.cpu_share < 0.8
