#!/usr/bin/env bash
# Nightly CI benchmark: check the machine, run suites/nightly.yaml, compare, write what CI posts.
#
# Two modes:
#   HISTORY=FILE_OR_DIR/  compare with the recent runs of this machine class in the history, then record
#                         the run (an empty history, or a new machine: recorded, exit 0), and write the
#                         trend page. The default when BASELINE is not set: HISTORY=history.sqlite.
#   BASELINE=FILE_OR_DIR  compare with one stored baseline (baselines/README.md); refused before the
#                         suite runs when the baseline was measured on another machine class.
# Exit status is compare's: 0 no regression (or bootstrap), 1 regression (or a case that failed or
# vanished), 2 bad input or a baseline from another machine, 3 inconclusive (a side measured on a
# busy machine, or a change too uncertain to call): re-run on a quiet machine.
# Writes into $OUT, whatever happens (never an empty file: on a failure they say what failed):
#   compare.md    for the CI job summary or a PR comment     compare.json  the same for machines
#   report.html   the run's report                           pytest-benchmark.json  the run for
#   trends.html   (history mode) the trend page                    github-action-benchmark / Bencher
# Settings: OUT (default reports/nightly-<UTC timestamp>), SUITE (default suites/nightly.yaml),
#   THRESHOLD (default 0.25: two back-to-back runs of identical code on an idle 2-core VM differed by
#   up to 17% in a 3 ms forward step and 16% in CPU peak RSS, a drift between processes that no
#   within-run test sees), ALPHA (baseline mode, default 0.01), WINDOW (history mode, default 10),
#   PYTHON (default python).
set -uo pipefail
case "${1:-}" in
  -h|--help) sed -n '2,/^set -uo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) echo "usage: scripts/nightly.sh (settings come from the environment; --help)" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
SUITE=${SUITE:-suites/nightly.yaml}
OUT=${OUT:-reports/nightly-$(date -u +%Y%m%d-%H%M%S)}
THRESHOLD=${THRESHOLD:-0.25}
ALPHA=${ALPHA:-0.01}
WINDOW=${WINDOW:-10}
PYTHON=${PYTHON:-python}
BASELINE=${BASELINE:-}
if [ -z "$BASELINE" ]; then HISTORY=${HISTORY:-history.sqlite}; else HISTORY=${HISTORY:-}; fi
mkdir -p "$OUT"
log="$OUT/nightly.log"

# fail STATUS MESSAGE: compare.md/compare.json say what failed (with the log's tail), then exit STATUS
fail() {
  local status=$1 message=$2
  {
    echo "**nightly benchmark did not compare: $message**"
    echo
    echo '```'
    tail -n 30 "$log" 2>/dev/null
    echo '```'
  } > "$OUT/compare.md"
  "$PYTHON" -c 'import json, sys; print(json.dumps({"regression": None, "error": sys.argv[1], "exit_status": int(sys.argv[2])}))' \
    "$message" "$status" > "$OUT/compare.json" 2>/dev/null || echo "{\"regression\": null, \"exit_status\": $status}" > "$OUT/compare.json"
  echo "error: $message (details: $OUT/compare.md)" >&2
  exit "$status"
}

# 1. The machine check, before minutes of suite: a baseline from another machine is refused now.
if [ -n "$BASELINE" ]; then
  [ -e "$BASELINE" ] || fail 2 "no baseline at $BASELINE; create one on this machine (baselines/README.md) or set HISTORY"
  "$PYTHON" -m harness machine --baseline "$BASELINE" >> "$log" 2>&1 \
    || fail 2 "the baseline $BASELINE was measured on another machine class"
else
  "$PYTHON" -m harness machine --history "$HISTORY" >> "$log" 2>&1 || fail 2 "cannot read the history $HISTORY"
fi
tail -n 2 "$log"

# 2. The suite. Failed cases are not fatal here: compare reports a case that was ok before and failed now.
"$PYTHON" -m harness run "$SUITE" --out "$OUT" --quiet --allow-failures 2>&1 | tee -a "$log"
run_status=${PIPESTATUS[0]}
[ "$run_status" -eq 0 ] || fail 2 "the suite run exited with status $run_status"
"$PYTHON" -m harness export "$OUT" --format pytest-benchmark --out "$OUT/pytest-benchmark.json" >> "$log" 2>&1 \
  || echo "warning: the pytest-benchmark export failed (see $log)" >&2

# 3. The comparison: markdown and JSON for CI, the table for the log (history mode: that last call
#    records the run); then the trend page.
if [ -n "$BASELINE" ]; then
  compare=("$PYTHON" -m harness compare "$OUT" --baseline "$BASELINE" --threshold "$THRESHOLD" --alpha "$ALPHA")
  read_only=()
else
  compare=("$PYTHON" -m harness compare "$OUT" --history "$HISTORY" --window "$WINDOW" --threshold "$THRESHOLD")
  read_only=(--no-record)
fi
"${compare[@]}" ${read_only[@]+"${read_only[@]}"} --format json > "$OUT/compare.json" 2>> "$log"
"${compare[@]}" ${read_only[@]+"${read_only[@]}"} --format markdown > "$OUT/compare.md.tmp" 2>> "$log"
"${compare[@]}" --format table 2>&1 | tee -a "$log"
status=${PIPESTATUS[0]}
if [ "$status" -eq 2 ] || [ ! -s "$OUT/compare.md.tmp" ] || [ ! -s "$OUT/compare.json" ]; then
  rm -f "$OUT/compare.md.tmp"
  fail 2 "compare exited with status $status"
fi
mv "$OUT/compare.md.tmp" "$OUT/compare.md"
if [ -n "$HISTORY" ]; then
  "$PYTHON" -m harness trends "$HISTORY" --out "$OUT/trends.html" --window "$WINDOW" --threshold "$THRESHOLD" >> "$log" 2>&1 \
    || echo "warning: the trend page could not be written (see $log)" >&2
fi
exit "$status"
