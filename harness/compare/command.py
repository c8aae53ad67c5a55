"""`python -m harness compare`: load both sides, refuse environments that may not be compared, decide, print."""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from harness.analysis import RunError, load_run_info
from harness.compare.decide import Comparison, compare
from harness.compare.matching import rekeyed_on_configuration
from harness.compare.records import CompareError, Results
from harness.compare.reference import load_results, save_reference
from harness.compare.render import render
from harness.environment import comparable
from harness.values import as_number


def environment_mismatch(reference: Results, current: Results) -> list[str]:
    """Comparable fingerprint keys that differ, as 'key (reference vs current)'; a missing fingerprint too."""
    missing = [f"{r.source} has no environment fingerprint" for r in (reference, current) if not r.fingerprint]
    if missing:
        return missing
    return [f"{k} ({reference.fingerprint.get(k)!r} vs {current.fingerprint.get(k)!r})"
            for k in comparable(reference.fingerprint, current.fingerprint)]


def run_comparison(args: argparse.Namespace) -> Comparison:
    if not (math.isfinite(args.threshold) and args.threshold > 0):  # inf would switch the gate off
        raise CompareError(f"--threshold must be a finite number > 0 (a relative change, 0.10 = 10%), got {args.threshold}")
    if not 0 < args.alpha < 1:
        raise CompareError(f"--alpha must be between 0 and 1, got {args.alpha}")
    current = load_results(args.run)
    reference = load_results(args.baseline)
    mismatch = environment_mismatch(reference, current)
    if mismatch and not args.allow_mismatch:
        raise CompareError("environments differ: " + "; ".join(mismatch)
                           + ". Measure the reference on this machine, or pass --allow-mismatch")
    if not reference.cases.keys() & current.cases.keys():  # e.g. runs that differ in a run.* setting
        current = rekeyed_on_configuration(reference, current)
    spreads = [r.aa_spread for r in (reference, current) if r.aa_spread is not None]
    if getattr(args, "aa", None):
        spreads.append(_aa_spread_of(args.aa))
    aa_spread = max(spreads) if spreads else None
    findings = compare(reference, current, max(args.threshold, aa_spread or 0.0), args.alpha, aa_spread is not None)
    return Comparison(reference, current, args.threshold, args.alpha, findings, mismatch if args.allow_mismatch else [],
                      aa_spread)


def _aa_spread_of(path: str) -> float:
    """The A/A spread of a run folder made with `calibrate: aa` or `python -m harness aa`."""
    spread = as_number((load_run_info(path).aa or {}).get("spread"))
    if spread is None:
        raise CompareError(f"--aa {path}: no A/A spread in its run.json (run it with `python -m harness aa SUITE`)")
    return spread


def _save(args: argparse.Namespace) -> int:
    results = load_results(args.run)
    ok = sum(c.ok for c in results.cases.values())
    if not ok:
        raise CompareError(f"{args.run}: no case finished ok; nothing to promote to a reference")
    if not results.fingerprint:
        raise CompareError(f"{args.run}: no environment fingerprint (run.json); a reference must say where it was measured")
    path = Path(args.save_baseline)
    save_reference(results, path)
    not_ok = len(results.cases) - ok
    fp = results.fingerprint
    where = ", ".join(f"{k}={fp.get(k)}" for k in ("device_name", "cpu_model", "threads", "torch"))
    print(f"saved {len(results.cases)} cases of suite {results.suite} to {path} ({where})")
    if not_ok:
        print(f"warning: {not_ok} of them did not finish ok; they are stored as such, and a later run that still "
              "fails them is not a regression", file=sys.stderr)
    return 0


def main(args: argparse.Namespace) -> int:
    save = getattr(args, "save_baseline", None)
    try:
        if save and args.baseline:
            raise CompareError("give either --baseline (compare) or --save-baseline (promote this run), not both")
        if save:
            return _save(args)
        if not args.baseline:
            raise CompareError("compare needs --baseline DIR_OR_FILE (or --save-baseline FILE to promote this run)")
        comparison = run_comparison(args)
    except (CompareError, RunError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if comparison.mismatch:
        print(f"warning: environments differ ({', '.join(comparison.mismatch)}); compared anyway", file=sys.stderr)
    sys.stdout.write(render(comparison, args.format))
    return comparison.exit_code
