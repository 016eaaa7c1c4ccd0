//! The state file: every tracked tenant's last known record, written
//! atomically soon after changes and at shutdown, read back at start so a
//! restart serves the last known states at once (marked stale until
//! re-polled).
//!
//! The file format is this module's own (`SavedTenant`), versioned, so the
//! in-memory types can change without breaking a file written before.

pub mod journal;

use std::{
    io::Write,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::{
    core::store::{Freshness, Store},
    core::tenant::{
        ChangeSource, ChangeType, ContextId, Hold, NotificationInfo, TenantRecord, TenantState,
    },
    persist::journal::Journal,
    token::SeenTokens,
};

const FORMAT_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    /// Unix milliseconds.
    saved_at: u64,
    revision: u64,
    tenants: Vec<SavedTenant>,
    /// The digests of accepted tokens still usable, with when each may be
    /// forgotten (Unix seconds), so a replay after a restart is refused.
    /// Absent in files written before they were kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    seen_tokens: Vec<(u64, u64)>,
}

/// What a state file holds.
#[derive(Debug)]
pub struct Saved {
    pub records: Vec<TenantRecord>,
    /// (digest, forget after) of tokens accepted and still usable then.
    pub seen_tokens: Vec<(u64, u64)>,
}

#[derive(Serialize, Deserialize)]
struct SavedTenant {
    context_identifier: String,
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

pub(super) fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn from_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn save_record(r: &TenantRecord) -> SavedTenant {
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

fn load_record(s: SavedTenant) -> Result<TenantRecord, String> {
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

/// Reads a record the shared store keeps (see `encode_record`).
pub(crate) fn decode_record(bytes: &[u8]) -> Result<TenantRecord, String> {
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

/// Why a state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a tenant-status state file: {problem}")]
    Corrupt { path: PathBuf, problem: String },
}

/// Reads what was saved in `path`. `Ok(None)` when there is no file (a
/// first start).
pub fn load(path: &Path) -> Result<Option<Saved>, LoadError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(LoadError::Unreadable {
                path: path.to_owned(),
                source,
            });
        }
    };
    let corrupt = |problem: String| LoadError::Corrupt {
        path: path.to_owned(),
        problem,
    };
    let file: StateFile = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if file.version != FORMAT_VERSION {
        return Err(corrupt(format!(
            "format version {} (this build reads {FORMAT_VERSION})",
            file.version
        )));
    }
    let records = file
        .tenants
        .into_iter()
        .map(load_record)
        .collect::<Result<Vec<_>, _>>()
        .map_err(corrupt)?;
    Ok(Some(Saved {
        records,
        seen_tokens: file.seen_tokens,
    }))
}

/// Moves an unusable state file aside (`PATH.corrupt-<unix seconds>`) so
/// that the next save does not overwrite what an operator may want to see.
pub fn set_aside(path: &Path) -> std::io::Result<PathBuf> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".corrupt-{secs}"));
    let aside = PathBuf::from(aside);
    std::fs::rename(path, &aside)?;
    Ok(aside)
}

/// Writes every record of `store`, and `seen_tokens` (from
/// `SeenTokens::remembered`), to `path` atomically: a temporary file in the
/// same directory, fsync, rename over `path`, fsync of the directory.
/// Returns the revision saved and the number of records.
pub fn save(
    store: &Store,
    seen_tokens: Vec<(u64, u64)>,
    path: &Path,
) -> anyhow::Result<(u64, usize)> {
    let revision = store.revision();
    let mut tenants: Vec<SavedTenant> = store.snapshot().iter().map(|r| save_record(r)).collect();
    tenants.sort_by(|a, b| a.context_identifier.cmp(&b.context_identifier));
    let count = tenants.len();
    let file = StateFile {
        version: FORMAT_VERSION,
        saved_at: millis(SystemTime::now()),
        revision,
        tenants,
        seen_tokens,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut tmp_name = path
        .file_name()
        .context("the state file path names no file")?
        .to_owned();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let write = || -> std::io::Result<()> {
        let f = std::fs::File::create(&tmp)?;
        let mut w = std::io::BufWriter::new(f);
        serde_json::to_writer(&mut w, &file)?;
        w.flush()?;
        w.get_ref().sync_all()?;
        drop(w);
        std::fs::rename(&tmp, path)?;
        // The rename is durable only once the directory is.
        std::fs::File::open(&dir)?.sync_all()?;
        Ok(())
    };
    write()
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
        .with_context(|| format!("--state-file: cannot write {}", path.display()))?;
    Ok((revision, count))
}

/// Saves the store whenever its revision moved, at most once per
/// `interval`, and a last time when `shutdown` fires. Returns after that
/// last save.
///
/// With a `journal`, each save first starts a new journal generation, and
/// once the file is durable removes the older ones: their notifications
/// are in it. The first save comes one interval after the start, so a
/// journal replayed at start is folded into the file.
pub async fn run(
    store: Arc<Store>,
    seen: Arc<SeenTokens>,
    path: PathBuf,
    journal: Option<Arc<Journal>>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut saved = journal.is_none().then(|| store.revision());
    loop {
        let stop = tokio::select! {
            _ = shutdown.cancelled() => true,
            _ = tokio::time::sleep(interval) => false,
        };
        if saved != Some(store.revision()) || stop {
            let rotated = match &journal {
                Some(j) => j
                    .rotate()
                    .await
                    .inspect_err(
                        |e| tracing::error!(error = %e, "could not start a new journal generation"),
                    )
                    .ok(),
                None => None,
            };
            let (s, p) = (Arc::clone(&store), path.clone());
            // Read after the rotation: every token the old generations name
            // is remembered by now, so the file holds them.
            let tokens = seen.remembered(SystemTime::now());
            match tokio::task::spawn_blocking(move || save(&s, tokens, &p)).await {
                Ok(Ok((revision, count))) => {
                    saved = Some(revision);
                    tracing::debug!(revision, tenants = count, "state file saved");
                    if let (Some(j), Some(through)) = (&journal, rotated)
                        && let Err(e) = j.remove_through(through)
                    {
                        tracing::warn!(error = %e, "could not remove journal generations the state file holds");
                    }
                }
                Ok(Err(e)) => tracing::error!(error = format!("{e:#}"), "state file not saved"),
                Err(e) => tracing::error!(error = %e, "state file writer failed"),
            }
        }
        if stop {
            tracing::info!(path = %path.display(), "state file saved at shutdown");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::store::PollResult;
    use crate::core::tenant::Observation;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "ts-persist-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

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

    #[test]
    fn records_round_trip_through_the_file() {
        let store = Store::new();
        let now = SystemTime::now();
        let ctx = ContextId::parse("Cust1").unwrap();
        store.apply_poll(
            &ctx,
            PollResult::Observed(Observation {
                state: TenantState::Running,
                endpoint: "https://sod2.superoffice.com/Cust1".into(),
                api: "https://sod2.superoffice.com/Cust1/api".into(),
                version: "v1".into(),
                valid_until: Some(now + Duration::from_secs(60)),
            }),
            now,
        );
        store.apply_notification(
            &ctx,
            NotificationInfo {
                change_type: ChangeType::Move,
                version_name: "Release".into(),
                file_version: "1.2".into(),
                public_endpoint: "sod3.superoffice.com".into(),
                received_at: now,
            },
            now,
        );
        let path = dir().join("state.json");
        assert_eq!(save(&store, vec![(7, 4_000_000_000)], &path).unwrap().1, 1);
        let Saved {
            records: loaded,
            seen_tokens,
        } = load(&path).unwrap().unwrap();
        assert_eq!(seen_tokens, [(7, 4_000_000_000)], "the used tokens too");
        assert_eq!(loaded.len(), 1);
        let (a, b) = (&loaded[0], store.get("Cust1").unwrap());
        assert_eq!(a.endpoint, "https://sod3.superoffice.com/Cust1");
        assert_eq!(a.state, b.state);
        assert_eq!(
            a.last_notification.as_ref().unwrap().change_type,
            ChangeType::Move
        );
        assert_eq!(a.source, ChangeSource::Notification);
        // The Move holds its endpoint across the restart too.
        let (ha, hb) = (a.hold.as_ref().unwrap(), b.hold.as_ref().unwrap());
        assert_eq!(millis(ha.until), millis(hb.until));
        assert_eq!(
            (ha.prior_state, &ha.prior_endpoint),
            (hb.prior_state, &hb.prior_endpoint)
        );
        assert_eq!(
            millis(a.valid_until.unwrap()),
            millis(b.valid_until.unwrap())
        );

        // Restored: stale, same content, changed_at kept.
        let fresh = Store::new();
        let restored = fresh.restore(a.clone()).unwrap().record;
        assert!(restored.stale);
        assert_eq!(restored.endpoint, a.endpoint);
        assert_eq!(millis(restored.changed_at), millis(a.changed_at));
    }

    #[test]
    fn a_missing_file_is_a_first_start_and_a_corrupt_one_is_named() {
        let d = dir();
        assert!(load(&d.join("none.json")).unwrap().is_none());
        let bad = d.join("bad.json");
        std::fs::write(&bad, "{\"version\": 1, \"tenants\": [").unwrap();
        let e = load(&bad).unwrap_err();
        assert!(matches!(e, LoadError::Corrupt { .. }), "{e}");
        let aside = set_aside(&bad).unwrap();
        assert!(aside.to_string_lossy().contains(".corrupt-"));
        assert!(!bad.exists());
        let wrong = d.join("wrong.json");
        std::fs::write(
            &wrong,
            r#"{"version":1,"saved_at":0,"revision":0,"tenants":[{"context_identifier":"../x","state":2,"endpoint":"","api":"","version":"","valid_until":null,"observed_at":0,"changed_at":0,"revision":1,"from_notification":false,"last_notification":null,"stale":false,"last_error":""}]}"#,
        )
        .unwrap();
        assert!(load(&wrong).unwrap_err().to_string().contains("../x"));
    }
}
