//! Watch streams: a snapshot, a SYNCED marker, then changes, heartbeats and
//! an end on shutdown. Protocol-free: the grpc module maps these events.
//!
//! A stream is a plain `Stream` (no task of its own), so a client that
//! disconnects frees everything the moment tonic drops it.

use std::{
    collections::{HashMap, VecDeque},
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use futures_util::{FutureExt, Stream, StreamExt};
use tokio::time::{Interval, MissedTickBehavior};
use tokio_stream::{StreamMap, wrappers::WatchStream};
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::{
    store::{DashboardGuard, Slot, Store},
    tenant::{ContextId, TenantRecord},
};

/// One event of a watch stream.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    Snapshot(Arc<TenantRecord>),
    Synced(u64),
    Changed(Arc<TenantRecord>),
    Removed(ContextId, u64),
    Heartbeat(u64),
    /// The server is shutting down; the last event of the stream.
    Closing,
}

enum Source {
    /// Every tenant, through an inbox of changed names.
    All(DashboardGuard),
    /// Named tenants, through their latest-value channels.
    Named(StreamMap<ContextId, WatchStream<Slot>>),
}

struct State {
    store: Arc<Store>,
    source: Source,
    names: Vec<ContextId>,
    pending: VecDeque<WatchEvent>,
    heartbeat: Interval,
    closing: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Records at or below this revision were in the snapshot.
    floor: u64,
    done: bool,
}

impl Drop for State {
    fn drop(&mut self) {
        if let Source::Named(map) = &mut self.source {
            map.clear();
            for n in &self.names {
                self.store.unsubscribe(n);
            }
        }
    }
}

/// Opens a watch of `names` (every tenant when empty), with a snapshot of
/// what changed after `since`.
pub fn watch(
    store: Arc<Store>,
    mut names: Vec<ContextId>,
    since: u64,
    heartbeat: Duration,
) -> impl Stream<Item = WatchEvent> + Send + 'static {
    names.sort();
    names.dedup();
    let mut pending = VecDeque::new();
    // The revision SYNCED reports. Every change at or below
    // `store.revision()` has been published, so reading it before taking the
    // snapshot makes the snapshot hold everything up to it.
    let synced;
    let floor;
    let source = if names.is_empty() {
        // Register first, then read: a change racing the snapshot lands in
        // the inbox and is sent after SYNCED.
        let guard = store.register_dashboard();
        floor = store.revision();
        synced = floor;
        for r in store.records_since(since) {
            if r.revision <= floor {
                pending.push_back(WatchEvent::Snapshot(r));
            }
        }
        if since > 0 {
            for (rev, ctx) in store.removed_since(since) {
                if rev <= floor && !store.contains(&ctx) {
                    pending.push_back(WatchEvent::Removed(ctx, rev));
                }
            }
        }
        Source::All(guard)
    } else {
        synced = store.revision();
        let mut map = StreamMap::with_capacity(names.len());
        for n in &names {
            let mut rx = store.subscribe(n);
            match &*rx.borrow_and_update() {
                Slot::Present(r) if r.revision > since => {
                    pending.push_back(WatchEvent::Snapshot(Arc::clone(r)))
                }
                Slot::Removed(rev) if *rev > since && since > 0 => {
                    pending.push_back(WatchEvent::Removed(n.clone(), *rev))
                }
                _ => {}
            }
            map.insert(n.clone(), WatchStream::from_changes(rx));
        }
        floor = 0;
        Source::Named(map)
    };
    pending.push_back(WatchEvent::Synced(synced));
    let mut hb = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    hb.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let state = State {
        closing: Box::pin(store.closing().cancelled_owned()),
        store,
        source,
        names,
        pending,
        heartbeat: hb,
        floor,
        done: false,
    };
    futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(ev) = st.pending.pop_front() {
                return Some((ev, st));
            }
            if st.done {
                return None;
            }
            tokio::select! {
                biased;
                _ = st.closing.as_mut() => {
                    // What changed before the close is still sent.
                    let events = ready_changes(&mut st.source, &st.store, st.floor);
                    st.pending.extend(events);
                    st.done = true;
                    st.pending.push_back(WatchEvent::Closing);
                }
                events = next_changes(&mut st.source, &st.store, st.floor) => {
                    st.pending.extend(events);
                }
                _ = st.heartbeat.tick() => {
                    // Read first, then send what is ready: every change at
                    // or below the heartbeat's revision goes out before it,
                    // so a client may resume from it.
                    let revision = st.store.revision();
                    let events = ready_changes(&mut st.source, &st.store, st.floor);
                    st.pending.extend(events);
                    st.pending.push_back(WatchEvent::Heartbeat(revision));
                }
            }
        }
    })
}

/// Waits for the next changes.
async fn next_changes(source: &mut Source, store: &Store, floor: u64) -> Vec<WatchEvent> {
    match source {
        Source::All(guard) => dashboard_events(guard.changed().await, store, floor),
        Source::Named(map) => match map.next().await {
            Some((ctx, slot)) => slot_event(ctx, slot).into_iter().collect(),
            // Every channel closed: cannot happen while we hold receivers,
            // but never spin if it does.
            None => std::future::pending().await,
        },
    }
}

/// The changes already waiting, without waiting for more.
fn ready_changes(source: &mut Source, store: &Store, floor: u64) -> Vec<WatchEvent> {
    match source {
        Source::All(guard) => dashboard_events(guard.take_now(), store, floor),
        Source::Named(map) => {
            let mut events = Vec::new();
            while let Some(Some((ctx, slot))) = map.next().now_or_never() {
                events.extend(slot_event(ctx, slot));
            }
            events
        }
    }
}

fn slot_event(ctx: ContextId, slot: Slot) -> Option<WatchEvent> {
    match slot {
        Slot::Present(r) => Some(WatchEvent::Changed(r)),
        Slot::Removed(rev) => Some(WatchEvent::Removed(ctx, rev)),
        Slot::Absent => None,
    }
}

/// A dashboard's changed names as events: each tenant's latest record, in
/// revision order.
fn dashboard_events(
    changed: HashMap<ContextId, u64>,
    store: &Store,
    floor: u64,
) -> Vec<WatchEvent> {
    let mut events: Vec<WatchEvent> = changed
        .into_iter()
        .filter_map(|(ctx, rev)| match store.get(&ctx) {
            Some(r) if r.revision > floor => Some(WatchEvent::Changed(r)),
            Some(_) => None,
            // Gone. Report the removal under its own revision: if this mark
            // is an older change's, the removal's own mark is on its way.
            None => match store.removed_at(&ctx) {
                Some(removed) if removed == rev && rev > floor => {
                    Some(WatchEvent::Removed(ctx, rev))
                }
                Some(_) => None,
                None if rev > floor => Some(WatchEvent::Removed(ctx, rev)),
                None => None,
            },
        })
        .collect();
    events.sort_by_key(|e| match e {
        WatchEvent::Changed(r) => r.revision,
        WatchEvent::Removed(_, rev) => *rev,
        _ => 0,
    });
    events
}
