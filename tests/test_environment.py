"""The run fingerprint: what it records, and that naming a GPU never creates a CUDA context in the runner."""
import torch

from harness import environment


def test_cpu_fingerprint_has_the_comparable_keys():
    fp = environment.fingerprint()
    assert fp["device_name"] == "cpu" or torch.cuda.is_available()
    for key in (*environment.COMPARABLE_KEYS, "harness_version", "git_commit", "python", "cpus_usable", "env"):
        assert key in fp
    assert environment.comparable(fp, fp) == []
    assert environment.comparable(fp, {**fp, "threads": fp["threads"] + 1}) == ["threads"]


def test_gpu_named_through_nvml_not_torch(monkeypatch):
    def no_context(*args, **kwargs):
        raise AssertionError("would create a CUDA context in the runner")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", no_context)
    monkeypatch.setattr(torch.cuda, "get_device_properties", no_context)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 90100)
    board = {"gpu_name": "NVIDIA H200", "nvidia_driver": "570.1", "gpu_power_limit_w": 700.0}
    monkeypatch.setattr(environment.nvml, "device_info", lambda index: board)
    fp = environment.fingerprint()
    assert (fp["device_name"], fp["driver"], fp["gpu_power_limit_w"], fp["device_count"]) == ("NVIDIA H200", "570.1", 700.0, 1)
