"""Fault injection on a tiny suite: kill -9 at random moments, torn and corrupt journals, an empty or
partial run.json. After --resume (and the repair command where one is needed) the rows equal those of
an uninterrupted run: the same (case, workload) keys, once each, with the same deterministic columns."""
import json
import random
import shutil
import subprocess
import sys
import time

import pytest

from harness.cli import main
from harness.store import RunStore

pytestmark = pytest.mark.slow

SUITE = """
name: faults
model: {vocab_size: 32, d_model: 16, n_layers: 1, n_heads: 2, d_ff: 32, seq_len: 8}
moe: {num_experts: 2, top_k: 1, impl: loop}
run: {batch_size: 1, warmup: 1, repeats: 1, timeout_s: 120, device: cpu, measure_energy: false}
workloads: [forward]
sweep: {grid: {moe.capacity_factor: [1.0, 2.0]}}
"""
# measured numbers differ between runs; these do not (the probe runs on freshly seeded weights)
DETERMINISTIC = ("case_id", "workload", "kind", "status", "matched_to", "params_total", "flops_per_token", "train_loss")


def rows_of(folder):
    rows = RunStore(folder).rows()
    keys = [(r["case_id"], r["workload"]) for r in rows]
    assert len(keys) == len(set(keys))
    return {key: tuple(r.get(c) for c in DETERMINISTIC) for key, r in zip(keys, rows)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of the suite, and the suite file."""
    root = tmp_path_factory.mktemp("reference")
    suite = root / "suite.yaml"
    suite.write_text(SUITE)
    assert main(["run", str(suite), "--out", str(root / "run"), "--no-report", "--quiet"]) == 0
    rows = rows_of(root / "run")
    assert len(rows) == 3  # two MoE cases sharing one FLOP-matched baseline, one workload
    return suite, root / "run", rows


def resume(folder, *extra):
    return main(["run", "--resume", str(folder), "--no-report", "--quiet", *extra])


def test_kill_9_at_random_moments_then_resume(reference, tmp_path):
    suite, _, expected = reference
    out, rng = tmp_path / "run", random.Random(18)
    for _ in range(2):
        cmd = ["run", "--resume", str(out)] if (out / "run.json").exists() else ["run", str(suite), "--out", str(out)]
        proc = subprocess.Popen([sys.executable, "-m", "harness", *cmd, "--no-report", "--quiet"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.5, 6.0))
        proc.kill()
        proc.wait()
    if (out / "run.json").exists():
        assert resume(out) == 0
    else:  # killed before it wrote anything: nothing to resume, start again
        assert main(["run", str(suite), "--out", str(out), "--no-report", "--quiet"]) == 0
    assert rows_of(out) == expected


@pytest.mark.parametrize("damage", ["torn last line", "garbage lines", "rows that are not rows", "binary junk"])
def test_corrupt_journal_then_resume(reference, tmp_path, damage):
    _, finished, expected = reference
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    journal = out / "rows.jsonl"
    lines = journal.read_text().splitlines()
    if damage == "torn last line":
        journal.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    elif damage == "garbage lines":
        journal.write_text("\n".join([lines[0], "}{", lines[1], "not json at all", lines[2]]) + "\n")
    elif damage == "rows that are not rows":
        journal.write_text("\n".join([lines[0], "[1, 2, 3]", '{"case_id": 7}', "null", lines[1]]) + "\n")
    else:
        journal.write_bytes(journal.read_bytes()[:-40] + bytes(range(256)))
    assert resume(out) == 0
    assert rows_of(out) == expected


@pytest.mark.parametrize("damage", ["empty", "partial", "not an object", "no suite"])
def test_damaged_run_json_is_refused_then_rebuilt(reference, tmp_path, capsys, damage):
    suite, finished, expected = reference
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    meta = out / "run.json"
    text = meta.read_text()
    journal_lines = len((out / "rows.jsonl").read_text().splitlines())  # a line per row and process
    meta.write_text({"empty": "", "partial": text[: len(text) // 3], "not an object": "[]",
                     "no suite": json.dumps({"fingerprint": {}})}[damage])
    for command in (["run", "--resume", str(out)], ["merge", str(out), "--out", str(tmp_path / "merged")]):
        assert main([*command, "--no-report"] if command[0] == "run" else command) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        assert f"python -m harness run SUITE.yaml --resume {out}" in err
    other = tmp_path / "other.yaml"
    other.write_text(SUITE.replace("d_model: 16", "d_model: 32"))
    assert resume(out, str(other)) == 2
    assert "not in" in capsys.readouterr().err
    assert resume(out, str(suite)) == 0  # rebuilds run.json from the suite file; nothing left to measure
    assert "rebuilt" in capsys.readouterr().err
    assert rows_of(out) == expected
    assert json.loads(meta.read_text())["suite"]["name"] == "faults"
    assert len((out / "rows.jsonl").read_text().splitlines()) == journal_lines  # nothing was measured again


def test_partial_run_json_mid_run_then_repair_and_resume(reference, tmp_path):
    suite, _, expected = reference
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "harness", "run", str(suite), "--out", str(out), "--no-report", "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    store = RunStore(out)
    deadline = time.time() + 120
    while not store.rows():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    (out / "run.json").write_text('{"suite": {"name": "fau')
    assert resume(out) == 2
    assert resume(out, str(suite)) == 0
    assert rows_of(out) == expected
