// Gets tenants from tenant-status, then watches them the way a service
// would: it holds each tenant's latest record, and when the stream breaks
// it reconnects and resumes from the largest revision it received, so it
// misses nothing. A RESET from the server (it restarted, or cannot serve
// that revision without a gap) means: drop what you hold, a complete
// snapshot follows.
//
//   cd examples/typescript && npm ci
//   npx tsx watch_tenant.ts --addr http://127.0.0.1:50051 Cust10002 Cust10004
//
// The code in gen/ is generated from proto/ by `buf generate` (buf.gen.yaml).
// With --grpc-token-file on the server, set TENANT_STATUS_TOKEN_FILE to a
// file holding the token. Runs until interrupted.

import { readFileSync } from "node:fs";
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import {
  type Tenant,
  TenantState,
  TenantStatusService,
  WatchEventType,
} from "./gen/tenantstatus/v1/tenant_status_pb.js";

// Worth reconnecting for: the server went away, restarted or the connection
// broke. Anything else (a malformed name, a refused token) is a mistake that
// reconnecting will not mend.
const RETRYABLE = new Set([
  Code.Unavailable,
  Code.Unknown,
  Code.Internal,
  Code.Canceled,
  Code.DeadlineExceeded,
  Code.Aborted,
]);

function state(t: Tenant | undefined): string {
  return t ? (TenantState[t.state] ?? `state ${t.state}`) : "-";
}

function bearer(): Interceptor[] {
  const path = process.env.TENANT_STATUS_TOKEN_FILE;
  if (!path) return [];
  const token = readFileSync(path, "utf8")
    .split("\n")
    .map((l) => l.trim())
    .find((l) => l !== "" && !l.startsWith("#"));
  if (!token) throw new Error(`${path} holds no token`);
  return [
    (next) => async (req) => {
      req.header.set("authorization", `Bearer ${token}`);
      return next(req);
    },
  ];
}

function parseArgs(argv: string[]): { addr: string; tenants: string[] } {
  let addr = process.env.TENANT_STATUS_ADDR ?? "http://127.0.0.1:50051";
  const tenants: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--addr") addr = argv[++i];
    else tenants.push(argv[i]);
  }
  if (tenants.length === 0) {
    console.error("usage: watch_tenant.ts [--addr http://HOST:PORT] CTX...");
    process.exit(2);
  }
  return { addr, tenants };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function main(): Promise<void> {
  const { addr, tenants } = parseArgs(process.argv.slice(2));
  const transport = createGrpcTransport({
    baseUrl: addr,
    // Pings notice a server that vanished without closing the connection,
    // so the watch can resume.
    pingIntervalMs: 30_000,
    pingTimeoutMs: 10_000,
    interceptors: bearer(),
  });
  const client = createClient(TenantStatusService, transport);

  for (const ctx of tenants) {
    try {
      const { tenant } = await client.getTenantState({ contextIdentifier: ctx }, { timeoutMs: 30_000 });
      console.log(`get ${ctx}: ${state(tenant)}, api ${tenant?.api || "-"}, revision ${tenant?.revision}`);
    } catch (e) {
      // NotFound: SuperOffice does not know it; Unavailable: try later.
      const err = ConnectError.from(e);
      console.log(`get ${ctx}: ${Code[err.code]}: ${err.rawMessage}`);
    }
  }

  const held = new Map<string, Tenant>();
  let since = 0n; // the largest revision received, of any event
  let backoff = 250;
  for (;;) {
    let reason = "the server ended the stream";
    try {
      for await (const ev of client.watchTenant({ contextIdentifiers: tenants, sinceRevision: since })) {
        if (ev.type === WatchEventType.RESET) {
          console.log(`reset: the server cannot resume from revision ${since}; dropping ${held.size} tenants`);
          held.clear();
          since = 0n;
          continue;
        }
        if (ev.revision > since) since = ev.revision;
        if (ev.type === WatchEventType.SNAPSHOT || ev.type === WatchEventType.CHANGED) {
          const kind = ev.type === WatchEventType.SNAPSHOT ? "snapshot" : "changed";
          const known = held.get(ev.contextIdentifier);
          if (ev.tenant && (!known || known.revision < ev.tenant.revision)) held.set(ev.contextIdentifier, ev.tenant);
          console.log(`${kind} ${ev.contextIdentifier}: ${state(ev.tenant)} at ${ev.tenant?.endpoint || "-"} (revision ${ev.revision})`);
        } else if (ev.type === WatchEventType.REMOVED) {
          held.delete(ev.contextIdentifier);
          console.log(`removed ${ev.contextIdentifier} (revision ${ev.revision})`);
        } else if (ev.type === WatchEventType.SYNCED) {
          backoff = 250;
          console.log(`synced at revision ${ev.revision}: holding ${held.size} tenants`);
        }
      }
    } catch (e) {
      const err = ConnectError.from(e);
      if (!RETRYABLE.has(err.code)) {
        console.error(`watch: ${Code[err.code]}: ${err.rawMessage}`);
        process.exit(1);
      }
      reason = `${Code[err.code]}: ${err.rawMessage}`;
    }
    const wait = backoff * (0.5 + Math.random() / 2);
    console.log(`stream broke (${reason}); resuming from revision ${since} in ${(wait / 1000).toFixed(2)}s`);
    await sleep(wait);
    backoff = Math.min(backoff * 2, 10_000);
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
