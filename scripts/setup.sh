#!/usr/bin/env bash
# Installs what pgha needs on a fresh Debian machine: PostgreSQL 15 (server binaries
# under /usr/lib/postgresql/15/bin, and the unprivileged `postgres` OS user that runs
# them when pgha runs as root), pgBackRest (backups), openssl and protoc (to build
# etcd's client); for the tests (unless --runtime-only) also Prometheus (server and
# promtool), etcd, iproute2 and nftables (the multi-host fault tests), cargo-nextest and
# mdbook (the book in docs/).
set -euo pipefail
runtime_only=false
[ "${1:-}" = "--runtime-only" ] && runtime_only=true
need_apt=()
[ -x /usr/lib/postgresql/15/bin/pg_ctl ] || need_apt+=(postgresql-15)
command -v openssl >/dev/null || need_apt+=(openssl)
# etcd's client is generated from .proto files at build time (the `etcd` feature).
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)
# Backups (a formation file's `backup` section): every node runs pgBackRest.
[ -x /usr/bin/pgbackrest ] || need_apt+=(pgbackrest)
if ! $runtime_only; then
  command -v promtool >/dev/null || need_apt+=(prometheus)
  # The controller-group tests run a real etcd cluster.
  [ -x /usr/bin/etcd ] || need_apt+=(etcd-server)
  # The multi-host fault tests: network namespaces (iproute2), cut links (nftables),
  # slow links (tc netem, in iproute2).
  command -v ip >/dev/null || need_apt+=(iproute2)
  command -v nft >/dev/null || need_apt+=(nftables)
  # A test reads the monitor's /metrics with curl, as a newcomer would.
  command -v curl >/dev/null || need_apt+=(curl)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "== installing ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# The Debian package creates a "main" cluster on port 5432; pgha does not use it and
# leaves it alone.
if ! $runtime_only && ! cargo nextest --version >/dev/null 2>&1; then
  echo "== installing cargo-nextest"
  cargo install --locked cargo-nextest
fi
# The book (docs/): built in CI so that a broken summary or include fails there.
MDBOOK_VERSION=0.5.4
if ! $runtime_only && [ "$(mdbook --version 2>/dev/null)" != "mdbook v$MDBOOK_VERSION" ]; then
  echo "== installing mdbook $MDBOOK_VERSION"
  cargo install --locked --version "$MDBOOK_VERSION" mdbook
fi
