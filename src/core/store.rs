//! The in-memory store of tenant records and its change fan-out.
//!
//! Invariants:
//! - Every meaningful change takes the next store-wide revision; a tenant's
//!   revision only grows, and revisions of all tenants share one order.
//! - Revisions are assigned, stored and published in one ordered section,
//!   so `revision()` never names a change a watcher could still miss: every
//!   change at or below it is in the map and in every watcher's channel or
//!   inbox.
//! - An update that changes nothing meaningful refreshes `observed_at` and
//!   `valid_until` and wakes nobody.
//! - Fan-out never waits on a reader. Each watcher has an inbox that holds
//!   only the *names* of watched tenants that changed, each with the newest
//!   revision marked, so a slow reader costs at most one entry per tenant
//!   and always ends with each tenant's latest record.
//! - Marks reach every inbox in revision order (they are made in the
//!   ordered section), and a watcher registers inside that section too. So
//!   whatever a watcher takes from its inbox holds every change of its
//!   tenants up to the highest revision taken: the watch stream sends them
//!   in revision order and a client may resume from any revision it saw.
//! - The store knows nothing of tonic, axum or reqwest.

use std::{
    collections::{BinaryHeap, HashMap, VecDeque},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::SystemTime,
};

use dashmap::DashMap;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::core::tenant::{
    ChangeSource, ChangeType, ContextId, NotificationInfo, Observation, TenantRecord, TenantState,
    moved_url,
};

/// How many removals are remembered for watchers that resume with
/// `since_revision`.
const TOMBSTONES_KEPT: usize = 10_000;

/// The latest word on one tenant, as a watcher's inbox holds it.
#[derive(Debug, Clone, PartialEq)]
pub enum Slot {
    Present(Arc<TenantRecord>),
    /// Forgotten at this revision.
    Removed(u64),
}

impl Slot {
    pub fn revision(&self) -> u64 {
        match self {
            Slot::Present(r) => r.revision,
            Slot::Removed(rev) => *rev,
        }
    }
}

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

/// The outcome of one update.
#[derive(Debug, Clone)]
pub struct Applied {
    pub record: Arc<TenantRecord>,
    /// Whether the update was a meaningful change (took a revision).
    pub changed: bool,
}

/// The store: every tracked tenant's latest record.
pub struct Store {
    tenants: DashMap<ContextId, Arc<TenantRecord>>,
    /// The last revision assigned; written only under `order`.
    revision: AtomicU64,
    /// Held (inside a tenant's shard lock) while a revision is assigned,
    /// stored and published, so changes are published in revision order.
    order: Mutex<()>,
    /// Inboxes of watchers of a tenant by name, created when the tenant is
    /// first watched and dropped when its last watcher leaves.
    named: DashMap<ContextId, Vec<Arc<Inbox>>>,
    /// Inboxes of watchers of every tenant.
    watch_all: RwLock<Vec<Arc<Inbox>>>,
    tombstones: Mutex<VecDeque<(u64, ContextId)>>,
    closing: CancellationToken,
    /// Changes folded into a later one in a watcher's inbox.
    coalesced: AtomicU64,
}

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
            order: Mutex::new(()),
            named: DashMap::new(),
            watch_all: RwLock::new(Vec::new()),
            tombstones: Mutex::new(VecDeque::new()),
            closing: CancellationToken::new(),
            coalesced: AtomicU64::new(0),
        }
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
        self.coalesced.load(Ordering::Relaxed)
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
    }

    /// Counts tracked tenants by state and by staleness, for metrics.
    pub fn count_by_state(&self) -> Vec<(TenantState, bool, usize)> {
        let mut counts = HashMap::new();
        for r in self.tenants.iter() {
            *counts.entry((r.state, r.stale)).or_insert(0usize) += 1;
        }
        counts.into_iter().map(|((s, st), n)| (s, st, n)).collect()
    }

    /// Applies what a poll of SuperOffice produced. A failure for a tenant
    /// that is not in the store changes nothing and returns `None`: the
    /// network failing never creates or replaces a state.
    pub fn apply_poll(
        &self,
        ctx: &ContextId,
        result: PollResult,
        now: SystemTime,
    ) -> Option<Applied> {
        self.apply_poll_asked_at(ctx, result, now, now)
    }

    /// As `apply_poll`, for a request sent at `asked_at`. An answer to a
    /// request sent before the tenant's latest notification arrived is
    /// older news than that notification and is dropped (`None`): the
    /// notification's confirming poll, sent after it, has the last word.
    pub fn apply_poll_asked_at(
        &self,
        ctx: &ContextId,
        result: PollResult,
        asked_at: SystemTime,
        now: SystemTime,
    ) -> Option<Applied> {
        self.update(ctx, now, |old| {
            if old
                .and_then(|o| o.last_notification.as_ref())
                .is_some_and(|n| n.received_at > asked_at)
            {
                return None;
            }
            // A change made here is the poll's doing; when nothing
            // meaningful changes, `update` keeps the old source. Of `old`,
            // only the notification is carried over, and, when SuperOffice
            // does not know the tenant, its last known addresses.
            let fresh = TenantRecord {
                last_notification: old.and_then(|o| o.last_notification.clone()),
                ..Self::blank(ctx, now)
            };
            match result {
                PollResult::Observed(o) => Some(TenantRecord {
                    state: o.state,
                    endpoint: o.endpoint,
                    api: o.api,
                    version: o.version,
                    valid_until: o.valid_until,
                    ..fresh
                }),
                // A deleted tenant that SuperOffice no longer knows is
                // still deleted: it stays DELETED until it is forgotten.
                PollResult::NotFound => Some(match old {
                    Some(o) => TenantRecord {
                        state: match o.state {
                            TenantState::Deleted => TenantState::Deleted,
                            _ => TenantState::Unknown,
                        },
                        endpoint: o.endpoint.clone(),
                        api: o.api.clone(),
                        version: o.version.clone(),
                        ..fresh
                    },
                    None => fresh,
                }),
                PollResult::Failed(error) => {
                    let old = old?;
                    let stale = old.valid_until.is_none_or(|v| v <= now);
                    Some(TenantRecord {
                        stale,
                        last_error: error,
                        source: ChangeSource::Poll,
                        ..old.clone()
                    })
                }
            }
        })
    }

    /// Applies a verified state-change notification: records it, and sets
    /// the state it implies at once (Upgrade: OfflineMaintenance is coming;
    /// Suspend; Delete; Move: the new endpoint host). Resume and
    /// BackupRestored leave the state to the confirming poll. A tenant not
    /// yet tracked is added. The poll that follows has the last word.
    pub fn apply_notification(
        &self,
        ctx: &ContextId,
        note: NotificationInfo,
        now: SystemTime,
    ) -> Applied {
        self.update(ctx, now, |old| {
            let mut r = old.cloned().unwrap_or_else(|| Self::blank(ctx, now));
            let implied = match note.change_type {
                ChangeType::Upgrade => Some(TenantState::OfflineMaintenance),
                ChangeType::Suspend => Some(TenantState::Suspended),
                ChangeType::Delete => Some(TenantState::Deleted),
                _ => None,
            };
            if let Some(state) = implied {
                if state != r.state {
                    // The last poll's ValidUntil vouched for the old state,
                    // not this one.
                    r.valid_until = None;
                }
                r.state = state;
            }
            if note.change_type == ChangeType::Move {
                r.endpoint = moved_url(&r.endpoint, &note.public_endpoint, ctx, "");
                r.api = moved_url(&r.api, &note.public_endpoint, ctx, "/api");
            }
            r.source = ChangeSource::Notification;
            r.last_notification = Some(note);
            Some(r)
        })
        .expect("a notification always makes a record")
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
        self.update_stamped(ctx, Some(now), f)
    }

    /// As `update`; with `changed_at: None` a change keeps the
    /// `changed_at` that `f` gave it (a record restored from the state file).
    fn update_stamped(
        &self,
        ctx: &ContextId,
        changed_at: Option<SystemTime>,
        f: impl FnOnce(Option<&TenantRecord>) -> Option<TenantRecord>,
    ) -> Option<Applied> {
        let entry = self.tenants.entry(ctx.clone());
        let old = match &entry {
            dashmap::Entry::Occupied(o) => Some(Arc::clone(o.get())),
            dashmap::Entry::Vacant(_) => None,
        };
        let mut new = f(old.as_deref())?;
        let changed = old.as_deref().is_none_or(|o| o.meaningfully_differs(&new));
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
            if let Some(o) = &old {
                new.revision = o.revision;
                new.changed_at = o.changed_at;
                new.source = o.source;
            }
            let record = Arc::new(new);
            store(entry, &record);
            return Some(Applied { record, changed });
        }
        let _order = self.order.lock().expect("order lock");
        new.revision = self.revision.load(Ordering::Relaxed) + 1;
        if let Some(at) = changed_at {
            new.changed_at = at;
        }
        let record = Arc::new(new);
        store(entry, &record);
        self.publish(ctx, Slot::Present(Arc::clone(&record)));
        self.revision.store(record.revision, Ordering::Release);
        Some(Applied { record, changed })
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
        let _order = self.order.lock().expect("order lock");
        let revision = self.revision.load(Ordering::Relaxed) + 1;
        o.remove();
        {
            let mut t = self.tombstones.lock().expect("tombstones lock");
            t.push_back((revision, ctx.clone()));
            while t.len() > TOMBSTONES_KEPT {
                t.pop_front();
            }
        }
        self.publish(ctx, Slot::Removed(revision));
        self.revision.store(revision, Ordering::Release);
        Some(revision)
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
            None => Some(Self::blank(ctx, now)),
        })
    }

    pub(crate) fn blank(ctx: &ContextId, now: SystemTime) -> TenantRecord {
        TenantRecord {
            context_identifier: ctx.clone(),
            state: TenantState::Unknown,
            endpoint: String::new(),
            api: String::new(),
            version: String::new(),
            valid_until: None,
            observed_at: now,
            revision: 0,
            changed_at: now,
            source: ChangeSource::Poll,
            last_notification: None,
            stale: false,
            last_error: String::new(),
        }
    }

    /// Puts `ctx`'s new slot in the inbox of every watcher of it. Called
    /// in the ordered section, so every inbox is marked in revision order.
    fn publish(&self, ctx: &ContextId, slot: Slot) {
        let mut coalesced = 0;
        if let Some(inboxes) = self.named.get(ctx) {
            for inbox in inboxes.iter() {
                coalesced += u64::from(inbox.mark(ctx, &slot));
            }
        }
        let all = self.watch_all.read().expect("watch-all lock");
        for inbox in all.iter() {
            coalesced += u64::from(inbox.mark(ctx, &slot));
        }
        if coalesced > 0 {
            self.coalesced.fetch_add(coalesced, Ordering::Relaxed);
        }
    }

    /// A page of tenants ordered by identifier, after `after`, in `states`
    /// (all when empty). Returns the page and whether more follow.
    pub fn list(
        &self,
        after: &str,
        states: &[TenantState],
        page_size: usize,
    ) -> (Vec<Arc<TenantRecord>>, bool) {
        // A bounded max-heap keeps the page_size smallest identifiers in
        // one pass: O(n log k), no full sort of every tenant per page.
        let mut heap: BinaryHeap<HeapItem> = BinaryHeap::with_capacity(page_size + 1);
        let mut more = false;
        for r in self.tenants.iter() {
            if r.key().as_str() <= after || (!states.is_empty() && !states.contains(&r.state)) {
                continue;
            }
            if heap.len() < page_size {
                heap.push(HeapItem(Arc::clone(r.value())));
            } else if let Some(top) = heap.peek() {
                more = true;
                if r.key() < &top.0.context_identifier {
                    heap.pop();
                    heap.push(HeapItem(Arc::clone(r.value())));
                }
            }
        }
        let page = heap.into_sorted_vec().into_iter().map(|h| h.0).collect();
        (page, more)
    }

    /// Every record whose revision is in `(since, through]`, in no order.
    pub fn records_between(&self, since: u64, through: u64) -> Vec<Arc<TenantRecord>> {
        self.tenants
            .iter()
            .filter(|r| r.revision > since && r.revision <= through)
            .map(|r| Arc::clone(r.value()))
            .collect()
    }

    /// Removals after `since` that are still remembered.
    pub fn removed_since(&self, since: u64) -> Vec<(u64, ContextId)> {
        let t = self.tombstones.lock().expect("tombstones lock");
        t.iter().filter(|(rev, _)| *rev > since).cloned().collect()
    }

    /// The number of tenants watched by name and of watchers of every
    /// tenant.
    pub fn watcher_counts(&self) -> (usize, usize) {
        (
            self.named.len(),
            self.watch_all.read().expect("watch-all lock").len(),
        )
    }

    /// Registers a watcher of `names` (of every tenant, when empty) and
    /// returns it with the store revision at registration. Done inside the
    /// ordered section: every change at or below that revision is in the
    /// store, and every change above it will be marked in the watcher's
    /// inbox, so a snapshot of records at or below it followed by the inbox
    /// misses nothing and repeats nothing. Dropping the watcher unregisters
    /// it.
    pub fn register_watcher(self: &Arc<Self>, names: Vec<ContextId>) -> Watcher {
        let inbox = Arc::new(Inbox::default());
        let _order = self.order.lock().expect("order lock");
        if names.is_empty() {
            self.watch_all
                .write()
                .expect("watch-all lock")
                .push(Arc::clone(&inbox));
        } else {
            for n in &names {
                self.named
                    .entry(n.clone())
                    .or_default()
                    .push(Arc::clone(&inbox));
            }
        }
        Watcher {
            store: Arc::clone(self),
            floor: self.revision.load(Ordering::Relaxed),
            inbox,
            names,
        }
    }

    /// Starts the end of every watch stream (server shutdown).
    pub fn close(&self) {
        self.closing.cancel();
    }

    pub fn closing(&self) -> CancellationToken {
        self.closing.clone()
    }
}

struct HeapItem(Arc<TenantRecord>);
impl PartialEq for HeapItem {
    fn eq(&self, o: &Self) -> bool {
        self.0.context_identifier == o.0.context_identifier
    }
}
impl Eq for HeapItem {}
impl PartialOrd for HeapItem {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for HeapItem {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.context_identifier.cmp(&o.0.context_identifier)
    }
}

/// The watched tenants that changed since a watcher last looked, each with
/// its newest slot. A map by name, so its size is bounded by the number of
/// tenants watched however slow the reader is.
///
/// It holds the slots themselves, not only names: what a reader takes is
/// exactly what was marked, never a record that changed after (whose own
/// mark the reader has not taken yet and would then send out of order).
#[derive(Default)]
struct Inbox {
    dirty: Mutex<HashMap<ContextId, Slot>>,
    notify: Notify,
}

impl Inbox {
    /// Marks `ctx` changed; returns whether an earlier change of it was
    /// still waiting (and is now folded into this one).
    fn mark(&self, ctx: &ContextId, slot: &Slot) -> bool {
        let (was_empty, coalesced) = {
            let mut dirty = self.dirty.lock().expect("inbox lock");
            let was_empty = dirty.is_empty();
            // Marks come in revision order: the new slot is the newest.
            let coalesced = dirty.insert(ctx.clone(), slot.clone()).is_some();
            (was_empty, coalesced)
        };
        if was_empty {
            self.notify.notify_one();
        }
        coalesced
    }

    /// Swaps what is marked into `into` (which must be empty). The two maps
    /// trade places, so each keeps its capacity and a steady stream of
    /// changes allocates nothing.
    fn take_into(&self, into: &mut HashMap<ContextId, Slot>) {
        debug_assert!(into.is_empty());
        std::mem::swap(&mut *self.dirty.lock().expect("inbox lock"), into);
    }
}

/// A registered watcher of some tenants or of all of them; unregisters on
/// drop.
pub struct Watcher {
    store: Arc<Store>,
    inbox: Arc<Inbox>,
    /// Empty for a watcher of every tenant.
    names: Vec<ContextId>,
    floor: u64,
}

impl Watcher {
    /// The store revision when the watcher registered: every change above
    /// it is marked in the inbox, none at or below it is.
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// The tenants watched; empty for every tenant.
    pub fn names(&self) -> &[ContextId] {
        &self.names
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Waits until some watched tenant changed, then moves every tenant
    /// that did, with its newest slot, into `into` (which must be empty).
    ///
    /// Marks are made in revision order, so what is taken is, for each
    /// watched tenant, its latest change up to the highest revision taken.
    pub async fn changed(&self, into: &mut HashMap<ContextId, Slot>) {
        loop {
            let notified = self.inbox.notify.notified();
            self.inbox.take_into(into);
            if !into.is_empty() {
                return;
            }
            notified.await;
        }
    }

    /// Moves whatever is marked so far into `into`, without waiting.
    pub fn take_now(&self, into: &mut HashMap<ContextId, Slot>) {
        self.inbox.take_into(into);
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if self.names.is_empty() {
            let mut all = self.store.watch_all.write().expect("watch-all lock");
            all.retain(|i| !Arc::ptr_eq(i, &self.inbox));
            return;
        }
        for n in &self.names {
            if let Some(mut inboxes) = self.store.named.get_mut(n) {
                inboxes.retain(|i| !Arc::ptr_eq(i, &self.inbox));
            }
            self.store
                .named
                .remove_if(n, |_, inboxes| inboxes.is_empty());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ctx(s: &str) -> ContextId {
        ContextId::parse(s).unwrap()
    }

    fn running(endpoint: &str) -> PollResult {
        PollResult::Observed(Observation {
            state: TenantState::Running,
            endpoint: endpoint.into(),
            api: format!("{endpoint}/api"),
            version: "v1".into(),
            valid_until: Some(SystemTime::now() + Duration::from_secs(60)),
        })
    }

    #[test]
    fn a_confirming_poll_refreshes_without_a_revision() {
        let store = Store::new();
        let c = ctx("Cust1");
        let t0 = SystemTime::now();
        let a = store.apply_poll(&c, running("https://sod2"), t0).unwrap();
        assert!(a.changed);
        assert_eq!(a.record.revision, 1);
        let t1 = t0 + Duration::from_secs(5);
        let b = store.apply_poll(&c, running("https://sod2"), t1).unwrap();
        assert!(!b.changed);
        assert_eq!(b.record.revision, 1);
        assert_eq!(b.record.observed_at, t1);
        assert_eq!(b.record.changed_at, t0);
        let c2 = store.apply_poll(&c, running("https://sod3"), t1).unwrap();
        assert!(c2.changed, "an endpoint move is meaningful");
        assert_eq!(c2.record.revision, 2);
        assert_eq!(store.revision(), 2);
    }

    #[test]
    fn revisions_after_a_restart_are_above_those_before_it() {
        let before = Store::starting_from_clock();
        let c = ctx("Cust1");
        for i in 0..1000 {
            before.apply_poll(&c, running(&format!("https://{i}")), SystemTime::now());
        }
        let after = Store::starting_from_clock();
        let a = after
            .apply_poll(&c, running("https://x"), SystemTime::now())
            .unwrap();
        assert!(
            a.record.revision > before.revision(),
            "{} <= {}",
            a.record.revision,
            before.revision()
        );
    }

    #[test]
    fn track_unknown_never_overwrites_a_known_tenant() {
        let store = Store::new();
        let c = ctx("Cust1");
        store.apply_poll(&c, running("https://a"), SystemTime::now());
        assert!(store.track_unknown(&c, SystemTime::now()).is_none());
        assert_eq!(store.get("Cust1").unwrap().state, TenantState::Running);
        let u = store
            .track_unknown(&ctx("Cust2"), SystemTime::now())
            .unwrap();
        assert_eq!(u.record.state, TenantState::Unknown);
    }

    #[test]
    fn failures_keep_the_state_and_mark_stale_only_after_valid_until() {
        let store = Store::new();
        let c = ctx("Cust1");
        let now = SystemTime::now();
        assert!(
            store
                .apply_poll(&c, PollResult::Failed("down".into()), now)
                .is_none(),
            "a failure never creates a record"
        );
        store.apply_poll(&c, running("https://sod2"), now).unwrap();
        let a = store
            .apply_poll(&c, PollResult::Failed("timed out".into()), now)
            .unwrap();
        assert!(!a.changed);
        assert!(!a.record.stale);
        assert_eq!(a.record.last_error, "timed out");
        assert_eq!(a.record.state, TenantState::Running);
        let later = now + Duration::from_secs(61);
        let b = store
            .apply_poll(&c, PollResult::Failed("timed out".into()), later)
            .unwrap();
        assert!(b.changed, "turning stale is meaningful");
        assert!(b.record.stale);
        assert_eq!(b.record.state, TenantState::Running);
        let c3 = store
            .apply_poll(&c, running("https://sod2"), later)
            .unwrap();
        assert!(c3.changed && !c3.record.stale && c3.record.last_error.is_empty());
    }

    #[test]
    fn list_pages_in_identifier_order_with_a_state_filter() {
        let store = Store::new();
        let now = SystemTime::now();
        for i in (0..25).rev() {
            let c = ctx(&format!("Cust{i:03}"));
            if i % 5 == 0 {
                store.apply_poll(&c, PollResult::NotFound, now);
            } else {
                store.apply_poll(&c, running("https://x"), now);
            }
        }
        let (p1, more) = store.list("", &[], 10);
        assert!(more);
        let names: Vec<_> = p1
            .iter()
            .map(|r| r.context_identifier.to_string())
            .collect();
        assert_eq!(names[0], "Cust000");
        assert_eq!(names[9], "Cust009");
        let (p3, more) = store.list("Cust019", &[], 10);
        assert!(!more);
        assert_eq!(p3.len(), 5);
        let (unknown, more) = store.list("", &[TenantState::Unknown], 100);
        assert!(!more);
        assert_eq!(unknown.len(), 5);
    }

    #[tokio::test]
    async fn a_named_watcher_hears_only_its_tenants_and_unregisters_on_drop() {
        let store = Arc::new(Store::new());
        let now = SystemTime::now();
        store.apply_poll(&ctx("Cust1"), running("https://a"), now);
        let w = store.register_watcher(vec![ctx("Cust1")]);
        assert_eq!(w.floor(), 1);
        store.apply_poll(&ctx("Cust2"), running("https://b"), now);
        for i in 0..100 {
            store.apply_poll(&ctx("Cust1"), running(&format!("https://{i}")), now);
        }
        let mut marks = HashMap::new();
        w.changed(&mut marks).await;
        assert_eq!(marks.len(), 1, "one entry per tenant, however many changes");
        assert_eq!(marks[&ctx("Cust1")].revision(), 102);
        marks.clear();
        store.remove(&ctx("Cust1"));
        w.changed(&mut marks).await;
        assert_eq!(marks[&ctx("Cust1")], Slot::Removed(103));
        assert_eq!(store.watcher_counts(), (1, 0));
        drop(w);
        assert_eq!(store.watcher_counts(), (0, 0));
    }

    #[tokio::test]
    async fn a_watch_all_inbox_coalesces_and_unregisters_on_drop() {
        let store = Arc::new(Store::new());
        let w = store.register_watcher(Vec::new());
        let now = SystemTime::now();
        for i in 0..1000 {
            let c = ctx(&format!("Cust{}", i % 3));
            store.apply_poll(&c, running(&format!("https://{i}")), now);
        }
        let mut marks = HashMap::new();
        w.changed(&mut marks).await;
        assert_eq!(marks.len(), 3, "one entry per tenant, however many changes");
        assert_eq!(store.coalesced(), 997);
        assert_eq!(store.watcher_counts(), (0, 1));
        drop(w);
        assert_eq!(store.watcher_counts(), (0, 0));
    }

    /// A watcher registering while writers run on other threads: every
    /// change above its floor is marked, none at or below it is, so its
    /// snapshot and its inbox together tell each tenant's latest record.
    #[test]
    fn a_watcher_registering_amid_writes_misses_no_change_and_repeats_none() {
        let store = Arc::new(Store::new());
        let names: Vec<_> = (0..8).map(|i| ctx(&format!("Cust{i}"))).collect();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers: Vec<_> = (0..2)
            .map(|t| {
                let (store, names, stop) = (Arc::clone(&store), names.clone(), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let mut i = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        let c = &names[(i * 3 + t) % names.len()];
                        store.apply_poll(
                            c,
                            running(&format!("https://{t}/{i}")),
                            SystemTime::now(),
                        );
                        i += 1;
                    }
                })
            })
            .collect();
        for round in 0..500 {
            let named = round % 2 == 0;
            let w = store.register_watcher(if named {
                names[..4].to_vec()
            } else {
                Vec::new()
            });
            let floor = w.floor();
            let mut view: HashMap<ContextId, u64> = store
                .records_between(0, floor)
                .into_iter()
                .map(|r| (r.context_identifier.clone(), r.revision))
                .collect();
            std::thread::yield_now();
            let mut marks = HashMap::new();
            w.take_now(&mut marks);
            for (c, slot) in marks.drain() {
                let rev = slot.revision();
                assert!(
                    rev > floor,
                    "a mark at {rev}, at or below the floor {floor}"
                );
                view.insert(c, rev);
            }
            // Whatever is in the store now at or below the highest revision
            // seen must be what the view holds.
            let high = view.values().copied().max().unwrap_or(floor);
            for c in if named { &names[..4] } else { &names[..] } {
                if let Some(r) = store.get(c) {
                    if r.revision <= high {
                        assert_eq!(view.get(c), Some(&r.revision), "{c} in round {round}");
                    }
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
    }

    fn note(change_type: ChangeType, at: SystemTime) -> NotificationInfo {
        NotificationInfo {
            change_type,
            version_name: String::new(),
            file_version: String::new(),
            public_endpoint: String::new(),
            received_at: at,
        }
    }

    #[test]
    fn an_answer_asked_before_a_notification_does_not_undo_it() {
        let store = Store::new();
        let c = ctx("Cust1");
        let t0 = SystemTime::now();
        store.apply_poll(&c, running("https://sod2"), t0);
        let t1 = t0 + Duration::from_secs(1);
        let t2 = t0 + Duration::from_secs(2);
        store.apply_notification(&c, note(ChangeType::Suspend, t1), t1);
        let r = store.get("Cust1").unwrap();
        assert_eq!(r.state, TenantState::Suspended);
        assert_eq!(
            r.valid_until, None,
            "the old ValidUntil vouched for Running"
        );
        // Asked at t0, answered after the notification: older news.
        assert!(
            store
                .apply_poll_asked_at(&c, running("https://sod2"), t0, t2)
                .is_none()
        );
        assert_eq!(store.get("Cust1").unwrap().state, TenantState::Suspended);
        // Asked after it: the poll has the last word.
        let a = store
            .apply_poll_asked_at(&c, running("https://sod2"), t2, t2)
            .unwrap();
        assert_eq!(a.record.state, TenantState::Running);
    }

    #[test]
    fn a_deleted_tenant_superoffice_no_longer_knows_stays_deleted() {
        let store = Store::new();
        let c = ctx("Cust1");
        let t0 = SystemTime::now();
        store.apply_notification(&c, note(ChangeType::Delete, t0), t0);
        let t1 = t0 + Duration::from_secs(1);
        store.apply_poll(&c, PollResult::NotFound, t1);
        assert_eq!(store.get("Cust1").unwrap().state, TenantState::Deleted);
        assert_eq!(
            store.remove_if(&c, |r| r.state == TenantState::Running),
            None
        );
        assert!(
            store
                .remove_if(&c, |r| r.state == TenantState::Deleted)
                .is_some()
        );
        assert!(!store.contains("Cust1"));
    }
}
