//! What the client commands print: a table (or a line per watch event) for
//! people, and JSON for scripts in the proto3 JSON mapping, as grpcurl
//! prints it (enum names, RFC 3339 timestamps, 64-bit numbers as strings),
//! with every field present so a script can read `.stale` without a
//! default.

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use super::args::StateArg;
use crate::pb;

pub(super) fn state_from_arg(s: StateArg) -> pb::TenantState {
    use pb::TenantState as S;
    match s {
        StateArg::Unknown => S::Unknown,
        StateArg::Provisioning => S::Provisioning,
        StateArg::Running => S::Running,
        StateArg::Deleted => S::Deleted,
        StateArg::Suspended => S::Suspended,
        StateArg::OnlineMaintenance => S::OnlineMaintenance,
        StateArg::OfflineMaintenance => S::OfflineMaintenance,
        StateArg::ProvisioningFailed => S::ProvisioningFailed,
        StateArg::Deleting => S::Deleting,
        StateArg::DeleteFailed => S::DeleteFailed,
        StateArg::MigrationPending => S::MigrationPending,
    }
}

/// A state in words: "offline maintenance". A number this client does not
/// know (a newer server) is shown as such, as the proto asks.
pub(super) fn state_words(state: i32) -> String {
    match pb::TenantState::try_from(state) {
        Ok(s) => s
            .as_str_name()
            .trim_start_matches("TENANT_STATE_")
            .to_ascii_lowercase()
            .replace('_', " "),
        Err(_) => format!("state {state}"),
    }
}

/// The host of an endpoint URL ("sod3.superoffice.com"), or "-".
pub(super) fn host(endpoint: &str) -> String {
    url::Url::parse(endpoint)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_else(|| {
            if endpoint.is_empty() {
                "-".to_owned()
            } else {
                endpoint.to_owned()
            }
        })
}

fn system_time(t: &Option<prost_types::Timestamp>) -> Option<SystemTime> {
    t.and_then(|t| SystemTime::try_from(t).ok())
}

/// How long before `now` a timestamp was: "4s ago", "3m ago", "2h ago".
pub(super) fn age(t: &Option<prost_types::Timestamp>, now: SystemTime) -> String {
    let Some(t) = system_time(t) else {
        return "-".to_owned();
    };
    let secs = now.duration_since(t).unwrap_or(Duration::ZERO).as_secs();
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

/// What a person should notice about a record: stale, a hold, the last
/// error, a notification behind the latest change.
fn notes(t: &pb::Tenant) -> String {
    let mut notes = Vec::new();
    if t.stale {
        notes.push("STALE (SuperOffice unreachable; last known state)".to_owned());
    }
    if t.last_change_source == pb::ChangeSource::Notification as i32
        && let Some(n) = &t.last_notification
    {
        let kind = pb::ChangeType::try_from(n.change_type)
            .map(|c| {
                c.as_str_name()
                    .trim_start_matches("CHANGE_TYPE_")
                    .to_ascii_lowercase()
                    .replace('_', " ")
            })
            .unwrap_or_else(|_| format!("change type {}", n.change_type));
        notes.push(format!("notification: {kind}"));
    }
    if let Some(until) = system_time(&t.held_until) {
        notes.push(format!(
            "held until {}",
            humantime::format_rfc3339_seconds(until)
        ));
    }
    if !t.last_error.is_empty() {
        notes.push(format!("last poll failed: {}", t.last_error));
    }
    notes.join("; ")
}

/// A table of records, a header and a row each, columns aligned.
pub(super) fn table(tenants: &[&pb::Tenant], now: SystemTime) -> String {
    let mut rows = vec![[
        "TENANT".to_owned(),
        "STATE".to_owned(),
        "API".to_owned(),
        "HOST".to_owned(),
        "OBSERVED".to_owned(),
        "NOTES".to_owned(),
    ]];
    for t in tenants {
        rows.push([
            t.context_identifier.clone(),
            state_words(t.state),
            if t.is_running { "up" } else { "down" }.to_owned(),
            host(&t.endpoint),
            age(&t.observed_at, now),
            notes(t),
        ]);
    }
    let mut widths = [0usize; 6];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A timestamp as the proto3 JSON mapping writes it, or null when unset.
fn timestamp_json(t: &Option<prost_types::Timestamp>) -> Value {
    match system_time(t) {
        None => Value::Null,
        Some(st) => {
            let nanos = t.map_or(0, |t| t.nanos);
            let text = if nanos == 0 {
                humantime::format_rfc3339_seconds(st).to_string()
            } else if nanos % 1_000_000 == 0 {
                humantime::format_rfc3339_millis(st).to_string()
            } else if nanos % 1_000 == 0 {
                humantime::format_rfc3339_micros(st).to_string()
            } else {
                humantime::format_rfc3339_nanos(st).to_string()
            };
            Value::String(text)
        }
    }
}

/// An enum value by its name, or its number when this client does not
/// know it.
fn enum_json(name: Option<&'static str>, number: i32) -> Value {
    name.map_or_else(|| json!(number), |n| json!(n))
}

pub(super) fn tenant_json(t: &pb::Tenant) -> Value {
    let notification = t.last_notification.as_ref().map_or(Value::Null, |n| {
        json!({
            "changeType": enum_json(
                pb::ChangeType::try_from(n.change_type).ok().map(|c| c.as_str_name()),
                n.change_type,
            ),
            "versionName": n.version_name,
            "fileVersion": n.file_version,
            "publicEndpoint": n.public_endpoint,
            "receivedAt": timestamp_json(&n.received_at),
        })
    });
    json!({
        "contextIdentifier": t.context_identifier,
        "state": enum_json(
            pb::TenantState::try_from(t.state).ok().map(|s| s.as_str_name()),
            t.state,
        ),
        "isRunning": t.is_running,
        "endpoint": t.endpoint,
        "api": t.api,
        "version": t.version,
        "validUntil": timestamp_json(&t.valid_until),
        "observedAt": timestamp_json(&t.observed_at),
        "revision": t.revision.to_string(),
        "lastChangeSource": enum_json(
            pb::ChangeSource::try_from(t.last_change_source).ok().map(|c| c.as_str_name()),
            t.last_change_source,
        ),
        "lastNotification": notification,
        "stale": t.stale,
        "lastError": t.last_error,
        "changedAt": timestamp_json(&t.changed_at),
        "heldUntil": timestamp_json(&t.held_until),
    })
}

/// A watch event, one JSON object (the client prints one a line).
pub(super) fn event_json(ev: &pb::WatchTenantResponse) -> Value {
    json!({
        "type": enum_json(
            pb::WatchEventType::try_from(ev.r#type).ok().map(|k| k.as_str_name()),
            ev.r#type,
        ),
        "tenant": ev.tenant.as_ref().map_or(Value::Null, tenant_json),
        "contextIdentifier": ev.context_identifier,
        "revision": ev.revision.to_string(),
    })
}

/// A watch event as a line for people; heartbeats print nothing (a quiet
/// stream is quiet), events of a kind this client does not know neither.
pub(super) fn event_line(ev: &pb::WatchTenantResponse, now: SystemTime) -> Option<String> {
    use pb::WatchEventType as K;
    let at = humantime::format_rfc3339_seconds(now);
    let record = |kind: &str, t: &pb::Tenant| {
        let notes = notes(t);
        let line = format!(
            "{at}  {kind:<8}  {}  {}  {}  {}  rev {}  {notes}",
            t.context_identifier,
            state_words(t.state),
            if t.is_running { "up" } else { "down" },
            host(&t.endpoint),
            t.revision
        );
        line.trim_end().to_owned()
    };
    match K::try_from(ev.r#type).ok()? {
        K::Snapshot => ev.tenant.as_ref().map(|t| record("SNAPSHOT", t)),
        K::Changed => ev.tenant.as_ref().map(|t| record("CHANGED", t)),
        K::Removed => Some(format!(
            "{at}  REMOVED   {}  rev {}  (no longer tracked)",
            ev.context_identifier, ev.revision
        )),
        K::Synced => Some(format!(
            "{at}  SYNCED    rev {}  (the snapshot is complete)",
            ev.revision
        )),
        K::Reset => Some(format!(
            "{at}  RESET     the server cannot resume without a gap: drop what you hold, a complete snapshot follows"
        )),
        K::Heartbeat | K::Unspecified => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(secs: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp {
            seconds: secs,
            nanos: 0,
        })
    }

    #[test]
    fn states_in_words_and_unknown_numbers_as_numbers() {
        assert_eq!(
            state_words(pb::TenantState::OfflineMaintenance as i32),
            "offline maintenance"
        );
        assert_eq!(state_words(99), "state 99");
        let t = pb::Tenant {
            state: 99,
            ..Default::default()
        };
        assert_eq!(tenant_json(&t)["state"], json!(99));
    }

    #[test]
    fn hosts_and_ages() {
        assert_eq!(
            host("https://sod3.superoffice.com/Cust1"),
            "sod3.superoffice.com"
        );
        assert_eq!(host(""), "-");
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        assert_eq!(age(&ts(9_996), now), "4s ago");
        assert_eq!(age(&ts(10_000 - 180), now), "3m ago");
        assert_eq!(age(&ts(20_000), now), "0s ago", "a clock ahead is now");
        assert_eq!(age(&None, now), "-");
    }

    #[test]
    fn a_stale_record_is_marked_and_json_has_every_field() {
        let t = pb::Tenant {
            context_identifier: "Cust1".into(),
            state: pb::TenantState::Running as i32,
            is_running: true,
            endpoint: "https://sod2.superoffice.com/Cust1".into(),
            observed_at: ts(1_000),
            revision: 1_763_900_000_000_000,
            stale: true,
            last_error: "timed out".into(),
            ..Default::default()
        };
        let text = table(&[&t], SystemTime::UNIX_EPOCH + Duration::from_secs(1_060));
        let row = text.lines().nth(1).unwrap();
        for part in [
            "Cust1",
            "running",
            "up",
            "sod2.superoffice.com",
            "1m ago",
            "STALE",
            "timed out",
        ] {
            assert!(row.contains(part), "{part:?} in {row:?}");
        }
        let j = tenant_json(&t);
        assert_eq!(j["revision"], "1763900000000000");
        assert_eq!(j["observedAt"], "1970-01-01T00:16:40Z");
        assert_eq!(j["heldUntil"], Value::Null);
        assert_eq!(j["stale"], true);
        assert_eq!(j.as_object().unwrap().len(), 15);
    }
}
