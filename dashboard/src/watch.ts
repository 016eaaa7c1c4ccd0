// The WatchTenant stream of every tenant, kept open for as long as the page
// is: reconnects with backoff, resumes with since_revision (the largest
// revision received, as the proto says), takes RESET's complete snapshot,
// and asks for a bearer token when the server answers UNAUTHENTICATED.

import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import {
  TenantStatusService,
  WatchEventType,
  type WatchTenantResponse,
} from "./gen/tenantstatus/v1/tenant_status_pb";
import { rowOf, type Row, type Tenants } from "./model";

/** What the indicator shows. `live`: synced and streaming; anything else is `reconnecting` to the test hook. */
export type Status =
  | { kind: "connecting"; attempt: number }
  | { kind: "syncing"; received: number; since: bigint }
  | { kind: "live"; since: bigint; reset: boolean; revision: bigint }
  | { kind: "waiting"; until: number; attempt: number; error: string }
  | { kind: "token"; refused: boolean; message: string };

/** One line of the feed: what happened to a tenant. */
export interface FeedEntry {
  at: number;
  id: string;
  before?: Row;
  /** Undefined when the tenant was removed. */
  after?: Row;
  /** Learnt from a resume's or a reset's snapshot: it happened while the page was disconnected. */
  missed: boolean;
}

export interface WatchHooks {
  status(s: Status): void;
  /** Rows changed (the table and counts redraw on the next frame). */
  changed(): void;
  feed(e: FeedEntry): void;
}

/** Backoff: 0.5 s doubling to 10 s, with jitter so a restart is not met by every page at once. */
function backoff(attempt: number): number {
  const base = Math.min(10_000, 500 * 2 ** Math.max(0, attempt - 1));
  return Math.round(base * (0.8 + Math.random() * 0.4));
}

/** Without any event this long (heartbeats come every 15 s by default), the stream is taken as dead. */
const MIN_SILENCE_MS = 45_000;

export class Watch {
  private client: Client<typeof TenantStatusService>;
  private maxRevision = 0n;
  /** After a RESET: rows the new snapshot has not confirmed yet; removed at SYNCED. */
  private unconfirmed: Set<string> | null = null;
  private abort: AbortController | null = null;
  private wake: (() => void) | null = null;
  /** The page has synced once: later snapshot records are news. */
  private baseline = false;
  private restarting = false;
  private heartbeatGap = 0;
  private lastHeartbeat = 0;

  constructor(
    baseUrl: string,
    private readonly tenants: Tenants,
    private readonly hooks: WatchHooks,
    private readonly token: { get(): string | null; clear(): void },
  ) {
    const transport = createGrpcWebTransport({ baseUrl, useBinaryFormat: true });
    this.client = createClient(TenantStatusService, transport);
  }

  /** Cuts a wait short: a token was entered, or the user asked to retry. */
  retryNow(): void {
    this.wake?.();
  }

  /** Drops the stream and connects again at once (a new token, say). */
  restart(): void {
    if (this.abort) {
      this.restarting = true;
      this.abort.abort(new ConnectError("restarted", Code.Canceled));
    }
    this.wake?.();
  }

  async run(): Promise<never> {
    let attempt = 0;
    for (;;) {
      attempt++;
      const since = this.maxRevision;
      let synced = false;
      try {
        synced = await this.stream(since, attempt);
        // The server ended the stream without an error (a proxy closing
        // it, say): reconnect as after any break.
        throw new ConnectError("the server closed the stream", Code.Unavailable);
      } catch (e) {
        if (synced) attempt = 1;
        const err = ConnectError.from(e);
        if (err.code === Code.Unauthenticated || err.code === Code.PermissionDenied) {
          const refused = this.token.get() !== null;
          if (refused) this.token.clear();
          this.hooks.status({ kind: "token", refused, message: err.rawMessage });
          await this.sleep(Infinity);
          attempt = 0;
          continue;
        }
        if (this.restarting) {
          this.restarting = false;
          attempt = 0;
          continue;
        }
        const delay = backoff(attempt);
        this.hooks.status({ kind: "waiting", until: Date.now() + delay, attempt, error: describe(err) });
        await this.sleep(delay);
      }
    }
  }

  /** One stream, until it breaks; whether it reached SYNCED. */
  private async stream(since: bigint, attempt: number): Promise<boolean> {
    this.hooks.status(attempt > 1 || since > 0n ? { kind: "connecting", attempt } : { kind: "connecting", attempt: 0 });
    const abort = new AbortController();
    this.abort = abort;
    const token = this.token.get();
    const headers: Record<string, string> = token ? { authorization: `Bearer ${token}` } : {};
    let silence = 0;
    const watchdog = () => {
      clearTimeout(silence);
      const limit = Math.max(MIN_SILENCE_MS, this.heartbeatGap * 3);
      silence = window.setTimeout(() => abort.abort(new ConnectError("no event or heartbeat for too long", Code.DeadlineExceeded)), limit);
    };
    watchdog();
    let synced = false;
    let reset = false;
    let received = 0;
    try {
      const events = this.client.watchTenant({ contextIdentifiers: [], sinceRevision: since }, { signal: abort.signal, headers });
      let slice = performance.now();
      for await (const ev of events) {
        watchdog();
        received++;
        // A snapshot of 100,000 records arrives faster than it is taken
        // in: give the page a frame now and then, so it stays responsive.
        if (performance.now() - slice > 40) {
          await new Promise((r) => setTimeout(r, 0));
          slice = performance.now();
        }
        if (ev.type === WatchEventType.RESET) {
          reset = true;
          this.startOver();
          continue;
        }
        this.apply(ev, synced);
        if (ev.type === WatchEventType.SYNCED) {
          synced = true;
          this.baseline = true;
          this.finishReset();
          this.hooks.status({ kind: "live", since, reset, revision: this.maxRevision });
        } else if (ev.type === WatchEventType.HEARTBEAT) {
          const now = Date.now();
          if (this.lastHeartbeat) this.heartbeatGap = now - this.lastHeartbeat;
          this.lastHeartbeat = now;
          if (synced) this.hooks.status({ kind: "live", since, reset, revision: this.maxRevision });
        } else if (!synced && received % 2000 === 0) {
          this.hooks.status({ kind: "syncing", received, since });
        }
      }
    } catch (e) {
      // Our own abort (the watchdog, a restart) is thrown as its reason.
      throw abort.signal.aborted && abort.signal.reason ? abort.signal.reason : e;
    } finally {
      clearTimeout(silence);
      this.abort = null;
      this.lastHeartbeat = 0;
    }
    return synced;
  }

  /** RESET: what the page holds may have a gap. Keep showing it until the complete snapshot replaces it. */
  private startOver(): void {
    this.unconfirmed = new Set(this.tenants.ids());
    // The new snapshot's revisions may come from another instance.
    this.maxRevision = 0n;
  }

  /** SYNCED after a RESET: what the snapshot did not name is gone. */
  private finishReset(): void {
    if (!this.unconfirmed) return;
    for (const id of this.unconfirmed) {
      const before = this.tenants.remove(id);
      if (before) this.hooks.feed({ at: Date.now(), id, before, missed: true });
    }
    this.unconfirmed = null;
    this.hooks.changed();
  }

  private apply(ev: WatchTenantResponse, synced: boolean): void {
    if (ev.revision > this.maxRevision) this.maxRevision = ev.revision;
    switch (ev.type) {
      case WatchEventType.SNAPSHOT:
      case WatchEventType.CHANGED: {
        if (!ev.tenant) return;
        const next = rowOf(ev.tenant);
        this.unconfirmed?.delete(next.id);
        const held = this.tenants.get(next.id);
        // A resume from an older revision than one already applied sends
        // records again: keep the newer one.
        if (held && held.revision > next.revision && !this.unconfirmed) return;
        const before = this.tenants.upsert(next);
        const current = this.tenants.get(next.id);
        // The first snapshot is the starting point, not news; after it,
        // every snapshot record is a change the page missed while away.
        const news =
          ev.type === WatchEventType.CHANGED || (this.baseline && (before === undefined || differs(before, next)));
        if (news && current) this.hooks.feed({ at: Date.now(), id: next.id, before, after: { ...current }, missed: !synced });
        this.hooks.changed();
        return;
      }
      case WatchEventType.REMOVED: {
        const before = this.tenants.remove(ev.contextIdentifier);
        if (before) this.hooks.feed({ at: Date.now(), id: ev.contextIdentifier, before, missed: !synced });
        this.hooks.changed();
        return;
      }
      default:
        return;
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.wake = null;
        resolve();
      };
      const timer = Number.isFinite(ms) ? window.setTimeout(done, ms) : 0;
      this.wake = done;
    });
  }
}

/** Whether a snapshot record says something the held one did not. */
function differs(a: Row, b: Row): boolean {
  return (
    a.state !== b.state ||
    a.endpoint !== b.endpoint ||
    a.version !== b.version ||
    a.stale !== b.stale ||
    a.notifiedAt !== b.notifiedAt
  );
}

/** An error in a few words for the indicator. */
function describe(err: ConnectError): string {
  if (err.code === Code.Unavailable || err.code === Code.Unknown) {
    return err.rawMessage && !/fetch|network/i.test(err.rawMessage) ? err.rawMessage : "the server cannot be reached";
  }
  return err.rawMessage || Code[err.code];
}
