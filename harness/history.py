"""The benchmark history: every recorded run of a project, keyed by machine class, git commit and time.

A single baseline says how one run went; a history says how the code has moved, night after night,
so compare can judge a run against a window of its predecessors and find where a step began.

Two layouts, one interface:
- one SQLite file (the default, `history.sqlite`): each run is one transaction (`BEGIN IMMEDIATE`,
  rollback journal, `synchronous=FULL`), so concurrent writers wait their turn and a writer killed
  mid-transaction leaves nothing behind: a run is in the history with all its rows or not at all;
- a directory of files (a path that is a folder or ends in `/`), for CI shards that cannot share a
  file: each run is one JSON file written under a temporary name and renamed into place.

The store is append-only: adding a run that is already there (same run folder identity) changes
nothing. Each row is kept as the run recorded it, raw per-step samples (`samples_s`) included.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.atomic import write_atomic
from harness.environment import COMPARABLE_KEYS
from harness.errors import UserError

HISTORY_FORMAT = "moe-harness-history"
HISTORY_VERSION = 1
BUSY_TIMEOUT_S = 120.0
KEY_CHARS = 12

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    run_key TEXT NOT NULL UNIQUE,
    recorded TEXT NOT NULL,
    started TEXT,
    machine TEXT NOT NULL,
    git_commit TEXT,
    suite TEXT,
    source TEXT NOT NULL,
    n_rows INTEGER NOT NULL,
    fingerprint TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rows (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    case_id TEXT NOT NULL,
    workload TEXT NOT NULL,
    row TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_machine ON runs (machine, suite, started);
CREATE INDEX IF NOT EXISTS rows_by_run ON rows (run_id);
"""


class HistoryError(UserError):
    """A history that cannot be read or written as asked; the message names the path and the fix."""


def machine_class(fingerprint: dict[str, Any]) -> str:
    """A short hash of the fingerprint keys that must agree for two runs' numbers to be comparable."""
    key = json.dumps({k: fingerprint.get(k) for k in COMPARABLE_KEYS}, sort_keys=True, default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:KEY_CHARS]


def describe_machine(fingerprint: dict[str, Any]) -> str:
    """'cpu, Intel Xeon, 2 threads, torch 2.13.0': the machine class in words."""
    device = fingerprint.get("device_name") or "?"
    if fingerprint.get("device_count"):
        device = f"{fingerprint['device_count']}x {device}"
    parts = [device, fingerprint.get("cpu_model") or "?", f"{fingerprint.get('threads', '?')} threads",
             f"torch {fingerprint.get('torch', '?')}"]
    if fingerprint.get("cuda"):
        parts.append(f"CUDA {fingerprint['cuda']}")
    return ", ".join(str(p) for p in parts)


@dataclass(frozen=True)
class Entry:
    """One recorded run: its identity, where and when it was measured, and (when loaded) its rows."""

    key: str
    recorded: str
    started: str | None
    machine: str
    git_commit: str | None
    suite: str | None
    source: str
    n_rows: int
    fingerprint: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list, compare=False)

    @property
    def short(self) -> str:
        return self.key[:KEY_CHARS]

    @property
    def when(self) -> str:
        """When it was measured (the run's start), else when it was recorded."""
        return self.started or self.recorded

    def matches(self, machine: str | None, suite: str | None, keys: set[str] | None) -> bool:
        """Whether `History.entries`' filters keep this entry (a filter left empty keeps every entry)."""
        return (not machine or self.machine == machine) and (not suite or self.suite == suite) and (
            keys is None or self.key in keys)

    def header(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("key", "recorded", "started", "machine", "git_commit", "suite", "source",
                                              "n_rows", "fingerprint")}


def entry_from_run(run_dir: str | Path, recorded: str | None = None) -> Entry:
    """A run folder as a history entry: its run.json header and its journal rows (raw samples kept)."""
    from harness.analysis import RunError, load_run_info
    from harness.store import RunStore

    run_dir = Path(run_dir)
    try:
        info = load_run_info(run_dir)
    except RunError as exc:
        raise HistoryError(str(exc)) from None
    rows = RunStore(run_dir).rows()
    if not rows:
        raise HistoryError(f"{run_dir}: the run has no result rows (rows.jsonl); nothing to record")
    if not info.fingerprint:
        raise HistoryError(f"{run_dir}: run.json has no machine fingerprint; a history entry must say where it was measured")
    identity = json.dumps([info.fingerprint.get("hostname"), info.started, info.suite_name, info.shard,
                           sorted((r["case_id"], r["workload"]) for r in rows)], default=str)
    return Entry(
        key=hashlib.sha256(identity.encode()).hexdigest(),
        recorded=recorded or dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        started=info.started,
        machine=machine_class(info.fingerprint),
        git_commit=info.fingerprint.get("git_commit"),
        suite=info.suite_name,
        source=str(run_dir),
        n_rows=len(rows),
        fingerprint=dict(info.fingerprint),
        rows=rows,
    )


class History:
    """Open with `History.at(path)`; `add` appends a run, `entries` lists them oldest first."""

    def __init__(self, path: Path):
        self.path = path

    @staticmethod
    def at(path: str | Path) -> History:
        text = str(path)
        p = Path(path)
        if p.is_dir() or text.endswith(os.sep):
            return DirectoryHistory(p)
        return SQLiteHistory(p)

    def add(self, entry: Entry) -> bool:
        """Append `entry`; False when a run with its key is already recorded (nothing is written)."""
        raise NotImplementedError

    def entries(self, machine: str | None = None, suite: str | None = None, rows: bool = False,
                _keys: set[str] | None = None) -> list[Entry]:
        """Recorded runs, oldest measurement first; with `rows`, each with its rows loaded."""
        raise NotImplementedError

    def get(self, key_prefix: str) -> Entry:
        """The run whose key starts with `key_prefix`, rows loaded; HistoryError if none or several."""
        found = [e for e in self.entries() if e.key.startswith(key_prefix.lower())]
        if len(found) != 1:
            why = "no recorded run" if not found else f"{len(found)} recorded runs"
            raise HistoryError(f"{self.path}: {why} with id {key_prefix!r} (ids come from `history list`)")
        return self.entries(rows=True, _keys={found[0].key})[0]


def _sort(entries: list[Entry]) -> list[Entry]:
    return sorted(entries, key=lambda e: (e.when, e.recorded, e.key))


class SQLiteHistory(History):
    def _connect(self, create: bool) -> sqlite3.Connection:
        if not create and not self.path.exists():
            raise HistoryError(f"{self.path}: no history there (record a run with: python -m harness history add RUN_DIR "
                               f"--history {self.path})")
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            con.execute("PRAGMA synchronous=FULL")
            if create:
                con.execute("BEGIN IMMEDIATE")
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    con.execute(statement)
                con.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?), ('version', ?)",
                            (HISTORY_FORMAT, str(HISTORY_VERSION)))
                con.execute("COMMIT")
            self._check(con)
        except sqlite3.DatabaseError as exc:
            raise HistoryError(f"{self.path}: not a readable history file ({exc})") from None
        return con

    def _check(self, con: sqlite3.Connection) -> None:
        try:
            meta = dict(con.execute("SELECT key, value FROM meta"))
        except sqlite3.OperationalError:
            raise HistoryError(f"{self.path}: an SQLite file, but not a moe-harness history") from None
        if meta.get("format") != HISTORY_FORMAT:
            raise HistoryError(f"{self.path}: an SQLite file, but not a moe-harness history")
        if int(meta.get("version", 0)) > HISTORY_VERSION:
            raise HistoryError(f"{self.path}: history format version {meta['version']} is newer than this harness "
                               f"reads ({HISTORY_VERSION}); upgrade moe-harness")

    def add(self, entry: Entry) -> bool:
        con = self._connect(create=True)
        try:
            con.execute("BEGIN IMMEDIATE")
            if con.execute("SELECT 1 FROM runs WHERE run_key = ?", (entry.key,)).fetchone():
                con.execute("ROLLBACK")
                return False
            cur = con.execute(
                "INSERT INTO runs (run_key, recorded, started, machine, git_commit, suite, source, n_rows, fingerprint)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (entry.key, entry.recorded, entry.started, entry.machine, entry.git_commit, entry.suite, entry.source,
                 entry.n_rows, json.dumps(entry.fingerprint, default=str)))
            con.executemany("INSERT INTO rows (run_id, case_id, workload, row) VALUES (?, ?, ?, ?)",
                            [(cur.lastrowid, r["case_id"], r["workload"], json.dumps(r, default=str)) for r in entry.rows])
            con.execute("COMMIT")
            return True
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        finally:
            con.close()

    def entries(self, machine: str | None = None, suite: str | None = None, rows: bool = False,
                _keys: set[str] | None = None) -> list[Entry]:
        con = self._connect(create=False)
        try:
            found = []
            for rid, *values in con.execute(
                    "SELECT id, run_key, recorded, started, machine, git_commit, suite, source, n_rows, fingerprint "
                    "FROM runs ORDER BY id"):
                entry = Entry(*values[:-1], fingerprint=json.loads(values[-1]))
                if not entry.matches(machine, suite, _keys):
                    continue
                if rows:
                    entry.rows.extend(json.loads(r) for (r,) in con.execute(
                        "SELECT row FROM rows WHERE run_id = ? ORDER BY rowid", (rid,)))
                found.append(entry)
            return _sort(found)
        finally:
            con.close()


class DirectoryHistory(History):
    """One JSON file per run, named `<started>-<machine>-<key>.json`, so shards never share a file."""

    def _name(self, entry: Entry) -> str:
        stamp = "".join(ch for ch in entry.when if ch.isalnum())[:15]
        return f"{stamp}-{entry.machine}-{entry.short}.json"

    def add(self, entry: Entry) -> bool:
        self.path.mkdir(parents=True, exist_ok=True)
        if any(self.path.glob(f"*-{entry.short}.json")):
            return False
        doc = {"format": HISTORY_FORMAT, "version": HISTORY_VERSION, **entry.header(), "rows": entry.rows}

        def durable(tmp: Path) -> None:
            with open(tmp, "w") as f:
                json.dump(doc, f, default=str)
                f.flush()
                os.fsync(f.fileno())

        write_atomic(self.path / self._name(entry), durable)
        return True

    def _files(self) -> Iterator[tuple[Path, dict[str, Any]]]:
        if not self.path.is_dir():
            raise HistoryError(f"{self.path}: no history folder there (record a run with: python -m harness history "
                               f"add RUN_DIR --history {self.path}/)")
        for path in sorted(self.path.glob("[!.]*.json")):
            try:
                doc = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(doc, dict) and doc.get("format") == HISTORY_FORMAT:
                if int(doc.get("version", 0)) > HISTORY_VERSION:
                    raise HistoryError(f"{path}: history format version {doc['version']} is newer than this harness "
                                       f"reads ({HISTORY_VERSION}); upgrade moe-harness")
                yield path, doc

    def entries(self, machine: str | None = None, suite: str | None = None, rows: bool = False,
                _keys: set[str] | None = None) -> list[Entry]:
        found = []
        for _, doc in self._files():
            entry = Entry(**{k: doc.get(k) for k in ("key", "recorded", "started", "machine", "git_commit", "suite",
                                                     "source", "n_rows")}, fingerprint=doc.get("fingerprint") or {})
            if not entry.matches(machine, suite, _keys):
                continue
            if rows:
                entry.rows.extend(doc.get("rows") or [])
            found.append(entry)
        return _sort(found)


def record(run_dir: str | Path, history: str | Path) -> tuple[Entry, bool]:
    """Append a run folder to a history; (its entry, whether it was new)."""
    entry = entry_from_run(run_dir)
    return entry, History.at(history).add(entry)
