#!/usr/bin/env bash
# The Compose deployment of DESIGN §8 (deploy/compose/compose.yaml), as Compose project `baton`:
# 3 etcd members, 2 controllers, 3 replicas and a proxy, each its own container with its own
# address, secure by default (TLS and tokens everywhere).
#
#   scripts/compose.sh up       builds the images offline (scripts/images.sh, no registry),
#                               writes the certificates, tokens and configs once
#                               (batonctl compose render into deploy/compose/run; kept across
#                               runs), starts the containers, initializes the cluster the first
#                               time, waits until a write through the proxy is acknowledged and
#                               prints the endpoints.
#   scripts/compose.sh down     stops and removes the containers; the data (named volumes) and
#                               deploy/compose/run stay, so `up` brings the same cluster back.
#   scripts/compose.sh down --volumes
#                               also deletes the data and deploy/compose/run: the next `up`
#                               makes a new cluster.
#   scripts/compose.sh status   each container's state and health, then `batonctl status`.
#
# From the host: `batonctl --local-dir deploy/compose/run status` (or any command), the proxy
# at https://127.0.0.1:7100, `docker compose -p baton kill r1` / `start r1` for one node.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=deploy/compose
RUN=$DIR/run
CTL=target/release/batonctl

die() { echo "compose.sh: $*" >&2; exit 1; }

command -v docker >/dev/null || die "docker is not installed (Docker Engine and Compose are needed)"
docker info >/dev/null 2>&1 || die "the Docker daemon is not running, or this user may not use it"
# Compose v2 (`docker compose`) or v1 (Debian 12's docker-compose 1.29): the file suits both.
if docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null; then
  COMPOSE=(docker-compose)
else
  die "Docker Compose is missing (apt install docker-compose, or the docker compose plugin)"
fi
dc() { "${COMPOSE[@]}" -p baton -f "$DIR/compose.yaml" "$@"; }

# Waits until every named service's container reports healthy (at most $1 seconds).
wait_healthy() {
  local limit=$1; shift
  local deadline=$((SECONDS + limit)) s id h
  for s in "$@"; do
    while :; do
      id=$(dc ps -q "$s" 2>/dev/null || true)
      h=$([ -n "$id" ] && docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id" 2>/dev/null || echo missing)
      [ "$h" = healthy ] && break
      [ $SECONDS -lt $deadline ] || { dc ps; die "$s is $h after ${limit} s (docker logs of it: ${COMPOSE[*]} -p baton -f $DIR/compose.yaml logs $s)"; }
      sleep 0.5
    done
  done
}

endpoints() {
  echo "Baton (Compose project baton) is up:"
  echo "  proxy:        https://127.0.0.1:7100   (clients connect here)"
  echo "  controllers:  https://127.0.0.1:7001 (c1), https://127.0.0.1:7002 (c2)"
  echo "  replicas:     https://127.0.0.1:7101 (r1), :7102 (r2), :7103 (r3); inside the network r1:7101 …"
  echo "  etcd:         etcd1, etcd2, etcd3 (inside the network only; client certificates required)"
  echo "  description:  $RUN/cluster.json (CA, tokens; owner-only)"
  echo "  operate:      $CTL --local-dir $RUN status"
  echo "  write:        curl --cacert $RUN/ca.pem -H \"Authorization: Bearer \$TOKEN\" -X PUT --data-binary v https://127.0.0.1:7100/v1/kv/k"
  echo "                (TOKEN: tokens.write of $RUN/cluster.json)"
}

case "${1:-}" in
  up)
    ./scripts/images.sh
    "$CTL" compose render --dir "$RUN"
    dc up -d
    # etcd and the controllers must be healthy before init; the replicas' and the proxy's
    # readiness needs a role and a leader, which init gives.
    wait_healthy 120 etcd1 etcd2 etcd3 c1 c2
    out=$("$CTL" --local-dir "$RUN" init --wait-s 60 2>&1) || {
      case "$out" in
        *"already has a state"*) ;;
        *) echo "$out" >&2; die "init failed (see docker compose -p baton logs)" ;;
      esac
    }
    [ -n "$out" ] && echo "$out"
    url=https://127.0.0.1:7100
    token=$(sed -n 's/.*"write": "\([^"]*\)".*/\1/p' "$RUN/cluster.json")
    deadline=$((SECONDS + 60))
    until curl -sf --max-time 2 --cacert "$RUN/ca.pem" -H "Authorization: Bearer $token" \
        -X PUT --data-binary ok "$url/v1/kv/__baton_compose_up" >/dev/null; do
      [ $SECONDS -lt $deadline ] || { dc ps; die "no write through the proxy was acknowledged within 60 s"; }
      sleep 0.5
    done
    wait_healthy 60 r1 r2 r3 proxy
    endpoints
    ;;
  down)
    if [ "${2:-}" = "--volumes" ]; then
      dc down --volumes --timeout 20
      rm -rf "$RUN"
    else
      dc down --timeout 20
    fi
    ;;
  status)
    dc ps
    if [ -f "$RUN/cluster.json" ] && [ -x "$CTL" ]; then
      echo
      "$CTL" --local-dir "$RUN" status
    fi
    ;;
  *)
    echo "usage: scripts/compose.sh up | down [--volumes] | status" >&2
    exit 2
    ;;
esac
