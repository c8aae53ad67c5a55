"""Damaged files handed to compare and report: a corrupt reference, a broken results table, run.json of
the wrong shape; each is one line and exit 2 (or, for a table the journal can rebuild, no error at all)."""
import copy
import json
from pathlib import Path

import pytest

from harness.analysis import load
from harness.cli import main

REFERENCE = Path("baselines/nightly-cpu.json")


def _corrupt_references() -> list[tuple[str, bytes]]:
    doc = json.loads(REFERENCE.read_text())
    text = REFERENCE.read_text()
    out = [("empty", b""), ("truncated", text[:500].encode()), ("not UTF-8", b"\xff\xfe{}"), ("deep", b"[" * 100000),
           ("a list", b"[]"), ("NaN literal", text.replace('"tokens_per_s": ', '"tokens_per_s": NaN, "x": ', 1).encode())]
    for key in ("cases", "fingerprint", "suite"):
        for bad in ("x", [1], 3):
            if not (key == "suite" and bad == "x"):
                out.append((f"{key}={bad!r}", json.dumps({**doc, key: bad}).encode()))
    for field in ("case_id", "workload", "status", "tokens_per_s", "latency_ms_median", "peak_memory_bytes", "samples_ms"):
        for bad in (["x"] if field == "samples_ms" else [1], {"a": 1}, True, "x" if field not in ("case_id", "workload", "status") else 7):
            broken = copy.deepcopy(doc)
            broken["cases"][0][field] = bad
            out.append((f"{field}={bad!r}", json.dumps(broken).encode()))
    for bad in ([1], None, "x"):
        out.append((f"case={bad!r}", json.dumps({**doc, "cases": [bad]}).encode()))
    return out


@pytest.mark.parametrize("name, content", _corrupt_references(), ids=[n for n, _ in _corrupt_references()])
def test_corrupt_reference_is_one_line(tmp_path, capsys, name, content):
    bad = tmp_path / "reference.json"
    bad.write_bytes(content)
    assert main(["compare", str(REFERENCE), "--baseline", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and str(bad) in err


@pytest.mark.parametrize("threshold", ["inf", "-inf", "nan", "0", "-0.1"])
def test_non_finite_or_non_positive_threshold_is_refused(capsys, threshold):
    assert main(["compare", str(REFERENCE), "--baseline", str(REFERENCE), f"--threshold={threshold}"]) == 2
    assert "--threshold must be a finite number > 0" in capsys.readouterr().err


def _run_folder(root: Path) -> Path:
    from harness.store import RunStore

    store = RunStore(root)
    store.write_meta({"suite": {"name": "x"}, "fingerprint": {}})
    store.append({"case_id": "a", "workload": "forward", "status": "ok", "kind": "moe", "tokens_per_s": 5.0})
    return root


@pytest.mark.parametrize("damage", [b"", b"PAR1", b"\x00" * 100, b"not a table at all"])
def test_damaged_table_is_rebuilt_from_the_journal(tmp_path, damage):
    run = _run_folder(tmp_path / "run")
    (run / "results.parquet").write_bytes(damage)
    frame = load(run)
    assert list(frame["case_id"]) == ["a"] and frame["tokens_per_s"].iloc[0] == 5.0


def test_damaged_table_without_a_journal_is_one_line(tmp_path, capsys):
    run = _run_folder(tmp_path / "run")
    (run / "rows.jsonl").unlink()
    (run / "results.parquet").write_bytes(b"garbage")
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "results.parquet: unreadable" in err


@pytest.mark.parametrize("meta", ["[]", '"text"', "{", "[" * 5000, '{"suite": {"name": "x"}, "fingerprint": {}, "format_version": 99}'])
def test_run_json_of_the_wrong_shape_is_one_line(tmp_path, capsys, meta):
    run = _run_folder(tmp_path / "run")
    (run / "run.json").write_text(meta)
    for command in (["compare", str(run), "--baseline", str(REFERENCE)], ["merge", str(run), "--out", str(tmp_path / "m")],
                    ["run", "--resume", str(run), "--no-report"]):
        assert main(command) == 2, command
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "run.json" in err and "Traceback" not in err, command
