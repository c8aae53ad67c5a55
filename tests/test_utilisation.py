"""Peak table lookup, MFU arithmetic, CPU calibration, and the peak-memory columns (CPU and a faked CUDA)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from harness.config import RunSettings
from harness.metrics import memory
from harness.metrics.utilisation import (
    PEAK_TFLOPS,
    Peak,
    calibrate_matmul_tflops,
    datasheet_peak,
    device_peak,
    gpu_key,
    utilisation_columns,
)
from tests.fake_nvml import FakeGpu, FakeNvml, PowerTrace


@pytest.mark.parametrize(
    "name, key",
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H100 NVL", "H100 NVL"),
        ("NVIDIA H200", "H200 SXM"),
        ("NVIDIA H200 NVL", "H200 NVL"),
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("NVIDIA A100 80GB PCIe", "A100"),
        ("NVIDIA A10", "A10"),
        ("NVIDIA A10G", None),  # a different (AWS) part: no guessed peak
        ("NVIDIA L4", "L4"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA L40", "L40"),
        ("NVIDIA GeForce RTX 4090", "RTX 4090"),
        ("Tesla V100-SXM2-16GB", "V100 SXM2"),
        ("Tesla V100-PCIE-32GB", "V100 PCIe"),
        ("Tesla V100S-PCIE-32GB", "V100S PCIe"),
        ("Tesla T4", "T4"),
        ("NVIDIA GeForce GTX 1080", None),
    ],
)
def test_device_names_map_to_the_right_table_row(name, key):
    assert gpu_key(name) == key


def test_table_is_dense_and_ordered_by_precision():
    for key, peaks in PEAK_TFLOPS.items():
        assert peaks["float16"] >= peaks["tfloat32"] >= peaks["float32"] > 0, key
        if "bfloat16" in peaks:
            assert peaks["bfloat16"] == peaks["float16"], key
    assert PEAK_TFLOPS["H100 SXM"]["bfloat16"] == 989.5  # 1,979 with sparsity halved
    assert PEAK_TFLOPS["A100"]["bfloat16"] == 312.0


def test_datasheet_peak_picks_tf32_only_when_allowed():
    assert datasheet_peak("NVIDIA A100-SXM4-40GB", "float32", tf32=False) == Peak(19.5, "datasheet: A100 float32")
    assert datasheet_peak("NVIDIA A100-SXM4-40GB", "float32", tf32=True) == Peak(156.0, "datasheet: A100 tfloat32")
    assert datasheet_peak("Tesla V100-SXM2-16GB", "bfloat16").tflops is None
    unknown = datasheet_peak("Some Future GPU", "bfloat16")
    assert unknown.tflops is None and "run.peak_tflops" in unknown.source


def test_peak_precedence_suite_then_datasheet_then_calibration():
    assert device_peak("cuda", "NVIDIA L4", "bfloat16", override_tflops=100.0) == Peak(100.0, "suite")
    assert device_peak("cuda", "NVIDIA L4", "bfloat16", tf32=False) == Peak(121.0, "datasheet: L4 bfloat16")
    calibrated = {"float32@2threads": 0.5, "float32@1threads": 0.3}
    assert device_peak("cpu", "cpu", "float32", calibrated=calibrated, threads=2) == Peak(
        0.5, "calibration_matmul float32, 2 threads")
    assert device_peak("cpu", "cpu", "float32", calibrated=calibrated, threads=1).tflops == 0.3
    for missing in (device_peak("cpu", "cpu", "bfloat16", calibrated=calibrated, threads=2),
                    device_peak("cpu", "cpu", "float32", calibrated=calibrated, threads=4)):
        assert missing.tflops is None and missing.source.startswith("unavailable:")


def test_calibration_runs_at_each_thread_count_the_cases_use():
    import torch

    from harness.calibration import calibrate
    from harness.config import Case, ModelConfig, RunSettings

    before = torch.get_num_threads()
    cases = [Case(kind="dense", model=ModelConfig(), run=RunSettings(device="cpu", threads=t, measure_energy=False))
             for t in (1, None)]
    context = calibrate(cases, idle_seconds=0.0)
    assert set(context.matmul_tflops) == {"float32@1threads", f"float32@{before}threads"}
    assert torch.get_num_threads() == before


def test_mfu_arithmetic():
    cols = utilisation_columns(flops_per_token=6e9, tokens_per_s=50_000, peak=Peak(989.5, "datasheet: H100 SXM bfloat16"))
    assert cols["achieved_tflops"] == pytest.approx(300.0)
    assert cols["mfu"] == pytest.approx(300.0 / 989.5)
    none = utilisation_columns(6e9, 50_000, Peak(None, "unavailable: x"))
    assert none["achieved_tflops"] == pytest.approx(300.0) and none["mfu"] is None


def test_cpu_calibration_is_a_plausible_positive_rate():
    tflops = calibrate_matmul_tflops("float32", size=256, min_time_s=0.05)
    assert 1e-5 < tflops < 100  # between 10 MFLOP/s and 100 TFLOP/s: a real measurement, not a constant


def test_run_settings_have_energy_and_peak_keys():
    run = RunSettings()
    assert (run.measure_energy, run.energy_window_s, run.cooldown_s, run.peak_tflops) == (True, 1.0, 0.0, None)
    with pytest.raises(ValueError):
        RunSettings(energy_window_s=0)


# ----------------------------------------------------------------------------- memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the current RSS from /proc")
def test_cpu_peak_memory_is_ru_maxrss_and_grows_with_a_big_allocation():
    code = (
        "import os, torch; from harness.metrics.memory import peak_memory; d=torch.device('cpu');"
        "rss=int(open('/proc/self/statm').read().split()[1])*os.sysconf('SC_PAGE_SIZE');"
        "x=torch.ones(64*2**20); b=peak_memory(d);"
        "print(rss, b['peak_memory_bytes'], b['memory_source'], b['peak_memory_reserved_bytes'])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    rss_before, peak_after = int(out[0]), int(out[1])
    assert peak_after - rss_before >= 0.95 * 256 * 2**20  # 64 Mi float32 = 256 MiB, in bytes (not KiB)
    assert peak_after < rss_before + 4 * 256 * 2**20  # and not a unit mix-up the other way
    assert out[2:] == ["ru_maxrss", "None"]


def test_cuda_peak_memory_columns_come_from_the_allocator_and_nvml(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda d=None: calls.append("sync"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d=None: calls.append("reset"))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d=None: 123)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda d=None: 456)
    lib = FakeNvml([FakeGpu("GPU-m", PowerTrace.constant(1.0), memory_used_bytes=789)])
    device = torch.device("cuda", 0)
    memory.reset_peak(device)
    assert calls == ["sync", "reset"]
    cols = memory.peak_memory(device, lib=lib)
    assert cols == {
        "peak_memory_bytes": 123,
        "memory_source": "cuda_max_memory_allocated",
        "peak_memory_reserved_bytes": 456,
        "nvml_memory_used_bytes": 789,
    }
    lib.init_error = "no driver"
    assert memory.peak_memory(device, lib=lib)["nvml_memory_used_bytes"] is None

