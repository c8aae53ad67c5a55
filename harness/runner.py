"""Schedule every (case, workload) of a suite, one worker subprocess each, and store rows as they finish.

Isolation: a worker that raises, runs out of memory, crashes or passes its timeout becomes a row
with a status and a reason; the run goes on. Ctrl-C / SIGTERM stop after killing the worker in
flight; everything finished is already on disk, and `--resume` carries on from there.
"""
from __future__ import annotations

import argparse
import datetime as dt
import signal
import sys
import time
from pathlib import Path
from typing import Any

from harness import safe_yaml
from harness.analysis import load
from harness.calibration import calibrate
from harness.config import Case
from harness.contracts import RunInfo
from harness.environment import comparable, fingerprint
from harness.launch import Job, clean_stale_job_folders, run_job
from harness.lock import RunLock, note_takeover
from harness.metrics.statistics import ratio_ci
from harness.progress import Progress
from harness.rows import result_row
from harness.store import RunFolderError, RunStore
from harness.suite import Suite, SuiteError, build_suite, load_suite
from harness.summary import print_summary
from harness.sweep import Expansion, expand


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived: stop scheduling, keep what is stored."""


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise SuiteError(f"--shard {text!r}: expected I/N, e.g. 1/4") from None
    if not 1 <= index <= count:
        raise SuiteError(f"--shard {text!r}: need 1 <= I <= N")
    return index, count


def in_shard(case_id: str, shard: tuple[int, int] | None) -> bool:
    """Shards split by case id, so a case lands in the same shard however the suite is ordered."""
    return shard is None or int(case_id, 16) % shard[1] == shard[0] - 1


def jobs_for(suite: Suite, expansion: Expansion, shard: tuple[int, int] | None) -> list[Job]:
    return [Job(case, w) for case in expansion if in_shard(case.id, shard) for w in suite.workloads]


def _default_out(suite: Suite) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("reports") / f"{suite.name}-{stamp}"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _load(args: argparse.Namespace, here: dict[str, Any]) -> tuple[Suite, RunStore, RunInfo, RunLock]:
    """The suite, the store, run.json's content and the held lock of the run folder; for --resume, the
    suite comes from the run folder (or, when its run.json is damaged, from the suite file given)."""
    if args.resume:
        if args.out:
            raise SuiteError("--resume continues a run as it was started: drop --out and --shard")
        folder = Path(args.resume)
        if not folder.is_dir():
            raise SuiteError(f"--resume {folder}: no such folder")
        lock = RunLock(folder, f"run --resume {folder}").acquire()
        try:
            store = RunStore(folder)
            try:
                meta = store.read_meta()
            except RunFolderError:
                if not (args.suite and store.journal.exists()):
                    raise
                meta = _rebuilt_meta(args, store, here)
            else:
                if args.shard:
                    raise SuiteError("--resume continues a run as it was started: drop --out and --shard")
                differs = comparable(meta.fingerprint, here)
                if differs:
                    raise SuiteError(
                        f"--resume {folder}: this machine differs from the run's ({', '.join(differs)}); "
                        "its numbers would not be comparable, start a new run"
                    )
            suite = build_suite(meta.suite, source=f"{folder}/run.json")
            if args.suite:
                given = load_suite(args.suite, tuple(args.overrides))
                if given.model_dump() != suite.model_dump():
                    raise SuiteError(f"--resume {folder}: {args.suite} differs from the suite of that run")
        except BaseException:
            lock.release()
            raise
        return suite, store, meta, lock
    if not args.suite:
        raise SuiteError("run: give a suite file (or --resume DIR)")
    suite = load_suite(args.suite, tuple(args.overrides))
    out = Path(args.out) if args.out else _default_out(suite)
    if out.exists() and not out.is_dir():
        raise SuiteError(f"--out {out}: exists and is not a folder")
    lock = RunLock(out, f"run {args.suite}").acquire()
    if (out / "rows.jsonl").exists():
        lock.release()
        raise SuiteError(f"--out {out}: already holds a run; use --resume {out} to continue it")
    shard = parse_shard(args.shard)
    return suite, RunStore(out), _new_meta(suite, safe_yaml.read_text(Path(args.suite)), args.overrides, shard, here), lock


def _new_meta(suite: Suite, suite_yaml: str, overrides: list[str], shard: tuple[int, int] | None, here: dict[str, Any]) -> RunInfo:
    return RunInfo(suite=suite.model_dump(mode="json"), suite_yaml=suite_yaml, overrides=list(overrides),
                   shard=shard, fingerprint=here, started=_now())


def _rebuilt_meta(args: argparse.Namespace, store: RunStore, here: dict[str, Any]) -> RunInfo:
    """run.json again from the suite file the run was started with, after checking that every stored
    row belongs to it; the fingerprint is this machine's (the rows keep their own provenance)."""
    suite = load_suite(args.suite, tuple(args.overrides))
    shard = parse_shard(args.shard)
    ids = {case.id for case in expand(suite) if in_shard(case.id, shard)}
    foreign = {row["case_id"] for row in store.rows()} - ids
    if foreign:
        where = f" (shard {args.shard})" if shard else ""
        raise SuiteError(
            f"--resume {store.root}: {len(foreign)} of its cases are not in {args.suite}{where}; give the suite file "
            "and the --set and --shard options the run was started with"
        )
    meta = _new_meta(suite, safe_yaml.read_text(Path(args.suite)), args.overrides, shard, here)
    meta.started = None
    meta.rebuilt = _now()  # an extra key: RunInfo keeps what it does not know
    store.write_meta(meta)
    print(f"note: rebuilt {store.meta_path} from {args.suite} ({len(store.rows())} rows kept)", file=sys.stderr)
    return meta


def _raise_interrupted(signum, frame):  # noqa: ARG001 - signal handler signature
    raise Interrupted(signal.Signals(signum).name)


def main(args: argparse.Namespace) -> int:
    """Ctrl-C or SIGTERM at any moment ends the run cleanly (exit 130, no traceback); in the set-up,
    before anything is stored, as a KeyboardInterrupt the entry point turns into a one-line message."""
    previous = {sig: signal.signal(sig, _raise_interrupted) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _run(args)
    except Interrupted as exc:
        raise KeyboardInterrupt(str(exc)) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(args: argparse.Namespace) -> int:
    clean_stale_job_folders()
    here = fingerprint()
    suite, store, meta, lock = _load(args, here)
    try:
        note_takeover(lock)
        return _measure(args, suite, store, meta, here)
    except Interrupted as exc:  # a second Ctrl-C while the tables or the report are written
        print(f"\nstopped by {exc}; finished rows are in {store.root} — continue with --resume {store.root}", file=sys.stderr)
        return 130
    finally:
        lock.release()


def _measure(args: argparse.Namespace, suite: Suite, store: RunStore, meta: RunInfo, here: dict[str, Any]) -> int:
    shard = meta.shard
    expansion = expand(suite)
    jobs = jobs_for(suite, expansion, shard)
    store.write_meta(meta)
    done = store.done(include_failed=not args.rerun_failed)
    todo = [job for job in jobs if job.key not in done]
    interrupted = None
    try:
        context = calibrate([job.case for job in todo], previous=meta.calibration)
        meta.calibration = context
        meta.fingerprint["matmul_tflops"] = dict(context.matmul_tflops)
        store.write_meta(meta)
        progress = Progress(total=len(jobs), done=len(jobs) - len(todo), quiet=args.quiet)
        with progress:
            for job in todo:
                progress.start(job.case.id, job.case.kind, job.workload)
                started = time.perf_counter()
                result = run_job(job, store.root, echo_logs=args.verbose, context=context)
                row = result_row(job.case, job.workload, result, expansion, suite.name, here)
                for record in (*result.routing_layers, *result.steps):
                    record.update(case_id=job.case.id, workload=job.workload)
                store.append(row, result.routing_layers, result.steps)
                if suite.interleave and job.case.kind == "moe" and row["status"] == "ok" and row.get("matched_to"):
                    # stored once already, so an interrupt here loses only the ratio; the latest row wins
                    row.update(_interleaved_ratio(job, expansion.by_id()[row["matched_to"]], store.root, args.verbose))
                    store.append(row)
                progress.finish(row, time.perf_counter() - started)
    except Interrupted as exc:
        interrupted = str(exc)

    meta.finished = _now()
    meta.interrupted = interrupted
    store.write_meta(meta)
    store.write_tables()
    if interrupted:
        print(f"\nstopped by {interrupted}; finished rows are in {store.root} — continue with --resume {store.root}", file=sys.stderr)
        return 130
    if not store.rows():
        print(f"no case to run (shard {shard[0]}/{shard[1]} of this suite is empty)" if shard else "no case to run")
        return 0
    frame = load(store.root)
    print_summary(frame)
    if not args.no_report:
        _write_report(store.root)
    failed = int((frame["status"] != "ok").sum())
    print(f"results: {store.root}/results.csv ({len(frame)} rows, {failed} not ok)")
    if getattr(args, "record", None):
        _record(store.root, args.record)
    return 1 if failed and not args.allow_failures else 0


def _interleaved_ratio(job: Job, baseline: Case, run_dir: Path, verbose: bool) -> dict[str, Any]:
    """MoE throughput over its baseline's from alternating steps in one process, with a bootstrap CI."""
    result = run_job(job, run_dir, echo_logs=verbose, pair_with=baseline)
    if result.status != "ok":
        return {"throughput_ratio_ci_method": f"unavailable: interleaved pair {result.status}: {result.error}"}
    # equal tokens per step on both sides, so throughput ratio = dense latency / MoE latency
    ratio, low, high = ratio_ci(result.samples_b, result.samples_a, seed=job.case.run.seed)
    return {
        "interleaved_throughput_ratio": ratio,
        "throughput_ratio_ci_low": low,
        "throughput_ratio_ci_high": high,
        "throughput_ratio_ci_method": "interleaved",
    }


def _record(run_dir: Path, history: str) -> None:
    from harness.history import record

    entry, new = record(run_dir, history)
    print(f"history: {'recorded' if new else 'already recorded'} as {entry.short} in {history}")


def _write_report(run_dir: Path) -> None:
    try:
        from harness.report import write_report
    except ImportError:
        return
    try:
        path = write_report(run_dir)
        print(f"report: {path}")
    except Exception as exc:  # noqa: BLE001 - a report problem must not lose the measured run
        print(f"report could not be written ({type(exc).__name__}: {exc}); run `python -m harness report {run_dir}`", file=sys.stderr)
