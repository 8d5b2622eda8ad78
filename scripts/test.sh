#!/usr/bin/env bash
# Runs every test: unit and property tests, then the end-to-end tests against real
# Postgres (serialized by .config/nextest.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --workspace --bins
cargo nextest run --workspace --no-fail-fast
