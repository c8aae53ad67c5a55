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
from typing import Any, Mapping

import pandas as pd

from harness.analysis import typed
from harness.atomic import write_atomic
from harness.contracts import RunInfo, read_run_info
from harness.errors import UserError
from harness.pooling import INTERLEAVED, PER_PROCESS
from harness.results import COLUMNS

RAW_ONLY = ("samples_s", PER_PROCESS, INTERLEAVED)
"""Journal-only keys: raw samples and the per-process worker results a row was pooled from."""


class RunFolderError(UserError):
    """A run folder that cannot be written or read as it is; the message says how to fix it."""


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a journal; a line torn by a kill mid-write, or anything else that is not an
    object, is skipped (its case is re-run on resume)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            continue
        if isinstance(record, dict):
            rows.append(record)
    return rows


def _is_row(record: dict[str, Any]) -> bool:
    return isinstance(record.get("case_id"), str) and isinstance(record.get("workload"), str)


class RunStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.journal = self.root / "rows.jsonl"
        self.layers_journal = self.root / "routing_layers.jsonl"
        self.steps_journal = self.root / "steps.jsonl"
        self.meta_path = self.root / "run.json"

    def write_meta(self, meta: RunInfo | Mapping[str, Any]) -> None:
        """Write run.json (a mapping is read as a `RunInfo` first, so the file always has its format version)."""
        info = meta if isinstance(meta, RunInfo) else read_run_info(dict(meta), str(self.meta_path))
        text = json.dumps(info.to_json(), indent=2, default=str)
        self._writing(self.meta_path, lambda: write_atomic(self.meta_path, lambda p: p.write_text(text)))

    def read_meta(self) -> RunInfo:
        """run.json, or RunFolderError naming what is wrong and the command that rebuilds it."""
        try:
            text = self.meta_path.read_text(errors="replace")
        except FileNotFoundError:
            raise RunFolderError(f"{self.root}: no run.json there; not a run folder") from None
        try:
            meta = json.loads(text)
            problem = "" if isinstance(meta, dict) and all(isinstance(meta.get(k), dict) for k in ("suite", "fingerprint")) else (
                "it lacks the suite or the machine fingerprint"
            )
        except json.JSONDecodeError as exc:
            problem = "it is empty" if not text.strip() else f"it is not valid JSON ({exc.msg} at line {exc.lineno})"
        except RecursionError:
            problem = "it is nested too deeply to be a run.json"
        if problem:
            raise RunFolderError(
                f"{self.meta_path}: {problem}; rebuild it from the suite file the run was started with "
                f"(its rows are kept): python -m harness run SUITE.yaml --resume {self.root} "
                "(add the --set and --shard options of the original run)"
            )
        return read_run_info(meta, str(self.meta_path))

    def _writing(self, path: Path, write) -> None:
        try:
            write()
        except OSError as exc:
            raise RunFolderError(
                f"{path}: cannot write ({exc.strerror or exc}); the rows finished so far are in {self.root}: "
                f"fix that, then continue with: python -m harness run --resume {self.root}"
            ) from None

    def append_records(self, path: Path, records: list[dict[str, Any]]) -> None:
        if records:
            self._writing(path, lambda: self._append(path, records))

    @staticmethod
    def _append(path: Path, records: list[dict[str, Any]]) -> None:
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
        for row in filter(_is_row, read_jsonl(self.journal)):
            latest[(row["case_id"], row["workload"])] = row
        return list(latest.values())

    def done(self, include_failed: bool = True) -> set[tuple[str, str]]:
        return {
            (r["case_id"], r["workload"]) for r in self.rows() if include_failed or r.get("status") == "ok"
        }

    def frame(self) -> pd.DataFrame:
        """The results table: schema columns first, in the schema's dtypes (nullable ints and strings, so
        parquet readers get int64 and string, never double or null), then any other column as recorded."""
        rows = [{k: v for k, v in r.items() if k not in RAW_ONLY} for r in self.rows()]
        frame = pd.DataFrame(rows)
        ordered = [c for c in COLUMNS if c in frame.columns]
        return typed(frame[ordered + [c for c in frame.columns if c not in COLUMNS]])

    def detail_frame(self, journal: Path, index: str) -> pd.DataFrame:
        """Per-layer or per-step records of the rows that are stored, the latest attempt winning."""
        latest = {(r["case_id"], r["workload"]) for r in self.rows()}
        records = [r for r in read_jsonl(journal) if (r.get("case_id"), r.get("workload")) in latest]
        frame = pd.DataFrame(records)
        if not frame.empty:
            frame = frame.drop_duplicates(subset=["case_id", "workload", index], keep="last")
        return frame

    def write_tables(self) -> None:
        self._writing(self.root, self._write_tables)

    def _write_tables(self) -> None:
        frame = self.frame()
        write_atomic(self.root / "results.csv", lambda p: frame.to_csv(p, index=False))
        write_atomic(self.root / "results.parquet", lambda p: frame.to_parquet(p, index=False))
        for journal, index, name in ((self.layers_journal, "layer", "routing_layers.csv"), (self.steps_journal, "step", "steps.csv")):
            detail = self.detail_frame(journal, index)
            if not detail.empty:
                write_atomic(self.root / name, lambda p: detail.to_csv(p, index=False))
