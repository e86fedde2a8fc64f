#!/usr/bin/env bash
# `make test`'s stopwatch: runs one step (`timed.sh LABEL command...`), prints how long it took
# and how it ended, and keeps the line in $TRIBUTARY_RUN_DIR/test-times so that the last step
# can print them all (`timed.sh --report`): where the time of a test run goes, step by step.
set -uo pipefail
times="${TRIBUTARY_RUN_DIR:-.run}/test-times"
mmss() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }
if [ "${1:-}" = --report ]; then
  [ -f "$times" ] || exit 0
  echo "[test] where the time went:"
  total=0
  while read -r label secs rc; do
    printf '[test]   %-22s %8s  (exit %s)\n' "$label" "$(mmss "$secs")" "$rc"
    total=$((total + secs))
  done <"$times"
  printf '[test]   %-22s %8s\n' "all steps" "$(mmss "$total")"
  rm -f "$times"
  exit 0
fi
label=$1; shift
mkdir -p "$(dirname "$times")"
start=$(date +%s)
"$@"
rc=$?
secs=$(($(date +%s) - start))
echo "$label $secs $rc" >>"$times"
echo "[test] $label: $(mmss "$secs") (exit $rc)"
exit $rc
