"""ab: two settings of a tiny suite measured interleaved in one job, then B compared with A."""
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.cli import main as cli
from harness.store import RunStore

ROOT = Path(__file__).resolve().parents[1]

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
    assert code in (0, 1, 3)  # the verdict is the machine's; the structure is the harness's
    printed = capsys.readouterr().out
    progress = re.findall(r"^\[\d+/8\] (\w+) .*, ([AB]) process (\d)/2", printed, flags=re.M)
    # run.processes (2) per side, in rounds; the side that goes first alternates between pairs and rounds
    assert [(side, int(p)) for _, side, p in progress] == [
        ("A", 1), ("B", 1), ("B", 1), ("A", 1), ("B", 2), ("A", 2), ("A", 2), ("B", 2)]
    threads = {side: {r["torch_threads"] for r in RunStore(out / side).rows()} for side in "AB"}
    assert threads == {"A": {1}, "B": {2}}
    for side in "AB":
        assert {r["processes"] for r in RunStore(out / side).rows() if r["status"] == "ok"} == {2}
    assert json.loads((out / "B" / "run.json").read_text())["overrides"] == ["run.threads=2"]
    doc = json.loads((out / "compare.json").read_text())
    verdicts = {f["verdict"] for f in doc["findings"]}
    assert not verdicts & {"new", "missing"}  # every case of B matched its case of A
    timing = [f for f in doc["findings"] if f["metric"] == "latency_ms_median"]
    assert timing and all("processes 2/2" in f["test"] for f in timing)  # judged on both sides' process spread
    assert code == doc["exit_code"]  # compare's exit status: 1 regression, 3 cannot tell, 0 otherwise
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


def _git(repo, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=repo, check=True,
                   capture_output=True)


@pytest.mark.slow
def test_ab_of_two_commits_runs_each_commits_own_worker(tmp_path, monkeypatch, capsys):
    """Base: this harness. Head: the same, but its harness cannot be imported, and one more dependency.
    The job runs from the head's checkout (as CI does), so a worker that imported the working
    directory's harness instead of its commit's would fail on both sides."""
    repo = tmp_path / "repo"
    for name in subprocess.run(["git", "ls-files", "harness"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.split():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / name).is_symlink():
            os.symlink(os.readlink(ROOT / name), repo / name)
        else:
            shutil.copyfile(ROOT / name, repo / name)
    pyproject = '[project]\nname = "x"\nversion = "0"\ndependencies = ["torch>=2.4"]\n'
    (repo / "pyproject.toml").write_text(pyproject)
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "base")
    with open(repo / "harness" / "__init__.py", "a") as init:
        init.write('\nraise SystemExit("the head commit\'s harness")\n')
    (repo / "pyproject.toml").write_text(pyproject.replace('"torch>=2.4"', '"torch>=2.4", "newdep>=1"'))
    _git(repo, "commit", "-q", "-am", "head")
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE.replace("workloads: [forward]", "workloads: [forward]\nbaselines: []"))
    monkeypatch.chdir(repo)
    out = tmp_path / "ab"
    code = cli(["ab", str(suite), "--base-ref", "HEAD~1", "--head-ref", "HEAD", "--out", str(out)])
    assert code == 1  # ok at the base, failed at the head
    assert "declare different dependencies (pyproject.toml: dependencies +newdep>=1)" in capsys.readouterr().err
    status = {side: [(r["status"], r["git_commit"]) for r in RunStore(out / side).rows()] for side in "AB"}
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    assert [s for s, _ in status["A"]] == ["ok"] and status["A"][0][1] != head
    assert [s for s, _ in status["B"]] == ["failed"] and status["B"][0][1] == head
    assert "the head commit's harness" in "".join(p.read_text() for p in (out / "B" / "logs").iterdir())
    assert "Warning: the two commits declare different dependencies" in (out / "compare.md").read_text()
    assert json.loads((out / "compare.json").read_text())["warning"].startswith("the two commits declare")
    assert not (out / "src-A").exists() and not (out / "src-B").exists()
