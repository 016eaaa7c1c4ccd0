//! The in-memory store of tenant records: the ordered section where every
//! change takes its revision and is handed to the fan-out.
//!
//! Invariants:
//! - Every meaningful change takes the next store-wide revision; a tenant's
//!   revision only grows, and revisions of all tenants share one order.
//! - Revisions are assigned, stored and published in one ordered section,
//!   so `revision()` never names a change a watcher could still miss: every
//!   change at or below it is in the map and in every watcher's inbox.
//! - An update that changes nothing meaningful refreshes `observed_at` and
//!   `valid_until` and wakes nobody.
//! - Changes reach the fan-out (`fanout`) in the ordered section, so every
//!   watcher's inbox is marked in revision order, and a watcher registers
//!   inside that section too.
//! - The store knows nothing of tonic, axum or reqwest.
//!
//! One room although it is long: every method here takes the ordered
//! section or reads what it guards (the map, the revision index, the
//! tombstones, the fan-out), so the invariants above are kept in one file.
//! The rules (`store/apply.rs`) and the pages (`store/page.rs`) already
//! live apart.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use dashmap::DashMap;
use tokio_util::sync::CancellationToken;

use crate::core::{
    fanout::{Fanout, Slot, Watcher},
    tenant::{ContextId, Observation, TenantRecord, TenantState},
    turns::Turns,
};

/// How many removals are remembered for watchers that resume with
/// `since_revision`.
pub(crate) const TOMBSTONES_KEPT: usize = 10_000;

/// What a poll of SuperOffice's state API produced, as the store applies it.
#[derive(Debug, Clone, PartialEq)]
pub enum PollResult {
    /// SuperOffice answered with the tenant's state.
    Observed(Observation),
    /// SuperOffice does not know the tenant (404, or state Unknown).
    NotFound,
    /// SuperOffice could not be reached or answered with an error.
    Failed(String),
}

/// How fresh a record is, apart from what it says: what a confirming poll
/// moves without a revision.
#[derive(Debug, Clone, PartialEq)]
pub struct Freshness {
    pub observed_at: SystemTime,
    pub valid_until: Option<SystemTime>,
    pub last_error: String,
}

/// The outcome of one update.
#[derive(Debug, Clone)]
pub struct Applied {
    pub record: Arc<TenantRecord>,
    /// Whether the update was a meaningful change (took a revision).
    pub changed: bool,
}

/// What became of a poll's answer.
#[derive(Debug, Clone)]
pub enum PollApplied {
    /// Taken: the record it left in the store.
    Taken(Applied),
    /// Dropped as older news than the tenant's latest notification, which
    /// stands: the record in the store.
    Superseded(Arc<TenantRecord>),
    /// A failure for a tenant that is not tracked: nothing to keep.
    Untracked,
}

impl PollApplied {
    /// The tenant's record in the store after the poll, whether the poll's
    /// answer was taken or not.
    pub fn record(&self) -> Option<&Arc<TenantRecord>> {
        match self {
            PollApplied::Taken(a) => Some(&a.record),
            PollApplied::Superseded(r) => Some(r),
            PollApplied::Untracked => None,
        }
    }

    pub fn taken(self) -> Option<Applied> {
        match self {
            PollApplied::Taken(a) => Some(a),
            _ => None,
        }
    }
}

/// The store: every tracked tenant's latest record.
pub struct Store {
    tenants: DashMap<ContextId, Arc<TenantRecord>>,
    /// The last revision assigned; written only under `order`.
    revision: AtomicU64,
    /// Held (inside a tenant's shard lock) while a revision is assigned,
    /// stored and published, so changes are published in revision order.
    /// It guards every tracked tenant's record by its revision (the same
    /// `Arc` as in `tenants`, replaced under this lock whenever that one
    /// is), so that a snapshot can be read out in revision order a page at
    /// a time instead of collected and sorted whole (the reconnect storm).
    order: Mutex<BTreeMap<u64, Arc<TenantRecord>>>,
    /// Every watcher's inbox, marked in the ordered section.
    fanout: Fanout,
    tombstones: Mutex<VecDeque<(u64, ContextId)>>,
    /// The oldest revision a watcher may resume from and miss nothing: the
    /// revision this store started above, then that of the last removal
    /// it forgot (see `TOMBSTONES_KEPT`).
    resumable_from: AtomicU64,
    closing: CancellationToken,
    /// Turns at sending snapshots of every tenant (`core::turns`).
    snapshot_turns: Arc<Turns>,
    /// How long a notification's implied change holds at most.
    notification_hold: Duration,
    /// Among replicas: false while the store may hold a tenant older than
    /// its revision says (a re-read of the shared log that skipped
    /// overwritten versions), so no heartbeat vouches for the revision.
    /// Alone, always true.
    consistent: std::sync::atomic::AtomicBool,
}

/// How long a notification's implied change holds against lagging polls
/// unless `--notification-hold` says otherwise.
pub(crate) const DEFAULT_NOTIFICATION_HOLD: Duration = Duration::from_secs(600);

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    /// A store whose first change takes revision 1.
    pub fn new() -> Self {
        Self::starting_after(0)
    }

    /// A store whose revisions continue above `base`.
    pub fn starting_after(base: u64) -> Self {
        Self {
            tenants: DashMap::new(),
            revision: AtomicU64::new(base),
            order: Mutex::new(BTreeMap::new()),
            fanout: Fanout::default(),
            tombstones: Mutex::new(VecDeque::new()),
            resumable_from: AtomicU64::new(base),
            closing: CancellationToken::new(),
            snapshot_turns: Arc::new(Turns::per_core()),
            notification_hold: DEFAULT_NOTIFICATION_HOLD,
            consistent: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// The longest a notification's implied change holds against lagging
    /// polls; zero: not at all (the poll has the last word at once).
    pub fn with_notification_hold(mut self, hold: Duration) -> Self {
        self.notification_hold = hold;
        self
    }

    /// A store whose revisions start from the clock (microseconds since the
    /// Unix epoch), so that a revision issued after a restart is larger than
    /// any issued before it, and `since_revision` from a client that watched
    /// the previous process still means "after that".
    pub fn starting_from_clock() -> Self {
        let micros = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros();
        Self::starting_after(u64::try_from(micros).unwrap_or(u64::MAX / 2))
    }

    /// The revision of the latest meaningful change. Every change at or
    /// below it has been published to watchers.
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
    }

    pub fn len(&self) -> usize {
        self.tenants.len()
    }

    /// Whether every tenant's record is its latest at or below
    /// `revision()`: what a heartbeat vouches for. Among replicas, false
    /// while a re-read of the shared log has skipped overwritten versions
    /// and not reached the log's end (`cluster::mirror`).
    pub fn consistent(&self) -> bool {
        self.consistent.load(Ordering::Acquire)
    }

    /// Set by the replicas' mirror of the shared log.
    pub fn set_consistent(&self, yes: bool) {
        self.consistent.store(yes, Ordering::Release);
    }

    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }

    pub fn get(&self, ctx: &str) -> Option<Arc<TenantRecord>> {
        self.tenants.get(ctx).map(|r| Arc::clone(r.value()))
    }

    pub fn contains(&self, ctx: &str) -> bool {
        self.tenants.contains_key(ctx)
    }

    /// How many changes were folded into a later one for a slow watcher
    /// (each watcher counts).
    pub fn coalesced(&self) -> u64 {
        self.fanout.coalesced()
    }

    /// Every record, for the state file.
    pub fn snapshot(&self) -> Vec<Arc<TenantRecord>> {
        self.tenants.iter().map(|r| Arc::clone(r.value())).collect()
    }

    /// Puts back a record saved by an earlier process, marked stale until
    /// re-polled. A tenant already known (a lookup or notification that
    /// raced ahead) keeps its newer record.
    pub fn restore(&self, record: TenantRecord) -> Option<Applied> {
        self.update_stamped(&record.context_identifier.clone(), None, |old| match old {
            Some(_) => None,
            None => Some(TenantRecord {
                stale: true,
                ..record
            }),
        })
        .ok()
    }

    /// Counts tracked tenants by state and by staleness, for metrics.
    pub fn count_by_state(&self) -> Vec<(TenantState, bool, usize)> {
        let mut counts = HashMap::new();
        for r in self.tenants.iter() {
            *counts.entry((r.state, r.stale)).or_insert(0usize) += 1;
        }
        counts.into_iter().map(|((s, st), n)| (s, st, n)).collect()
    }

    /// The one update path: `f` computes the new record from the old one
    /// (or declines with `None`); a meaningful difference takes the next
    /// revision and is published.
    fn update(
        &self,
        ctx: &ContextId,
        now: SystemTime,
        f: impl FnOnce(Option<&TenantRecord>) -> Option<TenantRecord>,
    ) -> Option<Applied> {
        self.update_stamped(ctx, Some(now), f).ok()
    }

    /// As `update`, returning the record that stays when `f` declines
    /// (`Err`, `None` when there is none); with `changed_at: None` a change
    /// keeps the `changed_at` that `f` gave it (a record restored from the
    /// state file).
    fn update_stamped(
        &self,
        ctx: &ContextId,
        changed_at: Option<SystemTime>,
        f: impl FnOnce(Option<&TenantRecord>) -> Option<TenantRecord>,
    ) -> Result<Applied, Option<Arc<TenantRecord>>> {
        let entry = self.tenants.entry(ctx.clone());
        let old = match &entry {
            dashmap::Entry::Occupied(o) => Some(Arc::clone(o.get())),
            dashmap::Entry::Vacant(_) => None,
        };
        let Some(new) = f(old.as_deref()) else {
            return Err(old);
        };
        let (new, changed) = apply::settle(old.as_deref(), new, changed_at);
        let store = |entry: dashmap::Entry<'_, ContextId, Arc<TenantRecord>>,
                     record: &Arc<TenantRecord>| match entry {
            dashmap::Entry::Occupied(mut o) => {
                o.insert(Arc::clone(record));
            }
            dashmap::Entry::Vacant(v) => {
                v.insert(Arc::clone(record));
            }
        };
        if !changed {
            // A refresh (observed_at, valid_until, error text): no revision,
            // no wake-up.
            let record = Arc::new(new);
            self.order
                .lock()
                .expect("order lock")
                .insert(record.revision, Arc::clone(&record));
            store(entry, &record);
            return Ok(Applied { record, changed });
        }
        let mut new = new;
        let mut order = self.order.lock().expect("order lock");
        new.revision = self.revision.load(Ordering::Relaxed) + 1;
        if let Some(old) = &old {
            order.remove(&old.revision);
        }
        let record = Arc::new(new);
        order.insert(record.revision, Arc::clone(&record));
        store(entry, &record);
        self.fanout.publish(ctx, Slot::Present(Arc::clone(&record)));
        self.revision.store(record.revision, Ordering::Release);
        Ok(Applied { record, changed })
    }

    /// Takes a record from the replicas' shared log, where it was written
    /// at `record.revision` (the log's sequence). The mirror hands records
    /// over in the log's order, so the store's revision stays the log's;
    /// one at or below the tenant's revision is a repeat and is ignored.
    /// Returns whether it was taken.
    pub fn apply_replicated(&self, record: TenantRecord) -> bool {
        let ctx = record.context_identifier.clone();
        let entry = self.tenants.entry(ctx.clone());
        let mut order = self.order.lock().expect("order lock");
        if let dashmap::Entry::Occupied(o) = &entry {
            if o.get().revision >= record.revision {
                return false;
            }
            order.remove(&o.get().revision);
        }
        let record = Arc::new(record);
        order.insert(record.revision, Arc::clone(&record));
        entry.insert(Arc::clone(&record));
        self.fanout
            .publish(&ctx, Slot::Present(Arc::clone(&record)));
        self.revision.fetch_max(record.revision, Ordering::Release);
        true
    }

    /// Takes a removal from the replicas' shared log (a delete marker at
    /// `revision`): watchers are told, and it is remembered for those that
    /// resume, even when this store never held the tenant.
    pub fn remove_replicated(&self, ctx: &ContextId, revision: u64) {
        let entry = self.tenants.entry(ctx.clone());
        let mut order = self.order.lock().expect("order lock");
        if let dashmap::Entry::Occupied(o) = entry {
            if o.get().revision > revision {
                return;
            }
            order.remove(&o.remove().revision);
        }
        self.remember_removal(ctx, revision);
        self.fanout.publish(ctx, Slot::Removed(revision));
        self.revision.fetch_max(revision, Ordering::Release);
    }

    /// Moves the store's revision up to `revision` with nothing to publish
    /// (a record the log holds but this version cannot read), so that the
    /// revision still says how far the log has been read.
    pub fn skip_to(&self, revision: u64) {
        let _order = self.order.lock().expect("order lock");
        self.revision.fetch_max(revision, Ordering::Release);
    }

    /// A poll that confirmed what the record says, made by another replica:
    /// its freshness moves (`observed_at`, `valid_until`, the error text),
    /// no revision, nobody woken. Older news than the record holds is
    /// ignored.
    pub fn refresh(&self, ctx: &ContextId, seen: &Freshness) -> bool {
        let Some(mut r) = self.tenants.get_mut(ctx) else {
            return false;
        };
        if r.observed_at >= seen.observed_at {
            return false;
        }
        let mut new = TenantRecord::clone(&r);
        new.observed_at = seen.observed_at;
        new.valid_until = seen.valid_until;
        new.last_error.clone_from(&seen.last_error);
        let new = Arc::new(new);
        self.order
            .lock()
            .expect("order lock")
            .insert(new.revision, Arc::clone(&new));
        *r = new;
        true
    }

    /// Forgets a tenant. Returns the revision of the removal, or `None` if
    /// it was not tracked.
    pub fn remove(&self, ctx: &ContextId) -> Option<u64> {
        self.remove_if(ctx, |_| true)
    }

    /// Forgets a tenant if `keep_not` holds for its record, decided under
    /// the tenant's lock so that no update can slip in between.
    pub fn remove_if(
        &self,
        ctx: &ContextId,
        keep_not: impl FnOnce(&TenantRecord) -> bool,
    ) -> Option<u64> {
        let entry = self.tenants.entry(ctx.clone());
        let dashmap::Entry::Occupied(o) = entry else {
            return None;
        };
        if !keep_not(o.get()) {
            return None;
        }
        let mut order = self.order.lock().expect("order lock");
        let revision = self.revision.load(Ordering::Relaxed) + 1;
        order.remove(&o.remove().revision);
        self.remember_removal(ctx, revision);
        self.fanout.publish(ctx, Slot::Removed(revision));
        self.revision.store(revision, Ordering::Release);
        Some(revision)
    }

    /// Keeps a removal for watchers that resume; called in the ordered
    /// section.
    fn remember_removal(&self, ctx: &ContextId, revision: u64) {
        let mut t = self.tombstones.lock().expect("tombstones lock");
        t.push_back((revision, ctx.clone()));
        while t.len() > TOMBSTONES_KEPT {
            if let Some((forgotten, _)) = t.pop_front() {
                self.resumable_from.fetch_max(forgotten, Ordering::Relaxed);
            }
        }
    }

    /// The oldest `since_revision` a watcher may resume from and be told
    /// every removal since: below it, this store started later (a restart)
    /// or has forgotten a removal.
    pub fn resumable_from(&self) -> u64 {
        self.resumable_from.load(Ordering::Relaxed)
    }

    /// The revision at which `ctx` was last removed, if still remembered.
    pub fn removed_at(&self, ctx: &ContextId) -> Option<u64> {
        let t = self.tombstones.lock().expect("tombstones lock");
        t.iter().rev().find(|(_, c)| c == ctx).map(|(rev, _)| *rev)
    }

    /// Tracks `ctx` as UNKNOWN (SuperOffice does not know it) unless it is
    /// already tracked: an answer that raced ahead is never overwritten.
    pub fn track_unknown(&self, ctx: &ContextId, now: SystemTime) -> Option<Applied> {
        self.update(ctx, now, |old| match old {
            Some(_) => None,
            None => Some(TenantRecord::unknown(ctx, now)),
        })
    }

    /// As `track_unknown`, for a tenant not known yet because its first
    /// fetch failed: stale, with the failure.
    pub fn track_failed(&self, ctx: &ContextId, now: SystemTime, error: String) -> Option<Applied> {
        self.update(ctx, now, |old| match old {
            Some(_) => None,
            None => Some(TenantRecord::unknown(ctx, now).failed(error)),
        })
    }

    /// Every record whose revision is in `(since, through]`, in revision
    /// order: what tests compare snapshots and the index with.
    #[cfg(test)]
    pub(crate) fn records_between(&self, since: u64, through: u64) -> Vec<Arc<TenantRecord>> {
        let mut out = Vec::new();
        let mut after = since;
        while let Some(next) = self.records_in_order(after, through, 1024, &mut out) {
            after = next;
        }
        out
    }

    /// Appends to `out` at most `limit` records whose revision is in
    /// `(after, through]`, in revision order; returns the revision to read
    /// on after, or `None` when none is left.
    ///
    /// A snapshot reads its records a page at a time with this: the order
    /// lock is held only to clone a page's `Arc`s, so writers wait
    /// microseconds, and a stream holds one page, not every record. A
    /// record that changes after its page was read takes a revision above
    /// the store's, which a watcher's floor (`through`) never exceeds, so
    /// it is left to the watcher's inbox.
    pub fn records_in_order(
        &self,
        after: u64,
        through: u64,
        limit: usize,
        out: &mut Vec<Arc<TenantRecord>>,
    ) -> Option<u64> {
        if after >= through || limit == 0 {
            return None;
        }
        let start = out.len();
        out.extend(
            self.order
                .lock()
                .expect("order lock")
                .range(after + 1..=through)
                .take(limit)
                .map(|(_, r)| Arc::clone(r)),
        );
        match out.last() {
            Some(last) if out.len() - start == limit => Some(last.revision),
            _ => None,
        }
    }

    /// Removals after `since` that are still remembered.
    pub fn removed_since(&self, since: u64) -> Vec<(u64, ContextId)> {
        let t = self.tombstones.lock().expect("tombstones lock");
        t.iter().filter(|(rev, _)| *rev > since).cloned().collect()
    }

    /// The number of tenants watched by name and of watchers of every
    /// tenant.
    pub fn watcher_counts(&self) -> (usize, usize) {
        self.fanout.counts()
    }

    /// Registers a watcher of `names` (of every tenant, when empty) and
    /// returns it with the store revision at registration. Done inside the
    /// ordered section: every change at or below that revision is in the
    /// store, and every change above it will be marked in the watcher's
    /// inbox, so a snapshot of records at or below it followed by the inbox
    /// misses nothing and repeats nothing. Dropping the watcher unregisters
    /// it.
    pub fn register_watcher(self: &Arc<Self>, names: Vec<ContextId>) -> Watcher {
        let _order = self.order.lock().expect("order lock");
        let inbox = self.fanout.register(&names);
        Watcher::new(
            Arc::clone(self),
            inbox,
            names,
            self.revision.load(Ordering::Relaxed),
        )
    }

    /// Whether a stream watches `ctx` by name now (watchers of every tenant
    /// do not count).
    pub fn watched_by_name(&self, ctx: &ContextId) -> bool {
        self.fanout.watched_by_name(ctx)
    }

    /// The tracked tenants SuperOffice does not know that a stream of this
    /// process watches by name (what keeps them tracked).
    pub fn unknown_watched_by_name(&self) -> Vec<ContextId> {
        self.fanout
            .named()
            .into_iter()
            .filter(|c| self.get(c).is_some_and(|r| r.state == TenantState::Unknown))
            .collect()
    }

    pub(super) fn fanout(&self) -> &Fanout {
        &self.fanout
    }

    /// Starts the end of every watch stream (server shutdown).
    pub fn close(&self) {
        self.closing.cancel();
    }

    pub fn closing(&self) -> CancellationToken {
        self.closing.clone()
    }

    pub(crate) fn snapshot_turns(&self) -> &Arc<Turns> {
        &self.snapshot_turns
    }
}

pub(crate) mod apply;
mod page;

#[cfg(test)]
pub(crate) mod tests;
