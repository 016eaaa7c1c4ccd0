//! Watch streams: a snapshot, a SYNCED marker, then changes, heartbeats and
//! an end on shutdown. Protocol-free: the grpc module maps these events.
//!
//! A stream is a plain `Stream` (no task of its own), so a client that
//! disconnects frees everything the moment tonic drops it.

use std::{collections::VecDeque, pin::Pin, sync::Arc, time::Duration};

use futures_util::{Stream, StreamExt};
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
    let floor;
    let source = if names.is_empty() {
        // Register first, then read: a change racing the snapshot lands in
        // the inbox and is sent after SYNCED.
        let guard = store.register_dashboard();
        floor = store.revision();
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
    pending.push_back(WatchEvent::Synced(store.revision()));
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
                    st.done = true;
                    st.pending.push_back(WatchEvent::Closing);
                }
                events = next_changes(&mut st.source, &st.store, st.floor) => {
                    st.pending.extend(events);
                }
                _ = st.heartbeat.tick() => {
                    st.pending.push_back(WatchEvent::Heartbeat(st.store.revision()));
                }
            }
        }
    })
}

async fn next_changes(source: &mut Source, store: &Store, floor: u64) -> Vec<WatchEvent> {
    match source {
        Source::All(guard) => {
            let changed = guard.changed().await;
            let mut events: Vec<WatchEvent> = changed
                .into_iter()
                .filter_map(|(ctx, rev)| match store.get(&ctx) {
                    Some(r) if r.revision > floor => Some(WatchEvent::Changed(r)),
                    Some(_) => None,
                    None if rev > floor => Some(WatchEvent::Removed(ctx, rev)),
                    None => None,
                })
                .collect();
            events.sort_by_key(|e| match e {
                WatchEvent::Changed(r) => r.revision,
                WatchEvent::Removed(_, rev) => *rev,
                _ => 0,
            });
            events
        }
        Source::Named(map) => match map.next().await {
            Some((_, Slot::Present(r))) => vec![WatchEvent::Changed(r)],
            Some((ctx, Slot::Removed(rev))) => vec![WatchEvent::Removed(ctx, rev)],
            Some((_, Slot::Absent)) => vec![],
            // Every channel closed: cannot happen while we hold receivers,
            // but never spin if it does.
            None => std::future::pending().await,
        },
    }
}
