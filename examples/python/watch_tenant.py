#!/usr/bin/env python3
"""Gets tenants from tenant-status, then watches them the way a service
would: it holds each tenant's latest record, and when the stream breaks it
reconnects and resumes from the largest revision it received, so it misses
nothing. A RESET from the server (it restarted, or cannot serve that
revision without a gap) means: drop what you hold, a complete snapshot
follows.

    pip install -r examples/python/requirements.txt
    python3 examples/python/watch_tenant.py --addr http://127.0.0.1:50051 Cust10002 Cust10004

The code in gen/ is generated from proto/ by `buf generate` (buf.gen.yaml).
With --grpc-token-file on the server, set TENANT_STATUS_TOKEN_FILE to a
file holding the token. Runs until interrupted.
"""
import argparse
import os
import random
import sys
import time

import grpc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen"))
from tenantstatus.v1 import tenant_status_pb2 as pb  # noqa: E402
from tenantstatus.v1 import tenant_status_pb2_grpc as rpc  # noqa: E402

# Worth reconnecting for: the server went away, restarted or the
# connection broke. Anything else (a malformed name, a refused token) is
# a mistake that reconnecting will not mend.
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED,
}


def state(t: pb.Tenant) -> str:
    return pb.TenantState.Name(t.state).removeprefix("TENANT_STATE_")


def channel(addr: str) -> grpc.Channel:
    # Keepalive pings notice a server that vanished without closing the
    # connection, so the watch can resume.
    options = [("grpc.keepalive_time_ms", 30_000), ("grpc.keepalive_timeout_ms", 10_000)]
    if addr.startswith("https://"):
        return grpc.secure_channel(addr.removeprefix("https://"), grpc.ssl_channel_credentials(), options)
    return grpc.insecure_channel(addr.removeprefix("http://"), options)


def metadata() -> tuple:
    path = os.environ.get("TENANT_STATUS_TOKEN_FILE")
    if not path:
        return ()
    with open(path, encoding="utf-8") as f:
        token = next(line.strip() for line in f if line.strip() and not line.startswith("#"))
    return (("authorization", f"Bearer {token}"),)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default=os.environ.get("TENANT_STATUS_ADDR", "http://127.0.0.1:50051"))
    parser.add_argument("tenants", nargs="+", metavar="CTX")
    args = parser.parse_args()
    stub = rpc.TenantStatusServiceStub(channel(args.addr))
    md = metadata()

    for ctx in args.tenants:
        try:
            t = stub.GetTenantState(pb.GetTenantStateRequest(context_identifier=ctx), metadata=md, timeout=30)
        except grpc.RpcError as e:
            # NOT_FOUND: SuperOffice does not know it; UNAVAILABLE: try later.
            print(f"get {ctx}: {e.code().name}: {e.details()}", flush=True)
            continue
        print(f"get {ctx}: {state(t.tenant)}, api {t.tenant.api or '-'}, revision {t.tenant.revision}", flush=True)

    held: dict[str, pb.Tenant] = {}
    since = 0  # the largest revision received, of any event
    backoff = 0.25
    while True:
        request = pb.WatchTenantRequest(context_identifiers=args.tenants, since_revision=since)
        try:
            for ev in stub.WatchTenant(request, metadata=md):
                if ev.type == pb.WATCH_EVENT_TYPE_RESET:
                    print(f"reset: the server cannot resume from revision {since}; dropping {len(held)} tenants", flush=True)
                    held.clear()
                    since = 0
                    continue
                since = max(since, ev.revision)
                if ev.type in (pb.WATCH_EVENT_TYPE_SNAPSHOT, pb.WATCH_EVENT_TYPE_CHANGED):
                    kind = "snapshot" if ev.type == pb.WATCH_EVENT_TYPE_SNAPSHOT else "changed"
                    known = held.get(ev.context_identifier)
                    if known is None or known.revision < ev.tenant.revision:
                        held[ev.context_identifier] = ev.tenant
                    print(f"{kind} {ev.context_identifier}: {state(ev.tenant)} at {ev.tenant.endpoint or '-'} (revision {ev.revision})", flush=True)
                elif ev.type == pb.WATCH_EVENT_TYPE_REMOVED:
                    held.pop(ev.context_identifier, None)
                    print(f"removed {ev.context_identifier} (revision {ev.revision})", flush=True)
                elif ev.type == pb.WATCH_EVENT_TYPE_SYNCED:
                    backoff = 0.25
                    print(f"synced at revision {ev.revision}: holding {len(held)} tenants", flush=True)
            reason = "the server ended the stream"
        except grpc.RpcError as e:
            if e.code() not in RETRYABLE:
                print(f"watch: {e.code().name}: {e.details()}", file=sys.stderr)
                return 1
            reason = f"{e.code().name}: {e.details()}"
        wait = backoff * random.uniform(0.5, 1.0)
        print(f"stream broke ({reason}); resuming from revision {since} in {wait:.2f}s", flush=True)
        time.sleep(wait)
        backoff = min(backoff * 2, 10.0)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(0)
