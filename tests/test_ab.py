"""ab: two settings of a tiny suite measured interleaved in one job, then B compared with A."""
import json

import pytest

from harness.cli import main as cli
from harness.store import RunStore

SUITE = """\
name: ab-tiny
model: {vocab_size: 64, d_model: 32, n_layers: 1, n_heads: 2, d_ff: 64, seq_len: 16}
moe: {num_experts: 2, top_k: 1, capacity_factor: 1.0, impl: loop}
run: {batch_size: 2, warmup: 1, repeats: 5, timeout_s: 120, device: cpu}
workloads: [forward]
"""


@pytest.mark.slow
def test_ab_of_two_settings_interleaves_and_compares(tmp_path, capsys):
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE)
    out = tmp_path / "ab"
    code = cli(["ab", str(suite), "--a", "run.threads=1", "--b", "run.threads=2", "--out", str(out)])
    assert code in (0, 1)  # the verdict is the machine's; the structure is the harness's
    printed = capsys.readouterr().out
    progress = [line.split()[1] for line in printed.splitlines() if line.startswith("[")]
    assert progress == ["A", "B", "B", "A"]  # each pair alternates which side goes first
    threads = {side: {r["torch_threads"] for r in RunStore(out / side).rows()} for side in "AB"}
    assert threads == {"A": {1}, "B": {2}}
    assert json.loads((out / "B" / "run.json").read_text())["overrides"] == ["run.threads=2"]
    doc = json.loads((out / "compare.json").read_text())
    verdicts = {f["verdict"] for f in doc["findings"]}
    assert not verdicts & {"new", "missing"}  # every case of B matched its case of A
    assert len({f["case_id"] for f in doc["findings"]}) == 2
    md = (out / "compare.md").read_text()
    assert md.startswith("A/B in one job, interleaved: A: run.threads=1; B: run.threads=2")


def test_ab_refuses_what_it_cannot_compare(tmp_path, capsys):
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE)
    assert cli(["ab", str(suite), "--out", str(tmp_path / "x")]) == 2
    assert "give the settings of each side" in capsys.readouterr().err
    assert cli(["ab", str(suite), "--a", "run.threads=1", "--b", "run.threads=1", "--out", str(tmp_path / "x")]) == 2
    assert "the same settings" in capsys.readouterr().err
    assert cli(["ab", str(suite), "--a", "run.threads=1", "--base-ref", "HEAD", "--out", str(tmp_path / "x")]) == 2
    assert "not both" in capsys.readouterr().err
    assert cli(["ab", str(suite), "--a", "run.bogus=1", "--b", "run.threads=1", "--out", str(tmp_path / "y")]) == 2
    assert "bogus" in capsys.readouterr().err
