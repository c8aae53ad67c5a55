"""Command line front end: `python -m harness {run,list,validate,plan,report,compare,merge} ...`.

Each command's work lives in its own module; this file only parses arguments and maps
user-fixable errors (UserError) to one message and exit code 2.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from harness.errors import UserError


def _add_suite_args(p: argparse.ArgumentParser, optional: bool = False) -> None:
    if optional:
        p.add_argument("suite", nargs="?", help="path to a suite YAML file (optional with --resume)")
    else:
        p.add_argument("suite", help="path to a suite YAML file")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override any suite key, e.g. model.d_model=128 or moe.capacity_factor=null (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m harness",
        description="Benchmark Mixture-of-Experts models against FLOP-matched dense baselines.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="expand a suite and measure every case")
    _add_suite_args(p, optional=True)
    p.add_argument("--out", help="output folder (default: reports/<suite>-<timestamp>)")
    p.add_argument("--resume", metavar="DIR", help="continue an interrupted run in DIR, skipping measured cases")
    p.add_argument("--rerun-failed", action="store_true", help="with --resume: run failed cases again")
    p.add_argument("--shard", metavar="I/N", help="run only shard I of N (1-based)")
    p.add_argument("--allow-failures", action="store_true", help="exit 0 even when some cases failed")
    p.add_argument("--no-report", action="store_true", help="skip the HTML report at the end")
    verbosity = p.add_mutually_exclusive_group()
    verbosity.add_argument("--quiet", action="store_true", help="print only the final summary")
    verbosity.add_argument("--verbose", action="store_true", help="also print worker logs")

    p = sub.add_parser("list", help="print the expanded cases without running them")
    _add_suite_args(p)

    p = sub.add_parser("validate", help="check a suite against the schema")
    _add_suite_args(p)

    p = sub.add_parser("plan", help="parameters, FLOPs and memory of each case, without building weights")
    p.add_argument("suite", help="a suite YAML file or a preset name (e.g. mixtral-8x7b)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")

    p = sub.add_parser("report", help="write report.html for a run (two runs: a comparison)")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", help="where to write the comparison report (two runs)")

    p = sub.add_parser("compare", help="compare a run with a stored baseline; exit 1 on a regression (nightly CI)")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--baseline", metavar="DIR_OR_FILE", help="a run folder or a file under baselines/")
    p.add_argument("--save-baseline", metavar="FILE", help="instead of comparing, store RUN_DIR as a baseline file (e.g. baselines/nightly-cpu.json)")
    p.add_argument("--threshold", type=float, default=0.10, help="relative slowdown that counts as a regression (default 0.10)")
    p.add_argument("--alpha", type=float, default=0.01, help="significance level of the Mann-Whitney U test (default 0.01)")
    p.add_argument("--format", choices=["table", "csv", "json", "markdown"], default="table")
    p.add_argument("--allow-mismatch", action="store_true", help="compare even when environment fingerprints differ")

    p = sub.add_parser("merge", help="combine shard outputs of one suite into one run")
    p.add_argument("dirs", nargs="+", metavar="DIR")
    p.add_argument("--out", required=True)
    p.add_argument("--allow-partial", action="store_true", help="merge even when shards are missing or unfinished")
    return parser


MAX_MESSAGE = 2000


def one_line(message: str) -> str:
    """A user-facing error as one bounded line, whatever its source put in it."""
    text = "; ".join(line.strip() for line in str(message).splitlines() if line.strip())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
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
        if args.command == "plan":
            from harness.plan import main as plan_main

            return plan_main(args)
        if args.command == "report":
            from harness.report import main as report_main

            return report_main(args)
        if args.command == "compare":
            from harness.compare import main as compare_main

            return compare_main(args)
        if args.command == "merge":
            from harness.merge import main as merge_main

            return merge_main(args)
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
