"""Typed, versioned records at process and file boundaries: job and result files, calibration, run.json."""
import json
import subprocess
import sys

import pytest

from harness.analysis import RunError, load_run_info
from harness.config import Case, ModelConfig, RunSettings
from harness.contracts import (
    JOB_VERSION,
    RUN_FORMAT_VERSION,
    Calibration,
    ContractError,
    IdlePower,
    RunInfo,
    WorkerJob,
    WorkerResult,
    read_run_info,
    read_versioned,
)
from harness.store import RunStore

OLD_RUN = {  # a run.json as written before format versions: calibration stored as 'baselines'
    "suite": {"name": "old"}, "suite_yaml": "name: old\n", "overrides": [], "shard": [1, 2],
    "fingerprint": {"torch": "2.13.0", "matmul_tflops": {"float32@2threads": 0.05}},
    "started": "2026-01-01T00:00:00+00:00", "finished": None,
    "baselines": {"idle": {"cpu": {"idle_power_w": None, "cpu_idle_power_w": 12.5, "idle_window_s": 5.0,
                                   "idle_source": "unavailable: no RAPL", "cpu_idle_source": "rapl"}},
                  "matmul_tflops": {"float32@2threads": 0.05}},
}


def test_contracts_do_not_import_torch():
    code = "import sys, harness.contracts; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_run_written_before_format_versions_still_loads(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps(OLD_RUN))
    info = RunStore(tmp_path).read_meta()
    assert info.format_version == RUN_FORMAT_VERSION and info.shard == (1, 2) and info.suite_name == "old"
    assert info.calibration.matmul_tflops == {"float32@2threads": 0.05}
    assert info.calibration.idle["cpu"].cpu_idle_power_w == 12.5 and info.calibration.idle["cpu"].idle_power_w is None
    assert load_run_info(tmp_path) == info
    RunStore(tmp_path).write_meta(info)
    stored = json.loads((tmp_path / "run.json").read_text())
    assert stored["format_version"] == RUN_FORMAT_VERSION and "baselines" not in stored
    assert stored["calibration"] == OLD_RUN["baselines"]


def test_a_run_from_a_newer_harness_is_refused_clearly(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({**OLD_RUN, "format_version": RUN_FORMAT_VERSION + 1}))
    with pytest.raises(ContractError, match="newer than this harness reads.*upgrade moe-harness"):
        RunStore(tmp_path).read_meta()
    with pytest.raises(RunError, match="newer than this harness reads"):
        load_run_info(tmp_path)


def test_run_info_keeps_keys_it_does_not_know_and_names_a_bad_one():
    info = read_run_info({**OLD_RUN, "format_version": 1, "written_by_a_newer_minor": {"x": 1}}, "run.json")
    assert info.to_json()["written_by_a_newer_minor"] == {"x": 1}
    with pytest.raises(ContractError, match="run.json key 'shard'"):
        read_run_info({**OLD_RUN, "shard": "half"}, "run.json")
    assert load_run_info("/nonexistent") == RunInfo()


def test_job_and_result_round_trip_and_refuse_other_versions():
    case = Case(kind="dense", model=ModelConfig(), run=RunSettings(device="cpu"))
    calibration = Calibration(idle={"cpu": IdlePower(cpu_idle_power_w=3.0, cpu_idle_source="rapl")})
    job = WorkerJob(case=case, workload="forward", context=calibration)
    again = read_versioned(WorkerJob, json.loads(job.model_dump_json()), JOB_VERSION, "job.json")
    assert again.case.id == case.id and again.context == calibration and again.pair_with is None
    with pytest.raises(ContractError, match="version 99"):
        read_versioned(WorkerJob, {**json.loads(job.model_dump_json()), "version": 99}, JOB_VERSION, "job.json")
    with pytest.raises(ValueError):
        WorkerResult(status="exploded")


def test_worker_turns_a_failing_workload_into_a_typed_result(tmp_path, one_thread):
    from harness import worker

    case = Case(kind="dense", model=ModelConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2, d_ff=32, seq_len=8),
                run=RunSettings(device="cpu", batch_size=1, measure_energy=False))
    job_path, result_path = tmp_path / "job.json", tmp_path / "result.json"
    job_path.write_text(WorkerJob(case=case, workload="tests.faults:raises").model_dump_json())
    assert worker.main([str(job_path), str(result_path)]) == 0
    result = read_versioned(WorkerResult, json.loads(result_path.read_text()), 1, "result.json")
    assert result.status == "failed" and "deliberate failure" in result.error and result.row == {}
