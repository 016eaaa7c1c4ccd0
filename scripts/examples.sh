#!/usr/bin/env bash
# The client examples and the CLI client, run as the README says against
# the real binary's demo: each example (Rust, Python, TypeScript) gets
# tenants and watches them; the demo is then restarted on the same port,
# and each must reconnect, take the RESET and the complete snapshot, and
# be synced again. Also checks that the committed generated code is what
# buf.gen.yaml makes. Installs what it needs (a venv under the target
# directory, npm ci in examples/typescript).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET="${CARGO_TARGET_DIR:-target}"
BIN="$TARGET/debug/tenant-status"
LOG=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

passed=0
fail() {
  echo "examples: $passed passed, 1 failed" >&2
  echo "EXAMPLES FAILED: $*" >&2
  for f in "$LOG"/*.log; do echo "--- $f" >&2; tail -n 30 "$f" >&2; done
  exit 1
}
ok() { echo "ok: $1"; passed=$((passed + 1)); }
# wait_for FILE PATTERN [SECONDS]: until FILE has a line matching PATTERN.
wait_for() {
  for _ in $(seq 1 $((${3:-30} * 10))); do
    grep -Eq -- "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  fail "no '$2' in $1 within ${3:-30} s"
}
# after FILE FIRST THEN: a line matching THEN comes after one matching FIRST.
after() { awk -v a="$2" -v b="$3" '$0 ~ a {seen=1} seen && $0 ~ b {found=1} END {exit !found}' "$1"; }

echo "== build"
cargo build --locked --quiet --bin tenant-status --example watch_tenant
mkdir -p "$TARGET"
VENV="$(cd "$TARGET" && pwd)/examples-venv"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r examples/python/requirements-gen.txt pyyaml==6.0.3
(cd examples/typescript && npm ci --no-audit --no-fund --loglevel=error)
(cd examples/typescript && node_modules/.bin/tsc --noEmit) || fail "the TypeScript example does not type-check"
ok "the TypeScript example type-checks"

echo "== the committed generated code is what buf.gen.yaml makes"
# Only buf.gen.yaml's entries for examples/ (others, like a dashboard's,
# have tools of their own), generated into a scratch directory.
"$VENV/bin/python" - "$LOG/buf.gen.examples.yaml" <<'EOF'
import sys, yaml
with open("buf.gen.yaml") as f:
    template = yaml.safe_load(f)
template["plugins"] = [p for p in template["plugins"] if p["out"].startswith("examples/")]
with open(sys.argv[1], "w") as f:
    yaml.safe_dump(template, f)
EOF
PATH="$VENV/bin:$PATH" npx --yes @bufbuild/buf@1.75.0 generate \
  --template "$LOG/buf.gen.examples.yaml" -o "$LOG/gen" >"$LOG/buf-generate.log" 2>&1 \
  || fail "buf generate: $(grep -v 'Unknown user config' "$LOG/buf-generate.log")"
for out in examples/python/gen examples/typescript/gen; do
  diff -r "$out" "$LOG/gen/$out" >"$LOG/gen.diff" 2>&1 || fail "$out differs from what buf generate makes (run it, see buf.gen.yaml): $(head -20 "$LOG/gen.diff")"
done
ok "examples/python/gen and examples/typescript/gen are up to date"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
ADDR="http://127.0.0.1:$PORT"
start_demo() {
  "$BIN" demo --grpc-addr "127.0.0.1:$PORT" --webhook-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 \
    --heartbeat-interval 1s >>"$LOG/demo.log" 2>&1 &
  DEMO_PID=$!
  pids+=($DEMO_PID)
  for _ in $(seq 1 100); do "$BIN" get --addr "$ADDR" Cust10001 >/dev/null 2>&1 && return 0; sleep 0.1; done
  fail "the demo does not answer on $ADDR"
}

echo "== the CLI client against the demo"
start_demo
OUT=$("$BIN" get --addr "$ADDR" Cust10002 Cust10004) || fail "get exits $?"
grep -q "^TENANT .*STATE .*HOST .*OBSERVED" <<<"$OUT" || fail "get prints no table header: $OUT"
grep -q "^Cust10004 .*sod[0-9].superoffice.com .*s ago" <<<"$OUT" || fail "get: $OUT"
ok "tenant-status get prints a table"
set +e
"$BIN" get --addr "$ADDR" Cust99999 >/dev/null 2>"$LOG/notfound.err"; CODE=$?
set -e
[ "$CODE" = 3 ] || fail "get of an unknown tenant exits $CODE, not 3"
ok "tenant-status get of a tenant SuperOffice does not know exits 3"
# The twelve demo tenants, once each has had its first poll.
for _ in $(seq 1 100); do [ "$("$BIN" list --addr "$ADDR" -o json | wc -l)" -ge 12 ] && break; sleep 0.1; done
[ "$("$BIN" list --addr "$ADDR" -o json | wc -l)" -ge 12 ] || fail "list -o json has fewer than 12 lines"
"$BIN" list --addr "$ADDR" --state suspended | grep -q "^Cust10012 .*suspended" || fail "list --state suspended"
ok "tenant-status list, with --state and -o json"
"$BIN" completions bash | grep -q "tenant-status" || fail "completions bash"
ok "tenant-status completions"

echo "== each example against the demo, across a restart"
"$BIN" watch --addr "$ADDR" -o json Cust10002 Cust10004 >"$LOG/cli-watch.log" 2>"$LOG/cli-watch.err" &
pids+=($!)
"$TARGET/debug/examples/watch_tenant" --addr "$ADDR" Cust10002 Cust10004 >"$LOG/rust.log" 2>&1 &
pids+=($!)
"$VENV/bin/python" examples/python/watch_tenant.py --addr "$ADDR" Cust10002 Cust10004 >"$LOG/python.log" 2>&1 &
pids+=($!)
(cd examples/typescript && exec node --import tsx watch_tenant.ts --addr "$ADDR" Cust10002 Cust10004) >"$LOG/typescript.log" 2>&1 &
pids+=($!)
EXAMPLES="rust python typescript"
for ex in $EXAMPLES; do
  wait_for "$LOG/$ex.log" "^get Cust10004: [A-Z_]+, api https://sod[0-9].superoffice.com/Cust10004/api, revision [0-9]+"
  wait_for "$LOG/$ex.log" "^snapshot Cust10002: [A-Z_]+ at https://"
  wait_for "$LOG/$ex.log" "^synced at revision [0-9]+: holding 2 tenants"
  ok "$ex example: get, snapshot, synced"
done
wait_for "$LOG/cli-watch.log" '"type":"WATCH_EVENT_TYPE_SYNCED"'

kill -TERM "$DEMO_PID"
wait "$DEMO_PID" || fail "the demo exited non-zero after SIGTERM"
for ex in $EXAMPLES; do wait_for "$LOG/$ex.log" "^stream broke \(.*\); resuming from revision [1-9][0-9]* in"; done
start_demo
for ex in $EXAMPLES; do
  wait_for "$LOG/$ex.log" "^reset: the server cannot resume from revision [0-9]+; dropping 2 tenants"
  for _ in $(seq 1 300); do after "$LOG/$ex.log" "^reset: " "^synced at revision [0-9]+: holding 2 tenants" && break; sleep 0.1; done
  after "$LOG/$ex.log" "^reset: " "^synced at revision [0-9]+: holding 2 tenants" || fail "$ex: not synced again after the RESET"
  ok "$ex example: reconnected, took the RESET and the new snapshot"
done
for _ in $(seq 1 300); do after "$LOG/cli-watch.log" "WATCH_EVENT_TYPE_RESET" "WATCH_EVENT_TYPE_SYNCED" && break; sleep 0.1; done
after "$LOG/cli-watch.log" "WATCH_EVENT_TYPE_RESET" "WATCH_EVENT_TYPE_SYNCED" || fail "tenant-status watch: no RESET then SYNCED"
grep -q "watch interrupted" "$LOG/cli-watch.err" || fail "tenant-status watch said nothing of the break"
ok "tenant-status watch: reconnected, took the RESET and the new snapshot"
echo "examples: $passed passed, 0 failed"
