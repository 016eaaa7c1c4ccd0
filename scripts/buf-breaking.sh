#!/usr/bin/env bash
# The proto promises it only grows: clients generated from any earlier copy
# keep working. This checks that promise against every version the proto
# has had on this branch (each commit that changed proto/), not only the
# last one, with buf's FILE rules (buf.yaml): no field, value, message or
# RPC removed, renumbered, retyped or renamed.
set -euo pipefail
cd "$(dirname "$0")/.."
buf=(npx --yes @bufbuild/buf@1.75.0)
versions=$(git log --format=%H -- proto)
if [ -z "$versions" ]; then
  echo "buf breaking: no earlier version of proto/ in this clone's history; nothing to compare"
  exit 0
fi
n=0
for commit in $versions; do
  # depth: buf clones the local .git this deep to find the commit.
  "${buf[@]}" breaking --against ".git#ref=${commit},depth=10000"
  n=$((n + 1))
done
echo "buf breaking: proto/ is compatible with all $n earlier versions"
