"""The run store: rows survive, a torn last line is ignored, re-runs replace, tables are complete."""
import json

import pandas as pd

from harness.store import RunStore


def row(case_id, workload="forward", status="ok", **extra):
    return {"case_id": case_id, "workload": workload, "status": status, "kind": "moe", **extra}


def test_append_writes_tables_at_once(tmp_path):
    store = RunStore(tmp_path)
    store.append(row("a", tokens_per_s=10.0, samples_s=[0.1, 0.2]), [{"case_id": "a", "workload": "forward", "layer": 0}])
    frame = pd.read_csv(tmp_path / "results.csv")
    assert list(frame["case_id"]) == ["a"] and "samples_s" not in frame
    assert pd.read_parquet(tmp_path / "results.parquet")["tokens_per_s"].tolist() == [10.0]
    assert (tmp_path / "routing_layers.csv").exists()
    assert not list(tmp_path.glob(".*.tmp"))


def test_torn_last_line_is_ignored(tmp_path):
    store = RunStore(tmp_path)
    store.append(row("a"))
    with open(store.journal, "a") as f:
        f.write('{"case_id": "b", "workl')
    assert [r["case_id"] for r in store.rows()] == ["a"]
    assert store.done() == {("a", "forward")}


def test_rerun_replaces_failure(tmp_path):
    store = RunStore(tmp_path)
    store.append(row("a", status="failed", error="boom"))
    store.append(row("a", status="ok"))
    assert [r["status"] for r in store.rows()] == ["ok"]
    assert store.done(include_failed=False) == {("a", "forward")}
    lines = store.journal.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["status"] == "failed"


def test_append_after_a_torn_line_keeps_the_new_row(tmp_path):
    store = RunStore(tmp_path)
    store.append(row("a"))
    with open(store.journal, "a") as f:
        f.write('{"case_id": "b", "workl')
    store.append(row("c"))
    assert [r["case_id"] for r in store.rows()] == ["a", "c"]


def test_journal_lines_that_are_not_rows_are_skipped(tmp_path):
    store = RunStore(tmp_path)
    store.append(row("a"))
    with open(store.journal, "a") as f:
        f.write('[1, 2]\n"text"\n{"case_id": 5, "workload": "forward"}\n{"status": "ok"}\nnull\n' + "[" * 100000 + "\n")
    store.append(row("b"))
    assert [r["case_id"] for r in store.rows()] == ["a", "b"]
    assert store.done() == {("a", "forward"), ("b", "forward")}


def test_failed_write_leaves_no_temporary_file_and_says_how_to_continue(tmp_path, monkeypatch):
    import errno

    import pytest

    from harness.store import RunFolderError

    store = RunStore(tmp_path)
    store.append(row("a"))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", full)
    with pytest.raises(RunFolderError, match=f"No space left on device.*--resume {tmp_path}"):
        store.append(row("b"))
    assert not list(tmp_path.glob(".*.tmp"))
    assert [r["case_id"] for r in store.rows()] == ["a", "b"]  # the journal line was written first
    monkeypatch.setattr("builtins.open", full)
    with pytest.raises(RunFolderError, match="rows.jsonl: cannot write"):
        store.append(row("c"))


def test_damaged_run_json_names_the_command_that_rebuilds_it(tmp_path):
    import pytest

    from harness.store import RunFolderError

    store = RunStore(tmp_path)
    store.write_meta({"suite": {"name": "x"}, "fingerprint": {}})
    assert store.read_meta().suite == {"name": "x"}
    full = store.meta_path.read_text()
    for text, problem in [("", "it is empty"), (full[: len(full) // 2], "not valid JSON"), ("[]", "lacks the suite"),
                          ('{"suite": {}}', "lacks the suite"), ("[" * 5000, "nested too deeply")]:
        store.meta_path.write_text(text)
        with pytest.raises(RunFolderError) as info:
            store.read_meta()
        assert problem in str(info.value) and f"python -m harness run SUITE.yaml --resume {tmp_path}" in str(info.value)


def test_write_atomic_keeps_the_old_file_when_a_write_fails(tmp_path):
    """Tables, worker results, references and history entries are all written by `write_atomic`."""
    import pytest

    from harness.atomic import write_atomic

    path = tmp_path / "result.json"
    write_atomic(path, lambda p: p.write_text("old"))

    def torn(p):
        p.write_text("ha")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, torn)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["result.json"]
    write_atomic(path, lambda p: p.write_text("new"))
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["result.json"]
