#!/usr/bin/env bash
# Checks deploy/ as CI runs it: the Kubernetes manifests against the
# Kubernetes schemas (kubernetes-validate, strict), their config.toml with
# `tenant-status check-config`, the NATS configuration with `nats-server
# -t`, the systemd unit with `systemd-analyze verify` and `security`, the
# Prometheus rules with `promtool check rules` and their unit tests, and
# that every metric the rules and the Grafana dashboard name is one the
# binary exports. The Dockerfile cannot be built here (no container
# engine); its Rust version is checked against Cargo.toml.
#
# Needs Debian's prometheus (promtool), systemd (systemd-analyze) and
# nats-server packages (.ci/run installs them); installs kubernetes-validate
# in a venv under the target directory.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET="${CARGO_TARGET_DIR:-target}"
BIN="$TARGET/debug/tenant-status"
TMP=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT

passed=0
fail() { echo "deploy-check: $passed passed, 1 failed" >&2; echo "DEPLOY CHECK FAILED: $*" >&2; exit 1; }
ok() { echo "ok: $1"; passed=$((passed + 1)); }
need() { command -v "$1" >/dev/null 2>&1 || fail "$1 is missing: apt-get install -y $2"; }
need promtool prometheus
need systemd-analyze systemd
need nats-server nats-server

cargo build --locked --quiet --bin tenant-status
mkdir -p "$TARGET"
VENV="$(cd "$TARGET" && pwd)/deploy-venv"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate==1.37.0 pyyaml==6.0.3
PY="$VENV/bin/python"

echo "== Kubernetes"
for dir in deploy/kubernetes/*/; do
  dir=${dir%/}
  # kustomization.yaml lists every manifest of its folder, and only those.
  "$PY" - "$dir" <<'EOF' || fail "$dir/kustomization.yaml does not list exactly the folder's manifests"
import os, sys, yaml
d = sys.argv[1]
listed = set(yaml.safe_load(open(os.path.join(d, "kustomization.yaml")))["resources"])
present = {f for f in os.listdir(d) if f.endswith(".yaml") and f != "kustomization.yaml"}
if listed != present:
    sys.exit(f"listed {sorted(listed)}, present {sorted(present)}")
EOF
  files=$(ls "$dir"/*.yaml | grep -v '/kustomization.yaml$')
  # shellcheck disable=SC2086
  "$VENV/bin/kubernetes-validate" --strict $files >"$TMP/kv.out" 2>&1 || { cat "$TMP/kv.out"; fail "$dir: kubernetes-validate"; }
  # A kind it has no schema for is only a warning there; here it fails.
  grep -q "WARN\|ERROR\|failed" "$TMP/kv.out" && { cat "$TMP/kv.out"; fail "$dir: kubernetes-validate warned"; }
  ok "$dir: $(grep -c passed "$TMP/kv.out") resources valid against the Kubernetes $(grep -om1 'version [0-9.]*' "$TMP/kv.out") schemas (strict)"
done

# config.toml of a ConfigMap, to a file.
toml_of() { "$PY" -c 'import sys, yaml; print(next(d for d in yaml.safe_load_all(open(sys.argv[1])) if d["kind"] == "ConfigMap")["data"]["config.toml"])' "$1" >"$2"; }
echo "a-token-of-sixteen-characters-or-more" >"$TMP/tokens"
echo "a-nats-password" >"$TMP/nats-password"
mkdir -p "$TMP/state"
toml_of deploy/kubernetes/single/configmap.yaml "$TMP/single.toml"
# The mounted files' paths exist only in the pod: the flags stand in for them.
"$BIN" check-config --config "$TMP/single.toml" --grpc-token-file "$TMP/tokens" --state-file "$TMP/state/state.json" \
  || fail "single/configmap.yaml's config.toml is refused"
ok "single/configmap.yaml: tenant-status check-config accepts its config.toml"
"$PY" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["stringData"]["grpc-tokens"])' \
  deploy/kubernetes/single/secret.yaml >"$TMP/placeholder"
set +e
"$BIN" check-config --config "$TMP/single.toml" --grpc-token-file "$TMP/placeholder" --state-file "$TMP/state/state.json" >"$TMP/placeholder.out" 2>&1
CODE=$?
set -e
[ "$CODE" = 2 ] && grep -q "at least 16" "$TMP/placeholder.out" || fail "the Secret's placeholder token is not refused: $(cat "$TMP/placeholder.out")"
ok "secret.yaml's placeholder token is refused at start (exit 2)"
toml_of deploy/kubernetes/replicated/configmap.yaml "$TMP/replicated.toml"
if "$BIN" serve --help | grep -q -- "--nats-url"; then
  TENANT_STATUS_REPLICA_ID=tenant-status-0 "$BIN" check-config --config "$TMP/replicated.toml" \
    --grpc-token-file "$TMP/tokens" --nats-password-file "$TMP/nats-password" \
    || fail "replicated/configmap.yaml's config.toml is refused"
  ok "replicated/configmap.yaml: tenant-status check-config accepts its config.toml"
else
  echo "skipped: replicated/configmap.yaml's config.toml (this build has no --nats-url yet)"
fi
"$PY" -c 'import sys, yaml; print(next(d for d in yaml.safe_load_all(open(sys.argv[1])) if d["kind"] == "ConfigMap")["data"]["nats.conf"])' \
  deploy/kubernetes/replicated/nats.yaml >"$TMP/nats.conf"
POD_NAME=tenant-status-nats-0 NATS_PASSWORD=x nats-server -t -c "$TMP/nats.conf" >"$TMP/nats.out" 2>&1 \
  || fail "nats.conf: $(cat "$TMP/nats.out")"
ok "replicated/nats.yaml: nats-server -t accepts nats.conf"

echo "== systemd"
UNIT="$TMP/tenant-status.service"
# verify wants ExecStart's program to exist: the one just built.
sed "s#/usr/local/bin/tenant-status#$(cd "$(dirname "$BIN")" && pwd)/tenant-status#" deploy/systemd/tenant-status.service >"$UNIT"
OUT=$(systemd-analyze verify "$UNIT" 2>&1) || fail "systemd-analyze verify: $OUT"
# It only warns of an unknown setting; any output is a failure here.
[ -z "$OUT" ] || fail "systemd-analyze verify: $OUT"
ok "systemd-analyze verify: no complaint"
# The threshold is in tenths: 20 is an exposure of 2.0 ("OK" up to 3.9).
systemd-analyze security --offline=true --threshold=20 "$UNIT" >"$TMP/security.out" 2>&1 \
  || { tail -n 40 "$TMP/security.out"; fail "systemd-analyze security: exposure above 2.0"; }
ok "systemd-analyze security: $(grep -o 'Overall exposure level.*' "$TMP/security.out" | sed 's/ for [^:]*:/:/')"
TENANT_STATUS_STATE_FILE="$TMP/state/state.json" TENANT_STATUS_GRPC_TOKEN_FILE="$TMP/tokens" \
  "$BIN" check-config --config deploy/systemd/config.toml || fail "deploy/systemd/config.toml is refused"
ok "deploy/systemd/config.toml: tenant-status check-config accepts it with the unit's environment"

echo "== Prometheus and Grafana"
promtool check rules deploy/prometheus/alerts.yml || fail "promtool check rules"
ok "promtool check rules deploy/prometheus/alerts.yml"
promtool test rules deploy/prometheus/alerts_test.yml || fail "promtool test rules"
ok "promtool test rules deploy/prometheus/alerts_test.yml"
"$PY" -c 'import json, sys; d = json.load(open(sys.argv[1])); assert d["panels"] and d["uid"]' deploy/grafana/tenant-status.json \
  || fail "deploy/grafana/tenant-status.json does not parse as a dashboard"
ok "deploy/grafana/tenant-status.json parses"

# Every metric named must be exported: scrape the real binary's demo.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ADMIN=127.0.0.1:$(free_port)
GRPC=127.0.0.1:$(free_port)
HOOK=127.0.0.1:$(free_port)
"$BIN" demo --grpc-addr "$GRPC" --webhook-addr "$HOOK" --admin-addr "$ADMIN" >"$TMP/demo.log" 2>&1 &
pids+=($!)
# Ready: the first poll round is done, so the poll families show.
for _ in $(seq 1 150); do curl -sf "http://$ADMIN/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
# A call and a refused notification, so that their labelled families show.
for _ in $(seq 1 100); do "$BIN" get --addr "$GRPC" Cust10001 >/dev/null 2>&1 && break; sleep 0.1; done
curl -s -o /dev/null "http://$HOOK/NotifyCustomerStateChange" -H 'content-type: application/json' -d '{}' || true
curl -sf "http://$ADMIN/metrics" >"$TMP/metrics" || fail "the demo's /metrics does not answer"
# The replicas' metrics (tenant_status_cluster_*): a demo replica against a
# real nats-server, scraped the same way.
if command -v nats-server >/dev/null; then
  NATS_PORT=$(free_port)
  nats-server -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$TMP/nats-js" >"$TMP/nats.log" 2>&1 &
  pids+=($!)
  RADMIN=127.0.0.1:$(free_port)
  for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$NATS_PORT") 2>/dev/null && break; sleep 0.1; done
  "$BIN" demo --nats-url "nats://127.0.0.1:$NATS_PORT" --replicas 1 --grpc-addr "127.0.0.1:$(free_port)" \
    --webhook-addr "127.0.0.1:$(free_port)" --admin-addr "$RADMIN" >"$TMP/replica.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 150); do curl -sf "http://$RADMIN/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -sf "http://$RADMIN/metrics" >>"$TMP/metrics" || fail "the replica demo's /metrics does not answer"
else
  echo "skipped: the replicas' metrics (nats-server is not installed)"
fi
"$PY" - "$TMP/metrics" deploy/prometheus/alerts.yml deploy/grafana/tenant-status.json <<'EOF' || fail "a metric named in deploy/ is not exported"
import re, sys
exported = set()
for line in open(sys.argv[1]):
    m = re.match(r"# TYPE (\S+) (\S+)", line)
    if m:
        name, kind = m.groups()
        exported |= {name, name + "_total", name + "_info", name + "_bucket", name + "_sum", name + "_count"}
missing = {}
for path in sys.argv[2:]:
    for name in re.findall(r"\b((?:tenant_status|process)_[a-z_]+)\b", open(path).read()):
        if name not in exported:
            missing.setdefault(path, set()).add(name)
if missing:
    sys.exit(f"not exported: {missing}")
EOF
ok "every metric the alerts and the dashboard name is exported"

echo "== Dockerfile (read, not built: no container engine here)"
WANT=$(grep -m1 '^rust-version' Cargo.toml | cut -d'"' -f2)
grep -q "^FROM rust:$WANT-" deploy/docker/Dockerfile || fail "the Dockerfile's builder is not Rust $WANT (Cargo.toml's rust-version)"
ok "the Dockerfile builds with Rust $WANT, Cargo.toml's rust-version"
echo "deploy-check: $passed passed, 0 failed"
