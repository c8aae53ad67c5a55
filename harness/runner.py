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

from harness.analysis import load
from harness.calibration import calibrate
from harness.config import Case
from harness.contracts import RunInfo
from harness.environment import comparable, fingerprint
from harness.launch import Job, run_job
from harness.metrics.statistics import ratio_ci
from harness.progress import Progress
from harness.rows import result_row
from harness.store import RunStore
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


def _load(args: argparse.Namespace, here: dict[str, Any]) -> tuple[Suite, str, RunStore, RunInfo | None]:
    """The suite, its YAML text and the store; for --resume, taken from the run folder."""
    if args.resume:
        if args.out or args.shard:
            raise SuiteError("--resume continues a run as it was started: drop --out and --shard")
        if not (Path(args.resume) / "run.json").is_file():
            raise SuiteError(f"--resume {args.resume}: no run.json there; not a run folder")
        store = RunStore(Path(args.resume))
        meta = store.read_meta()
        differs = comparable(meta.fingerprint, here)
        if differs:
            raise SuiteError(
                f"--resume {args.resume}: this machine differs from the run's ({', '.join(differs)}); "
                "its numbers would not be comparable, start a new run"
            )
        suite = build_suite(meta.suite, source=f"{args.resume}/run.json")
        if args.suite:
            given = load_suite(args.suite, tuple(args.overrides))
            if given.model_dump() != suite.model_dump():
                raise SuiteError(f"--resume {args.resume}: {args.suite} differs from the suite of that run")
        return suite, meta.suite_yaml, store, meta
    if not args.suite:
        raise SuiteError("run: give a suite file (or --resume DIR)")
    suite = load_suite(args.suite, tuple(args.overrides))
    out = Path(args.out) if args.out else _default_out(suite)
    if (out / "rows.jsonl").exists():
        raise SuiteError(f"--out {out}: already holds a run; use --resume {out} to continue it")
    return suite, Path(args.suite).read_text(), RunStore(out), None


def _raise_interrupted(signum, frame):  # noqa: ARG001 - signal handler signature
    raise Interrupted(signal.Signals(signum).name)


def main(args: argparse.Namespace) -> int:
    here = fingerprint()
    suite, suite_yaml, store, meta = _load(args, here)
    shard = parse_shard(args.shard) if meta is None else meta.shard
    expansion = expand(suite)
    jobs = jobs_for(suite, expansion, shard)
    if meta is None:
        meta = RunInfo(suite=suite.model_dump(mode="json"), suite_yaml=suite_yaml, overrides=list(args.overrides),
                       shard=shard, fingerprint=here, started=_now())
        store.write_meta(meta)
    done = store.done(include_failed=not args.rerun_failed)
    todo = [job for job in jobs if job.key not in done]
    context = calibrate([job.case for job in todo], previous=meta.calibration)
    meta.calibration = context
    meta.fingerprint["matmul_tflops"] = dict(context.matmul_tflops)
    store.write_meta(meta)

    progress = Progress(total=len(jobs), done=len(jobs) - len(todo), quiet=args.quiet)
    previous = {sig: signal.signal(sig, _raise_interrupted) for sig in (signal.SIGINT, signal.SIGTERM)}
    interrupted = None
    try:
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
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    meta.finished = _now()
    meta.interrupted = interrupted
    store.write_meta(meta)
    store.write_tables()
    if interrupted:
        print(f"\nstopped by {interrupted}; finished rows are in {store.root} — continue with --resume {store.root}", file=sys.stderr)
        return 130
    if not store.rows():
        print(f"no case to run (shard {args.shard} of this suite is empty)" if shard else "no case to run")
        return 0
    frame = load(store.root)
    print_summary(frame)
    if not args.no_report:
        _write_report(store.root)
    failed = int((frame["status"] != "ok").sum())
    print(f"results: {store.root}/results.csv ({len(frame)} rows, {failed} not ok)")
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
