#!/usr/bin/env bash
# The main job on a fresh machine: installs what is missing, builds pgha, and runs a
# local formation on loopback doing real work (monitor + two Postgres nodes, a table
# written through the multi-host URI, show state, a switchover, rows counted again).
# Extra arguments go to `pgha demo` (e.g. --keep to leave it running).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --runtime-only
cargo build --bins
exec ./target/debug/pgha demo "$@"
