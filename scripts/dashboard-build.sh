#!/usr/bin/env bash
# Rebuilds the dashboard that tenant-status serves at GET /: generates the
# gRPC-Web client from the proto (buf generate with protoc-gen-es, a local
# plugin from dashboard/node_modules), type-checks the TypeScript, and
# bundles it with esbuild into dashboard/dist/, which is committed and
# embedded in the binary (src/serve/dashboard.rs). The output depends only
# on the sources and package-lock.json, so CI runs this and checks that
# git sees no difference. Needs Node.js and npm.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x dashboard/node_modules/.bin/esbuild ]; then
  (cd dashboard && npm ci --no-audit --no-fund)
fi

rm -rf dashboard/src/gen
# Only buf.gen.yaml's entries that write under dashboard/ (the examples'
# need tools of their own: scripts/examples.sh runs those).
TEMPLATE=$(mktemp --suffix=.yaml)
trap 'rm -f "$TEMPLATE"' EXIT
python3 - "$TEMPLATE" <<'PY'
import sys
head, blocks, cur = [], [], None
for line in open("buf.gen.yaml"):
    if line.startswith("  - "):
        cur = [line]
        blocks.append(cur)
    elif cur is not None and line.startswith("    "):
        cur.append(line)
    elif not line.startswith("#") and not line.startswith("  #"):
        cur = None
        if line.strip():
            head.append(line)
keep = [b for b in blocks if any(l.strip().startswith("out: dashboard/") for l in b)]
with open(sys.argv[1], "w") as f:
    f.writelines(head + [l for b in keep for l in b])
PY
npx --yes @bufbuild/buf@1.75.0 generate --template "$TEMPLATE"
dashboard/node_modules/.bin/tsc -p dashboard

rm -rf dashboard/dist
mkdir -p dashboard/dist/dashboard
dashboard/node_modules/.bin/esbuild dashboard/src/app.ts \
  --bundle --format=esm --target=es2022 --minify --charset=utf8 --legal-comments=none \
  --banner:js='/* tenant-status dashboard: built by scripts/dashboard-build.sh from dashboard/src. Bundles @bufbuild/protobuf and @connectrpc/connect (Apache-2.0). */' \
  --outfile=dashboard/dist/dashboard/app.js --log-level=warning
cp dashboard/src/index.html dashboard/dist/index.html
cp dashboard/src/icon.svg dashboard/dist/dashboard/icon.svg
ls -l dashboard/dist dashboard/dist/dashboard
