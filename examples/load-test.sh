#!/usr/bin/env bash
# Load-test recipe: ramp up, hold, spike, cool down (k6-style stages), then reports.
#
#   examples/load-test.sh --mock                 # against the embedded mock server
#   ADBATCH_TOKEN=... examples/load-test.sh --endpoint https://d.us.criteo.com/delivery/retailmedia
#
# Against production, send only events with nolog=1 (not counted as page views) and a
# rate agreed with Criteo. Every argument is passed to `adbatch load`.
# Knobs (environment): STAGES, MAX_IN_FLIGHT, OUT (directory), ADBATCH (command).
set -euo pipefail
cd "$(dirname "$0")/.."
ADBATCH=${ADBATCH:-adbatch}
STAGES=${STAGES:-"5s:50,10s:50,5s:200,5s:200,5s:0"}
OUT=${OUT:-adbatch-load}
mkdir -p "$OUT"

status=0
# shellcheck disable=SC2086  # ADBATCH may be a command with arguments
$ADBATCH load examples/pageviews.jsonl "$@" \
    --stages "$STAGES" \
    --max-in-flight "${MAX_IN_FLIGHT:-128}" \
    -o "$OUT/records.jsonl" \
    --summary "$OUT/summary.json" || status=$?

# The report is recomputed from the records: the same figures, plus per-second plots.
# shellcheck disable=SC2086
$ADBATCH report "$OUT/records.jsonl" --html "$OUT/report.html" --title "load test"
echo "records: $OUT/records.jsonl  summary: $OUT/summary.json  report: $OUT/report.html"
exit "$status"
