//! The state file: every tracked tenant's last known record, written
//! atomically soon after changes and at shutdown, read back at start so a
//! restart serves the last known states at once (marked stale until
//! re-polled).
//!
//! The file format is versioned, so the in-memory types can change without
//! breaking a file written before; each tenant in it is a record in the
//! wire format of `crate::codec`, the same the replicas' buckets hold. A
//! record that cannot be read is skipped (named in the log), not the whole
//! file; a file of a newer format version stops the start.
//!
//! Durability is checked, not assumed (`Durability`): a journal whose file
//! is gone, a full disk or a failed sync makes the webhook answer 503 and
//! readiness say why, until a save proves the directory usable again.

mod durability;
pub mod journal;
mod journaled;

pub use durability::{Cause, Durability};
pub use journaled::JournaledLedger;

use std::{
    io::Write,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::{
    codec::{SavedTenant, load_record, millis, save_record},
    core::store::Store,
    core::tenant::TenantRecord,
    persist::journal::Journal,
    token::{Remembered, SeenTokens},
};

/// The state file's format: version 1 holds records of `codec`'s format 1.
const FORMAT_VERSION: u32 = crate::codec::RECORD_FORMAT;

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
    /// (digest, notification fingerprint) of the tokens above, so a retry
    /// after a restart is answered as applied and the token with another
    /// notification refused. A field of its own, so that a build that does
    /// not know it still reads the file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    token_notes: Vec<(u64, u64)>,
}

/// A state file as first read: only its version, so that a newer format is
/// named as such rather than reported as damage.
#[derive(Deserialize)]
struct VersionOnly {
    version: u32,
}

/// A state file whose records are read one by one, so one bad record
/// costs that record only.
#[derive(Deserialize)]
struct LenientStateFile {
    tenants: Vec<serde_json::Value>,
    #[serde(default)]
    seen_tokens: Vec<(u64, u64)>,
    #[serde(default)]
    token_notes: Vec<(u64, u64)>,
}

/// What a state file holds.
#[derive(Debug)]
pub struct Saved {
    pub records: Vec<TenantRecord>,
    /// Tokens whose notifications were applied, still usable then.
    pub seen_tokens: Vec<Remembered>,
    /// Records that could not be read and were skipped, each with why.
    pub skipped: Vec<String>,
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
    #[error(
        "{path} is of state file format version {found}, newer than this build reads ({supported}): it was written by a newer tenant-status. Start that version again, or move the file away to start without it"
    )]
    TooNew {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
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
    let VersionOnly { version } =
        serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if version > FORMAT_VERSION {
        return Err(LoadError::TooNew {
            path: path.to_owned(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    if version != FORMAT_VERSION {
        return Err(corrupt(format!(
            "format version {version} (this build reads {FORMAT_VERSION})"
        )));
    }
    let file: LenientStateFile =
        serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let mut records = Vec::with_capacity(file.tenants.len());
    let mut skipped = Vec::new();
    for value in file.tenants {
        let name = value
            .get("context_identifier")
            .and_then(|v| v.as_str())
            .map(|s| format!("{s:?}"))
            .unwrap_or_else(|| "a record without an identifier".into());
        match serde_json::from_value::<SavedTenant>(value)
            .map_err(|e| format!("{name}: {e}"))
            .and_then(load_record)
        {
            Ok(r) => records.push(r),
            Err(why) => skipped.push(why),
        }
    }
    let notes: std::collections::HashMap<u64, u64> = file.token_notes.into_iter().collect();
    let seen_tokens = file
        .seen_tokens
        .into_iter()
        .map(|(digest, forget_after)| Remembered {
            digest,
            forget_after,
            note: notes.get(&digest).copied().unwrap_or(0),
        })
        .collect();
    Ok(Some(Saved {
        records,
        seen_tokens,
        skipped,
    }))
}

/// Removes temporary files a save left beside `path` when it was cut
/// short (a shutdown deadline, a crash mid-write): they were never renamed
/// over the file, so nothing reads them. Returns how many.
pub fn remove_leftovers(path: &Path) -> usize {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let Some(prefix) = path
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| format!("{n}.tmp-"))
    else {
        return 0;
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count()
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
    seen_tokens: Vec<Remembered>,
    path: &Path,
) -> Result<(u64, usize), SaveError> {
    let revision = store.revision();
    let mut tenants: Vec<SavedTenant> = store.snapshot().iter().map(|r| save_record(r)).collect();
    tenants.sort_by(|a, b| a.context_identifier.cmp(&b.context_identifier));
    let count = tenants.len();
    let file = StateFile {
        version: FORMAT_VERSION,
        saved_at: millis(SystemTime::now()),
        revision,
        tenants,
        token_notes: seen_tokens
            .iter()
            .filter(|t| t.note != 0)
            .map(|t| (t.digest, t.note))
            .collect(),
        seen_tokens: seen_tokens
            .iter()
            .map(|t| (t.digest, t.forget_after))
            .collect(),
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut tmp_name = path
        .file_name()
        .ok_or_else(|| SaveError {
            path: path.to_owned(),
            source: std::io::Error::other("the state file path names no file"),
        })?
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
        .map_err(|source| SaveError {
            path: path.to_owned(),
            source,
        })?;
    Ok((revision, count))
}

/// A save that failed.
#[derive(Debug, thiserror::Error)]
#[error("--state-file: cannot write {}: {source}", path.display())]
pub struct SaveError {
    path: PathBuf,
    source: std::io::Error,
}

impl SaveError {
    pub fn cause(&self) -> Cause {
        Cause::of(&self.source)
    }
}

/// How much of a core saves may take: a save is started no sooner than
/// this many times its last duration after the previous one began.
const SAVE_SHARE: u32 = 20;

/// Saves the store when its revision moved, at most once per `interval`
/// and so that saves take at most 1/`SAVE_SHARE` of a core (a state file of
/// 500,000 tenants takes seconds to write), and a last time when `shutdown`
/// fires. Returns after that last save. While something fails (a save, the
/// journal), it tries again every `interval`: a save that succeeds is what
/// makes the journal take notifications again.
///
/// Spacing saves loses nothing acknowledged: every notification is in the
/// journal before its 204, and the journal's generations are removed only
/// once a saved file holds them. What a kill -9 costs is polls' news since
/// the last save, which the restart polls again.
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
    durability: Arc<Durability>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut saved = journal.is_none().then(|| store.revision());
    let mut next_allowed = tokio::time::Instant::now();
    loop {
        let stop = tokio::select! {
            _ = shutdown.cancelled() => true,
            _ = tokio::time::sleep(interval) => false,
        };
        let failing = durability.failing();
        let moved = saved != Some(store.revision());
        let due = stop || failing || (moved && tokio::time::Instant::now() >= next_allowed);
        if !due {
            continue;
        }
        let started = tokio::time::Instant::now();
        let outcome = save_once(&store, &seen, &path, journal.as_deref()).await;
        let took = started.elapsed();
        next_allowed = started + took.saturating_mul(SAVE_SHARE);
        match outcome {
            Ok((revision, count)) => {
                saved = Some(revision);
                durability.saved(Ok(()), took);
                tracing::debug!(revision, tenants = count, ?took, "state file saved");
                if stop {
                    tracing::info!(path = %path.display(), tenants = count, "state file saved at shutdown");
                }
            }
            Err(e) => {
                durability.saved(Err(e.cause), took);
                // Once per failure, not once per interval.
                if !failing || stop {
                    tracing::error!(error = %e, "state file not saved");
                }
                if stop {
                    match durability.journal_broken() {
                        None if journal.is_some() => tracing::error!(
                            path = %path.display(),
                            "state file NOT saved at shutdown; the journal beside it keeps every notification acknowledged since the last save, and the next start replays it"
                        ),
                        _ => tracing::error!(
                            path = %path.display(),
                            "state file NOT saved at shutdown; the next start has the last file saved (and the journal, if any)"
                        ),
                    }
                }
            }
        }
        if stop {
            return;
        }
    }
}

/// Why a save failed, with its cause for the metrics.
struct SaveFailure {
    cause: Cause,
    message: String,
}

impl std::fmt::Display for SaveFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// One save: rotate the journal, write the file, remove what it holds.
async fn save_once(
    store: &Arc<Store>,
    seen: &SeenTokens,
    path: &Path,
    journal: Option<&Journal>,
) -> Result<(u64, usize), SaveFailure> {
    let rotated = match journal {
        Some(j) => Some(j.rotate().await.map_err(|e| SaveFailure {
            cause: Cause::of(&e),
            message: format!("could not start a new journal generation: {e}"),
        })?),
        None => None,
    };
    let (s, p) = (Arc::clone(store), path.to_owned());
    // Read after the rotation: every token the old generations name is
    // remembered by now, so the file holds them.
    let tokens = seen.remembered(SystemTime::now());
    let (revision, count) = tokio::task::spawn_blocking(move || save(&s, tokens, &p))
        .await
        .map_err(|e| SaveFailure {
            cause: Cause::Io,
            message: format!("the state file writer failed: {e}"),
        })?
        .map_err(|e| SaveFailure {
            cause: e.cause(),
            message: e.to_string(),
        })?;
    if let (Some(j), Some(through)) = (journal, rotated)
        && let Err(e) = j.remove_through(through)
    {
        tracing::warn!(error = %e, "could not remove journal generations the state file holds");
    }
    Ok((revision, count))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::store::PollResult;
    use crate::core::tenant::Observation;
    use crate::core::tenant::{ChangeSource, ChangeType, ContextId, NotificationInfo, TenantState};

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
        let tokens = vec![
            Remembered {
                digest: 7,
                forget_after: 4_000_000_000,
                note: 9,
            },
            Remembered {
                digest: 8,
                forget_after: 4_000_000_000,
                note: 0,
            },
        ];
        assert_eq!(save(&store, tokens.clone(), &path).unwrap().1, 1);
        let Saved {
            records: loaded,
            seen_tokens,
            skipped,
        } = load(&path).unwrap().unwrap();
        assert!(skipped.is_empty());
        assert_eq!(
            seen_tokens, tokens,
            "the used tokens too, with what they carried"
        );
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
        // One bad record costs that record only.
        let saved = load(&wrong).unwrap().unwrap();
        assert!(saved.records.is_empty());
        assert_eq!(saved.skipped.len(), 1);
        assert!(saved.skipped[0].contains("../x"), "{:?}", saved.skipped);
    }

    #[test]
    fn a_bad_record_is_skipped_and_a_newer_format_refused() {
        let d = dir();
        let store = Store::new();
        let now = SystemTime::now();
        for name in ["Cust1", "Cust2", "Cust3"] {
            store.track_unknown(&ContextId::parse(name).unwrap(), now);
        }
        let path = d.join("state.json");
        let token = Remembered {
            digest: 5,
            forget_after: 4_000_000_000,
            note: 6,
        };
        save(&store, vec![token], &path).unwrap();
        // Damage one record: a state SuperOffice never had, and another
        // whose fields are of the wrong type.
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        v["tenants"][1]["state"] = serde_json::json!(99);
        v["tenants"][2]["revision"] = serde_json::json!("not a number");
        std::fs::write(&path, v.to_string()).unwrap();
        let saved = load(&path).unwrap().unwrap();
        let names: Vec<_> = saved
            .records
            .iter()
            .map(|r| r.context_identifier.to_string())
            .collect();
        assert_eq!(names, ["Cust1"]);
        assert_eq!(saved.skipped.len(), 2, "{:?}", saved.skipped);
        assert!(saved.skipped[0].contains("Cust2"), "{:?}", saved.skipped);
        assert!(saved.skipped[1].contains("Cust3"), "{:?}", saved.skipped);
        assert_eq!(saved.seen_tokens, [token], "the tokens are kept too");

        // A newer format: named as such, nothing moved.
        v["version"] = serde_json::json!(FORMAT_VERSION + 1);
        std::fs::write(&path, v.to_string()).unwrap();
        let e = load(&path).unwrap_err();
        assert!(
            matches!(e, LoadError::TooNew { found, supported, .. } if found == FORMAT_VERSION + 1 && supported == FORMAT_VERSION),
            "{e}"
        );
        assert!(e.to_string().contains("newer than this build reads"), "{e}");
        assert!(path.exists());
    }
}
