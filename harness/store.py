"""The run folder: every finished row is on disk before the next case starts.

`rows.jsonl` is the journal: one JSON line appended and fsync'ed per finished (case, workload), so a
killed runner loses at most the case in flight (a torn last line is ignored on read). The tables
(`results.csv`, `results.parquet`, `routing_layers.csv`) are rebuilt from the journal after each case
and replaced atomically, so a reader never sees a half-written file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from harness.results import COLUMNS

RAW_ONLY = ("samples_s",)


def write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line torn by a kill mid-write; the case is re-run on resume
    return rows


class RunStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.journal = self.root / "rows.jsonl"
        self.layers_journal = self.root / "routing_layers.jsonl"
        self.steps_journal = self.root / "steps.jsonl"
        self.meta_path = self.root / "run.json"

    def write_meta(self, meta: dict[str, Any]) -> None:
        write_atomic(self.meta_path, lambda p: p.write_text(json.dumps(meta, indent=2, default=str)))

    def read_meta(self) -> dict[str, Any]:
        return json.loads(self.meta_path.read_text())

    def append_records(self, path: Path, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        with open(path, "a+b") as f:
            if f.tell() and (f.seek(f.tell() - 1), f.read(1))[1] != b"\n":
                f.write(b"\n")  # close a line torn by a kill, so the next record starts on its own line
        with open(path, "a") as f:
            for record in records:
                f.write(json.dumps(record, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def append(self, row: dict[str, Any], layers: list[dict[str, Any]] = (), steps: list[dict[str, Any]] = ()) -> None:
        """Detail records first, the row last: a row on disk means its details are too."""
        self.append_records(self.layers_journal, list(layers))
        self.append_records(self.steps_journal, list(steps))
        self.append_records(self.journal, [row])
        self.write_tables()

    def rows(self) -> list[dict[str, Any]]:
        """Journal rows, the latest per (case_id, workload) winning (a re-run replaces a failure)."""
        latest: dict[tuple[str, str], dict[str, Any]] = {}
        for row in read_jsonl(self.journal):
            latest[(row["case_id"], row["workload"])] = row
        return list(latest.values())

    def done(self, include_failed: bool = True) -> set[tuple[str, str]]:
        return {
            (r["case_id"], r["workload"]) for r in self.rows() if include_failed or r.get("status") == "ok"
        }

    def frame(self) -> pd.DataFrame:
        rows = [{k: v for k, v in r.items() if k not in RAW_ONLY} for r in self.rows()]
        frame = pd.DataFrame(rows)
        ordered = [c for c in COLUMNS if c in frame.columns]
        return frame[ordered + [c for c in frame.columns if c not in COLUMNS]]

    def detail_frame(self, journal: Path, index: str) -> pd.DataFrame:
        """Per-layer or per-step records of the rows that are stored, the latest attempt winning."""
        latest = {(r["case_id"], r["workload"]) for r in self.rows()}
        records = [r for r in read_jsonl(journal) if (r.get("case_id"), r.get("workload")) in latest]
        frame = pd.DataFrame(records)
        if not frame.empty:
            frame = frame.drop_duplicates(subset=["case_id", "workload", index], keep="last")
        return frame

    def write_tables(self) -> None:
        frame = self.frame()
        write_atomic(self.root / "results.csv", lambda p: frame.to_csv(p, index=False))
        write_atomic(self.root / "results.parquet", lambda p: frame.to_parquet(p, index=False))
        for journal, index, name in ((self.layers_journal, "layer", "routing_layers.csv"), (self.steps_journal, "step", "steps.csv")):
            detail = self.detail_frame(journal, index)
            if not detail.empty:
                write_atomic(self.root / name, lambda p: detail.to_csv(p, index=False))
