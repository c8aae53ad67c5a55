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

from harness import aa, safe_yaml
from harness.analysis import load, load_steps, paired
from harness.calibration import calibrate, speed_drift, speed_probes
from harness.contracts import Calibration, RunInfo, WorkerResult
from harness.environment import comparable, fingerprint, worker_threads
from harness.launch import Job, clean_stale_job_folders, run_job
from harness.lock import RunLock, note_takeover
from harness.parallel.launcher import Rendezvous
from harness.pooling import INTERLEAVED, PER_PROCESS, interleaved_done, pool, processes_done, with_interleaved
from harness.progress import Progress
from harness.rows import result_row
from harness.shards import shard_ids
from harness.store import RunFolderError, RunStore
from harness.suite import Suite, SuiteError, build_suite, load_suite
from harness.summary import print_quality, print_summary
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


def jobs_for(suite: Suite, expansion: Expansion, shard: tuple[int, int] | None) -> list[Job]:
    """The (case, workload) jobs of the run, or of one shard of it (`harness.shards`: balanced by work)."""
    ids = shard_ids(expansion, suite.workloads, shard)
    return [Job(case, w) for case in expansion if ids is None or case.id in ids for w in suite.workloads]


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
                workers = worker_threads(expand(build_suite(meta.suite, source=f"{folder}/run.json")))
                differs = comparable(meta.fingerprint, {**here, "threads": workers})
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
    """run.json of a new run; the fingerprint's `threads` is what the workers use, not the runner's count."""
    return RunInfo(suite=suite.model_dump(mode="json"), suite_yaml=suite_yaml, overrides=list(overrides),
                   shard=shard, fingerprint={**here, "threads": worker_threads(expand(suite))}, started=_now())


def _rebuilt_meta(args: argparse.Namespace, store: RunStore, here: dict[str, Any]) -> RunInfo:
    """run.json again from the suite file the run was started with, after checking that every stored
    row belongs to it; the fingerprint is this machine's (the rows keep their own provenance)."""
    suite = load_suite(args.suite, tuple(args.overrides))
    shard = parse_shard(args.shard)
    ids = {job.case.id for job in jobs_for(suite, expand(suite), shard)}
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
    stored = {(r["case_id"], r["workload"]): r for r in store.rows()
              if not (args.rerun_failed and r.get("status") != "ok")}
    todo = [job for job in jobs if not _finished(stored.get(job.key), job, suite)]
    try:
        rendezvous = Rendezvous(getattr(args, "nnodes", 1), getattr(args, "node_rank", 0),
                                getattr(args, "rdzv_endpoint", None))
    except ValueError as exc:
        raise SuiteError(str(exc)) from None
    threads = _probe_threads(jobs)
    speed = dict(meta.speed or {})
    interrupted = None
    try:
        context = calibrate([job.case for job in todo], previous=meta.calibration)
        meta.calibration = context
        meta.fingerprint["matmul_tflops"] = dict(context.matmul_tflops)
        if todo:
            speed.setdefault("start", speed_probes(threads))
        meta.speed = speed
        store.write_meta(meta)
        progress = Progress(total=sum(j.case.run.processes for j in jobs),
                            done=sum(_units_done(stored.get(j.key), j, suite) for j in jobs), quiet=args.quiet)
        with progress:
            # rounds: process 1 of every job, then process 2 of every job (A1 B1 A2 B2, not A1 A2 B1 B2),
            # so a slow spell of the machine lands in different jobs' processes, not in both of one job's
            for process in range(1, max((j.case.run.processes for j in todo), default=0) + 1):
                for job in todo:
                    row = stored.get(job.key)
                    if not pending(job, row, process):
                        continue
                    stored[job.key] = advance(job, row, process, store, expansion, suite, here, context, progress,
                                              verbose=args.verbose, rendezvous=rendezvous)
    except Interrupted as exc:
        interrupted = str(exc)

    if todo and not interrupted and "start" in speed:
        speed["end"] = speed_probes(threads)
        speed.update(threads=threads, **speed_drift(speed["start"], speed["end"]))
    meta.speed = speed or None
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
    if (frame["baseline"] == "aa_copy").any():
        meta.aa = aa.summarize(paired(frame, "aa_copy")).to_json()
        store.write_meta(meta)
    print_summary(frame, meta)
    print_quality(frame, load_steps(store.root))
    if not args.no_report:
        _write_report(store.root)
    failed = int((frame["status"] != "ok").sum())
    print(f"results: {store.root}/results.csv ({len(frame)} rows, {failed} not ok)")
    if getattr(args, "record", None):
        _record(store.root, args.record)
    return 1 if failed and not args.allow_failures else 0


def pending(job: Job, row: dict[str, Any] | None, process: int) -> bool:
    """Whether worker process `process` of this job is still to run: the case has that many processes
    and none of the earlier ones failed (a failed row stays failed)."""
    return process <= job.case.run.processes and (row is None or row.get("status") == "ok")


def _finished(row: dict[str, Any] | None, job: Job, suite: Suite) -> bool:
    """A stored row needs nothing more: it failed, or every process (and interleaved process) ran.
    A row from before processes were recorded counts as finished."""
    if row is None:
        return False
    if row.get("status") != "ok" or PER_PROCESS not in row:
        return True
    if processes_done(row) < job.case.run.processes:
        return False
    done, failed = interleaved_done(row)
    return not _interleaves(job, row, suite) or failed or done >= job.case.run.processes


def _units_done(row: dict[str, Any] | None, job: Job, suite: Suite) -> int:
    """Progress units (one per worker process of a job) a stored row accounts for."""
    if _finished(row, job, suite):
        return job.case.run.processes
    return min(processes_done(row), job.case.run.processes)


def _interleaves(job: Job, row: dict[str, Any], suite: Suite) -> bool:
    """Whether the row gets an interleaved pass: an ok MoE row with a baseline, in one process (a
    multi-rank group cannot alternate steps with another group)."""
    return bool(suite.interleave and job.case.kind == "moe" and row.get("status") == "ok" and row.get("matched_to")
                and job.case.parallel.nproc == 1)


def advance(job: Job, row: dict[str, Any] | None, process: int, store: RunStore, expansion: Expansion, suite: Suite,
            fp: dict[str, Any], context: Calibration, progress: Progress, *, verbose: bool = False,
            rendezvous: Rendezvous = Rendezvous(), code: Path | None = None, side: str = "") -> dict[str, Any] | None:
    """Run what `process` of this job still lacks (the worker, then its interleaved pass) and store the
    row pooled over every process so far; returns that row (on a node other than node 0 of a
    multi-node case, which stores nothing, the row it was given). `code` and `side` are `ab`'s: the
    source tree the workers import (another commit's) and the side's name for the progress line."""
    parts = list((row or {}).get(PER_PROCESS) or [])
    inter = list((row or {}).get(INTERLEAVED) or [])
    total = job.case.run.processes
    if len(parts) < process:
        progress.start(job.case.id, job.case.kind, job.workload)
        started = time.perf_counter()
        result = run_job(job, store.root, echo_logs=verbose, context=context, process=process,
                         rendezvous=rendezvous, code=code)
        if result.model_extra.get("elsewhere"):  # node 0's runner stores this row
            progress.finish({"case_id": job.case.id, "kind": job.case.kind, "workload": job.workload,
                             "status": "elsewhere", "error": "stored by node 0"}, time.perf_counter() - started)
            return row
        if result.status != "ok":
            failed = result_row(job.case, job.workload, result, expansion, suite.name, fp)
            if process > 1:
                failed["error"] = f"process {process} of {total}: {failed.get('error')}"
            store.append(failed)
            progress.finish(failed, time.perf_counter() - started, note=side)
            return failed
        parts.append(result.row)
        row = _pooled(job, parts, inter, expansion, suite, fp)
        layers, steps = (result.routing_layers, result.steps) if process == 1 else ([], [])
        for record in (*layers, *steps):
            record.update(case_id=job.case.id, workload=job.workload)
        store.append(row, layers, steps)
        note = " ".join(filter(None, (side, f"process {process}/{total}" if total > 1 else "")))
        progress.finish(row, time.perf_counter() - started, note=note)
    done, failed = interleaved_done(row)
    if _interleaves(job, row, suite) and done < process and not failed:
        # the row is stored already, so an interrupt here loses only this interleaved process
        result = run_job(job, store.root, echo_logs=verbose, pair_with=expansion.by_id()[row["matched_to"]],
                         process=process, code=code)
        keep = ("samples_a", "samples_b", "contention") if result.status == "ok" else ("status", "error")
        inter.append({key: getattr(result, key) for key in keep})
        row = _pooled(job, parts, inter, expansion, suite, fp)
        store.append(row)
    return row


def _pooled(job: Job, parts: list[dict[str, Any]], inter: list[dict[str, Any]], expansion: Expansion, suite: Suite,
            fp: dict[str, Any]) -> dict[str, Any]:
    row = result_row(job.case, job.workload, WorkerResult(status="ok", row=pool(parts, seed=job.case.run.seed)),
                     expansion, suite.name, fp)
    row[PER_PROCESS] = parts
    return with_interleaved(row, inter, seed=job.case.run.seed)


def _probe_threads(jobs: list[Job]) -> int:
    """The thread count most workers run with: the run's calibration probes use it too."""
    import collections

    import torch

    counts = collections.Counter(j.case.run.threads or torch.get_num_threads() for j in jobs)
    return counts.most_common(1)[0][0] if counts else 1


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
