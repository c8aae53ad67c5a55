"""Energy arithmetic, source fallback, idle subtraction, window extension and device mapping, all
against a fake NVML (tests/fake_nvml.py) and a fake RAPL sysfs tree, so the expected joules are exact."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.metrics import energy, nvml
from harness.metrics.energy import measure_energy, measure_idle
from harness.metrics.energy_meters import TrapezoidIntegrator, open_meter
from harness.metrics.nvml import NvmlUnavailable, nvml_target, open_nvml, visible_devices
from tests.fake_nvml import FakeClock, FakeGpu, FakeNvml, PowerTrace

CUDA0 = torch.device("cuda", 0)
CUDA1 = torch.device("cuda", 1)
NO_SYNC = dict(sync=lambda: None)


def fake(*watts: float, clock=None, **gpu_kwargs) -> FakeNvml:
    gpus = [FakeGpu(uuid=f"GPU-{i}{i}{i}{i}-aaaa", trace=PowerTrace.constant(w), **gpu_kwargs) for i, w in enumerate(watts)]
    return FakeNvml(gpus, clock=clock or FakeClock())


def stepper(clock: FakeClock, seconds: float):
    calls = []

    def step():
        calls.append(clock())
        clock.advance(seconds)

    return step, calls


def no_rapl(tmp_path: Path) -> dict:
    return {"rapl_root": tmp_path / "no-powercap"}


# ----------------------------------------------------------------------------- NVML counter


def test_counter_energy_per_step_is_exact(tmp_path):
    clock = FakeClock()
    lib = fake(200.0, clock=clock, update_period_s=0.125)
    step, calls = stepper(clock, 0.0625)
    cols = measure_energy(step, CUDA0, tokens_per_step=256, min_window_s=1.0, idle_power_w=50.0,
                          lib=lib, env={}, clock=clock, **NO_SYNC, **no_rapl(tmp_path))
    assert cols["energy_source"] == "nvml_counter"
    assert cols["energy_iterations"] == len(calls) == 16
    assert cols["energy_window_s"] == 1.0
    assert cols["energy_j"] == pytest.approx(200.0 * 0.0625)
    assert cols["energy_j_per_token"] == pytest.approx(200.0 * 0.0625 / 256)
    assert cols["avg_power_w"] == pytest.approx(200.0)
    assert cols["idle_power_w"] == 50.0
    assert cols["energy_above_idle_j"] == pytest.approx(150.0 * 0.0625)
    assert cols["energy_above_idle_j_per_token"] == pytest.approx(150.0 * 0.0625 / 256)
    assert lib.inits == lib.shutdowns == 1


def test_window_repeats_the_step_until_the_minimum_window(tmp_path):
    for min_window, expected in [(1.0, 64), (0.5, 32), (2.0, 128)]:
        clock = FakeClock()
        step, calls = stepper(clock, 1 / 64)
        cols = measure_energy(step, CUDA0, 1, min_window_s=min_window, lib=fake(100.0, clock=clock),
                              env={}, clock=clock, **NO_SYNC, **no_rapl(tmp_path))
        assert cols["energy_iterations"] == expected
        assert cols["energy_window_s"] >= min_window


def test_window_is_rechecked_after_the_closing_sync(tmp_path):
    """On a GPU the host runs ahead; the sync that drains the queue can end before the window is long enough."""
    clock = FakeClock()
    syncs = []

    def step():
        clock.advance(0.25)

    def sync():
        syncs.append(clock())

    cols = measure_energy(step, CUDA0, 1, min_window_s=1.0, lib=fake(100.0, clock=clock), env={},
                          clock=clock, sync=sync, **no_rapl(tmp_path))
    assert cols["energy_iterations"] == 4
    assert syncs[0] == 0.0 and syncs[-1] == 1.0


def test_a_window_shorter_than_a_counter_update_is_missing_not_zero(tmp_path):
    clock = FakeClock(0.01)
    step, _ = stepper(clock, 0.01)
    cols = measure_energy(step, CUDA0, 1, min_window_s=0.05, lib=fake(300.0, clock=clock, update_period_s=0.1),
                          env={}, clock=clock, **NO_SYNC, **no_rapl(tmp_path))
    assert cols["energy_j"] is None and cols["energy_j_per_token"] is None and cols["avg_power_w"] is None
    assert cols["energy_source"].startswith("unavailable: nvml_counter read 0 J")


@settings(max_examples=60, deadline=None)
@given(
    start=st.floats(0.0, 1.0),
    step_s=st.floats(0.003, 0.3),
    window=st.floats(0.5, 2.0),
    levels=st.lists(st.floats(30.0, 700.0), min_size=2, max_size=6),
)
def test_counter_quantisation_error_stays_within_one_update_at_each_end(start, step_s, window, levels):
    """Against the exact integral of a varying trace: each end lags by under one update, in opposite
    directions, so |window error| < one update period of energy at peak power."""
    points = tuple((start + i * window / len(levels), w) for i, w in enumerate(levels))
    trace = PowerTrace(points)
    clock = FakeClock(start)
    lib = FakeNvml([FakeGpu("GPU-x", trace, update_period_s=0.1)], clock=clock)
    step, calls = stepper(clock, step_s)
    cols = measure_energy(step, CUDA0, 1, min_window_s=window, lib=lib, env={}, clock=clock,
                          rapl_root=Path("/nonexistent"), **NO_SYNC)
    n = cols["energy_iterations"]
    truth = trace.energy(start, start + n * step_s) / n
    bound = 0.1 * max(levels) / n + 2e-3 / n
    assert cols["energy_j"] == pytest.approx(truth, abs=bound)


# ----------------------------------------------------------------------------- power sampling fallback


def test_falls_back_to_power_sampling_when_the_counter_is_unsupported(tmp_path):
    clock = FakeClock()
    lib = fake(250.0, clock=clock, counter_supported=False)
    step, _ = stepper(clock, 0.1)
    cols = measure_energy(step, CUDA0, 10, min_window_s=1.0, lib=lib, env={}, clock=clock,
                          interval_s=3600.0, **NO_SYNC, **no_rapl(tmp_path))
    assert cols["energy_source"] == "nvml_power_sampling"
    assert cols["energy_j"] == pytest.approx(25.0)
    assert cols["energy_j_per_token"] == pytest.approx(2.5)
    assert lib.inits == lib.shutdowns == 2  # the counter attempt closed its session too


def test_sampling_thread_integrates_a_ramp_exactly():
    """Trapezoid integration is exact for power linear in time, whenever the samples fall."""
    t_zero = time.perf_counter()
    trace = PowerTrace(((t_zero, 100.0), (t_zero + 10.0, 10_100.0)))  # 1000 W/s
    lib = FakeNvml([FakeGpu("GPU-r", trace, counter_supported=False)], clock=time.perf_counter)
    stamps = []

    def recording_clock():
        stamps.append(time.perf_counter())
        return stamps[-1]

    meter = open_meter(CUDA0, sources=("nvml_power_sampling",), lib=lib, env={}, interval_s=0.005, clock=recording_clock)
    assert meter.source == "nvml_power_sampling"
    time.sleep(0.3)
    joules = meter.read_j()
    meter.close()
    assert len(stamps) > 10
    assert joules == pytest.approx(trace.energy(stamps[0], stamps[-1]), rel=2e-3)


def test_trapezoid_integrator():
    integ = TrapezoidIntegrator()
    for t, w in [(0.0, 0.0), (1.0, 10.0), (3.0, 10.0), (4.0, 0.0)]:
        integ.add(t, w)
    assert integ.joules == pytest.approx(5.0 + 20.0 + 5.0)


# ----------------------------------------------------------------------------- idle baseline


def test_idle_baseline_and_subtraction_end_to_end(tmp_path):
    clock = FakeClock()
    trace = PowerTrace(((0.0, 60.0), (2.0, 60.0), (2.0 + 1e-9, 260.0)))
    lib = FakeNvml([FakeGpu("GPU-i", trace, update_period_s=0.125)], clock=clock)
    idle = measure_idle(CUDA0, duration_s=2.0, sleep=clock.sleep, clock=clock, lib=lib, env={}, **no_rapl(tmp_path))
    assert idle["idle_power_w"] == pytest.approx(60.0)
    assert idle["idle_source"] == "nvml_counter"
    assert idle["cpu_idle_power_w"] is None and idle["cpu_idle_source"].startswith("unavailable: rapl:")
    step, _ = stepper(clock, 0.25)
    cols = measure_energy(step, CUDA0, 100, 1.0, idle["idle_power_w"], lib=lib, env={}, clock=clock,
                          **NO_SYNC, **no_rapl(tmp_path))
    assert cols["energy_j"] == pytest.approx(260.0 * 0.25, rel=1e-6)
    assert cols["energy_above_idle_j"] == pytest.approx(200.0 * 0.25, rel=1e-6)
    assert cols["energy_above_idle_j_per_token"] == pytest.approx(0.5, rel=1e-6)


def test_missing_idle_power_leaves_the_subtracted_columns_empty(tmp_path):
    clock = FakeClock()
    step, _ = stepper(clock, 0.5)
    cols = measure_energy(step, CUDA0, 4, 1.0, None, lib=fake(100.0, clock=clock), env={}, clock=clock,
                          **NO_SYNC, **no_rapl(tmp_path))
    assert cols["energy_j"] == pytest.approx(50.0)
    assert cols["energy_above_idle_j"] is None and cols["idle_power_w"] is None


# ----------------------------------------------------------------------------- unavailable


def test_no_nvml_means_unavailable_with_reasons_never_zero(tmp_path):
    clock = FakeClock()
    lib = fake(100.0, clock=clock)
    lib.init_error = "Driver Not Loaded"
    step, _ = stepper(clock, 0.5)
    cols = measure_energy(step, CUDA0, 4, 1.0, 30.0, lib=lib, env={}, clock=clock, **NO_SYNC, **no_rapl(tmp_path))
    assert cols["energy_source"].startswith("unavailable: nvml_counter: NVML could not initialise: Driver Not Loaded")
    assert "nvml_power_sampling:" in cols["energy_source"]
    for key in ("energy_j", "energy_j_per_token", "avg_power_w", "energy_above_idle_j", "cpu_energy_j"):
        assert cols[key] is None
    assert cols["energy_iterations"] is None and cols["energy_window_s"] is None  # nothing to measure: no window


def test_skipped_columns_match_measured_columns_and_are_empty(tmp_path):
    clock = FakeClock()
    step, _ = stepper(clock, 0.5)
    measured = measure_energy(step, CUDA0, 4, 1.0, lib=fake(1.0, clock=clock), env={}, clock=clock,
                              **NO_SYNC, **no_rapl(tmp_path))
    skipped = energy.skipped("measure_energy is false")
    assert set(skipped) == set(measured)
    assert skipped["energy_source"] == "unavailable: measure_energy is false"
    assert all(v is None for k, v in skipped.items() if not k.endswith("source"))


# ----------------------------------------------------------------------------- device mapping


def test_visible_devices_parsing_follows_cuda():
    assert visible_devices({}) is None
    assert visible_devices({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "2, 0"}) == ["2", "0"]
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "1,-1,0"}) == ["1"]
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "GPU-abc,junk,1"}) == ["GPU-abc"]


def test_nvml_target_prefers_torch_uuid_then_env_then_index():
    assert nvml_target(1, {}, torch_uuid="1234-ab")[0] == "GPU-1234-ab"
    assert nvml_target(1, {})[0] == 1
    assert nvml_target(0, {"CUDA_VISIBLE_DEVICES": "3,1"})[0] == 3
    assert "order may differ" in nvml_target(0, {"CUDA_VISIBLE_DEVICES": "3,1"})[1]
    assert "order may differ" not in nvml_target(0, {"CUDA_VISIBLE_DEVICES": "3", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"})[1]
    with pytest.raises(NvmlUnavailable, match="not among"):
        nvml_target(2, {"CUDA_VISIBLE_DEVICES": "3,1"})


@pytest.mark.parametrize(
    "env, device, watts",
    [
        ({}, CUDA0, 100.0),
        ({}, CUDA1, 200.0),
        ({"CUDA_VISIBLE_DEVICES": "2,0"}, CUDA0, 300.0),
        ({"CUDA_VISIBLE_DEVICES": "2,0"}, CUDA1, 100.0),
        ({"CUDA_VISIBLE_DEVICES": "GPU-1111-aaaa"}, CUDA0, 200.0),
        ({"CUDA_VISIBLE_DEVICES": "GPU-22"}, CUDA0, 300.0),  # CUDA accepts a unique UUID prefix
        ({"CUDA_VISIBLE_DEVICES": "MIG-child-of-1"}, CUDA0, 200.0),  # a MIG slice meters its whole board
    ],
)
def test_energy_comes_from_the_board_torch_means(tmp_path, env, device, watts):
    clock = FakeClock()
    lib = fake(100.0, 200.0, 300.0, clock=clock)
    lib.gpus.append(FakeGpu("MIG-child-of-1", PowerTrace.constant(1.0), mig_parent=1))
    step, _ = stepper(clock, 0.5)
    cols = measure_energy(step, device, 1, 1.0, lib=lib, env=env, clock=clock, **NO_SYNC, **no_rapl(tmp_path))
    assert cols["avg_power_w"] == pytest.approx(watts)


def test_ambiguous_uuid_prefix_is_an_error():
    lib = fake(1.0, 2.0)
    with open_nvml(lib) as session, pytest.raises(NvmlUnavailable, match="matches 2"):
        session.handle(CUDA0, {"CUDA_VISIBLE_DEVICES": "GPU-"})


def test_gpu_state_and_device_info_read_the_mapped_board():
    lib = fake(1.0, 2.0)
    lib.gpus[1].temperature_c, lib.gpus[1].sm_clock_mhz = 67, 1410
    assert nvml.gpu_state(CUDA0, lib=lib, env={"CUDA_VISIBLE_DEVICES": "1"}) == {"gpu_temp_c": 67.0, "gpu_sm_clock_mhz": 1410.0}
    assert nvml.gpu_state(torch.device("cpu"), lib=lib) == {"gpu_temp_c": None, "gpu_sm_clock_mhz": None}
    info = nvml.device_info(CUDA1, lib=lib, env={})
    assert info["gpu_name"] == "NVIDIA H100 80GB HBM3" and info["gpu_power_limit_w"] == 700.0
    lib.init_error = "no driver"
    assert nvml.gpu_state(CUDA0, lib=lib, env={}) == {"gpu_temp_c": None, "gpu_sm_clock_mhz": None}
    assert nvml.device_info(CUDA0, lib=lib, env={})["nvml"].startswith("unavailable: NVML could not initialise")


# ----------------------------------------------------------------------------- RAPL


def make_rapl(root: Path, packages: dict[int, int], max_range: int = 1_000_000) -> None:
    for i, uj in packages.items():
        zone = root / f"intel-rapl:{i}"
        zone.mkdir(parents=True)
        (zone / "name").write_text(f"package-{i}\n")
        (zone / "energy_uj").write_text(f"{uj}\n")
        (zone / "max_energy_range_uj").write_text(f"{max_range}\n")
        sub = zone / f"intel-rapl:{i}:0"  # core sub-domain: part of the package, must not be added again
        sub.mkdir()
        (sub / "name").write_text("core\n")
        (sub / "energy_uj").write_text("123\n")
        (sub / "max_energy_range_uj").write_text(f"{max_range}\n")
    psys = root / f"intel-rapl:{len(packages)}"  # platform domain: overlaps the packages
    psys.mkdir()
    (psys / "name").write_text("psys\n")
    (psys / "energy_uj").write_text("5\n")
    (psys / "max_energy_range_uj").write_text(f"{max_range}\n")


def bump(root: Path, package: int, uj: int, max_range: int = 1_000_000) -> None:
    f = root / f"intel-rapl:{package}" / "energy_uj"
    f.write_text(f"{(int(f.read_text()) + uj) % max_range}\n")


def test_rapl_sums_packages_and_undoes_wraparound(tmp_path):
    make_rapl(tmp_path, {0: 990_000, 1: 10})
    meter = open_meter("cpu", rapl_root=tmp_path)
    assert meter.source == "rapl"
    assert meter.read_j() == 0.0
    bump(tmp_path, 0, 30_000)  # wraps: 990000 -> 20000
    bump(tmp_path, 1, 5_000)
    assert meter.read_j() == pytest.approx(0.035)
    bump(tmp_path, 0, 999_000)  # nearly a full range: still one wrap
    assert meter.read_j() == pytest.approx(0.035 + 0.999)


def test_cpu_energy_from_rapl_is_exact_and_shared_on_a_cpu_device(tmp_path):
    make_rapl(tmp_path, {0: 0, 1: 0}, max_range=10**12)
    clock = FakeClock()

    def step():
        bump(tmp_path, 0, 3_000_000, 10**12)
        bump(tmp_path, 1, 2_000_000, 10**12)
        clock.advance(0.25)

    cols = measure_energy(step, torch.device("cpu"), 50, 1.0, idle_power_w=8.0, cpu_idle_power_w=8.0,
                          clock=clock, rapl_root=tmp_path)
    assert cols["energy_source"] == cols["cpu_energy_source"] == "rapl"
    assert cols["energy_j"] == cols["cpu_energy_j"] == pytest.approx(5.0)
    assert cols["avg_power_w"] == pytest.approx(20.0)
    assert cols["energy_above_idle_j"] == pytest.approx(5.0 - 8.0 * 0.25)
    assert cols["energy_j_per_token"] == pytest.approx(0.1)


def test_cpu_columns_come_from_rapl_beside_the_gpu(tmp_path):
    make_rapl(tmp_path, {0: 0}, max_range=10**12)
    clock = FakeClock()

    def step():
        bump(tmp_path, 0, 1_000_000, 10**12)
        clock.advance(0.5)

    cols = measure_energy(step, CUDA0, 1, 1.0, lib=fake(300.0, clock=clock), env={}, clock=clock,
                          rapl_root=tmp_path, **NO_SYNC)
    assert cols["energy_j"] == pytest.approx(150.0)
    assert cols["cpu_energy_source"] == "rapl" and cols["cpu_energy_j"] == pytest.approx(1.0)


def test_rapl_unreadable_or_absent_is_a_reason(tmp_path, monkeypatch):
    assert open_meter("cpu", rapl_root=tmp_path / "absent").source.startswith("unavailable: rapl:")
    make_rapl(tmp_path, {0: 1})
    energy_file = tmp_path / "intel-rapl:0" / "energy_uj"
    real_read = Path.read_text

    def read_text(self, *args, **kwargs):
        if self == energy_file:
            raise PermissionError(13, "Permission denied")
        return real_read(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)  # as for a non-root user since Linux 5.10
    source = open_meter("cpu", rapl_root=tmp_path).source
    assert source.startswith("unavailable: rapl:") and "permission denied" in source


def test_cpu_device_without_rapl_reports_unavailable(tmp_path):
    clock = FakeClock()
    step, _ = stepper(clock, 0.5)
    cols = measure_energy(step, torch.device("cpu"), 1, 1.0, clock=clock, **no_rapl(tmp_path))
    assert cols["energy_source"].startswith("unavailable: rapl:") and cols["energy_j"] is None
    assert cols["cpu_energy_source"] == cols["energy_source"]


def test_caller_owned_meters_stay_open(tmp_path):
    clock = FakeClock()
    lib = fake(40.0, clock=clock)
    meter = open_meter(CUDA0, lib=lib, env={})
    step, _ = stepper(clock, 0.5)
    cols = measure_energy(step, CUDA0, 1, 1.0, meters={"device": meter, "cpu": energy.Unavailable("test")},
                          clock=clock, **NO_SYNC)
    assert cols["energy_j"] == pytest.approx(20.0) and cols["cpu_energy_source"] == "unavailable: test"
    assert lib.shutdowns == 0
    meter.close()
    assert lib.shutdowns == 1


def test_a_meter_that_fails_mid_window_leaves_a_reason_not_a_lost_case(tmp_path):
    clock = FakeClock()
    lib = fake(100.0, clock=clock)

    def step():
        lib.gpus[0].counter_supported = False  # e.g. the driver stops answering
        clock.advance(0.5)

    cols = measure_energy(step, CUDA0, 1, 1.0, lib=lib, env={}, clock=clock, **NO_SYNC, **no_rapl(tmp_path))
    assert cols["energy_source"].startswith("unavailable: nvml_counter read failed: NVMLError_NotSupported")
    assert cols["energy_j"] is None and cols["energy_iterations"] == 2
    assert lib.inits == lib.shutdowns


def test_torch_uuid_wins_and_an_unknown_one_falls_back_to_the_environment():
    lib = fake(1.0, 2.0, 3.0)
    env = {"CUDA_VISIBLE_DEVICES": "0"}
    with open_nvml(lib) as session:
        assert session.handle(CUDA0, env, torch_uuid="2222-aaaa") == 2
        assert session.handle(CUDA0, env, torch_uuid="ffff-0000") == 0
