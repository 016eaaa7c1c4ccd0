// The feed of recent changes, newest first: what changed for which tenant,
// and whether a poll or a notification said so. Entries are added once a
// frame, at most MAX kept.

import { clock, dateTime, hostOf, sourceLabel, stateLabel, stateTone } from "./format";
import type { Row } from "./model";
import { badge, tag } from "./table";
import type { FeedEntry } from "./watch";

const MAX = 200;

export class Feed {
  private pending: FeedEntry[] = [];

  constructor(
    private readonly list: HTMLOListElement,
    private readonly empty: HTMLElement,
    private readonly pick: (id: string) => void,
  ) {
    list.addEventListener("click", (e) => {
      const button = (e.target as HTMLElement).closest<HTMLButtonElement>("button[data-pick]");
      if (button?.dataset.pick) this.pick(button.dataset.pick);
    });
  }

  push(e: FeedEntry): void {
    this.pending.push(e);
    if (this.pending.length > MAX) this.pending.splice(0, this.pending.length - MAX);
  }

  /** Adds what came since the last frame. */
  flush(): void {
    if (this.pending.length === 0) return;
    const fragment = document.createDocumentFragment();
    for (let i = this.pending.length - 1; i >= 0; i--) fragment.append(item(this.pending[i]));
    this.pending = [];
    this.list.prepend(fragment);
    while (this.list.childElementCount > MAX) this.list.lastElementChild?.remove();
    this.empty.hidden = true;
  }
}

function item(e: FeedEntry): HTMLLIElement {
  const li = document.createElement("li");
  li.className = "feed-item";
  li.dataset.tenant = e.id;
  li.dataset.state = e.after ? e.after.stateName : "REMOVED";
  if (e.after) li.dataset.revision = String(e.after.revision);

  const head = document.createElement("div");
  head.className = "feed-head";
  const who = document.createElement("button");
  who.type = "button";
  who.className = "feed-id";
  who.dataset.pick = e.id;
  who.textContent = e.id;
  who.title = `Show ${e.id} in the table`;
  const when = document.createElement("time");
  when.dateTime = new Date(e.at).toISOString();
  when.textContent = clock(e.at);
  when.title = dateTime(e.at);
  head.append(who, when);

  const body = document.createElement("div");
  body.className = "feed-body";
  describe(body, e.before, e.after);

  const meta = document.createElement("div");
  meta.className = "feed-meta";
  if (e.after) {
    const source = sourceLabel(e.after.source, e.after.changeType);
    if (source) meta.append(tag(source, "", e.after.source === 2 ? "src-notification" : "src-poll"));
  }
  if (e.missed) meta.append(tag("while disconnected", "learnt when the page reconnected", "tag-missed"));
  li.append(head, body, meta);
  return li;
}

function arrow(): HTMLSpanElement {
  const a = document.createElement("span");
  a.className = "arrow";
  a.textContent = "→";
  a.setAttribute("aria-label", "to");
  return a;
}

function text(s: string, cls = ""): HTMLSpanElement {
  const t = document.createElement("span");
  if (cls) t.className = cls;
  t.textContent = s;
  return t;
}

function stateBadge(r: Row): HTMLSpanElement {
  return badge(stateLabel(r.state), `tone-${stateTone(r.state)}`);
}

/** The change in a line: the state, else the host, the version, staleness, or a notification. */
function describe(into: HTMLElement, before: Row | undefined, after: Row | undefined): void {
  if (!after) {
    const line = document.createElement("div");
    line.append(text("No longer tracked"));
    if (before) line.append(text(`was ${stateLabel(before.state)}`, "muted"));
    into.append(line);
    return;
  }
  if (!before) {
    const line = document.createElement("div");
    line.append(text("Now tracked"), stateBadge(after));
    into.append(line);
    return;
  }
  const lines: Node[] = [];
  if (before.state !== after.state) {
    const line = document.createElement("div");
    line.append(stateBadge(before), arrow(), stateBadge(after));
    lines.push(line);
  }
  if (before.endpoint !== after.endpoint) {
    const line = document.createElement("div");
    if (before.endpoint && after.endpoint) {
      line.append(text("Moved to"), text(hostOf(after.endpoint), "to"));
      lines.push(line, text(`from ${hostOf(before.endpoint)}`, "from"));
    } else {
      line.append(text("Endpoint"), text(hostOf(after.endpoint) || "none", "to"));
      lines.push(line);
    }
  }
  if (before.version !== after.version) {
    const line = document.createElement("div");
    line.append(text("Version"), text(after.version || "none", "mono"));
    line.title = `was ${before.version || "none"}`;
    lines.push(line);
  }
  if (before.stale !== after.stale) {
    lines.push(text(after.stale ? "Stale: SuperOffice could not be asked" : "Confirmed again, no longer stale"));
  }
  if (lines.length === 0) {
    const line = document.createElement("div");
    line.append(text(after.notifiedAt !== before.notifiedAt ? "Notification, still" : "Still"), stateBadge(after));
    lines.push(line);
  }
  into.append(...lines);
}
