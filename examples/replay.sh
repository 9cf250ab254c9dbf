#!/usr/bin/env bash
# Replay recipe: send recorded traffic again at its own pace (or faster), from an
# access log of earlier delivery calls (combined log format) or from event files.
#
#   examples/replay.sh --mock                    # examples/access.log on the mock, 10x
#   SPEED=1 INPUT=/var/log/nginx/delivery.log ADBATCH_TOKEN=... examples/replay.sh \
#       --endpoint https://d.us.criteo.com/delivery/retailmedia --rate 50
#
# --speed scales the recorded gaps, --max-gap clamps idle periods, --rate caps the
# rate on top (delays, never drops). Every argument is passed to `adbatch replay`.
# Knobs (environment): INPUT, SPEED, MAX_GAP, OUT (directory), ADBATCH (command).
set -euo pipefail
cd "$(dirname "$0")/.."
ADBATCH=${ADBATCH:-adbatch}
INPUT=${INPUT:-examples/access.log}
OUT=${OUT:-adbatch-replay}
mkdir -p "$OUT"

status=0
# shellcheck disable=SC2086  # ADBATCH may be a command with arguments
$ADBATCH replay "$INPUT" "$@" \
    --speed "${SPEED:-10}" \
    --max-gap "${MAX_GAP:-2}" \
    -o "$OUT/records.jsonl" \
    --summary "$OUT/summary.json" || status=$?

# shellcheck disable=SC2086
$ADBATCH report "$OUT/records.jsonl" --html "$OUT/report.html" --title "replay of $INPUT"
echo "records: $OUT/records.jsonl  summary: $OUT/summary.json  report: $OUT/report.html"
exit "$status"
