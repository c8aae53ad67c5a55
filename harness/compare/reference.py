"""The results a run is compared with, and the run itself: a run folder, or a reference file written by
`--save-baseline` (format in docs/compare.md); both load into the same `Results`."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from harness.analysis import load, load_run_info
from harness.atomic import write_atomic
from harness.compare.records import CaseResult, CompareError, Results
from harness.values import as_number, plain, strict_json

REFERENCE_FORMAT = "moe-harness-baseline"  # the file format keeps its first name
REFERENCE_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1: one flat sample list per case (one process), no contention


def load_results(path: str | Path) -> Results:
    """A run folder (rows.jsonl with raw samples, else its results table) or a reference JSON file."""
    p = Path(path)
    if p.is_dir():
        return _from_run(p)
    if p.is_file():
        if p.suffix != ".json":
            raise CompareError(f"{p}: expected a run folder or a reference .json file")
        return read_reference(p)
    raise CompareError(f"{p}: no such run folder or reference file")


def _from_run(run_dir: Path) -> Results:
    from harness.store import RunStore

    info = load_run_info(run_dir)
    rows = RunStore(run_dir).rows()
    if not rows:  # a copied run without its journal: no raw samples, so intervals decide
        frame = load(run_dir)
        rows = [{k: plain(v) for k, v in r.items()} for r in frame.to_dict("records")]
    cases = {}
    for row in rows:
        if row.get("baseline") == "aa_copy":  # an A/A copy calibrates the run (its `aa` spread); not a case to track
            continue
        result = CaseResult.from_row(row)
        cases[result.key] = result
    if not cases:
        raise CompareError(f"{run_dir}: the run has no result rows")
    return Results(str(run_dir), info.suite_name, info.fingerprint, cases, as_number((info.aa or {}).get("spread")))


def read_reference(path: Path) -> Results:
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CompareError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except (UnicodeDecodeError, RecursionError) as exc:
        raise CompareError(f"{path}: not a readable JSON file ({type(exc).__name__})") from None
    if not isinstance(doc, dict) or doc.get("format") != REFERENCE_FORMAT:
        raise CompareError(f"{path}: not a moe-harness baseline (write one with compare RUN --save-baseline FILE)")
    if doc.get("version") not in READABLE_VERSIONS:
        raise CompareError(f"{path}: reference format version {doc.get('version')}, this harness reads "
                           f"{', '.join(map(str, READABLE_VERSIONS))}")
    for key, kind in (("cases", list), ("fingerprint", dict), ("suite", str)):
        if key in doc and not (isinstance(doc[key], kind) or (doc[key] is None and key != "cases")):
            raise CompareError(f"{path}: {key!r} must be a {kind.__name__}, got {type(doc[key]).__name__}")
    try:
        cases = [CaseResult.from_json(record) for record in doc["cases"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise CompareError(f"{path}: malformed case record ({exc})") from None
    return Results(str(path), doc.get("suite"), doc.get("fingerprint") or {}, {c.key: c for c in cases},
                   as_number(doc.get("aa_spread")))


def reference_text(results: Results, created: str | None = None) -> str:
    """The reference file: a small header, then one line per case so that refreshes diff readably."""
    header = {
        "format": REFERENCE_FORMAT,
        "version": REFERENCE_VERSION,
        "created": created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source_run": results.source,
        "suite": results.suite,
        "aa_spread": results.aa_spread,
        "fingerprint": strict_json(results.fingerprint),
    }
    head = json.dumps(header, indent=2, allow_nan=False)
    lines = [json.dumps(strict_json(results.cases[k].to_json()), allow_nan=False) for k in sorted(results.cases)]
    body = ",\n".join(f"    {line}" for line in lines)
    return f'{head[:-2]},\n  "cases": [\n{body}\n  ]\n}}\n'


def save_reference(results: Results, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: tmp.write_text(reference_text(results)))
