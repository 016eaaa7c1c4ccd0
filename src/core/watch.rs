//! Watch streams: a snapshot, a SYNCED marker, then changes, heartbeats and
//! an end on shutdown. Protocol-free: the grpc module maps these events.
//!
//! A stream is a plain `Stream` (no task of its own), so a client that
//! disconnects frees everything the moment tonic drops it.

use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures_util::Stream;
use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::{
    core::backend::LookupError,
    core::tenant::{ContextId, TenantRecord},
    core::{
        fanout::{Slot, Watcher},
        store::Store,
        turns::Place,
    },
};

/// One event of a watch stream.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    /// The `since` asked for is older than this store can replay (it
    /// started later, or forgot a removal since) or is not one of its
    /// revisions: the client drops what it holds; a full snapshot follows.
    /// First in its stream; it carries no revision.
    Reset,
    Snapshot(Arc<TenantRecord>),
    Synced(u64),
    Changed(Arc<TenantRecord>),
    Removed(ContextId, u64),
    Heartbeat(u64),
    /// The server is shutting down; the last event of the stream.
    Closing,
    /// Among replicas: this one has been cut off from the shared log too
    /// long to vouch for what it streams; the last event of the stream
    /// (the client resumes, on another replica, with `since_revision`).
    Detached,
    /// The watched names could not all be tracked (too many unknown ones,
    /// or the shared store refused a write); the last event of the stream.
    Refused(LookupError),
}

/// The learning of a watch's untracked names: resolves when each has an
/// answer or a recorded failure (`core::backend::Tenants::watch`).
pub(crate) type Learning = Pin<Box<dyn Future<Output = Result<(), LookupError>> + Send>>;

struct State {
    watcher: Watcher,
    /// Marks taken from the inbox; kept between rounds for its capacity.
    marks: HashMap<ContextId, Slot>,
    pending: VecDeque<WatchEvent>,
    /// A watch of every tenant's snapshot, still being read out; SYNCED
    /// follows it.
    snapshot: Option<Snapshot>,
    /// Names still being learned: until this resolves, what the inbox
    /// brings goes out as snapshot, and SYNCED waits.
    learning: Option<Learning>,
    heartbeat: Interval,
    closing: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Every change of the watched tenants at or below this revision has
    /// been queued, or is superseded by a later change that will be.
    covered: u64,
    done: bool,
}

/// Opens a watch of `names` (every tenant when empty), with a snapshot of
/// what changed after `since`: `watch_learning` with nothing to learn, the
/// unit tests' shorthand.
///
/// Every event carries a revision at least as large as every event before
/// it, CHANGED and REMOVED strictly larger: the snapshot goes out in
/// revision order, and so does each round of changes taken from the inbox.
/// So any revision the client has seen is a safe `since` to resume from.
#[cfg(test)]
pub(crate) fn watch(
    store: Arc<Store>,
    names: Vec<ContextId>,
    since: u64,
    heartbeat: Duration,
) -> impl Stream<Item = WatchEvent> + Send + 'static {
    watch_learning(store, names, since, heartbeat, None)
}

/// As `watch`, while `learning` tracks names of `names` that were not
/// tracked yet: the stream opens at once, each learned name's record goes
/// out as part of the snapshot, and SYNCED comes once `learning` resolves.
pub(crate) fn watch_learning(
    store: Arc<Store>,
    mut names: Vec<ContextId>,
    since: u64,
    heartbeat: Duration,
    learning: Option<Learning>,
) -> impl Stream<Item = WatchEvent> + Send + 'static {
    // Learning is for names; a watch of every tenant has none to learn.
    let learning = learning.filter(|_| !names.is_empty());
    names.sort();
    names.dedup();
    let watcher = store.register_watcher(names);
    let floor = watcher.floor();
    let mut pending = VecDeque::new();
    let mut marks = HashMap::new();
    let mut covered = floor;
    // A resume the store cannot serve without a gap starts over, and says
    // so: a silent gap would leave the client holding removed tenants.
    let resumable_from = store.resumable_from();
    let since = if since > 0 && (since < resumable_from || since > floor) {
        pending.push_back(WatchEvent::Reset);
        0
    } else {
        since
    };
    // Records at or below the floor are the snapshot; every change above
    // it is marked in the inbox. Each snapshot takes the inbox before its
    // SYNCED (a paged one at its end, see `WatchStream`), so a record
    // replaced after the floor was read goes out before SYNCED.
    let snapshot = if watcher.names().is_empty() {
        // Every tenant: read from the store's revision order a page at a
        // time as the client takes it, never collected whole (100 watchers
        // of 100,000 tenants held 4 MB each, and built and sorted them in
        // the call, stalling the workers).
        let mut removed = VecDeque::new();
        if since > 0 {
            for (rev, ctx) in store.removed_since(since) {
                if rev <= floor && !store.contains(&ctx) {
                    removed.push_back((rev, ctx));
                }
            }
            removed
                .make_contiguous()
                .sort_unstable_by_key(|(rev, _)| *rev);
        }
        Some(Snapshot {
            place: store.snapshot_turns().place(),
            after: Some(since),
            through: floor,
            page: Vec::new(),
            next: 0,
            removed,
        })
    } else {
        for n in watcher.names() {
            match store.get(n) {
                Some(r) if r.revision > since && r.revision <= floor => {
                    pending.push_back(WatchEvent::Snapshot(r))
                }
                Some(_) => {}
                None if since > 0 => {
                    if let Some(rev) = store.removed_at(n).filter(|r| *r > since && *r <= floor) {
                        pending.push_back(WatchEvent::Removed(n.clone(), rev));
                    }
                }
                None => {}
            }
        }
        sort_by_revision(&mut pending);
        if learning.is_none() {
            // As at the end of a paged snapshot: read the store's revision,
            // then take the inbox, so that a tenant replaced between the
            // floor and its read goes out before SYNCED (once: its newer
            // version replaces the one read).
            let revision = store.revision();
            let consistent = store.consistent();
            watcher.take_now(&mut marks);
            pending.retain(|e| !matches!(e, WatchEvent::Snapshot(r) if marks.contains_key(&r.context_identifier)));
            let mut late: VecDeque<WatchEvent> = marks
                .drain()
                .map(|(ctx, slot)| match slot {
                    Slot::Present(r) => WatchEvent::Snapshot(r),
                    Slot::Removed(rev) => WatchEvent::Removed(ctx, rev),
                })
                .collect();
            sort_by_revision(&mut late);
            pending.extend(late);
            covered = pending.back().map_or(floor, event_revision).max(floor);
            let at = if consistent && store.consistent() {
                revision.max(covered)
            } else {
                covered
            };
            pending.push_back(WatchEvent::Synced(at));
        }
        None
    };
    let mut hb = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    hb.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let state = State {
        closing: Box::pin(store.closing().cancelled_owned()),
        watcher,
        marks,
        pending,
        snapshot,
        learning,
        heartbeat: hb,
        covered,
        done: false,
    };
    WatchStream(state)
}

/// The stream itself, written by hand: an `unfold` of an async block with
/// `select!` moved the whole state in and out and built a new inbox future
/// for every event; this polls the same three sources in place.
struct WatchStream(State);

impl Stream for WatchStream {
    type Item = WatchEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<WatchEvent>> {
        // Every field is Unpin (the closing future is boxed).
        let st = &mut self.get_mut().0;
        loop {
            if !st.pending.is_empty() {
                // Each event spends the task's tokio budget: a snapshot of
                // 100,000 records otherwise went out in one poll after
                // another without yielding, and every lookup queued on the
                // same worker waited behind it (the reconnect storm).
                let progress = std::task::ready!(tokio::task::coop::poll_proceed(cx));
                progress.made_progress();
                return Poll::Ready(st.pending.pop_front());
            }
            if st.done {
                return Poll::Ready(None);
            }
            if let Some(snap) = &mut st.snapshot {
                // Looked at between pages, not for every record.
                if snap.at_page_end() {
                    if st.closing.as_mut().poll(cx).is_ready() {
                        // Cut short: no SYNCED, and none of the changes
                        // above the floor, which would leave a gap below
                        // them. The snapshot went out in revision order, so
                        // its last revision is a safe place to resume from.
                        st.snapshot = None;
                        st.done = true;
                        st.pending.push_back(WatchEvent::Closing);
                        continue;
                    }
                    std::task::ready!(snap.place.poll_turn(cx));
                }
                let progress = std::task::ready!(tokio::task::coop::poll_proceed(cx));
                progress.made_progress();
                match snap.next(st.watcher.store()) {
                    Some(event) => return Poll::Ready(Some(event)),
                    None => {
                        // Dropped: its turn goes to the next in line.
                        st.snapshot = None;
                        // A record at or below the floor that changed again
                        // before its page was read left the pages; its new
                        // version is marked in the inbox. Read the store's
                        // revision, then take the inbox, as a heartbeat does:
                        // every change up to that revision goes out before
                        // SYNCED, so SYNCED holds a consistent prefix rather
                        // than one missing the version replaced mid-read.
                        let store = st.watcher.store();
                        let revision = store.revision();
                        let consistent = store.consistent();
                        st.watcher.take_now(&mut st.marks);
                        st.queue_marked(true);
                        let at = if consistent && st.watcher.store().consistent() {
                            revision.max(st.covered)
                        } else {
                            st.covered
                        };
                        st.pending.push_back(WatchEvent::Synced(at));
                        continue;
                    }
                }
            }
            // In this order, as a biased select: the close first. While
            // names are still being learned, what the inbox brings is part
            // of the snapshot.
            let learning = st.learning.is_some();
            if st.closing.as_mut().poll(cx).is_ready() {
                // What changed before the close is still sent; a stream
                // cut short while learning gets no SYNCED, as a snapshot.
                st.learning = None;
                st.watcher.take_now(&mut st.marks);
                st.queue_marked(learning);
                st.done = true;
                st.pending.push_back(WatchEvent::Closing);
                continue;
            }
            if st.watcher.poll_changed(cx, &mut st.marks).is_ready() {
                st.queue_marked(learning);
                continue;
            }
            if let Some(names) = &mut st.learning {
                match names.as_mut().poll(cx) {
                    Poll::Ready(learned) => {
                        st.learning = None;
                        // Every learned record is in the store, so in the
                        // inbox: taken now, it goes out before SYNCED.
                        st.watcher.take_now(&mut st.marks);
                        st.queue_marked(true);
                        match learned {
                            Ok(()) => st.pending.push_back(WatchEvent::Synced(st.covered)),
                            Err(e) => {
                                st.done = true;
                                st.pending.push_back(WatchEvent::Refused(e));
                            }
                        }
                        continue;
                    }
                    // No heartbeat before SYNCED.
                    Poll::Pending => return Poll::Pending,
                }
            }
            if st.heartbeat.poll_tick(cx).is_ready() {
                // Read first, then take what is marked: every change at
                // or below the store's revision is in the inbox by now,
                // so it goes out before the heartbeat, and a client may
                // resume from it. A store that may hold a tenant older
                // than its revision (a replica re-reading the shared log)
                // vouches for nothing: no heartbeat until it does.
                let revision = st.watcher.store().revision();
                let consistent = st.watcher.store().consistent();
                st.watcher.take_now(&mut st.marks);
                st.queue_marked(false);
                if consistent && st.watcher.store().consistent() {
                    st.pending
                        .push_back(WatchEvent::Heartbeat(revision.max(st.covered)));
                }
                continue;
            }
            return Poll::Pending;
        }
    }
}

impl State {
    /// Queues what was marked, in revision order, and empties `marks`;
    /// as part of the snapshot while names are still being learned.
    ///
    /// The inbox is marked in revision order, so the marks hold, for every
    /// watched tenant, its latest change up to the highest revision marked:
    /// sorted, they continue the stream in order, and everything the next
    /// round takes is newer.
    fn queue_marked(&mut self, snapshot: bool) {
        // Called only when everything queued before has gone out.
        debug_assert!(self.pending.is_empty());
        self.pending
            .extend(self.marks.drain().map(|(ctx, slot)| match slot {
                Slot::Present(r) if snapshot => WatchEvent::Snapshot(r),
                Slot::Present(r) => WatchEvent::Changed(r),
                Slot::Removed(rev) => WatchEvent::Removed(ctx, rev),
            }));
        sort_by_revision(&mut self.pending);
        if let Some(last) = self.pending.back() {
            self.covered = self.covered.max(event_revision(last));
        }
    }
}

/// The snapshot of a watch of every tenant, read from the store in
/// revision order a page at a time, merged with the removals a resume
/// must be told of.
struct Snapshot {
    /// Its place in line for a turn at sending (`core::turns`), taken
    /// before each page.
    place: Place,
    /// Where the next page starts (after this revision); `None` once the
    /// store has no more at or below `through`.
    after: Option<u64>,
    through: u64,
    page: Vec<Arc<TenantRecord>>,
    /// The next record of `page` to go out.
    next: usize,
    /// Removals in `(since, through]`, in revision order.
    removed: VecDeque<(u64, ContextId)>,
}

/// Records read from the store at a time: the order lock is held only to
/// clone this many `Arc`s, and a stream holds no more than this many.
const SNAPSHOT_PAGE: usize = 256;

impl Snapshot {
    fn next(&mut self, store: &Store) -> Option<WatchEvent> {
        if self.at_page_end()
            && let Some(after) = self.after
        {
            self.page.clear();
            self.next = 0;
            self.after = store.records_in_order(after, self.through, SNAPSHOT_PAGE, &mut self.page);
        }
        let record = self.page.get(self.next);
        match (record, self.removed.front()) {
            (Some(r), Some((rev, _))) if *rev < r.revision => self.removed_event(),
            (Some(r), _) => {
                self.next += 1;
                Some(WatchEvent::Snapshot(Arc::clone(r)))
            }
            (None, Some(_)) => self.removed_event(),
            (None, None) => None,
        }
    }

    fn at_page_end(&self) -> bool {
        self.next == self.page.len()
    }

    fn removed_event(&mut self) -> Option<WatchEvent> {
        self.removed
            .pop_front()
            .map(|(rev, ctx)| WatchEvent::Removed(ctx, rev))
    }
}

fn event_revision(e: &WatchEvent) -> u64 {
    match e {
        WatchEvent::Snapshot(r) | WatchEvent::Changed(r) => r.revision,
        WatchEvent::Removed(_, rev) | WatchEvent::Synced(rev) | WatchEvent::Heartbeat(rev) => *rev,
        // Sorted with the snapshot, but always first: see `watch`.
        WatchEvent::Reset => 0,
        WatchEvent::Closing | WatchEvent::Detached | WatchEvent::Refused(_) => u64::MAX,
    }
}

fn sort_by_revision(events: &mut VecDeque<WatchEvent>) {
    events
        .make_contiguous()
        .sort_unstable_by_key(event_revision);
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use futures_util::StreamExt;

    use super::*;
    use crate::{
        core::store::PollResult,
        core::tenant::{Observation, TenantState},
    };

    fn ctx(s: &str) -> ContextId {
        ContextId::parse(s).unwrap()
    }

    fn change(store: &Store, c: &ContextId, endpoint: &str) -> u64 {
        let o = Observation {
            state: TenantState::Running,
            endpoint: endpoint.into(),
            api: String::new(),
            version: String::new(),
            valid_until: None,
        };
        store
            .apply_poll(c, PollResult::Observed(o), SystemTime::now())
            .unwrap()
            .record
            .revision
    }

    /// A tenant at or below the floor that changes again before its page
    /// is read goes out before SYNCED, and SYNCED says the revision it
    /// holds: at SYNCED the client holds every tenant's latest version up
    /// to it, never the one version older (a watch-all stream opened, the
    /// tenant changed, then the stream read its pages).
    #[tokio::test]
    async fn a_change_during_the_snapshot_goes_out_before_synced() {
        let store = Arc::new(Store::new());
        let (x, y) = (ctx("X"), ctx("Y"));
        change(&store, &x, "https://one");
        let y_rev = change(&store, &y, "https://one");
        let mut s = Box::pin(watch(
            Arc::clone(&store),
            Vec::new(),
            0,
            Duration::from_secs(3600),
        ));
        // After the floor was read, before the first page.
        let x_rev = change(&store, &x, "https://two");
        let mut held = HashMap::new();
        loop {
            match s.next().await.unwrap() {
                WatchEvent::Snapshot(r) | WatchEvent::Changed(r) => {
                    held.insert(r.context_identifier.clone(), r.revision);
                }
                WatchEvent::Synced(at) => {
                    assert_eq!(at, x_rev, "SYNCED names the revision held");
                    break;
                }
                e => panic!("unexpected {e:?}"),
            }
        }
        assert_eq!(held.get(&x), Some(&x_rev), "X's change came before SYNCED");
        assert_eq!(held.get(&y), Some(&y_rev));
    }

    /// Tenants changed while the reader was away go out in the order of
    /// their changes, whichever of them the stream looks at first; a tenant
    /// changed twice goes out once, at its later place.
    #[tokio::test]
    async fn changes_of_several_tenants_go_out_in_revision_order() {
        let names: Vec<_> = (0..6).map(|i| ctx(&format!("Cust{i}"))).collect();
        for round in 0..50 {
            let store = Arc::new(Store::new());
            for n in &names {
                change(&store, n, "https://start");
            }
            let watch_all = round % 2 == 1;
            let watched = if watch_all { Vec::new() } else { names.clone() };
            let mut s = Box::pin(watch(
                Arc::clone(&store),
                watched,
                0,
                Duration::from_secs(60),
            ));
            let mut sent = vec![];
            loop {
                match s.next().await.unwrap() {
                    WatchEvent::Synced(_) => break,
                    WatchEvent::Snapshot(r) => sent.push(r.revision),
                    other => panic!("{other:?} before SYNCED"),
                }
            }
            // Changed in an order of their own, one of them twice.
            let order = [4, 1, 5, 0, 4, 3, 2];
            let mut expected = vec![];
            for (i, k) in order.iter().enumerate() {
                let rev = change(&store, &names[*k], &format!("https://{round}/{i}"));
                expected.retain(|(n, _)| n != k);
                expected.push((*k, rev));
            }
            store.remove(&names[1]);
            expected.retain(|(n, _)| *n != 1);
            expected.push((1, store.revision()));
            for (k, rev) in &expected {
                let (name, got) = match s.next().await.unwrap() {
                    WatchEvent::Changed(r) => (r.context_identifier.clone(), r.revision),
                    WatchEvent::Removed(n, rev) => (n, rev),
                    other => panic!("{other:?}"),
                };
                assert_eq!((&name, got), (&names[*k], *rev), "round {round}: {sent:?}");
                sent.push(got);
            }
            assert!(sent.is_sorted(), "round {round}: {sent:?}");
        }
    }

    /// A watch whose names are still being learned opens at once: what is
    /// learned goes out as SNAPSHOT, in revision order, and SYNCED waits
    /// for the learning; no heartbeat comes before it. A failed learning
    /// ends the stream with the refusal.
    #[tokio::test(start_paused = true)]
    async fn names_being_learned_arrive_as_snapshot_before_synced() {
        let store = Arc::new(Store::new());
        let (a, b, c) = (ctx("CustA"), ctx("CustB"), ctx("CustC"));
        change(&store, &a, "https://a");
        let (done, learned) = tokio::sync::oneshot::channel::<()>();
        let learning: Learning = Box::pin(async move {
            let _ = learned.await;
            Ok(())
        });
        let mut s = Box::pin(watch_learning(
            Arc::clone(&store),
            vec![a.clone(), b.clone(), c.clone()],
            0,
            Duration::from_secs(1),
            Some(learning),
        ));
        let first = s.next().await.unwrap();
        assert!(matches!(&first, WatchEvent::Snapshot(r) if r.context_identifier == a));
        let rb = change(&store, &b, "https://b");
        let got = s.next().await.unwrap();
        assert!(
            matches!(&got, WatchEvent::Snapshot(r) if r.revision == rb),
            "{got:?}"
        );
        // Long past a heartbeat interval: nothing, since SYNCED has not come.
        let quiet = tokio::time::timeout(Duration::from_secs(5), s.next()).await;
        assert!(quiet.is_err(), "{quiet:?}");
        let rc = change(&store, &c, "https://c");
        done.send(()).unwrap();
        let got = s.next().await.unwrap();
        assert!(
            matches!(&got, WatchEvent::Snapshot(r) if r.revision == rc),
            "{got:?}"
        );
        assert_eq!(s.next().await.unwrap(), WatchEvent::Synced(rc));
        let rb2 = change(&store, &b, "https://b2");
        let got = s.next().await.unwrap();
        assert!(
            matches!(&got, WatchEvent::Changed(r) if r.revision == rb2),
            "{got:?}"
        );

        let refused: Learning = Box::pin(async { Err(LookupError::TooManyUnknown(3)) });
        let mut s = Box::pin(watch_learning(
            Arc::clone(&store),
            vec![ctx("CustZ")],
            0,
            Duration::from_secs(1),
            Some(refused),
        ));
        assert_eq!(
            s.next().await.unwrap(),
            WatchEvent::Refused(LookupError::TooManyUnknown(3))
        );
        assert_eq!(s.next().await, None);
    }

    /// A heartbeat's revision is never below an event sent before it, and
    /// every watched tenant's latest change at or below it went out first.
    #[tokio::test(start_paused = true)]
    async fn a_heartbeat_follows_the_changes_it_covers() {
        let store = Arc::new(Store::new());
        let a = ctx("CustA");
        let b = ctx("CustB");
        change(&store, &a, "https://0");
        let mut s = Box::pin(watch(
            Arc::clone(&store),
            vec![a.clone()],
            0,
            Duration::from_millis(100),
        ));
        assert!(matches!(s.next().await, Some(WatchEvent::Snapshot(_))));
        assert_eq!(s.next().await, Some(WatchEvent::Synced(1)));
        let mut last = 0;
        for i in 1..=5 {
            last = change(&store, &a, &format!("https://{i}"));
            change(&store, &b, &format!("https://{i}"));
        }
        // Nothing was read while the tenants changed: A's latest goes out,
        // then a heartbeat at the store's revision (B's last change).
        match s.next().await {
            Some(WatchEvent::Changed(r)) => assert_eq!(r.revision, last),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            s.next().await,
            Some(WatchEvent::Heartbeat(store.revision()))
        );
    }

    async fn first_events(s: &mut (impl Stream<Item = WatchEvent> + Unpin)) -> Vec<WatchEvent> {
        let mut out = vec![];
        loop {
            let e = s.next().await.unwrap();
            let done = matches!(e, WatchEvent::Synced(_));
            out.push(e);
            if done {
                return out;
            }
        }
    }

    /// A resume the store cannot serve without a gap starts with RESET and
    /// a complete snapshot; one it can serve gets neither.
    #[tokio::test]
    async fn a_resume_from_before_the_store_began_or_from_its_future_is_reset() {
        let store = Arc::new(Store::starting_after(1_000));
        let a = ctx("CustA");
        let b = ctx("CustB");
        let first = change(&store, &a, "https://a");
        change(&store, &b, "https://b");
        let open = |since| {
            Box::pin(watch(
                Arc::clone(&store),
                vec![],
                since,
                Duration::from_secs(60),
            ))
        };
        // From the previous process (below where this store began).
        let events = first_events(&mut open(500)).await;
        assert_eq!(events[0], WatchEvent::Reset);
        assert_eq!(events.len(), 4, "RESET, both records, SYNCED: {events:?}");
        // From the future (another instance's revision).
        let events = first_events(&mut open(store.revision() + 10)).await;
        assert_eq!(events[0], WatchEvent::Reset);
        assert_eq!(events.len(), 4, "{events:?}");
        // From one of its own: only what changed after it.
        let events = first_events(&mut open(first)).await;
        assert!(matches!(&events[0], WatchEvent::Snapshot(r) if r.context_identifier == b));
        assert_eq!(events.len(), 2, "{events:?}");
        // From where it began (an empty store's SYNCED): everything, no reset.
        let events = first_events(&mut open(1_000)).await;
        assert_eq!(events.len(), 3, "{events:?}");
    }

    /// Once the store has forgotten a removal after `since`, a resume from
    /// `since` is reset; from after the forgotten removal it is not.
    #[tokio::test]
    async fn a_resume_from_before_a_forgotten_removal_is_reset() {
        let store = Arc::new(Store::new());
        let keep = ctx("Keep");
        change(&store, &keep, "https://keep");
        let since = store.revision();
        for i in 0..=crate::core::store::TOMBSTONES_KEPT {
            let gone = ctx(&format!("Gone{i}"));
            change(&store, &gone, "https://gone");
            store.remove(&gone);
        }
        assert!(store.resumable_from() > since);
        let events = first_events(&mut Box::pin(watch(
            Arc::clone(&store),
            vec![],
            since,
            Duration::from_secs(60),
        )))
        .await;
        assert_eq!(events[0], WatchEvent::Reset);
        assert!(matches!(&events[1], WatchEvent::Snapshot(r) if r.context_identifier == keep));
        assert_eq!(
            events.len(),
            3,
            "no REMOVED after a reset: {}",
            events.len()
        );
        let recent = store.revision() - 1;
        let events = first_events(&mut Box::pin(watch(
            Arc::clone(&store),
            vec![],
            recent,
            Duration::from_secs(60),
        )))
        .await;
        assert!(
            matches!(events[0], WatchEvent::Removed(_, rev) if rev == recent + 1),
            "{:?}",
            events[0]
        );
    }

    /// A watch of every tenant reads its snapshot a page at a time: it
    /// goes out in revision order with the removals a resume is owed in
    /// their places, and a tenant changed or removed while the snapshot is
    /// read goes out once, before SYNCED, which names the revision held.
    #[tokio::test]
    async fn a_snapshot_read_in_pages_is_ordered_complete_and_holds_what_changed_meanwhile() {
        let store = Arc::new(Store::new());
        let names: Vec<_> = (0..1000).map(|i| ctx(&format!("Cust{i}"))).collect();
        for n in &names {
            change(&store, n, "https://a");
        }
        let since = store.revision();
        // After `since`: a third changed, a seventh removed, in turns.
        let mut owed: HashMap<ContextId, u64> = HashMap::new();
        for (i, n) in names.iter().enumerate() {
            if i % 3 == 0 {
                owed.insert(n.clone(), change(&store, n, "https://b"));
            }
            if i % 7 == 1 {
                owed.insert(n.clone(), store.remove(n).unwrap());
            }
        }
        let mut s = Box::pin(watch(
            Arc::clone(&store),
            vec![],
            since,
            Duration::from_secs(60),
        ));
        let mut sent: Vec<(ContextId, u64)> = vec![];
        let record = |e: WatchEvent, sent: &mut Vec<_>| match e {
            WatchEvent::Snapshot(r) => sent.push((r.context_identifier.clone(), r.revision)),
            WatchEvent::Removed(n, rev) => sent.push((n, rev)),
            other => panic!("{other:?} in the snapshot"),
        };
        for _ in 0..10 {
            let e = s.next().await.unwrap();
            record(e, &mut sent);
        }
        // The last of the owed changes has not gone out yet: changed again,
        // and one more removed, while the snapshot is read.
        let late = names[999].clone();
        let gone = names[996].clone();
        assert!(owed.contains_key(&late) && owed.contains_key(&gone));
        // Their earlier versions left the pages (at or below the floor);
        // their new ones are owed before SYNCED, which says it holds them.
        let late_rev = change(&store, &late, "https://c");
        let gone_rev = store.remove(&gone).unwrap();
        owed.insert(late.clone(), late_rev);
        owed.insert(gone.clone(), gone_rev);
        loop {
            match s.next().await.unwrap() {
                WatchEvent::Synced(at) => {
                    assert_eq!(at, gone_rev, "SYNCED at the revision held");
                    break;
                }
                e => record(e, &mut sent),
            }
        }
        assert!(
            sent.windows(2).all(|w| w[0].1 < w[1].1),
            "in revision order"
        );
        let got: HashMap<_, _> = sent.iter().cloned().collect();
        assert_eq!(got.len(), sent.len(), "each tenant once");
        assert_eq!(got, owed);
        // Nothing of them follows: the next change is the next event.
        let after = change(&store, &late, "https://d");
        match s.next().await.unwrap() {
            WatchEvent::Changed(r) => {
                assert_eq!((r.context_identifier.clone(), r.revision), (late, after))
            }
            other => panic!("{other:?}"),
        }
    }

    /// A shutdown while a snapshot is read ends the stream at once, without
    /// SYNCED or the changes above the floor (which would leave a gap below
    /// them for a client resuming from the last revision it saw).
    #[tokio::test]
    async fn a_close_during_the_snapshot_ends_it_without_synced() {
        let store = Arc::new(Store::new());
        let names: Vec<_> = (0..600).map(|i| ctx(&format!("Cust{i}"))).collect();
        for n in &names {
            change(&store, n, "https://a");
        }
        let mut s = Box::pin(watch(
            Arc::clone(&store),
            vec![],
            0,
            Duration::from_secs(60),
        ));
        for _ in 0..300 {
            assert!(matches!(s.next().await, Some(WatchEvent::Snapshot(_))));
        }
        change(&store, &names[0], "https://b");
        store.close();
        // At most the rest of the page being read, then the end.
        let mut rest = 0;
        loop {
            match s.next().await {
                Some(WatchEvent::Snapshot(_)) => rest += 1,
                Some(WatchEvent::Closing) => break,
                other => panic!("{other:?} after the close"),
            }
        }
        assert!(rest < SNAPSHOT_PAGE, "{rest} records after the close");
        assert_eq!(s.next().await, None);
    }

    /// The store reads records in revision order a page at a time, and
    /// leaves out a record that changed after the page's upper bound.
    #[test]
    fn records_in_order_pages_through_the_store() {
        let store = Store::new();
        let names: Vec<_> = (0..10).map(|i| ctx(&format!("Cust{i}"))).collect();
        for n in &names {
            change(&store, n, "https://a");
        }
        let through = store.revision();
        change(&store, &names[4], "https://b");
        let mut out = vec![];
        let mut after = 0;
        let mut pages = 0;
        while let Some(next) = store.records_in_order(after, through, 3, &mut out) {
            after = next;
            pages += 1;
        }
        assert_eq!(pages, 3, "three full pages, then the rest");
        let revs: Vec<u64> = out.iter().map(|r| r.revision).collect();
        assert_eq!(revs, vec![1, 2, 3, 4, 6, 7, 8, 9, 10]);
        assert_eq!(store.records_between(0, through).len(), 9);
        assert_eq!(store.records_between(0, store.revision()).len(), 10);
    }
}
