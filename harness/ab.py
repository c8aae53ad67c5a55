"""`python -m harness ab SUITE --a KEY=VALUE... --b KEY=VALUE...` (two settings) or
`--base-ref REF --head-ref REF` (two commits): A and B measured in one job, interleaved, then compared.

Comparing two runs taken at different times mixes the change with whatever else changed on the
machine in between (asv's `continuous` and pytest-benchmark users run both sides in one job for this
reason). Here each case of A is measured next to the same case of B, alternating which goes first
(A B, B A, A B, ...), so drift and a busy minute hit both sides alike. Each side runs the suite's
`run.processes` worker processes per case in rounds, as `run` does, so each side's interval holds the
spread between processes (with one, every timing verdict would be "cannot tell").

- Settings: A and B are the suite with each side's `--set` overrides (`run.threads=1` vs
  `run.threads=2`, `moe.impl=loop` vs `moe.impl=grouped`). Both must expand to the same number of
  cases; case i of A is compared with case i of B.
- Commits: each ref is checked out into its own git worktree under OUT/src-{A,B} (removed again when
  the measurements end), and its workers import `harness` from there (the runner, suite and job format
  are this checkout's; a ref whose worker cannot read this checkout's job files fails its cases with
  the worker's message). Both sides run in this environment's interpreter and packages: what a ref
  changes in its dependencies is not measured (docs/nightly.md).

OUT/A and OUT/B are ordinary run folders (report, compare, history all read them); the comparison of
B against A is `compare`'s decision and exit status (B slower than A beyond the threshold and
significant: 1; cannot tell: 3), written to OUT/compare.md and OUT/compare.json and printed as a
table, headed by what differs.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from harness import safe_yaml
from harness.errors import UserError


@dataclass
class Side:
    name: str
    overrides: list[str]
    code: Path | None = None  # a worktree whose harness the workers import
    commit: str | None = None

    def describe(self) -> str:
        if self.commit:
            return f"{self.name}: commit {self.commit[:12]}"
        return f"{self.name}: " + (" ".join(self.overrides) or "the suite as written")


def _git(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise UserError(f"git {' '.join(args)}: {done.stderr.strip() or 'failed'}")
    return done.stdout.strip()


def checkout(ref: str, where: Path) -> str:
    """`ref` checked out (detached) at `where` as a worktree of the current repository; its commit."""
    commit = _git("rev-parse", "--verify", f"{ref}^{{commit}}")
    if where.exists():
        _git("-C", str(where), "checkout", "-q", "--detach", commit)
    else:
        _git("worktree", "add", "-q", "--detach", str(where), commit)
    return commit


def declared_dependencies(commit: str) -> dict[str, Any] | None:
    """What `commit`'s pyproject.toml declares about its environment (Python, dependencies, extras);
    None when it has none. Without tomllib (Python 3.10) the whole file stands for it."""
    done = subprocess.run(["git", "show", f"{commit}:pyproject.toml"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return None
    try:
        import tomllib
    except ImportError:  # Python 3.10
        return {"pyproject.toml": done.stdout}
    try:
        project = tomllib.loads(done.stdout).get("project") or {}
    except tomllib.TOMLDecodeError:
        return {"pyproject.toml": done.stdout}
    return {key: project.get(key) for key in ("requires-python", "dependencies", "optional-dependencies")}


def dependency_change(base: str, head: str) -> str | None:
    """A sentence when the two commits declare different dependencies, which `ab` cannot measure: both
    sides import their own `harness` but share this environment's packages. None when they agree."""
    a, b = declared_dependencies(base), declared_dependencies(head)
    if a == b:
        return None
    a, b = a or {}, b or {}
    changed = [_what_changed(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return (f"the two commits declare different dependencies (pyproject.toml: {'; '.join(changed)}); "
            "both sides run with this environment's packages, so the comparison measures the code change only, "
            "not the dependency change")


def _what_changed(key: str, old: Any, new: Any) -> str:
    if isinstance(old, list) and isinstance(new, list):
        return " ".join([key] + [f"+{x}" for x in new if x not in old] + [f"-{x}" for x in old if x not in new])
    return key


def sides(args: argparse.Namespace, out: Path) -> tuple[Side, Side]:
    refs = args.base_ref or args.head_ref
    if refs and (args.a or args.b):
        raise UserError("ab: give --a/--b (settings) or --base-ref/--head-ref (commits), not both")
    if refs:
        if not (args.base_ref and args.head_ref):
            raise UserError("ab: --base-ref and --head-ref go together")
        a, b = Side("A", []), Side("B", [])
        for side, ref in ((a, args.base_ref), (b, args.head_ref)):
            side.code = (out / f"src-{side.name}").resolve()
            side.commit = checkout(ref, side.code)
        return a, b
    if not (args.a or args.b):
        raise UserError("ab: give the settings of each side (--a KEY=VALUE ... --b KEY=VALUE ...) or two commits "
                        "(--base-ref REF --head-ref REF)")
    if sorted(args.a) == sorted(args.b):
        raise UserError("ab: --a and --b are the same settings; nothing would differ")
    return Side("A", list(args.a)), Side("B", list(args.b))


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def main(args: argparse.Namespace) -> int:
    from harness.calibration import calibrate
    from harness.contracts import RunInfo
    from harness.environment import fingerprint
    from harness.lock import RunLock
    from harness.progress import Progress
    from harness.runner import advance, jobs_for, pending
    from harness.store import RunStore
    from harness.suite import load_suite
    from harness.sweep import expand

    suite_text = safe_yaml.read_text(Path(args.suite))
    base = load_suite(args.suite, tuple(args.overrides))
    out = Path(args.out) if args.out else Path("reports") / f"ab-{base.name}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    a, b = sides(args, out)
    warning = dependency_change(a.commit, b.commit) if a.commit and b.commit else None
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    here = fingerprint()
    plan: dict[str, Any] = {}
    for side in (a, b):
        suite = load_suite(args.suite, tuple(args.overrides) + tuple(side.overrides))
        expansion = expand(suite)
        print_ = dict(here, git_commit=side.commit or here.get("git_commit"))
        plan[side.name] = (side, suite, expansion, jobs_for(suite, expansion, None), print_)
    jobs_a, jobs_b = plan["A"][3], plan["B"][3]
    if len(jobs_a) != len(jobs_b):
        raise UserError(f"ab: A expands to {len(jobs_a)} measurements and B to {len(jobs_b)}; the settings must "
                        "change how cases are measured, not how many there are")
    stores, locks = {}, []
    try:
        for name, (side, suite, _, _, fp) in plan.items():
            lock = RunLock(out / name, f"ab {args.suite} ({name})").acquire()
            locks.append(lock)
            store = RunStore(out / name)
            if (store.root / "rows.jsonl").exists():
                raise UserError(f"ab: {store.root} already holds a run; give a new --out")
            store.write_meta(RunInfo(suite=suite.model_dump(mode="json"), suite_yaml=suite_text,
                                     overrides=list(args.overrides) + side.overrides, fingerprint=fp, started=_now()))
            stores[name] = store
        context = calibrate([j.case for j in jobs_a + jobs_b])
        rows: dict[str, dict[tuple[str, str], dict[str, Any] | None]] = {"A": {}, "B": {}}
        progress = Progress(total=sum(j.case.run.processes for j in jobs_a + jobs_b), quiet=args.quiet)
        with progress:
            # as `run` does: process 1 of every pair, then process 2 ...; the side that goes first
            # alternates between pairs and between one process and the next
            for process in range(1, max(j.case.run.processes for j in jobs_a + jobs_b) + 1):
                for i, pair in enumerate(zip(jobs_a, jobs_b)):
                    for name in (("A", "B") if (i + process) % 2 else ("B", "A")):
                        side, suite, expansion, _, fp = plan[name]
                        job = pair[0] if name == "A" else pair[1]
                        row = rows[name].get(job.key)
                        if pending(job, row, process):
                            rows[name][job.key] = advance(job, row, process, stores[name], expansion, suite, fp, context,
                                                          progress, code=side.code, side=name)
        for store in stores.values():
            meta = store.read_meta()
            meta.finished = _now()
            store.write_meta(meta)
            store.write_tables()
    finally:
        for lock in locks:
            lock.release()
        for side in (a, b):
            if side.code is not None:  # the checkouts were only for measuring; the rows keep each commit
                subprocess.run(["git", "worktree", "remove", "--force", str(side.code)], capture_output=True, check=False)
    return report(out, a, b, jobs_a, jobs_b, args.threshold, args.alpha, warning)


def report(out: Path, a: Side, b: Side, jobs_a: list, jobs_b: list, threshold: float, alpha: float,
           warning: str | None = None) -> int:
    """B against A with compare's decision, case i of A matched with case i of B; `warning` heads it."""
    from harness.compare import compare, load_results, render
    from harness.compare.decide import Comparison

    results_a, results_b = load_results(out / "A"), load_results(out / "B")
    rename = {(jb.case.id, jb.workload): (ja.case.id, ja.workload) for ja, jb in zip(jobs_a, jobs_b)}
    cases_b = {}
    for key, case in results_b.cases.items():
        new = rename.get(key, key)
        cases_b[new] = replace(case, case_id=new[0])
    matched_b = replace(results_b, cases=cases_b)
    comparison = Comparison(results_a, matched_b, threshold, alpha, compare(results_a, matched_b, threshold, alpha))
    head = f"A/B in one job, interleaved: {a.describe()}; {b.describe()} (B compared with A; case ids are A's)"
    if warning:
        head += f"\n\nWarning: {warning}."
    (out / "compare.md").write_text(f"{head}\n\n" + render(comparison, "markdown"))
    doc = json.loads(render(comparison, "json"))
    (out / "compare.json").write_text(json.dumps({"ab": head.split("\n")[0], "warning": warning, **doc}, indent=2) + "\n")
    sys.stdout.write(f"{head}\n\n" + render(comparison, "table"))
    print(f"A: {out / 'A'}  B: {out / 'B'}  comparison: {out / 'compare.md'}")
    return comparison.exit_code
