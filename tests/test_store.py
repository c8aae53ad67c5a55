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
