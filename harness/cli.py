"""Command line front end: `python -m harness {run,aa,list,validate,plan,report,compare,merge,ab,history,trends,export,machine,eval} ...`.

Each command's work lives in its own module; this file only parses arguments and maps
user-fixable errors (UserError) to one message and exit code 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from harness.errors import UserError


def _add_suite_args(p: argparse.ArgumentParser, optional: bool = False) -> None:
    if optional:
        p.add_argument("suite", nargs="?", help="a suite YAML file or a shipped suite's name (optional with --resume)")
    else:
        p.add_argument("suite", help="a suite YAML file or a shipped suite's name (e.g. smoke, gpu-smoke)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override any suite key, e.g. model.d_model=128 or moe.capacity_factor=null (repeatable)",
    )


def prog_name(argv0: str | None = None) -> str:
    """The name the harness was called by: the console script, or `python -m harness`."""
    name = os.path.basename(argv0 if argv0 is not None else sys.argv[0])
    return name if name and not name.startswith("__main__") and not name.endswith(".py") else "python -m harness"


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    from harness import __version__

    parser = argparse.ArgumentParser(
        prog=prog or prog_name(),
        description="Benchmark Mixture-of-Experts models against FLOP-matched dense baselines.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print the harness version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, text in (("run", "expand a suite and measure every case"),
                       ("aa", "A/A calibration: measure each MoE case of a suite against an identical copy of itself")):
        p = sub.add_parser(name, help=text)
        _add_suite_args(p, optional=True)
        p.add_argument("--out", help="output folder (default: reports/<suite>-<timestamp>)")
        p.add_argument("--resume", metavar="DIR", help="continue an interrupted run in DIR, skipping measured cases")
        p.add_argument("--rerun-failed", action="store_true", help="with --resume: run failed cases again")
        p.add_argument("--shard", metavar="I/N", help="run only shard I of N (1-based): the cases are split so the shards' estimated FLOPs balance")
        p.add_argument("--allow-failures", action="store_true", help="exit 0 even when some cases failed")
        p.add_argument("--no-report", action="store_true", help="skip the HTML report at the end")
        p.add_argument("--record", metavar="HISTORY",
                       help="when the run ends, append it to this history (an SQLite file, or a folder/ of files)")
        p.add_argument("--nnodes", type=int, default=1, help="multi-rank cases: nodes per case (one runner per node, "
                       "started alike; docs/distributed.md)")
        p.add_argument("--node-rank", type=int, default=0, help="multi-rank cases on several nodes: this node's rank "
                       "(node 0 stores the rows)")
        p.add_argument("--rdzv-endpoint", metavar="HOST:PORT", help="multi-rank cases on several nodes: node 0's "
                       "address and a free port, the same on every node")
        verbosity = p.add_mutually_exclusive_group()
        verbosity.add_argument("--quiet", action="store_true", help="print only the final summary")
        verbosity.add_argument("--verbose", action="store_true", help="also print worker logs")

    p = sub.add_parser("list", help="print the expanded cases without running them")
    _add_suite_args(p)

    p = sub.add_parser("validate", help="check a suite against the schema")
    _add_suite_args(p)

    p = sub.add_parser("plan", help="parameters, FLOPs and memory of each case, without building weights")
    p.add_argument("suite", help="a suite YAML file, a shipped suite's name or a preset name (e.g. mixtral-8x7b)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any suite key, e.g. moe.num_experts=64 (repeatable)")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table", help="output format (default table)")

    p = sub.add_parser("report", help="write report.html for a run (two runs: a comparison)")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="one run folder, or two to compare (before, after)")
    p.add_argument("--out", help="where to write the comparison report (two runs)")

    p = sub.add_parser("compare", help="compare a run with a stored baseline; exit 1 on a regression, 3 when inconclusive (nightly CI)")
    p.add_argument("run", metavar="RUN_DIR", help="the run folder to judge")
    p.add_argument("--baseline", metavar="DIR_OR_FILE", help="a run folder or a file under baselines/")
    p.add_argument("--save-baseline", metavar="FILE", help="instead of comparing, store RUN_DIR as a baseline file (e.g. baselines/nightly-cpu.json)")
    p.add_argument("--threshold", type=float, default=0.10, help="relative slowdown that counts as a regression (default 0.10; the A/A spread when larger)")
    p.add_argument("--alpha", type=float, default=0.05, help="1 - the confidence level of the intervals that decide (default 0.05: 95%%)")
    p.add_argument("--aa", metavar="RUN_DIR", help="take the A/A spread from this run (made by `python -m harness aa`)")
    p.add_argument("--format", choices=["table", "csv", "json", "markdown"], default="table",
                   help="output format (default table; markdown for a CI job summary)")
    p.add_argument("--allow-mismatch", action="store_true", help="compare even when environment fingerprints differ")
    p.add_argument("--history", metavar="HISTORY",
                   help="compare with the recent runs of the same machine class in this history instead of one "
                        "baseline, then record the run (an empty history bootstraps: recorded, exit 0)")
    p.add_argument("--window", type=int, default=10, help="with --history: how many recent runs to compare with (default 10)")
    p.add_argument("--no-record", action="store_true", help="with --history: do not append the run to the history")

    p = sub.add_parser("merge", help="combine shard outputs of one suite into one run")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="the shards' run folders")
    p.add_argument("--out", required=True, help="the merged run folder to write")
    p.add_argument("--allow-partial", action="store_true", help="merge even when shards are missing or unfinished")

    p = sub.add_parser("history", help="record runs into a benchmark history and read it back")
    hist = p.add_subparsers(dest="history_command", required=True, metavar="ACTION")
    h = hist.add_parser("add", help="append run folders to a history (append-only; a run already there is skipped)")
    h.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders to record")
    _add_history_arg(h)
    h = hist.add_parser("list", help="the recorded runs, oldest first, with machine class and commit")
    _add_history_arg(h)
    h.add_argument("--machine", help="only runs of this machine class (the id `history list` prints)")
    h.add_argument("--suite", help="only runs of this suite")
    h = hist.add_parser("show", help="one recorded run's rows")
    h.add_argument("id", help="the run's id (or a prefix of it) from `history list`")
    _add_history_arg(h)

    p = sub.add_parser("ab", help="measure two settings or two commits of a suite interleaved in one job, then compare B with A")
    _add_suite_args(p)
    p.add_argument("--a", nargs="+", default=[], metavar="KEY=VALUE", help="side A's suite overrides, e.g. run.threads=1")
    p.add_argument("--b", nargs="+", default=[], metavar="KEY=VALUE", help="side B's suite overrides, e.g. run.threads=2")
    p.add_argument("--base-ref", metavar="REF", help="side A is this git commit (checked out into OUT/src-A)")
    p.add_argument("--head-ref", metavar="REF", help="side B is this git commit (checked out into OUT/src-B)")
    p.add_argument("--out", help="output folder holding A/, B/ and compare.md (default reports/ab-<suite>-<timestamp>)")
    p.add_argument("--threshold", type=float, default=0.10, help="relative change that counts (default 0.10)")
    p.add_argument("--alpha", type=float, default=0.01, help="1 - the confidence level of the intervals that decide (default 0.01: 99%%)")
    p.add_argument("--quiet", action="store_true", help="print only the comparison")

    p = sub.add_parser("machine", help="this machine's class; check a baseline or history before running a suite")
    p.add_argument("--baseline", metavar="DIR_OR_FILE", help="exit 2 when this baseline was measured on another machine class")
    p.add_argument("--history", metavar="HISTORY", help="say how many recorded runs share this machine class")
    p.add_argument("--suite", help="with --history: count only runs of this suite")
    p.add_argument("--json", action="store_true", help="also print the machine class and full fingerprint as JSON")

    p = sub.add_parser("trends", help="write an HTML page of every configuration over the recorded runs")
    p.add_argument("history", metavar="HISTORY", help="the history: an SQLite file, or a folder/ with one file per run")
    p.add_argument("--out", default="reports/trends.html", help="the page to write (default reports/trends.html)")
    p.add_argument("--window", type=int, default=10, help="runs before each point that it is judged against (default 10)")
    p.add_argument("--threshold", type=float, default=0.10,
                   help="relative change worth a verdict: the equivalence margin and the smallest step (default 0.10)")
    p.add_argument("--machine", help="only this machine class (an id from `history list`)")
    p.add_argument("--suite", help="only runs of this suite")

    p = sub.add_parser("export", help="write a run's results in another tool's format (pytest-benchmark JSON)")
    p.add_argument("run", metavar="RUN_DIR", help="the run folder to export")
    p.add_argument("--format", choices=["pytest-benchmark"], default="pytest-benchmark",
                   help="pytest-benchmark: the --benchmark-json schema, read by pytest-benchmark compare, "
                        "github-action-benchmark and Bencher")
    p.add_argument("--out", required=True, help="the file to write")

    p = sub.add_parser("eval", help="score a quality case's saved weights (run.save_weights) with lm-eval tasks")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run folder the quality case ran in")
    p.add_argument("case", metavar="CASE", help="the case id (or a unique prefix of it)")
    p.add_argument("--tasks", nargs="+", required=True, metavar="TASK", help="shipped local tasks, e.g. harness_cloze harness_prose")
    p.add_argument("--bootstrap-iters", type=int, default=1000, help="resamples for stderr without a closed form (default 1000)")
    return parser


def _add_history_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--history", required=True, metavar="HISTORY",
                   help="the history: an SQLite file (e.g. history.sqlite), or a folder/ with one file per run")


MAX_MESSAGE = 2000


def one_line(message: str) -> str:
    """A user-facing error as one bounded line, whatever its source put in it."""
    text = "; ".join(line.strip() for line in str(message).splitlines() if line.strip())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("run", "list", "validate", "plan") and args.suite:  # others: --suite filters by name
        from harness import shipped

        args.suite = shipped.resolve(args.suite)
    try:
        if args.command == "validate":
            from harness.commands import validate

            return validate(args)
        if args.command == "list":
            from harness.commands import list_cases

            return list_cases(args)
        if args.command == "run":
            from harness.runner import main as run_main

            return run_main(args)
        if args.command == "aa":
            from harness.aa import main as aa_main

            return aa_main(args)
        if args.command == "plan":
            from harness.plan import main as plan_main

            return plan_main(args)
        if args.command == "report":
            from harness.report import main as report_main

            return report_main(args)
        if args.command == "compare" and args.history:
            from harness.compare.history import main as compare_history

            return compare_history(args)
        if args.command == "compare":
            from harness.compare import main as compare_main

            return compare_main(args)
        if args.command == "merge":
            from harness.merge import main as merge_main

            return merge_main(args)
        if args.command == "history":
            from harness.history_command import main as history_main

            return history_main(args)
        if args.command == "ab":
            from harness.ab import main as ab_main

            return ab_main(args)
        if args.command == "machine":
            from harness.machine import main as machine_main

            return machine_main(args)
        if args.command == "trends":
            from harness.report.trends import main as trends_main

            return trends_main(args)
        if args.command == "export":
            from harness.export import main as export_main

            return export_main(args)
        if args.command == "eval":
            from harness.checkpoint import eval_main

            return eval_main(args)
    except UserError as exc:
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.filename is None:
            raise
        # a path the user gave (or its disk) is unusable: not a file, read-only, full, name too long
        print(f"error: {one_line(f'{exc.filename}: {exc.strerror or exc}')}", file=sys.stderr)
        return 2
    raise AssertionError(f"unhandled command {args.command}")
