#!/usr/bin/env bash
# Installs what building, testing and benchmarking Baton need beyond a Rust toolchain:
# etcd (the controller's store and the benchmark's peer), protoc and its well-known types
# (etcd-client's build),
# iptables and iproute2 (partition tests), haproxy (the tested alternative to baton-proxy,
# tests/tests/haproxy.rs), prometheus (promtool and the alert test), chromium-headless-shell
# (the status page test). Installs only what is missing.
set -euo pipefail
need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
# protoc's well-known types (google/protobuf/*.proto) are only a Recommends of protobuf-compiler.
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
[ -x /usr/sbin/haproxy ] || need+=(haproxy)
# scripts/compose.sh writes through the proxy with curl.
command -v curl >/dev/null 2>&1 || need+=(curl)
# The container tests and scripts/compose.sh need Compose next to a Docker engine (v2 plugin or
# Debian's docker-compose); without an engine they are skipped and say so.
if command -v docker >/dev/null 2>&1 && ! docker compose version >/dev/null 2>&1 &&
  ! command -v docker-compose >/dev/null 2>&1; then
  need+=(docker-compose)
fi
command -v nsenter >/dev/null 2>&1 || need+=(util-linux)
# The alerting rules are checked with promtool, and tests/tests/alerts.rs runs a real Prometheus.
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
# tests/tests/status_page.rs loads the controller's status page in a real headless browser.
command -v chromium-headless-shell >/dev/null 2>&1 || command -v chromium >/dev/null 2>&1 ||
  need+=(chromium-headless-shell)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is missing: install Rust from https://rustup.rs first" >&2
  exit 1
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "cargo-nextest is missing; installing it"
  cargo install cargo-nextest --locked
fi
