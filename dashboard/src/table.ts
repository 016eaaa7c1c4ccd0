// The tenants table, virtualised: only the rows in (and just around) the
// visible part of the list exist in the page, a pool of elements moved and
// refilled as it scrolls, so 100,000 tenants cost what 40 do.

import { ago, dateTime, sourceLabel, stateLabel, stateTone } from "./format";
import type { Row } from "./model";

export const ROW_HEIGHT = 36;
/** Rows drawn above and below the visible ones, so a fast scroll shows no gap. */
const OVERSCAN = 8;

interface Slot {
  el: HTMLDivElement;
  id: HTMLSpanElement;
  state: HTMLSpanElement;
  host: HTMLSpanElement;
  version: HTMLSpanElement;
  stale: HTMLSpanElement;
  changed: HTMLSpanElement;
  source: HTMLSpanElement;
  row: Row | null;
  seq: number;
  index: number;
}

function cell(row: HTMLElement, cls: string): HTMLSpanElement {
  const c = document.createElement("span");
  c.className = `td ${cls}`;
  c.setAttribute("role", "cell");
  row.append(c);
  return c;
}

export class Table {
  private rows: Row[] = [];
  private slots: Slot[] = [];
  private frame = 0;
  /** Bumped to redraw every visible row (relative times moved on). */
  private epoch = 0;
  private drawnEpoch = 0;

  constructor(
    private readonly viewport: HTMLElement,
    private readonly spacer: HTMLElement,
    private readonly table: HTMLElement,
    open: (id: string) => void,
  ) {
    viewport.addEventListener("scroll", () => this.schedule(), { passive: true });
    new ResizeObserver(() => this.schedule()).observe(viewport);
    viewport.addEventListener("click", (e) => {
      const tr = (e.target as HTMLElement).closest<HTMLElement>(".tr[data-tenant]");
      if (tr?.dataset.tenant) open(tr.dataset.tenant);
    });
    viewport.addEventListener("keydown", (e) => {
      const tr = (e.target as HTMLElement).closest<HTMLElement>(".tr[data-tenant]");
      if (tr?.dataset.tenant && (e.key === "Enter" || e.key === " ")) {
        e.preventDefault();
        open(tr.dataset.tenant);
      }
    });
  }

  /** The rows to show, in order; the view keeps its scroll position. */
  setRows(rows: Row[]): void {
    if (rows !== this.rows) {
      this.rows = rows;
      this.spacer.style.height = `${rows.length * ROW_HEIGHT}px`;
      this.table.setAttribute("aria-rowcount", String(rows.length + 1));
    }
    this.draw();
  }

  /** Redraws every visible row on the next frame (for the relative times). */
  refresh(): void {
    this.epoch++;
    this.schedule();
  }

  private schedule(): void {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.draw();
    });
  }

  draw(): void {
    // The sticky header sits above the rows in the same scroll container.
    const top = this.spacer.offsetTop;
    const height = this.viewport.clientHeight - top || ROW_HEIGHT * 20;
    const first = Math.max(0, Math.floor((this.viewport.scrollTop - top) / ROW_HEIGHT) - OVERSCAN);
    const wanted = Math.ceil(height / ROW_HEIGHT) + 2 * OVERSCAN;
    while (this.slots.length < wanted) this.slots.push(this.slot());
    const now = Date.now();
    const all = this.epoch !== this.drawnEpoch;
    this.drawnEpoch = this.epoch;
    for (let i = 0; i < this.slots.length; i++) {
      const slot = this.slots[i];
      // A row keeps its slot while it stays in range (index modulo the
      // pool), so scrolling refills only the rows that come into view.
      const index = first + ((i - first) % this.slots.length + this.slots.length) % this.slots.length;
      const row = this.rows[index];
      if (!row || index >= first + wanted) {
        if (slot.row) {
          slot.el.hidden = true;
          slot.row = null;
        }
        continue;
      }
      if (slot.index !== index) {
        slot.el.style.transform = `translateY(${index * ROW_HEIGHT}px)`;
        slot.el.setAttribute("aria-rowindex", String(index + 2));
        slot.index = index;
      }
      if (all || slot.row !== row || slot.seq !== row.seq) this.fill(slot, row, now);
      slot.el.hidden = false;
    }
  }

  private slot(): Slot {
    const el = document.createElement("div");
    el.className = "tr";
    el.setAttribute("role", "row");
    el.tabIndex = 0;
    el.hidden = true;
    const slot: Slot = {
      el,
      id: cell(el, "c-id"),
      state: cell(el, "c-state"),
      host: cell(el, "c-host"),
      version: cell(el, "c-version"),
      stale: cell(el, "c-stale"),
      changed: cell(el, "c-changed"),
      source: cell(el, "c-source"),
      row: null,
      seq: -1,
      index: -1,
    };
    this.spacer.append(el);
    return slot;
  }

  private fill(s: Slot, r: Row, now: number): void {
    s.row = r;
    s.seq = r.seq;
    s.el.dataset.tenant = r.id;
    s.el.dataset.state = r.stateName;
    s.el.classList.toggle("is-stale", r.stale);
    s.id.textContent = r.id;
    s.state.replaceChildren(badge(stateLabel(r.state), `tone-${stateTone(r.state)}`));
    if (r.heldUntil > now) s.state.append(tag("held", `held until ${dateTime(r.heldUntil)}: the notification's state stands until the state API confirms it`));
    s.host.textContent = r.host || "—";
    s.host.title = r.endpoint;
    s.version.textContent = r.version || "—";
    s.version.title = r.version;
    if (r.stale) {
      s.stale.replaceChildren(tag("stale", r.lastError ? `SuperOffice could not be asked: ${r.lastError}` : "the last known state; not confirmed since valid_until passed"));
    } else {
      s.stale.replaceChildren();
    }
    s.changed.textContent = ago(r.changedAt, now) || "—";
    s.changed.title = dateTime(r.changedAt);
    const source = sourceLabel(r.source, r.changeType);
    s.source.replaceChildren(source ? tag(source, "", r.source === 2 ? "src-notification" : "src-poll") : "—");
  }
}

export function badge(text: string, cls: string): HTMLSpanElement {
  const b = document.createElement("span");
  b.className = `badge ${cls}`;
  b.textContent = text;
  return b;
}

export function tag(text: string, title: string, cls = ""): HTMLSpanElement {
  const t = document.createElement("span");
  t.className = `tag ${cls || `tag-${text}`}`;
  t.textContent = text;
  if (title) t.title = title;
  return t;
}
