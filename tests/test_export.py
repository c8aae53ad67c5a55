"""export --format pytest-benchmark: read back by pytest-benchmark's own loader and its compare command."""
import csv
import json
import subprocess
import sys

from pytest_benchmark.stats import Stats
from pytest_benchmark.storage.file import FileStorage

from harness.cli import main as cli
from tests.test_compare import FP, latency_samples, make_run, row


class StrictLogger:
    """pytest-benchmark's loader skips a file it cannot read with a warning: make that a failure."""

    def warning(self, text, *args, **kwargs):
        raise AssertionError(text)

    def info(self, *args, **kwargs):
        pass

    debug = info


def test_export_loads_in_pytest_benchmark(tmp_path, capsys):
    samples = latency_samples(0.010, n=11, seed=3, processes=1)
    run = make_run(tmp_path / "run", [row("c1", samples), row("c2", latency_samples(0.02, seed=4), workload="train_step"),
                                      row("c3", [], status="failed")],
                   fingerprint={**FP, "git_commit": "abc123+dirty"})
    out = tmp_path / "bench" / "0001_nightly.json"
    assert cli(["export", str(run), "--format", "pytest-benchmark", "--out", str(out)]) == 0
    assert "1 rows left out" in capsys.readouterr().err

    loaded = list(FileStorage(tmp_path / "bench", logger=StrictLogger()).load_benchmarks(str(out)))
    assert sorted(b["group"] for b in loaded) == ["forward", "train_step"]
    forward = next(b for b in loaded if b["group"] == "forward")
    expected = Stats()
    for s in samples:
        expected.update(s)
    assert forward["rounds"] == 11 and forward["data"] == samples
    assert forward["median"] == expected.median and forward["q1"] == expected.q1 and forward["ops"] == expected.ops
    assert forward["extra_info"]["case_id"] == "c1" and forward["extra_info"]["tokens_per_s"] > 0
    assert "c1" in forward["fullname"] and forward["fullname"].startswith("nightly::forward[")

    doc = json.loads(out.read_text())
    assert doc["commit_info"]["id"] == "abc123" and doc["commit_info"]["dirty"] is True
    assert doc["machine_info"]["moe_harness"]["cpu_model"] == "Test CPU"

    table = tmp_path / "table"
    done = subprocess.run([sys.executable, "-m", "pytest_benchmark", "compare", str(out), "--csv", str(table)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    [written] = tmp_path.glob("table*.csv")
    names = [r["name"] for r in csv.DictReader(written.open())]
    assert len(names) == 2 and any("c1" in n for n in names)


def test_export_refuses_an_empty_run(tmp_path, capsys):
    run = make_run(tmp_path / "run", [])
    assert cli(["export", str(run), "--out", str(tmp_path / "x.json")]) == 2
    assert "no result rows" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
