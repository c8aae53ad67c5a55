"""`python -m harness machine [--baseline B | --history H]`: this machine's class, checked before a suite runs.

A nightly job should learn that its reference was measured elsewhere before it spends minutes on the
suite, not after. With `--baseline`, a fingerprint that differs on a comparable key is refused
(exit 2, like `compare`); with `--history`, it says how many recorded runs share this machine class
(none: the first `compare --history` will bootstrap, which is not an error).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness.environment import fingerprint
from harness.errors import UserError
from harness.history import History, HistoryError, describe_machine, machine_class


def main(args: argparse.Namespace) -> int:
    here = fingerprint()
    machine = machine_class(here)
    print(f"machine class {machine}: {describe_machine(here)}")
    if args.baseline:
        from harness.compare.command import environment_mismatch
        from harness.compare.records import CompareError, Results
        from harness.compare.reference import load_results

        try:
            reference = load_results(args.baseline)
        except CompareError as exc:
            raise UserError(str(exc)) from None
        mismatch = environment_mismatch(reference, Results("this machine", None, here, {}))
        if mismatch:
            raise UserError(f"{args.baseline} was measured on another machine class: {'; '.join(mismatch)}; "
                            "create a reference on this machine (see baselines/README.md) or compare with --history")
        print(f"{args.baseline}: measured on this machine class; comparable")
    if args.history:
        try:
            runs = History.at(args.history).entries(machine=machine, suite=args.suite)
        except HistoryError:
            if Path(args.history).exists():
                raise
            runs = []
        if runs:
            print(f"{args.history}: {len(runs)} recorded runs of this machine class"
                  + (f" and suite {args.suite}" if args.suite else "") + f", the latest {runs[-1].when}")
        else:
            print(f"{args.history}: no recorded run of this machine class yet; the first compare --history "
                  "records one and exits 0 (bootstrap)")
    if args.json:
        print(json.dumps({"machine": machine, "fingerprint": here}, default=str))
    return 0
