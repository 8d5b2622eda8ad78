#!/usr/bin/env bash
# Runs the planner's property tests N times (default 20), each with a new random seed,
# where scripts/test.sh always draws the same cases. Prints each seed; a failing seed is
# kept in the output with proptest's minimal case (make it a named regression test in
# controller/src/planner/tests/properties.rs). Usage: bash scripts/explore.sh [N]
set -uo pipefail
cd "$(dirname "$0")/.."
runs="${1:-20}"
case "$runs" in '' | *[!0-9]*) echo "explore.sh: N must be a number of runs, not '$runs'" >&2; exit 2 ;; esac
cargo test -q -p pgha-controller --lib --no-run 2>/dev/null || { echo "explore.sh: the tests do not build" >&2; exit 1; }
failed=0
for i in $(seq 1 "$runs"); do
  seed=$(( (RANDOM << 15) | RANDOM ))
  if out=$(PROPTEST_RNG_SEED=$seed cargo test -q -p pgha-controller --lib properties 2>&1); then
    echo "run $i/$runs seed $seed: ok"
  else
    failed=$((failed + 1))
    echo "run $i/$runs seed $seed: FAILED"
    echo "$out" | grep -E "Test failed|minimal failing input" -A3
  fi
done
# A failure is also recorded in controller/proptest-regressions/ (proptest does that),
# so that every later run tries it first.
echo "$runs runs, $failed failed"
[ "$failed" -eq 0 ]
