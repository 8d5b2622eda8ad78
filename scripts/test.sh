#!/usr/bin/env bash
# Runs every test: unit and property tests, then the end-to-end tests against real
# Postgres (serialized by .config/nextest.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --workspace --bins
status=0
# The planner's property tests draw random event sequences; so that a run says the
# same thing twice, the draws come from a fixed seed unless you give your own
# (PROPTEST_RNG_SEED=$RANDOM bash scripts/test.sh, or cargo test, to explore; a failure
# found that way becomes a named regression test in
# controller/src/planner/tests/properties.rs).
export PROPTEST_RNG_SEED="${PROPTEST_RNG_SEED:-20261203}"
cargo nextest run --workspace --no-fail-fast || status=$?
# The version matrix: the whole suite above runs on PostgreSQL 15 (Debian's); on 16 and
# 18 (scripts/setup.sh installs them) a subset that goes through every path that
# depends on the major: bootstrap, switchover, VM loss and rejoin by pg_rewind (the
# tutorial), three nodes with a quorum, the isolated primary under the history checker,
# reinit, a permanent physical slot and a logical one across a failover (the state-file
# copy on 16, Postgres's failover slots on 18), a standby formation, pause and restart.
# PGHA_E2E_MAJOR selects the major of any e2e test.
matrix='test(/tutorial_switchover_vm_loss|three_nodes_fail_over_and_rejoin|the_primary_isolated_from_everyone|reinit_rebuilds|a_permanent_slot_survives|a_logical_slot_follows|a_standby_formation_follows|a_paused_formation|restart_restarts_a_standby/)'
for major in 16 18; do
  echo "== e2e on PostgreSQL $major"
  # --workspace, as above: the same build, nothing compiled again.
  PGHA_E2E_MAJOR=$major cargo nextest run --workspace --no-fail-fast -E "package(pgha-e2e) & $matrix" || status=$?
done
# A multi-host test that nextest had to kill (a timeout) cannot remove its network
# namespaces itself: remove those whose test process is gone, with what runs inside
# (only the harness names namespaces pgha-<pid>-...).
if command -v ip >/dev/null && [ "$(id -u)" -eq 0 ]; then
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^pgha-[0-9]+-' || true); do
    pid=${ns#pgha-}; pid=${pid%%-*}
    if ! kill -0 "$pid" 2>/dev/null; then
      for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
      ip netns del "$ns" 2>/dev/null || true
    fi
  done
fi
exit $status
