#!/usr/bin/env bash
# A newcomer's first command: installs what is missing (etcd, protoc, …), builds Baton, and
# brings up a local cluster in ./baton-local (private etcd, 2 controllers, 3 replicas, proxy)
# in the foreground; Ctrl-C stops it and the data stays. Extra arguments go to
# `batonctl local up` (e.g. --mode async, --replicas 5, --detach).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-prereqs.sh
# The four programs only (not the test tools: baton-bench, baton-sim, baton-chaos).
cargo build --release --locked -p baton-replica -p baton-controller -p baton-proxy --bins
exec ./target/release/batonctl local up --dir "${BATON_LOCAL_DIR:-./baton-local}" "$@"
