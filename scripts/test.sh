#!/usr/bin/env bash
# Runs every check a submission must pass: format, lints, then all tests (unit, property,
# multi-process). The multi-process tests start the binaries built by the first step.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo build --workspace --bins --locked
cargo clippy --workspace --all-targets --locked -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
