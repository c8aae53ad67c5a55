"""compare RUN --history: bootstrap on a new machine, clean nights, a regression, records the run."""
import json

from harness.cli import main as cli
from harness.history import History
from tests.history_fixtures import FP, make_history, nightly_row
from tests.test_compare import make_run


def tonight(tmp_path, latency_ms: float, fingerprint=FP, name="tonight", c2="ok"):
    rows = [nightly_row("c1", latency_ms), nightly_row("c2", 20.0, memory=200e6)]
    if c2 != "ok":
        rows[1] = {**rows[1], "status": c2, "error": "boom"}
    run = make_run(tmp_path / name, rows, fingerprint=fingerprint)
    meta = json.loads((run / "run.json").read_text())
    meta["started"] = "2026-11-30T02:00:00+00:00"
    (run / "run.json").write_text(json.dumps(meta))
    return run


def test_bootstrap_on_an_empty_history_records_and_exits_0(tmp_path, capsys):
    history = tmp_path / "h.sqlite"
    assert cli(["compare", str(tonight(tmp_path, 10.0)), "--history", str(history)]) == 0
    out = capsys.readouterr().out
    assert "bootstrap: no earlier run" in out and "Test CPU" in out and "recorded this run" in out
    assert len(History.at(history).entries()) == 1


def test_new_machine_class_bootstraps_beside_an_existing_history(tmp_path, capsys):
    history = make_history(tmp_path / "h.sqlite", step_at=None)
    other = {**FP, "cpu_model": "Other CPU"}
    assert cli(["compare", str(tonight(tmp_path, 30.0, fingerprint=other)), "--history", str(history.path)]) == 0
    assert "bootstrap" in capsys.readouterr().out


def test_a_normal_night_is_clean_and_a_slow_one_fails(tmp_path, capsys):
    history = make_history(tmp_path / "h.sqlite", step_at=None)
    assert cli(["compare", str(tonight(tmp_path, 10.1)), "--history", str(history.path), "--no-record"]) == 0
    assert "no regression against the last 10 runs" in capsys.readouterr().out
    assert len(history.entries()) == 16
    code = cli(["compare", str(tonight(tmp_path, 13.0, name="slow")), "--history", str(history.path),
                "--format", "markdown"])
    out = capsys.readouterr().out
    assert code == 1 and "**REGRESSION" in out and "| **worse** |" in out
    assert len(history.entries()) == 17  # recorded even when it regressed: the history is what happened


def test_a_case_that_fails_now_is_a_regression(tmp_path, capsys):
    history = make_history(tmp_path / "h.sqlite", step_at=None)
    assert cli(["compare", str(tonight(tmp_path, 10.0, c2="oom")), "--history", str(history.path), "--format",
                "json", "--no-record"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["regression"] and doc["status"][0]["case_id"] == "c2" and doc["status"][0]["verdict"] == "failed"


def test_history_and_baseline_are_exclusive(tmp_path, capsys):
    run = tonight(tmp_path, 10.0)
    assert cli(["compare", str(run), "--history", str(tmp_path / "h.sqlite"), "--baseline", str(run)]) == 2
    assert "not both" in capsys.readouterr().err
