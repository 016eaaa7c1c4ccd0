//! The fan-out of changes to watchers: one inbox per watcher, holding each
//! changed tenant's newest slot.
//!
//! Invariants:
//! - Fan-out never waits on a reader. An inbox holds at most one slot per
//!   tenant however slow its reader is, and always each tenant's latest.
//! - The store marks inboxes only inside its ordered section, so every
//!   inbox is marked in revision order; watchers register in that section
//!   too (`Store::register_watcher`). So whatever a watcher takes from its
//!   inbox is, for every tenant it watches, its latest change up to the
//!   highest revision taken: sent sorted, the stream stays in revision
//!   order and a client may resume from any revision it saw.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use dashmap::DashMap;
use futures_util::task::AtomicWaker;

use crate::core::{
    store::Store,
    tenant::{ContextId, TenantRecord},
};

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

/// Every watcher's inbox: by tenant for watchers of named tenants, in one
/// list for watchers of every tenant.
#[derive(Default)]
pub(super) struct Fanout {
    /// Created when a tenant is first watched by name and dropped when its
    /// last watcher leaves.
    named: DashMap<ContextId, Vec<Arc<Inbox>>>,
    watch_all: RwLock<Vec<Arc<Inbox>>>,
    /// Changes folded into a later one in a watcher's inbox.
    coalesced: AtomicU64,
}

impl Fanout {
    /// Puts `ctx`'s new slot in the inbox of every watcher of it. Called
    /// only in the store's ordered section, so every inbox is marked in
    /// revision order.
    pub(super) fn publish(&self, ctx: &ContextId, slot: Slot) {
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

    /// A new inbox for a watcher of `names` (every tenant when empty).
    /// Called only in the store's ordered section.
    pub(super) fn register(&self, names: &[ContextId]) -> Arc<Inbox> {
        let inbox = Arc::new(Inbox::default());
        if names.is_empty() {
            self.watch_all
                .write()
                .expect("watch-all lock")
                .push(Arc::clone(&inbox));
        } else {
            for n in names {
                self.named
                    .entry(n.clone())
                    .or_default()
                    .push(Arc::clone(&inbox));
            }
        }
        inbox
    }

    fn unregister(&self, names: &[ContextId], inbox: &Arc<Inbox>) {
        if names.is_empty() {
            let mut all = self.watch_all.write().expect("watch-all lock");
            all.retain(|i| !Arc::ptr_eq(i, inbox));
            return;
        }
        for n in names {
            if let Some(mut inboxes) = self.named.get_mut(n) {
                inboxes.retain(|i| !Arc::ptr_eq(i, inbox));
            }
            self.named.remove_if(n, |_, inboxes| inboxes.is_empty());
        }
    }

    /// The number of tenants watched by name and of watchers of every
    /// tenant.
    pub(super) fn counts(&self) -> (usize, usize) {
        (
            self.named.len(),
            self.watch_all.read().expect("watch-all lock").len(),
        )
    }

    pub(super) fn watched_by_name(&self, ctx: &ContextId) -> bool {
        self.named.contains_key(ctx)
    }

    pub(super) fn named(&self) -> Vec<ContextId> {
        self.named.iter().map(|e| e.key().clone()).collect()
    }

    pub(super) fn coalesced(&self) -> u64 {
        self.coalesced.load(Ordering::Relaxed)
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
pub(super) struct Inbox {
    dirty: Mutex<HashMap<ContextId, Slot>>,
    /// The one reader's waker (an inbox has one stream): registering and
    /// waking it takes no lock and no list of waiters, as a `Notify` does.
    waker: AtomicWaker,
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
            self.waker.wake();
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
    pub(super) fn new(
        store: Arc<Store>,
        inbox: Arc<Inbox>,
        names: Vec<ContextId>,
        floor: u64,
    ) -> Self {
        Self {
            store,
            inbox,
            names,
            floor,
        }
    }

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
        std::future::poll_fn(|cx| self.poll_changed(cx, into)).await
    }

    /// `changed` for a hand-written stream: ready once something is taken
    /// into `into`; otherwise the task is woken by the next mark. One task
    /// at a time may wait on a watcher.
    pub fn poll_changed(
        &self,
        cx: &mut std::task::Context<'_>,
        into: &mut HashMap<ContextId, Slot>,
    ) -> std::task::Poll<()> {
        // Registered before taking: a mark made after the take wakes it.
        self.inbox.waker.register(cx.waker());
        self.inbox.take_into(into);
        if into.is_empty() {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    }

    /// Moves whatever is marked so far into `into`, without waiting.
    pub fn take_now(&self, into: &mut HashMap<ContextId, Slot>) {
        self.inbox.take_into(into);
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.store.fanout().unregister(&self.names, &self.inbox);
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::core::store::tests::{ctx, running};

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
                if let Some(r) = store.get(c)
                    && r.revision <= high
                {
                    assert_eq!(view.get(c), Some(&r.revision), "{c} in round {round}");
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
    }
}
