//! The history of a fault run: every request with its answer, every poll
//! the replicas made (seen by the proxy in front of the fake SuperOffice),
//! every change of SuperOffice's truth, every watch event and the final
//! reads. Each is written as one JSON line to target/bench/ as it happens
//! (the file outlives a failed run: it is the reproduction) and kept in
//! memory for the checker.

use std::{
    collections::HashMap,
    io::Write,
    path::PathBuf,
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Instant,
};

use serde::Serialize;
use tenant_status::pb;

/// One record as a watcher or a final read saw it: what the checker
/// compares.
#[derive(Debug, Clone, Serialize)]
pub struct Rec {
    pub ctx: String,
    pub rev: u64,
    pub state: i32,
    /// The endpoint's host: the fault run gives every truth a host of its
    /// own, so the host names the truth a record came from.
    pub host: String,
    pub api: String,
    pub version: String,
    pub source: i32,
    /// The last notification's VersionName: the run's marker of it.
    pub note: String,
    pub observed_ms: i64,
    pub stale: bool,
}

impl Rec {
    pub fn of(t: &pb::Tenant) -> Self {
        Self {
            ctx: t.context_identifier.clone(),
            rev: t.revision,
            state: t.state,
            host: host_of(&t.endpoint),
            api: t.api.clone(),
            version: t.version.clone(),
            source: t.last_change_source,
            note: t
                .last_notification
                .as_ref()
                .map(|n| n.version_name.clone())
                .unwrap_or_default(),
            observed_ms: t
                .observed_at
                .as_ref()
                .map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
                .unwrap_or(0),
            stale: t.stale,
        }
    }

    /// What must be the same wherever this revision is read. Not
    /// `observed_at` or `stale`: a confirming poll and a replica cut off
    /// from NATS change those locally without a new revision.
    pub fn fingerprint(&self) -> (String, i32, String, String, String, i32, String) {
        (
            self.ctx.clone(),
            self.state,
            self.host.clone(),
            self.api.clone(),
            self.version.clone(),
            self.source,
            self.note.clone(),
        )
    }
}

/// `https://host/Cust1` -> `host`.
pub fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    rest.split('/').next().unwrap_or("").to_owned()
}

/// One POST of a notification and its answer.
#[derive(Debug, Clone, Serialize)]
pub struct Req {
    pub seq: u64,
    pub attempt: u32,
    pub replica: usize,
    pub ctx: String,
    pub start: f64,
    pub end: f64,
    /// "ok" (204), "failed" (answered, not applied: a refusal or a
    /// refused connection), "indeterminate" (a timeout or a 503: it may
    /// or may not have landed).
    pub outcome: &'static str,
    pub status: u16,
    pub error: String,
}

/// One notification over all its attempts.
#[derive(Debug, Clone, Serialize)]
pub struct Note {
    pub seq: u64,
    pub ctx: String,
    pub marker: String,
    pub change: &'static str,
    pub attempts: u32,
    pub first_start: f64,
    pub last_end: f64,
    pub acked: bool,
    /// Answered 401 token_replayed on some attempt.
    pub replayed: bool,
    pub last_status: u16,
}

/// One state-API request a replica made, seen by its proxy.
#[derive(Debug, Clone, Serialize)]
pub struct Poll {
    pub replica: usize,
    pub ctx: String,
    pub start: f64,
    pub end: f64,
    pub status: u16,
    pub host: String,
}

/// SuperOffice's truth for one tenant from `t` on.
#[derive(Debug, Clone, Serialize)]
pub struct Truth {
    pub ctx: String,
    pub v: u64,
    pub state: &'static str,
    pub host: String,
    pub t: f64,
    pub silent: bool,
}

/// One watch event.
#[derive(Debug, Clone, Serialize)]
pub struct Ev {
    pub t: f64,
    pub watcher: String,
    pub stream: u32,
    pub replica: usize,
    pub kind: i32,
    pub rev: u64,
    pub rec: Option<Rec>,
}

/// A SYNCED or HEARTBEAT and what the watcher held then: tenant ->
/// revision.
#[derive(Debug, Clone)]
pub struct Sync {
    pub t: f64,
    pub watcher: String,
    pub stream: u32,
    pub kind: i32,
    pub rev: u64,
    pub view: HashMap<String, u64>,
}

/// A revision that went down within one stream.
#[derive(Debug, Clone, Serialize)]
pub struct Backwards {
    pub t: f64,
    pub watcher: String,
    pub stream: u32,
    pub before: u64,
    pub after: u64,
    pub kind: i32,
}

/// Partitions held by each replica (None: no answer) at `t`.
#[derive(Debug, Clone, Serialize)]
pub struct Held {
    pub t: f64,
    pub by: Vec<Option<f64>>,
}

/// One lease tenure of a replica, from its `/cluster/leases`: a partition
/// from when the replica could first act on it to when it stopped (the
/// run's seconds). A tenure still held when last sampled ends at the
/// `until` it had then.
#[derive(Debug, Clone, Serialize)]
pub struct Tenure {
    pub replica: usize,
    pub partition: u16,
    pub since: f64,
    pub end: f64,
    /// Why it ended ("lapsed", "lost", "given_back", "shutdown"), or
    /// empty when it was held at the last sample.
    pub why: String,
}

/// A fault's window.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub name: String,
    pub start: f64,
    pub heal: f64,
    pub end: f64,
    /// Partitions held fleet-wide at the end of the settle.
    pub held_after: f64,
    /// From the heal until every replica was ready and held its share.
    pub healed_in: Option<f64>,
    pub note: String,
}

#[derive(Default)]
pub struct Mem {
    pub reqs: Vec<Req>,
    pub notes: Vec<Note>,
    pub polls: Vec<Poll>,
    pub truths: Vec<Truth>,
    pub events: Vec<Ev>,
    pub syncs: Vec<Sync>,
    pub backwards: Vec<Backwards>,
    pub held: Vec<Held>,
    /// (replica, partition, since in Unix ms) -> the tenure as last seen.
    pub tenures: std::collections::BTreeMap<(usize, u16, u64), Tenure>,
    /// Answers of `/cluster/leases` taken, and asked but not had.
    pub lease_samples: (usize, usize),
    pub phases: Vec<Phase>,
    /// replica -> its final ListTenants.
    pub finals: Vec<Vec<Rec>>,
    /// Every version of every record the shared store kept
    /// (`stored.rs`).
    pub stored: Vec<Rec>,
    /// tenant -> (state name, host) at the end.
    pub final_truth: HashMap<String, (&'static str, String)>,
}

pub struct History {
    t0: Instant,
    /// The wall clock at `t0`, Unix milliseconds: the replicas report
    /// their tenures on the wall clock.
    t0_wall_ms: f64,
    out: Mutex<std::io::BufWriter<std::fs::File>>,
    pub mem: Mutex<Mem>,
    streams: AtomicU32,
    pub path: PathBuf,
}

impl History {
    pub fn create(path: PathBuf) -> anyhow::Result<Self> {
        let file = std::fs::File::create(&path)?;
        let t0 = Instant::now();
        let t0_wall_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0);
        Ok(Self {
            t0,
            t0_wall_ms,
            out: Mutex::new(std::io::BufWriter::new(file)),
            mem: Mutex::new(Mem::default()),
            streams: AtomicU32::new(0),
            path,
        })
    }

    /// Seconds since the run began.
    pub fn now(&self) -> f64 {
        (self.t0.elapsed().as_secs_f64() * 1000.0).round() / 1000.0
    }

    /// A wall-clock moment in Unix milliseconds as the run's seconds.
    pub fn at_wall_ms(&self, ms: u64) -> f64 {
        ((ms as f64 - self.t0_wall_ms).round()) / 1000.0
    }

    pub fn next_stream(&self) -> u32 {
        self.streams.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Writes `value` as a line `{"kind": kind, ...value}`.
    pub fn line(&self, kind: &str, value: &impl Serialize) {
        let mut v = serde_json::to_value(value).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("kind".into(), kind.into());
        }
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let _ = serde_json::to_writer(&mut *out, &v);
        let _ = out.write_all(b"\n");
    }

    pub fn mem(&self) -> std::sync::MutexGuard<'_, Mem> {
        self.mem.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn flush(&self) {
        let _ = self.out.lock().unwrap_or_else(|e| e.into_inner()).flush();
    }
}
