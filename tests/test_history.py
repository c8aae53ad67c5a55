"""The history store: append-only, keyed by machine class/commit/time, safe with concurrent writers and kill -9."""
import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness.cli import main as cli
from harness.history import Entry, History, HistoryError, entry_from_run, machine_class
from harness.store import read_jsonl
from tests.test_compare import FP, latency_samples, make_run, row

ROOT = Path(__file__).resolve().parents[1]


def nightly_run(path: Path, started: str, median_s: float = 0.010, fingerprint=FP, seed: int = 0) -> Path:
    run = make_run(path, [row("c1", latency_samples(median_s, seed=seed)),
                          row("c2", latency_samples(2 * median_s, seed=seed + 1), workload="train_step")],
                   fingerprint=fingerprint)
    meta = json.loads((run / "run.json").read_text())
    meta["started"] = started
    (run / "run.json").write_text(json.dumps(meta))
    return run


@pytest.fixture(params=["history.sqlite", "history/"])
def history_path(request, tmp_path):
    return str(tmp_path / request.param)


def test_add_list_show_roundtrip_keeps_raw_samples(tmp_path, history_path, capsys):
    first = nightly_run(tmp_path / "r1", "2026-11-01T02:00:00+00:00", seed=1)
    second = nightly_run(tmp_path / "r2", "2026-11-02T02:00:00+00:00", seed=2,
                         fingerprint={**FP, "git_commit": "def456"})
    assert cli(["history", "add", str(second), str(first), "--history", history_path]) == 0
    assert cli(["history", "add", str(first), "--history", history_path]) == 0  # again: nothing appended
    out = capsys.readouterr().out
    assert out.count("already recorded") == 1

    entries = History.at(history_path).entries(rows=True)
    assert [e.git_commit for e in entries] == ["abc123", "def456"]  # oldest measurement first
    assert {e.machine for e in entries} == {machine_class(FP)}
    stored = {r["case_id"]: r for r in entries[0].rows}
    source = {r["case_id"]: r for r in read_jsonl(first / "rows.jsonl")}
    assert stored["c1"]["samples_s"] == source["c1"]["samples_s"]

    assert cli(["history", "list", "--history", history_path]) == 0
    listing = capsys.readouterr().out
    assert entries[0].short in listing and "def456" in listing and "Test CPU" in listing
    assert cli(["history", "show", entries[1].short[:6], "--history", history_path]) == 0
    shown = capsys.readouterr().out
    assert "def456" in shown and "c2" in shown and "train_step" in shown


def test_machine_class_follows_the_comparable_keys():
    assert machine_class(FP) == machine_class({**FP, "hostname": "other", "git_commit": "zzz"})
    assert machine_class(FP) != machine_class({**FP, "cpu_model": "Other CPU"})
    assert machine_class(FP) != machine_class({**FP, "threads": 4})


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    assert cli(["history", "list", "--history", str(tmp_path / "none.sqlite")]) == 2
    assert "no history there" in capsys.readouterr().err
    junk = tmp_path / "junk.sqlite"
    junk.write_text("not a database")
    assert cli(["history", "list", "--history", str(junk)]) == 2
    assert "not a readable history" in capsys.readouterr().err
    empty_run = tmp_path / "empty"
    make_run(empty_run, [])
    assert cli(["history", "add", str(empty_run), "--history", str(tmp_path / "h.sqlite")]) == 2
    assert "no result rows" in capsys.readouterr().err
    nightly_run(tmp_path / "r", "2026-11-01T00:00:00+00:00")
    cli(["history", "add", str(tmp_path / "r"), "--history", str(tmp_path / "h.sqlite")])
    assert cli(["history", "show", "ffff", "--history", str(tmp_path / "h.sqlite")]) == 2
    assert "no recorded run with id" in capsys.readouterr().err


WRITER = textwrap.dedent("""
    import sys
    from harness.history import Entry, History
    history, name, count, n_rows = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    store = History.at(history)
    fp = {"device_name": "cpu", "cpu_model": "Test CPU", "threads": 2}
    i = 0
    while count < 0 or i < count:
        rows = [{"case_id": f"c{j}", "workload": "forward", "status": "ok", "samples_s": [0.01] * 20}
                for j in range(n_rows)]
        store.add(Entry(key=f"{name}-{i:06d}", recorded="2026-11-30T00:00:00+00:00", started=None, machine="m",
                        git_commit=name, suite="s", source=name, n_rows=n_rows, fingerprint=fp, rows=rows))
        print(i, flush=True)
        i += 1
""")


def _writer(history: str, name: str, count: int, n_rows: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, history, name, str(count), str(n_rows)],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)


def _whole(entries: list[Entry]) -> None:
    """Every entry has exactly the rows it says it has: nothing torn."""
    for e in entries:
        assert len(e.rows) == e.n_rows, e.key


def test_two_concurrent_writers_lose_nothing(tmp_path, history_path):
    writers = [_writer(history_path, name, 15, 40) for name in ("a", "b")]
    for w in writers:
        w.communicate(timeout=120)
        assert w.returncode == 0
    entries = History.at(history_path).entries(rows=True)
    assert sorted(e.key for e in entries) == sorted(f"{n}-{i:06d}" for n in "ab" for i in range(15))
    _whole(entries)


def test_kill_9_mid_write_leaves_whole_runs_only(tmp_path, history_path):
    writer = _writer(history_path, "k", -1, 3000)  # big transactions: the kill lands inside one
    assert writer.stdout.readline().strip() == "0"  # one run committed
    time.sleep(0.3)
    writer.send_signal(signal.SIGKILL)
    writer.communicate(timeout=30)
    store = History.at(history_path)
    entries = store.entries(rows=True)
    assert entries and all(e.git_commit == "k" for e in entries)
    _whole(entries)
    if not history_path.endswith("/"):
        con = sqlite3.connect(history_path)
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        con.close()
    # the history stays writable after the crash
    survivor = _writer(history_path, "after", 1, 5)
    survivor.communicate(timeout=60)
    assert survivor.returncode == 0
    assert len(store.entries()) == len(entries) + 1


def test_entry_identity_is_the_run_not_the_copy(tmp_path):
    run = nightly_run(tmp_path / "r", "2026-11-01T00:00:00+00:00")
    again = entry_from_run(run)
    assert entry_from_run(run).key == again.key
    other = nightly_run(tmp_path / "r2", "2026-11-01T00:00:01+00:00")
    assert entry_from_run(other).key != again.key


def test_newer_history_format_is_refused(tmp_path):
    path = tmp_path / "h.sqlite"
    History.at(path).add(entry_from_run(nightly_run(tmp_path / "r", "2026-11-01T00:00:00+00:00")))
    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET value = '99' WHERE key = 'version'")
    con.commit()
    con.close()
    with pytest.raises(HistoryError, match="newer than this harness"):
        History.at(path).entries()
