"""`python -m harness merge DIR... --out DIR`: combine shard outputs of one suite into one run folder.

Shards must come from the same resolved suite and comparable machines; rows are unioned by
(case_id, workload), so merging is idempotent and overlapping shards do not duplicate rows.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from harness.environment import comparable
from harness.store import RunStore, read_jsonl
from harness.suite import SuiteError


def merge(dirs: list[Path], out: Path) -> RunStore:
    for d in dirs:
        if not (Path(d) / "run.json").is_file():
            raise SuiteError(f"merge: {d} has no run.json; not a run folder")
    stores = [RunStore(d) for d in dirs]
    metas = [s.read_meta() for s in stores]
    first = metas[0]
    for store, meta in zip(stores[1:], metas[1:]):
        if meta["suite"] != first["suite"]:
            raise SuiteError(f"merge: {store.root} ran a different suite than {stores[0].root}; refusing to mix them")
        differs = comparable(first["fingerprint"], meta["fingerprint"])
        if differs:
            raise SuiteError(f"merge: {store.root} ran on a different environment ({', '.join(differs)} differ); refusing to mix")
    target = RunStore(out)
    if target.journal.exists():
        raise SuiteError(f"merge: --out {out} already holds a run")
    rows = [r for s in stores for r in s.rows()]
    merged = {
        **first,
        "shard": None,
        "merged_from": [str(d) for d in dirs],
        "started": min(m["started"] for m in metas),
        "finished": max((m.get("finished") or "") for m in metas) or None,
    }
    target.write_meta(merged)
    for name in ("layers_journal", "steps_journal"):
        target.append_records(getattr(target, name), [r for s in stores for r in read_jsonl(getattr(s, name))])
    target.append_records(target.journal, rows)
    target.write_tables()
    return target


def main(args: argparse.Namespace) -> int:
    target = merge([Path(d) for d in args.dirs], Path(args.out))
    print(f"merged {len(args.dirs)} runs into {target.root} ({len(target.rows())} rows)")
    return 0
