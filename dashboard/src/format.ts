// How states, sources and times read on the page. The proto's names
// (TENANT_STATE_RUNNING) are what the data attributes carry; people read
// the labels.

import { ChangeSource, ChangeType, TenantState, TenantStateSchema } from "./gen/tenantstatus/v1/tenant_status_pb";

/** Every state, in the order the page lists them. */
export const STATES: readonly TenantState[] = [
  TenantState.RUNNING,
  TenantState.ONLINE_MAINTENANCE,
  TenantState.OFFLINE_MAINTENANCE,
  TenantState.SUSPENDED,
  TenantState.PROVISIONING,
  TenantState.MIGRATION_PENDING,
  TenantState.DELETING,
  TenantState.DELETED,
  TenantState.PROVISIONING_FAILED,
  TenantState.DELETE_FAILED,
  TenantState.UNKNOWN,
];

const KNOWN = new Set<number>(STATES);

/** A state this page knows; a newer server's value reads as UNKNOWN, as the proto asks. */
export function knownState(n: number): TenantState {
  return KNOWN.has(n) ? (n as TenantState) : TenantState.UNKNOWN;
}

const NAMES = new Map<number, string>(TenantStateSchema.values.map((v) => [v.number, v.name]));

/** The proto's name, e.g. TENANT_STATE_RUNNING. */
export function stateName(s: TenantState): string {
  return NAMES.get(s) ?? "TENANT_STATE_UNKNOWN";
}

const LABELS: Record<TenantState, string> = {
  [TenantState.UNKNOWN]: "Unknown",
  [TenantState.PROVISIONING]: "Provisioning",
  [TenantState.RUNNING]: "Running",
  [TenantState.DELETED]: "Deleted",
  [TenantState.SUSPENDED]: "Suspended",
  [TenantState.ONLINE_MAINTENANCE]: "Online maintenance",
  [TenantState.OFFLINE_MAINTENANCE]: "Offline maintenance",
  [TenantState.PROVISIONING_FAILED]: "Provisioning failed",
  [TenantState.DELETING]: "Deleting",
  [TenantState.DELETE_FAILED]: "Delete failed",
  [TenantState.MIGRATION_PENDING]: "Migration pending",
};

export function stateLabel(s: TenantState): string {
  return LABELS[s] ?? "Unknown";
}

/** The colour family of a state (a CSS class suffix). */
export function stateTone(s: TenantState): string {
  switch (s) {
    case TenantState.RUNNING:
      return "ok";
    case TenantState.ONLINE_MAINTENANCE:
      return "info";
    case TenantState.OFFLINE_MAINTENANCE:
      return "warn";
    case TenantState.SUSPENDED:
    case TenantState.PROVISIONING_FAILED:
    case TenantState.DELETE_FAILED:
      return "bad";
    case TenantState.PROVISIONING:
    case TenantState.MIGRATION_PENDING:
      return "pending";
    default:
      return "muted";
  }
}

const CHANGE_TYPES: Record<number, string> = {
  [ChangeType.UPGRADE]: "Upgrade",
  [ChangeType.BACKUP_RESTORED]: "Backup restored",
  [ChangeType.SUSPEND]: "Suspend",
  [ChangeType.RESUME]: "Resume",
  [ChangeType.DELETE]: "Delete",
  [ChangeType.MOVE]: "Move",
};

export function changeTypeLabel(t: ChangeType): string {
  return CHANGE_TYPES[t] ?? "";
}

/** What produced the last change: "poll", "notification · Upgrade". */
export function sourceLabel(source: ChangeSource, change: ChangeType): string {
  switch (source) {
    case ChangeSource.POLL:
      return "poll";
    case ChangeSource.NOTIFICATION: {
      const kind = changeTypeLabel(change);
      return kind ? `notification · ${kind}` : "notification";
    }
    default:
      return "";
  }
}

/** The host of an endpoint URL ("sod3.superoffice.com"), or "" without one. */
export function hostOf(url: string): string {
  if (!url) return "";
  try {
    return new URL(url).host;
  } catch {
    return url;
  }
}

/** "just now", "42 s ago", "5 min ago", "3 h ago", "2 d ago". */
export function ago(ms: number, now: number): string {
  if (!ms) return "";
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 5) return "just now";
  if (s < 60) return `${s} s ago`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ago`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h} h ago`;
  return `${Math.floor(h / 24)} d ago`;
}

const TIME = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
const DATE_TIME = new Intl.DateTimeFormat(undefined, {
  year: "numeric",
  month: "short",
  day: "numeric",
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
  hour12: false,
});

export function clock(ms: number): string {
  return ms ? TIME.format(ms) : "";
}

export function dateTime(ms: number): string {
  return ms ? DATE_TIME.format(ms) : "";
}

const NUMBER = new Intl.NumberFormat();

export function count(n: number): string {
  return NUMBER.format(n);
}
