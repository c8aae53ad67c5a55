"""Bad suites give one clear message naming the key and the reason; good ones load."""
import subprocess
import sys

import pytest

from harness.cli import main
from harness.suite import SuiteError, load_suite
from tests.conftest import TINY_SUITE


def error_of(write_suite, text, overrides=()):
    with pytest.raises(SuiteError) as info:
        load_suite(write_suite(text), tuple(overrides))
    return str(info.value)


def test_good_suite_loads(write_suite):
    suite = load_suite(write_suite(TINY_SUITE))
    assert suite.name == "tiny"
    assert suite.model.d_model == 32
    assert suite.sweep.grid == {"moe.top_k": [1, 2]}
    assert suite.baselines == ["flop_matched"]


def test_unknown_key_suggests_closest(write_suite):
    msg = error_of(write_suite, "name: x\nmodel: {d_modle: 64}\n")
    assert "model.d_modle" in msg and "unknown key" in msg and "'d_model'" in msg


def test_unknown_top_level_key(write_suite):
    msg = error_of(write_suite, "name: x\nworkload: [forward]\n")
    assert "workload" in msg and "did you mean 'workloads'" in msg


def test_wrong_type_names_key(write_suite):
    msg = error_of(write_suite, "name: x\nmodel: {n_layers: many}\n")
    assert "model.n_layers" in msg and "integer" in msg


@pytest.mark.parametrize(
    "text, key, reason",
    [
        ("name: x\nmoe: {num_experts: 2, top_k: 3}\n", "moe", "top_k (3) must not exceed num_experts (2)"),
        ("name: x\nmoe: {capacity_factor: 0}\n", "moe", "capacity_factor must be > 0"),
        ("name: x\nmoe: {capacity_factor: -1.5}\n", "moe", "capacity_factor must be > 0"),
        ("name: x\nmodel: {d_model: 30, n_heads: 4}\n", "model", "must be divisible by n_heads"),
        ("name: x\nworkloads: [train_step, decode_all]\n", "workloads", "unknown workload 'decode_all'"),
    ],
)
def test_impossible_values(write_suite, text, key, reason):
    msg = error_of(write_suite, text)
    assert f": {key}" in msg and reason in msg


def test_cuda_without_gpu(write_suite):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    msg = error_of(write_suite, "name: x\nrun: {device: cuda}\n")
    assert "run.device" in msg and "no CUDA GPU" in msg


def test_malformed_yaml_reports_line(write_suite):
    msg = error_of(write_suite, "name: x\nmodel:\n  d_model: 64\n   n_heads: [4\n")
    assert "malformed YAML" in msg and "line 4" in msg


def test_bad_sweep_key(write_suite):
    msg = error_of(write_suite, "name: x\nsweep: {grid: {moe.num_expert: [2, 4]}}\n")
    assert "sweep.moe.num_expert" in msg and "moe.num_experts" in msg


def test_sweep_point_invalid_names_the_point(write_suite):
    from harness.sweep import expand

    suite = load_suite(write_suite("name: x\nmoe: {num_experts: 2, top_k: 1}\nsweep: {grid: {moe.top_k: [1, 4]}}\n"))
    with pytest.raises(SuiteError, match=r"moe.top_k=4.*must not exceed"):
        expand(suite)


def test_zip_lengths_must_match(write_suite):
    msg = error_of(write_suite, "name: x\nsweep: {zip: [{model.d_model: [32, 64], model.n_heads: [2]}]}\n")
    assert "sweep.zip" in msg and "equal lengths" in msg


def test_set_overrides_are_validated(write_suite):
    path = write_suite(TINY_SUITE)
    suite = load_suite(path, ("model.d_model=64", "moe.capacity_factor=null", "run.dtype=bfloat16"))
    assert suite.model.d_model == 64 and suite.moe.capacity_factor is None and suite.run.dtype == "bfloat16"
    with pytest.raises(SuiteError, match="model.d_model"):
        load_suite(path, ("model.d_model=abc",))
    with pytest.raises(SuiteError, match="KEY=VALUE"):
        load_suite(path, ("model.d_model",))


def test_set_pins_a_swept_key(write_suite):
    suite = load_suite(write_suite(TINY_SUITE), ("moe.top_k=2",))
    assert suite.sweep.grid["moe.top_k"] == [2]


def test_cli_exit_code_2_without_traceback(write_suite):
    path = write_suite("name: x\nmoe: {num_experts: 2, top_k: 3}\n")
    proc = subprocess.run([sys.executable, "-m", "harness", "validate", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error:") and "top_k" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_cli_missing_file(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "cannot read suite" in capsys.readouterr().err


def test_smoke_suite_is_valid():
    suite = load_suite("suites/smoke.yaml")
    assert [set(group) for group in suite.sweep.zip] == [{"moe.num_experts", "moe.top_k", "moe.capacity_factor"}]


def test_readme_suite_reference_is_current():
    from pathlib import Path

    from harness.suite import reference_markdown

    text = reference_markdown()
    assert "`moe.capacity_factor`" in text and "`run.decode_tokens`" in text and "`name` | `required`" in text
    assert text in Path("README.md").read_text()


def test_moe_case_without_moe_layers_is_refused(write_suite):
    from harness.sweep import expand

    suite = load_suite(write_suite("name: x\nmodel: {n_layers: 2}\nmoe: {first_dense: 5}\n"))
    with pytest.raises(SuiteError, match="no layer of the 2-layer model is MoE"):
        expand(suite)


def test_float16_training_is_refused(write_suite):
    msg = error_of(write_suite, "name: x\nrun: {dtype: float16}\nworkloads: [forward, train_step]\n")
    assert "run.dtype" in msg and "bfloat16" in msg
    msg = error_of(write_suite, "name: x\nworkloads: [quality]\nsweep: {grid: {run.dtype: [float32, float16]}}\n")
    assert "run.dtype" in msg
    assert load_suite(write_suite("name: x\nrun: {dtype: float16}\nworkloads: [forward, decode]\n"))


def test_custom_workload_module_must_exist(write_suite):
    msg = error_of(write_suite, "name: x\nworkloads: ['nosuchpkg.faults:raises']\n")
    assert "workloads" in msg and "no module 'nosuchpkg.faults'" in msg
    assert load_suite(write_suite("name: x\nworkloads: ['tests.faults:raises']\n"))


def test_the_suite_accepts_exactly_the_registered_workloads():
    from harness.config import BUILTIN_WORKLOADS, TRAINING_WORKLOADS
    from harness.workloads import _registry

    assert set(_registry()) == set(BUILTIN_WORKLOADS) and set(TRAINING_WORKLOADS) <= set(BUILTIN_WORKLOADS)
