//! The record's wire format, one for every place a record leaves memory:
//! a tenant in the state file (`persist`), and a key's value in the
//! replicas' `records` bucket (`cluster`), so there is one format to keep
//! compatible; and a record's freshness in the `observed` bucket.
//!
//! **Format version 1** (`RECORD_FORMAT`), JSON, one object a record:
//! `context_identifier`, `state` (SuperOffice's number), `endpoint`, `api`,
//! `version`, `valid_until` (Unix ms or null), `observed_at`, `changed_at`
//! (Unix ms), `revision`, `from_notification`, `last_notification` (null,
//! or `change_type` by SuperOffice's number, `version_name`,
//! `file_version`, `public_endpoint`, `received_at` in Unix ms), `stale`,
//! `last_error`, and `hold` (absent, or `until` in Unix ms, `prior_state`,
//! `prior_endpoint`). Fields may be added, each optional with a default,
//! so a build reads what an older one wrote and ignores what a newer one
//! adds; a change an older build would misread takes a new version. The
//! state file carries the version (`persist`); a bucket entry is version 1
//! by definition until a second exists.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::core::{
    store::Freshness,
    tenant::{
        ChangeSource, ChangeType, ContextId, Hold, NotificationInfo, TenantRecord, TenantState,
    },
};

/// The version of the format below.
pub const RECORD_FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
pub(crate) struct SavedTenant {
    pub(crate) context_identifier: String,
    /// SuperOffice's number.
    state: i64,
    endpoint: String,
    api: String,
    version: String,
    valid_until: Option<u64>,
    observed_at: u64,
    changed_at: u64,
    revision: u64,
    from_notification: bool,
    last_notification: Option<SavedNotification>,
    stale: bool,
    last_error: String,
    /// Absent in files written before holds existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hold: Option<SavedHold>,
}

#[derive(Serialize, Deserialize)]
struct SavedHold {
    /// Unix milliseconds.
    until: u64,
    /// SuperOffice's number.
    prior_state: i64,
    prior_endpoint: String,
}

#[derive(Serialize, Deserialize)]
struct SavedNotification {
    /// SuperOffice's number.
    change_type: i64,
    version_name: String,
    file_version: String,
    public_endpoint: String,
    received_at: u64,
}

pub(crate) fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub(crate) fn from_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

pub(crate) fn save_record(r: &TenantRecord) -> SavedTenant {
    SavedTenant {
        context_identifier: r.context_identifier.to_string(),
        state: r.state as i64,
        endpoint: r.endpoint.clone(),
        api: r.api.clone(),
        version: r.version.clone(),
        valid_until: r.valid_until.map(millis),
        observed_at: millis(r.observed_at),
        changed_at: millis(r.changed_at),
        revision: r.revision,
        from_notification: r.source == ChangeSource::Notification,
        last_notification: r.last_notification.as_ref().map(|n| SavedNotification {
            change_type: n.change_type as i64,
            version_name: n.version_name.clone(),
            file_version: n.file_version.clone(),
            public_endpoint: n.public_endpoint.clone(),
            received_at: millis(n.received_at),
        }),
        stale: r.stale,
        last_error: r.last_error.clone(),
        hold: r.hold.as_ref().map(|h| SavedHold {
            until: millis(h.until),
            prior_state: h.prior_state as i64,
            prior_endpoint: h.prior_endpoint.clone(),
        }),
    }
}

pub(crate) fn load_record(s: SavedTenant) -> Result<TenantRecord, String> {
    let ctx = ContextId::parse(&s.context_identifier)
        .map_err(|e| format!("{:?}: {e}", s.context_identifier))?;
    let state = TenantState::from_number(s.state)
        .ok_or_else(|| format!("{ctx}: state {} is not a SuperOffice state", s.state))?;
    let last_notification = match s.last_notification {
        None => None,
        Some(n) => Some(NotificationInfo {
            change_type: ChangeType::from_number(n.change_type)
                .ok_or_else(|| format!("{ctx}: change type {} is unknown", n.change_type))?,
            version_name: n.version_name,
            file_version: n.file_version,
            public_endpoint: n.public_endpoint,
            received_at: from_millis(n.received_at),
        }),
    };
    let hold = match s.hold {
        None => None,
        Some(h) => Some(Hold {
            until: from_millis(h.until),
            prior_state: TenantState::from_number(h.prior_state).ok_or_else(|| {
                format!(
                    "{ctx}: held state {} is not a SuperOffice state",
                    h.prior_state
                )
            })?,
            prior_endpoint: h.prior_endpoint,
        }),
    };
    Ok(TenantRecord {
        context_identifier: ctx,
        state,
        endpoint: s.endpoint,
        api: s.api,
        version: s.version,
        valid_until: s.valid_until.map(from_millis),
        observed_at: from_millis(s.observed_at),
        revision: s.revision,
        changed_at: from_millis(s.changed_at),
        source: if s.from_notification {
            ChangeSource::Notification
        } else {
            ChangeSource::Poll
        },
        last_notification,
        stale: s.stale,
        last_error: s.last_error,
        hold,
        encoded: Default::default(),
    })
}

/// A record as the replicas' shared store keeps it: the state file's JSON
/// for one tenant, so there is one format to keep compatible.
pub(crate) fn encode_record(r: &TenantRecord) -> Vec<u8> {
    serde_json::to_vec(&save_record(r)).unwrap_or_default()
}

/// Reads a record the shared store keeps (see `encode_record`). Public
/// for the fault suite, which reads every version the store kept.
pub fn decode_record(bytes: &[u8]) -> Result<TenantRecord, String> {
    let saved: SavedTenant = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    load_record(saved)
}

/// A record's freshness (what a confirming poll moves) as the replicas'
/// `observed` bucket keeps it.
#[derive(Serialize, Deserialize)]
struct SavedFreshness {
    /// Unix milliseconds.
    observed_at: u64,
    valid_until: Option<u64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    last_error: String,
}

pub(crate) fn encode_freshness(f: &Freshness) -> Vec<u8> {
    serde_json::to_vec(&SavedFreshness {
        observed_at: millis(f.observed_at),
        valid_until: f.valid_until.map(millis),
        last_error: f.last_error.clone(),
    })
    .unwrap_or_default()
}

/// `None` when unreadable (a freshness is only an optimisation: the next
/// poll brings another).
pub(crate) fn decode_freshness(bytes: &[u8]) -> Option<Freshness> {
    let s: SavedFreshness = serde_json::from_slice(bytes).ok()?;
    Some(Freshness {
        observed_at: from_millis(s.observed_at),
        valid_until: s.valid_until.map(from_millis),
        last_error: s.last_error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_freshness_round_trips_and_garbage_is_none() {
        let f = Freshness {
            observed_at: from_millis(1_795_000_000_123),
            valid_until: Some(from_millis(1_795_000_060_123)),
            last_error: "state API 503".into(),
        };
        assert_eq!(decode_freshness(&encode_freshness(&f)), Some(f));
        assert_eq!(decode_freshness(b"{not json"), None);
    }
}
