// The dashboard page: counts by state, the tenants table, the feed of
// changes and the connection's status, fed by one WatchTenant stream of
// every tenant over gRPC-Web.
//
// Served by tenant-status itself at GET / (same origin as the API). Hosted
// elsewhere, it takes the server from ?api=https://host:port, which must
// allow the page's origin with --grpc-web-allow-origin.

import "./app.css";
import { TenantState } from "./gen/tenantstatus/v1/tenant_status_pb";
import { Feed } from "./feed";
import { changeTypeLabel, count, dateTime, sourceLabel, STATES, stateLabel, stateName } from "./format";
import { HOUR, Tenants, type Filter, type SortKey } from "./model";
import { Table } from "./table";
import { Watch, type Status } from "./watch";

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;

/** The API's base URL: this page's origin, or ?api= when hosted elsewhere. */
function apiBase(): string {
  const given = new URLSearchParams(location.search).get("api");
  if (given) {
    try {
      const u = new URL(given);
      if (u.protocol === "http:" || u.protocol === "https:") return u.origin;
    } catch {
      // fall through to this origin
    }
  }
  return location.origin;
}

const api = apiBase();
const tokenKey = `tenant-status.token ${api}`;
const token = {
  get: () => sessionStorage.getItem(tokenKey),
  set: (t: string) => sessionStorage.setItem(tokenKey, t),
  clear: () => sessionStorage.removeItem(tokenKey),
};

const tenants = new Tenants();
let filter: Filter = { state: "all", staleOnly: false, recentOnly: false, search: "", sort: "id", descending: false };

const table = new Table($("viewport"), $("spacer"), $("table"), openDetails);
const feed = new Feed($<HTMLOListElement>("feed"), $("feed-empty"), (id) => {
  setFilter({ search: id, state: "all", staleOnly: false, recentOnly: false });
  ($<HTMLInputElement>("search")).value = id;
});

// ---- drawing, once a frame at most ----

let frame = 0;
let lastRebuild = 0;
let rebuildTimer = 0;
let drawnData = -1;
/** Rebuild on the next frame whatever the throttle says (the stream just synced). */
let rebuildNow = false;
let recentCount = 0;
let recentAt = 0;

function schedule(): void {
  if (!frame) frame = requestAnimationFrame(draw);
}

function draw(): void {
  frame = 0;
  const now = Date.now();
  const why = tenants.needsRebuild(filter);
  if (why) {
    // With many tenants changing at once, rebuild (filter and sort) at most
    // twice a second; the visible rows still redraw every frame. What the
    // user asks for is done at once.
    const wait = why === "data" && !rebuildNow && tenants.size > 20_000 ? 500 - (now - lastRebuild) : 0;
    if (wait > 0 && drawnData >= 0) {
      if (!rebuildTimer) rebuildTimer = window.setTimeout(() => ((rebuildTimer = 0), schedule()), wait);
    } else {
      lastRebuild = now;
      rebuildNow = false;
      const rows = tenants.select(filter, now);
      table.setRows(rows);
      $("shown").textContent = rows.length === tenants.size ? `${count(rows.length)} tenants` : `${count(rows.length)} of ${count(tenants.size)}`;
      $("table-empty").hidden = rows.length > 0;
      if (rows.length === 0) $("table-empty").textContent = tenants.size ? "No tenant matches the filter." : emptyText;
    }
  }
  if (drawnData !== tenants.dataVersion) {
    drawnData = tenants.dataVersion;
    table.draw();
    drawCounts(now);
  }
  feed.flush();
}

let emptyText = "Waiting for the server…";

let recentTimer = 0;

function drawCounts(now: number): void {
  // Counting the last hour's changes walks every row: with many tenants,
  // at most once a second (and once more after the last change).
  const wait = tenants.size > 20_000 ? 1000 - (now - recentAt) : 0;
  if (wait <= 0) {
    recentCount = tenants.changedSince(now - HOUR);
    recentAt = now;
  } else if (!recentTimer) {
    recentTimer = window.setTimeout(() => {
      recentTimer = 0;
      drawCounts(Date.now());
    }, wait);
  }
  let down = 0;
  for (const s of STATES) if (s !== TenantState.RUNNING && s !== TenantState.ONLINE_MAINTENANCE) down += tenants.count(s);
  const values: Record<string, number> = { all: tenants.size, down, stale: tenants.stale, recent: recentCount };
  for (const s of STATES) values[stateName(s)] = tenants.count(s);
  for (const card of document.querySelectorAll<HTMLElement>(".card[data-count]")) {
    const v = values[card.dataset.count ?? ""] ?? 0;
    const out = card.querySelector(".card-value");
    if (out && out.textContent !== count(v)) out.textContent = count(v);
  }
  drawDistribution();
  drawStateOptions();
}

function drawDistribution(): void {
  const bar = $("distribution");
  const total = tenants.size;
  const parts: HTMLElement[] = [];
  for (const s of STATES) {
    const n = tenants.count(s);
    if (!n || !total) continue;
    const seg = document.createElement("span");
    seg.className = `seg state-${stateName(s).slice(13).toLowerCase()}`;
    seg.style.flexGrow = String(n);
    seg.title = `${stateLabel(s)}: ${count(n)}`;
    parts.push(seg);
  }
  bar.replaceChildren(...parts);
}

const stateSelect = $<HTMLSelectElement>("state-filter");
function drawStateOptions(): void {
  const options: [string, string][] = [
    ["all", `All states (${count(tenants.size)})`],
    ["down", "API unavailable"],
  ];
  for (const s of STATES) options.push([String(s), `${stateLabel(s)} (${count(tenants.count(s))})`]);
  if (stateSelect.options.length !== options.length) {
    stateSelect.replaceChildren(...options.map(([v, t]) => new Option(t, v)));
    stateSelect.value = String(filter.state);
    return;
  }
  options.forEach(([, t], i) => {
    if (stateSelect.options[i].text !== t) stateSelect.options[i].text = t;
  });
}

// ---- filters ----

function setFilter(change: Partial<Filter>): void {
  filter = { ...filter, ...change };
  stateSelect.value = String(filter.state);
  $<HTMLInputElement>("stale-only").checked = filter.staleOnly;
  $<HTMLInputElement>("recent-only").checked = filter.recentOnly;
  for (const card of document.querySelectorAll<HTMLElement>(".card[data-filter]")) {
    const f = card.dataset.filter;
    const on =
      f === "stale" ? filter.staleOnly : f === "recent" ? filter.recentOnly : f === String(filter.state) && !(f === "all" && (filter.staleOnly || filter.recentOnly));
    card.classList.toggle("active", on);
    card.setAttribute("aria-pressed", String(on));
  }
  for (const th of document.querySelectorAll<HTMLElement>(".th[data-sort]")) {
    const on = th.dataset.sort === filter.sort;
    th.classList.toggle("sorted", on);
    th.classList.toggle("desc", on && filter.descending);
    th.setAttribute("aria-sort", on ? (filter.descending ? "descending" : "ascending") : "none");
  }
  schedule();
}

let searchTimer = 0;
$<HTMLInputElement>("search").addEventListener("input", (e) => {
  clearTimeout(searchTimer);
  const q = (e.target as HTMLInputElement).value;
  searchTimer = window.setTimeout(() => setFilter({ search: q }), tenants.size > 20_000 ? 80 : 0);
});
stateSelect.addEventListener("change", () => {
  const v = stateSelect.value;
  setFilter({ state: v === "all" || v === "down" ? v : (Number(v) as TenantState) });
});
$<HTMLInputElement>("stale-only").addEventListener("change", (e) => setFilter({ staleOnly: (e.target as HTMLInputElement).checked }));
$<HTMLInputElement>("recent-only").addEventListener("change", (e) => setFilter({ recentOnly: (e.target as HTMLInputElement).checked }));
for (const card of document.querySelectorAll<HTMLElement>(".card[data-filter]")) {
  card.addEventListener("click", () => {
    const f = card.dataset.filter ?? "all";
    if (f === "stale") setFilter({ staleOnly: !filter.staleOnly });
    else if (f === "recent") setFilter({ recentOnly: !filter.recentOnly });
    else if (f === "all") setFilter({ state: "all", staleOnly: false, recentOnly: false });
    else setFilter({ state: f === "down" ? "down" : (Number(f) as TenantState) });
  });
}
for (const th of document.querySelectorAll<HTMLElement>(".th[data-sort]")) {
  th.addEventListener("click", () => {
    const sort = th.dataset.sort as SortKey;
    // Newest change first is what one sorts by time for.
    const descending = sort === filter.sort ? !filter.descending : sort === "changed" || sort === "stale";
    setFilter({ sort, descending });
  });
}

// Relative times and the last hour's count move on by themselves.
setInterval(() => {
  table.refresh();
  if (filter.recentOnly) tenants.invalidate();
  recentAt = 0;
  drawCounts(Date.now());
  schedule();
}, 15_000);

// ---- details of one tenant ----

function openDetails(id: string): void {
  const r = tenants.get(id);
  if (!r) return;
  $("details-title").textContent = r.id;
  const list = $("details-list");
  const items: [string, string][] = [
    ["State", `${stateLabel(r.state)} (${r.stateName})`],
    ["API available", r.isRunning ? "yes" : "no"],
    ["Endpoint", r.endpoint || "—"],
    ["API", r.api || "—"],
    ["Version", r.version || "—"],
    ["Stale", r.stale ? "yes: the last known state, not confirmed" : "no"],
    ["Last error", r.lastError || "—"],
    ["Last change", `${dateTime(r.changedAt) || "—"}${r.source ? `, by ${sourceLabel(r.source, r.changeType)}` : ""}`],
    ["Notification", r.notifiedAt ? `${changeTypeLabel(r.changeType) || "received"} at ${dateTime(r.notifiedAt)}${r.publicEndpoint ? `, to ${r.publicEndpoint}` : ""}` : "—"],
    ["Held until", r.heldUntil > Date.now() ? dateTime(r.heldUntil) : "—"],
    ["Valid until", dateTime(r.validUntil) || "—"],
    ["Observed at", dateTime(r.observedAt) || "—"],
    ["Revision", String(r.revision)],
  ];
  list.replaceChildren(
    ...items.flatMap(([k, v]) => {
      const dt = document.createElement("dt");
      dt.textContent = k;
      const dd = document.createElement("dd");
      dd.textContent = v;
      return [dt, dd];
    }),
  );
  $<HTMLDialogElement>("details").showModal();
}
$("details-close").addEventListener("click", () => $<HTMLDialogElement>("details").close());

// ---- the connection ----

const indicator = $("connection");
let countdown = 0;

function showStatus(s: Status): void {
  clearInterval(countdown);
  const live = s.kind === "live";
  indicator.dataset.connection = live ? "live" : "reconnecting";
  // What the page shows may be out of date while it is not live: dimmed.
  document.body.classList.toggle("not-live", !live);
  indicator.dataset.phase = s.kind;
  $("retry").hidden = s.kind !== "waiting";
  $("forget-token").hidden = token.get() === null;
  const label = $("connection-label");
  const detail = $("connection-detail");
  switch (s.kind) {
    case "connecting":
      label.textContent = s.attempt ? "Reconnecting…" : "Connecting…";
      detail.textContent = "";
      break;
    case "syncing":
      label.textContent = s.since ? "Resuming…" : "Loading…";
      detail.textContent = `${count(s.received)} records received`;
      break;
    case "live":
      label.textContent = "Live";
      rebuildNow = true;
      schedule();
      indicator.dataset.resumedFrom = s.since && !s.reset ? String(s.since) : "";
      detail.textContent = s.reset
        ? "reconnected: the server started over, full snapshot taken"
        : s.since
          ? `resumed from revision ${s.since}`
          : `revision ${s.revision}`;
      emptyText = "The server tracks no tenant yet.";
      break;
    case "waiting": {
      const tick = () => {
        const left = Math.max(0, Math.ceil((s.until - Date.now()) / 1000));
        label.textContent = left ? `Reconnecting in ${left} s` : "Reconnecting…";
      };
      tick();
      countdown = window.setInterval(tick, 500);
      detail.textContent = s.error;
      break;
    }
    case "token":
      label.textContent = "Token required";
      detail.textContent = s.refused ? "the server refused the token" : "";
      askToken(s.refused, s.message);
      break;
  }
  if (live) $("table-empty").textContent = tenants.size ? "No tenant matches the filter." : emptyText;
}

function askToken(refused: boolean, message: string): void {
  $("token-server").textContent = api;
  $("token-reason").textContent = refused
    ? `The server refused that token (${message}). Enter another.`
    : "This server asks callers for a bearer token (--grpc-token-file).";
  const dialog = $<HTMLDialogElement>("token-dialog");
  if (!dialog.open) dialog.showModal();
  $<HTMLInputElement>("token-input").focus();
}

const watch = new Watch(api, tenants, { status: showStatus, changed: schedule, feed: (e) => feed.push(e) }, token);

$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const input = $<HTMLInputElement>("token-input");
  const t = input.value.trim();
  if (!t) return;
  token.set(t);
  input.value = "";
  $<HTMLDialogElement>("token-dialog").close();
  watch.retryNow();
});
// The dialog cannot be dismissed without a token: there is nothing to see without one.
$("token-dialog").addEventListener("cancel", (e) => e.preventDefault());
$("forget-token").addEventListener("click", () => {
  token.clear();
  $("forget-token").hidden = true;
  watch.restart();
});
$("retry").addEventListener("click", () => watch.retryNow());
window.addEventListener("online", () => watch.retryNow());

$("server").textContent = api.replace(/^https?:\/\//, "");
document.title = `tenant-status · ${location.host === new URL(api).host ? location.host : new URL(api).host}`;
setFilter({});
void watch.run();
