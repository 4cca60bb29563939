#!/usr/bin/env bash
# Checks the Prometheus files in deploy/prometheus/ with promtool (Debian package `prometheus`):
# the alerting rules (alerts.yml), the example configuration (prometheus.yml, with its CA and
# token paths pointed at empty stand-ins so the files it names exist, and its rule file loaded)
# and the rules' unit tests (alerts.test.yml). Exits non-zero when promtool is missing or any
# check fails.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v promtool >/dev/null 2>&1; then
  echo "check-alerts: promtool is not installed: \`sudo apt install prometheus\` (or ./scripts/install-prereqs.sh)" >&2
  exit 1
fi
dir=deploy/prometheus
promtool check rules "$dir/alerts.yml"
# prometheus.yml names /etc/prometheus/baton/{ca.pem,read-token}, which promtool wants to exist:
# check a copy whose paths point at empty files, beside a copy of the rules it loads.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp "$dir/prometheus.yml" "$dir/alerts.yml" "$tmp/"
mkdir "$tmp/baton"
: >"$tmp/baton/ca.pem"
: >"$tmp/baton/read-token"
sed -i "s#/etc/prometheus/baton/#$tmp/baton/#g" "$tmp/prometheus.yml"
promtool check config "$tmp/prometheus.yml"
promtool test rules "$dir/alerts.test.yml"
echo "check-alerts: rules, config and rule tests pass"
