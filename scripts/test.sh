#!/usr/bin/env bash
# Runs every check a submission must pass: format, lints, then all tests (unit, property,
# multi-process). The multi-process tests start the binaries built by the first step.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
# The alerting rules and their unit tests (deploy/prometheus/), with promtool.
./scripts/check-alerts.sh
cargo build --workspace --bins --locked
# The container tests (tests/tests/compose.rs) run these debug binaries as image baton:test, on
# images built offline (reused while nothing changed). Without a Docker engine they are skipped,
# and said so here and at the end.
docker_missing=""
if docker info >/dev/null 2>&1; then
  BATON_IMAGES_PROFILE=debug BATON_IMAGES_NO_CARGO=1 ./scripts/images.sh
else
  docker_missing="no Docker engine reachable: the container tests (tests/tests/compose.rs) are SKIPPED"
  echo "=== $docker_missing ===" >&2
fi
# The fault-point tests (tests/tests/fault_points.rs) run the replica and controller with their
# named fault points compiled in: separate binaries (`*-failpoints`) built with the
# `failpoints` feature; the normal and release binaries have none. Unoptimized and without
# debug info, to build fast; the test harness runs this same command (keep them equal).
FAULTS=(--features baton-replica/failpoints,baton-controller/failpoints)
cargo build --workspace --locked --bin baton-replica-failpoints --bin baton-controller-failpoints "${FAULTS[@]}" \
  --config profile.dev.package.baton-replica.opt-level=0 --config profile.dev.package.baton-replica.debug=0 \
  --config profile.dev.package.baton-controller.opt-level=0 --config profile.dev.package.baton-controller.debug=0
cargo clippy -p baton-replica -p baton-controller --lib --bins --locked "${FAULTS[@]}" -- -D warnings
cargo clippy --workspace --all-targets --locked -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
# Tier 1 at scale: 2000 more seeds of the simulation (the test suite runs about 600 of its own), on
# every core; prints `simulation: … violations 0 …` and, for a failing seed, its replay command.
cargo run -q --locked -p baton-tests --bin baton-sim -- --seeds 2000 --start 10001
# The write-availability bounds (issue 12): one bounded fault at a time, each fault's longest
# write gap held against its bound in simulated time; prints the per-fault table.
cargo run -q --locked -p baton-tests --bin baton-sim -- --bounds --seeds 16 --start 101 --duration-ms 60000
if [ -n "$docker_missing" ]; then
  echo "=== $docker_missing ===" >&2
fi
