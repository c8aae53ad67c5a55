"""`python -m harness merge DIR... --out DIR`: combine shard outputs of one suite into one run folder.

Shards must come from the same resolved suite and comparable machines; rows are unioned by
(case_id, workload), so merging is idempotent and overlapping shards do not duplicate rows.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from harness.contracts import RunInfo
from harness.environment import comparable
from harness.lock import RunLock, note_takeover
from harness.store import RunStore, read_jsonl
from harness.suite import SuiteError


def incomplete(metas: list[RunInfo]) -> list[str]:
    """Why these runs do not add up to one whole run: missing shards, or a shard that did not finish."""
    problems = []
    shards = [m.shard for m in metas if m.shard]
    if shards:
        counts = {n for _, n in shards}
        if len(counts) > 1:
            problems.append(f"shards of different splits ({', '.join(f'{i}/{n}' for i, n in shards)})")
        else:
            n = counts.pop()
            missing = sorted(set(range(1, n + 1)) - {i for i, _ in shards})
            if missing:
                problems.append(f"shard(s) {', '.join(f'{i}/{n}' for i in missing)} missing")
    for m in metas:
        if not m.finished or m.interrupted:
            where = f"shard {m.shard[0]}/{m.shard[1]}" if m.shard else "a run"
            problems.append(f"{where} did not finish (resume it first)")
    return problems


def merge(dirs: list[Path], out: Path, allow_partial: bool = False) -> RunStore:
    for d in dirs:
        if not (Path(d) / "run.json").is_file():
            raise SuiteError(f"merge: {d} has no run.json; not a run folder")
    stores = [RunStore(d) for d in dirs]
    metas = [s.read_meta() for s in stores]
    first = metas[0]
    for store, meta in zip(stores[1:], metas[1:]):
        if meta.suite != first.suite:
            raise SuiteError(f"merge: {store.root} ran a different suite than {stores[0].root}; refusing to mix them")
        differs = comparable(first.fingerprint, meta.fingerprint)
        if differs:
            raise SuiteError(f"merge: {store.root} ran on a different environment ({', '.join(differs)} differ); refusing to mix")
    problems = incomplete(metas)
    if problems and not allow_partial:
        raise SuiteError(f"merge: the runs are not one whole run: {'; '.join(problems)} (--allow-partial to merge anyway)")
    with RunLock(Path(out), "merge") as lock:
        note_takeover(lock)
        target = RunStore(out)
        if target.journal.exists():
            raise SuiteError(f"merge: --out {out} already holds a run")
        rows = [r for s in stores for r in s.rows()]
        merged = first.model_copy(update={
            "shard": None,
            "merged_from": [str(d) for d in dirs],
            "incomplete": problems or None,
            "started": min((m.started or "" for m in metas), default="") or None,
            "finished": max((m.finished or "") for m in metas) or None,
        })
        target.write_meta(merged)
        for name in ("layers_journal", "steps_journal"):
            target.append_records(getattr(target, name), [r for s in stores for r in read_jsonl(getattr(s, name))])
        target.append_records(target.journal, rows)
        target.write_tables()
    return target


def main(args: argparse.Namespace) -> int:
    target = merge([Path(d) for d in args.dirs], Path(args.out), allow_partial=args.allow_partial)
    print(f"merged {len(args.dirs)} runs into {target.root} ({len(target.rows())} rows)")
    return 0
