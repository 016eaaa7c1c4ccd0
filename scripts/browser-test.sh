#!/usr/bin/env bash
# The dashboard in a real browser: tests/browser/*.test.mjs (node --test)
# drive Debian's Chromium with playwright-core against the real binary and
# the fake SuperOffice. Needs Node.js, `apt-get install chromium`, and
# `npm ci` in tests/browser (this script runs it when node_modules is
# missing). Without Chromium it skips with a message, unless
# TENANT_STATUS_REQUIRE_BROWSER=1 (CI sets it), which makes it a failure.
#
# Screenshots go to target/browser/; TENANT_STATUS_SCREENSHOT_DIR=docs
# refreshes the README's.
set -euo pipefail
cd "$(dirname "$0")/.."

skip() {
  if [ "${TENANT_STATUS_REQUIRE_BROWSER:-}" = 1 ]; then
    echo "browser test: $1 (TENANT_STATUS_REQUIRE_BROWSER=1 makes this a failure)" >&2
    exit 1
  fi
  echo "browser test SKIPPED: $1"
  exit 0
}

CHROMIUM="${TENANT_STATUS_CHROMIUM:-/usr/bin/chromium}"
command -v node >/dev/null 2>&1 || skip "no node (install Node.js 20 or later)"
[ -x "$CHROMIUM" ] || skip "no $CHROMIUM (apt-get install chromium)"
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  (cd tests/browser && npm ci --no-audit --no-fund)
fi

cargo build --locked --quiet
export TENANT_STATUS_BIN="${CARGO_TARGET_DIR:-target}/debug/tenant-status"
case "$TENANT_STATUS_BIN" in /*) ;; *) TENANT_STATUS_BIN="$PWD/$TENANT_STATUS_BIN" ;; esac
TAP=$(mktemp)
status=0
node --test --test-concurrency=1 \
  --test-reporter=spec --test-reporter-destination=stdout \
  --test-reporter=tap --test-reporter-destination="$TAP" \
  tests/browser/ || status=$?
passed=$(sed -n 's/^# pass //p' "$TAP")
failed=$(sed -n 's/^# fail //p' "$TAP")
rm -f "$TAP"
echo "browser: ${passed:-0} passed, ${failed:-0} failed"
exit "$status"
