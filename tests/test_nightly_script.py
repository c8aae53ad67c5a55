"""scripts/nightly.sh: the machine check comes before the suite, and no output is ever left empty."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.history import History

ROOT = Path(__file__).resolve().parents[1]
SUITE = """\
name: nightly-tiny
model: {vocab_size: 64, d_model: 32, n_layers: 1, n_heads: 2, d_ff: 64, seq_len: 16}
moe: {num_experts: 2, top_k: 1, capacity_factor: 1.0, impl: loop}
run: {batch_size: 2, warmup: 1, repeats: 5, timeout_s: 120, device: cpu, threads: 1}
workloads: [forward]
"""


def nightly(tmp_path, **env):
    full = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out"), "PYTHONPATH": str(ROOT), **env}
    return subprocess.run(["bash", str(ROOT / "scripts" / "nightly.sh")], capture_output=True, text=True, env=full,
                          timeout=600, check=False)


def test_a_baseline_from_another_machine_is_refused_before_the_suite(tmp_path):
    baseline = json.loads((ROOT / "baselines" / "nightly-cpu.json").read_text())
    baseline["fingerprint"]["cpu_model"] = "Nowhere CPU 9000"
    (tmp_path / "b.json").write_text(json.dumps(baseline))
    done = nightly(tmp_path, BASELINE=str(tmp_path / "b.json"))
    assert done.returncode == 2
    md = (tmp_path / "out" / "compare.md").read_text()
    assert "measured on another machine class" in md and "Nowhere CPU 9000" in md
    assert json.loads((tmp_path / "out" / "compare.json").read_text())["exit_status"] == 2
    assert not (tmp_path / "out" / "rows.jsonl").exists()  # refused before the suite ran


@pytest.mark.slow
def test_history_mode_bootstraps_and_writes_everything(tmp_path):
    (tmp_path / "suite.yaml").write_text(SUITE)
    history = tmp_path / "history.sqlite"
    done = nightly(tmp_path, SUITE=str(tmp_path / "suite.yaml"), HISTORY=str(history))
    assert done.returncode == 0, done.stdout + done.stderr
    out = tmp_path / "out"
    assert "bootstrap" in (out / "compare.md").read_text()
    assert json.loads((out / "compare.json").read_text())["bootstrap"] is True
    for name in ("report.html", "trends.html", "pytest-benchmark.json"):
        assert (out / name).stat().st_size > 0, name
    assert len(History.at(history).entries()) == 1
