#!/usr/bin/env bash
# Build and test everything: format check, clippy, release binaries, then the whole
# workspace's tests (unit tests and the end-to-end tests in tests/, which start the
# units in network namespaces and play streams with ffmpeg, GStreamer and tshark).
# The end-to-end tests create network namespaces, so this must run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==== %s\n' "$*"; }

step "install system dependencies"
./scripts/install-deps.sh

if [[ $(id -u) -ne 0 ]]; then
  echo "test.sh: the end-to-end tests create network namespaces and need root (try: sudo -E $0)" >&2
  exit 1
fi

step "start libvirtd (the libvirt deployer's tests use a real daemon)"
./scripts/start-libvirt.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --release --workspace --all-targets -- -D warnings

step "cargo build --release --workspace --bins"
cargo build --release --workspace --bins

step "cargo test"
export DIVISOR_BIN_DIR=${DIVISOR_BIN_DIR:-$PWD/target/release}
cargo test --release --workspace --no-fail-fast -- --test-threads=2

step "fuzz every parser briefly (scripts/fuzz.sh; the long runs are in bench/RESULTS.md)"
./scripts/fuzz.sh "${FUZZ_SECS:-15}"
step "all tests passed"
