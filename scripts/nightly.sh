#!/usr/bin/env bash
# Nightly CI benchmark: run suites/nightly.yaml, then compare with the stored baseline.
# Exit status is compare's: 0 no regression, 1 regression (or a case that failed/vanished),
# 2 no baseline, bad input, or a baseline measured on a different environment.
# Writes $OUT/compare.md (for a PR or issue comment) and $OUT/compare.json beside the run.
#   BASELINE  baseline file or run folder (default baselines/nightly-cpu.json)
#   OUT       run folder (default reports/nightly-<UTC timestamp>)
#   THRESHOLD relative change that counts (default 0.25: two back-to-back runs of identical code on an
#             idle 2-core VM differed by up to 17% in a 3 ms forward step and 16% in CPU peak RSS, a drift
#             between processes that no within-run test sees); ALPHA significance level (default 0.01)
set -euo pipefail
cd "$(dirname "$0")/.."
BASELINE=${BASELINE:-baselines/nightly-cpu.json}
OUT=${OUT:-reports/nightly-$(date -u +%Y%m%d-%H%M%S)}
THRESHOLD=${THRESHOLD:-0.25}
ALPHA=${ALPHA:-0.01}
PYTHON=${PYTHON:-python}

if [ ! -e "$BASELINE" ]; then
  echo "error: no baseline at $BASELINE; create it on this machine (see baselines/README.md)" >&2
  exit 2
fi

# Failed cases are not fatal here: compare reports a case that was ok in the baseline and failed now.
"$PYTHON" -m harness run suites/nightly.yaml --out "$OUT" --quiet --allow-failures

compare=("$PYTHON" -m harness compare "$OUT" --baseline "$BASELINE" --threshold "$THRESHOLD" --alpha "$ALPHA")
status=0
"${compare[@]}" --format markdown > "$OUT/compare.md" || true
"${compare[@]}" --format json > "$OUT/compare.json" || true
"${compare[@]}" --format table || status=$?
exit "$status"
