//! The notification journal: with `--state-file`, every accepted
//! notification is appended to `STATE_FILE.journal-<generation>` and made
//! durable (fdatasync) before it is applied and acknowledged, so a kill -9
//! loses none that SuperOffice was told we have. The state file is saved
//! about once a second; the journal covers the time in between.
//!
//! Appends are group-committed: one fdatasync covers every entry written
//! while the previous one ran, so a burst costs a few syncs, not one each.
//!
//! Each save of the state file first `rotate`s to a new generation. The
//! rotation waits until every entry of the old generation has been
//! applied to the store (an append holds the gate's read side until its
//! apply is done), so the snapshot taken after it holds them all, and the
//! old generations can be removed once that snapshot is durable. A failed
//! save leaves them in place; at start, every generation left is replayed
//! over the state file, skipping what the file already holds.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use super::{Cause, Durability};
use crate::codec::millis;

use crate::{
    core::tenant::{ChangeType, ContextId, NotificationInfo, TenantRecord},
    token::Remembered,
};

/// One accepted notification, as written: a JSON line.
#[derive(Serialize, Deserialize)]
struct Entry {
    ctx: String,
    /// SuperOffice's number.
    change_type: i64,
    version_name: String,
    file_version: String,
    public_endpoint: String,
    /// Unix milliseconds.
    received_at: u64,
    /// The accepted token's digest and when it may be forgotten (Unix
    /// seconds), so a replay after a restart is refused. Absent in entries
    /// written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token: Option<(u64, u64)>,
    /// The notification's fingerprint, so that a retry of it after a
    /// restart is answered as applied, and the token with another
    /// notification refused. Absent in entries written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    note: Option<u64>,
}

pub struct Journal {
    /// The state file's path; generations are named after it.
    base: PathBuf,
    /// Whether entries can be made durable now; shared with the state
    /// file's saver and readiness.
    durability: Arc<Durability>,
    /// Appends hold the read side from write to apply; a rotation holds
    /// the write side.
    gate: tokio::sync::RwLock<()>,
    writer: Mutex<Writer>,
    /// The sequence number through which entries are durable.
    synced: tokio::sync::Mutex<u64>,
}

struct Writer {
    /// Shared with the sync in progress (`&File` writes and syncs).
    file: Arc<File>,
    generation: u64,
    /// Entries written whole into this generation: an empty one is reused
    /// by the next rotation rather than followed by another empty file.
    in_generation: u64,
    /// Entries written, over all generations.
    written: u64,
    /// A write failed part-way: the file may end in a partial line, which
    /// the next entry must not be glued to.
    torn: bool,
}

/// A notification replayed from the journal at start.
pub struct Replayed {
    pub ctx: ContextId,
    pub info: NotificationInfo,
}

/// What the journal left: the notifications to apply again, the digests of
/// every token it names (applied or not, they were accepted), and how many
/// lines could not be read.
pub struct Replay {
    pub notifications: Vec<Replayed>,
    pub tokens: Vec<Remembered>,
    pub unreadable: usize,
}

impl Journal {
    /// Opens a new generation after every one left in the directory (the
    /// caller replays those first with `replay`).
    pub fn open(state_file: &Path, durability: Arc<Durability>) -> std::io::Result<Self> {
        let next = generations(state_file)?
            .last()
            .map_or(1, |(g, _)| g.saturating_add(1));
        let file = Arc::new(create(&generation_path(state_file, next))?);
        Ok(Self {
            base: state_file.to_owned(),
            durability,
            gate: tokio::sync::RwLock::new(()),
            writer: Mutex::new(Writer {
                file,
                generation: next,
                in_generation: 0,
                written: 0,
                torn: false,
            }),
            synced: tokio::sync::Mutex::new(0),
        })
    }

    /// Makes the notification about `ctx` durable, with its token, then
    /// runs `apply` (which puts it in the store) before any rotation can
    /// pass it. Refused at once while the journal is known not to work
    /// (`Durability`): the state file's saver finds out when it works
    /// again.
    pub async fn record<T>(
        &self,
        ctx: &ContextId,
        info: &NotificationInfo,
        token: Remembered,
        apply: impl FnOnce() -> T,
    ) -> std::io::Result<T> {
        let mut line = serde_json::to_vec(&Entry {
            ctx: ctx.to_string(),
            change_type: info.change_type as i64,
            version_name: info.version_name.clone(),
            file_version: info.file_version.clone(),
            public_endpoint: info.public_endpoint.clone(),
            received_at: millis(info.received_at),
            token: Some((token.digest, token.forget_after)),
            note: (token.note != 0).then_some(token.note),
        })?;
        line.push(b'\n');
        let _gate = self.gate.read().await;
        if let Some(why) = self.durability.journal_broken() {
            return Err(std::io::Error::other(why.sentence()));
        }
        let seq = {
            let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
            if w.torn {
                line.insert(0, b'\n');
            }
            // One write of a whole line: a crash leaves at most a torn
            // last line, which replay skips.
            if let Err(e) = (&*w.file).write_all(&line) {
                w.torn = true;
                drop(w);
                self.durability.journal_failed(Cause::of(&e));
                return Err(e);
            }
            w.torn = false;
            w.written += 1;
            w.in_generation += 1;
            w.written
        };
        self.sync_through(seq).await.inspect_err(|e| {
            self.durability.journal_failed(Cause::of(e));
        })?;
        Ok(apply())
    }

    /// Returns once entry `seq` is durable: one fdatasync for everything
    /// written so far, unless a sync that began after it already covers it.
    /// Durable means on disk under the journal's name: a file whose name
    /// was removed (its directory deleted, say) syncs without error and
    /// would be lost at the next crash, so the file behind the path is
    /// checked to be the one written, after each sync.
    async fn sync_through(&self, seq: u64) -> std::io::Result<()> {
        let mut synced = self.synced.lock().await;
        if *synced >= seq {
            return Ok(());
        }
        let (file, through, path) = {
            let w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
            (
                Arc::clone(&w.file),
                w.written,
                generation_path(&self.base, w.generation),
            )
        };
        tokio::task::spawn_blocking(move || {
            file.sync_data()?;
            still_named(&file, &path)
        })
        .await
        .map_err(std::io::Error::other)??;
        *synced = through;
        Ok(())
    }

    /// Starts a new generation and returns the last one to remove once a
    /// snapshot taken after this call is durable. Waits for appends under
    /// way to be applied. A generation that holds no entry and is still on
    /// disk is kept as the current one, so failing saves do not leave a
    /// trail of empty files.
    pub async fn rotate(&self) -> std::io::Result<u64> {
        let _gate = self.gate.write().await;
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let current = generation_path(&self.base, w.generation);
        if w.in_generation == 0 && still_named(&w.file, &current).is_ok() {
            return Ok(w.generation - 1);
        }
        let next = w.generation + 1;
        w.file = Arc::new(create(&generation_path(&self.base, next))?);
        let old = w.generation;
        w.generation = next;
        w.in_generation = 0;
        w.torn = false;
        Ok(old)
    }

    /// Removes every generation up to `through`: their entries are in a
    /// durable snapshot.
    pub fn remove_through(&self, through: u64) -> std::io::Result<()> {
        for (g, path) in generations(&self.base)? {
            if g <= through {
                std::fs::remove_file(path)?;
            }
        }
        Ok(())
    }
}

/// Reads every generation left beside `state_file`, oldest first, and
/// returns the entries the restored records (`record_of`) do not already
/// hold: those received after the record's last notification. An unreadable
/// line (a torn last write) is skipped and counted.
pub fn replay(
    state_file: &Path,
    record_of: impl Fn(&str) -> Option<std::sync::Arc<TenantRecord>>,
) -> std::io::Result<Replay> {
    let mut out = Vec::new();
    let mut tokens = Vec::new();
    let mut skipped = 0;
    for (_, path) in generations(state_file)? {
        let text = std::fs::read(&path)?;
        for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let Some((ctx, info, token, note)) =
                serde_json::from_slice::<Entry>(line).ok().and_then(|e| {
                    let ctx = ContextId::parse(&e.ctx).ok()?;
                    let info = NotificationInfo {
                        change_type: ChangeType::from_number(e.change_type)?,
                        version_name: e.version_name,
                        file_version: e.file_version,
                        public_endpoint: e.public_endpoint,
                        received_at: UNIX_EPOCH + Duration::from_millis(e.received_at),
                    };
                    Some((ctx, info, e.token, e.note))
                })
            else {
                skipped += 1;
                continue;
            };
            tokens.extend(token.map(|(digest, forget_after)| Remembered {
                digest,
                forget_after,
                note: note.unwrap_or(0),
            }));
            // The state file holds it when its record names this
            // notification or a later one (polls keep last_notification).
            // Times of observation say nothing: a poll may land between a
            // notification's receipt and its apply.
            let at = millis(info.received_at);
            let newer_news = record_of(ctx.as_str()).is_some_and(|r| {
                r.last_notification
                    .as_ref()
                    .is_some_and(|n| millis(n.received_at) >= at)
            });
            // The rest replay in the journal's order, the order they
            // were written in.
            if !newer_news {
                out.push(Replayed { ctx, info });
            }
        }
    }
    Ok(Replay {
        notifications: out,
        tokens,
        unreadable: skipped,
    })
}

fn generation_path(base: &Path, generation: u64) -> PathBuf {
    let mut name = base.as_os_str().to_owned();
    name.push(format!(".journal-{generation}"));
    PathBuf::from(name)
}

/// The journal generations beside `base`, oldest first.
fn generations(base: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let dir = match base.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let Some(name) = base.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let prefix = format!("{name}.journal-");
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let file_name = entry.file_name();
        let Some(g) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|g| g.parse::<u64>().ok())
        else {
            continue;
        };
        found.push((g, entry.path()));
    }
    found.sort();
    Ok(found)
}

/// Whether `file` is still the file named `path`: the same device and
/// inode, and not unlinked.
fn still_named(file: &File, path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let open = file.metadata()?;
    let named = std::fs::metadata(path).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("the journal {} is gone from disk: {e}", path.display()),
        )
    })?;
    if open.nlink() == 0 || open.dev() != named.dev() || open.ino() != named.ino() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "the journal {} was removed or replaced while open",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// Creates a generation's file and makes its name durable.
fn create(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)?.sync_all()?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::tenant::TenantState;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ts-journal-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn info(change: ChangeType, at_ms: u64) -> NotificationInfo {
        NotificationInfo {
            change_type: change,
            version_name: "10.3".into(),
            file_version: "10.3.1".into(),
            public_endpoint: String::new(),
            received_at: UNIX_EPOCH + Duration::from_millis(at_ms),
        }
    }

    fn ctx(s: &str) -> ContextId {
        ContextId::parse(s).unwrap()
    }

    fn tok(digest: u64) -> Remembered {
        Remembered {
            digest,
            forget_after: u64::MAX,
            note: 7,
        }
    }

    #[tokio::test]
    async fn entries_survive_until_a_snapshot_holds_them() {
        let d = dir("rotate");
        let state = d.join("state.json");
        let j = Journal::open(&state, Arc::new(Durability::default())).unwrap();
        let applied = j
            .record(
                &ctx("Cust1"),
                &info(ChangeType::Suspend, 1_000),
                tok(1),
                || 7,
            )
            .await
            .unwrap();
        assert_eq!(applied, 7);
        j.record(
            &ctx("Cust2"),
            &info(ChangeType::Upgrade, 2_000),
            tok(1),
            || (),
        )
        .await
        .unwrap();
        // As after a kill -9: a new process finds both.
        let Replay {
            notifications: found,
            unreadable: skipped,
            ..
        } = replay(&state, |_| None).unwrap();
        assert_eq!(skipped, 0);
        let names: Vec<_> = found.iter().map(|r| r.ctx.as_str()).collect();
        assert_eq!(names, ["Cust1", "Cust2"]);
        assert_eq!(found[0].info.change_type, ChangeType::Suspend);
        // A rotation, then an entry in the new generation; removing the
        // old one (its entries are in a snapshot) keeps the new.
        let old = j.rotate().await.unwrap();
        j.record(
            &ctx("Cust3"),
            &info(ChangeType::Delete, 3_000),
            tok(1),
            || (),
        )
        .await
        .unwrap();
        j.remove_through(old).unwrap();
        let found = replay(&state, |_| None).unwrap().notifications;
        let names: Vec<_> = found.iter().map(|r| r.ctx.as_str()).collect();
        assert_eq!(names, ["Cust3"]);
        // A new process opens after the generations left.
        drop(j);
        let j2 = Journal::open(&state, Arc::new(Durability::default())).unwrap();
        assert_eq!(j2.writer.lock().unwrap().generation, old + 2);
    }

    #[tokio::test]
    async fn replay_skips_what_the_state_file_holds_and_torn_lines() {
        let d = dir("replay");
        let state = d.join("state.json");
        let j = Journal::open(&state, Arc::new(Durability::default())).unwrap();
        for (c, at) in [("Cust1", 1_000), ("Cust2", 1_000), ("Cust2", 5_000)] {
            j.record(&ctx(c), &info(ChangeType::Suspend, at), tok(1), || ())
                .await
                .unwrap();
        }
        // A torn last line, as a crash mid-write would leave.
        let path = generation_path(&state, 1);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"ctx\":\"Cust4\",\"change_t").unwrap();
        // The state file holds Cust1's notification, and Cust2's first
        // (then a poll observed it Running).
        let record = |name: &str, notified_ms: u64| {
            let mut r = crate::core::tenant::TenantRecord::unknown(
                &ctx(name),
                std::time::SystemTime::now(),
            );
            r.state = TenantState::Running;
            r.last_notification = Some(info(ChangeType::Suspend, notified_ms));
            Arc::new(r)
        };
        let Replay {
            notifications: found,
            tokens,
            unreadable: skipped,
        } = replay(&state, |name| match name {
            "Cust1" => Some(record("Cust1", 1_000)),
            "Cust2" => Some(record("Cust2", 1_000)),
            _ => None,
        })
        .unwrap();
        assert_eq!(skipped, 1);
        assert_eq!(
            tokens.len(),
            3,
            "every accepted token, applied already or not, is remembered again"
        );
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].ctx.as_str(), "Cust2");
        assert_eq!(millis(found[0].info.received_at), 5_000);

        // A write that failed part-way (the partial line above, as a full
        // disk leaves it): the next entry starts on a line of its own.
        j.writer.lock().unwrap().torn = true;
        j.record(
            &ctx("Cust5"),
            &info(ChangeType::Resume, 6_000),
            tok(1),
            || (),
        )
        .await
        .unwrap();
        let Replay {
            notifications: found,
            unreadable: skipped,
            ..
        } = replay(&state, |_| None).unwrap();
        assert_eq!(skipped, 1);
        assert_eq!(found.last().unwrap().ctx.as_str(), "Cust5");
    }

    #[tokio::test]
    async fn a_burst_shares_its_syncs() {
        let d = dir("burst");
        let state = d.join("state.json");
        let j = Arc::new(Journal::open(&state, Arc::new(Durability::default())).unwrap());
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let j = Arc::clone(&j);
                tokio::spawn(async move {
                    j.record(
                        &ctx(&format!("Cust{i}")),
                        &info(ChangeType::Resume, i),
                        tok(i),
                        || (),
                    )
                    .await
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let found = replay(&state, |_| None).unwrap().notifications;
        assert_eq!(found.len(), 200);
        assert_eq!(*j.synced.lock().await, 200);
    }
}
