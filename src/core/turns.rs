//! Turns at sending snapshots: how many watch streams read records out of
//! the store at once.
//!
//! A reconnect storm (every dashboard reconnecting after a deploy) opens
//! many watch-all streams at once, and each is ready to send as fast as
//! its client reads. Every ready stream's task, and its connection's, then
//! queues on the runtime's workers ahead of each lookup, which waited tens
//! of milliseconds behind them. The snapshots are CPU-bound either way:
//! sending a few at a time, each to its end, finishes them about as soon
//! and keeps the queue short.
//!
//! A turn is taken back from a stream that has not asked for a page for
//! `STALE` (its client stopped reading, so nothing polls it): a client that
//! stops reading cannot hold the others up. The stream takes its place in
//! line again when it is polled.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    sync::{Notify, futures::OwnedNotified},
    time::{Instant, Sleep},
};

/// How long a stream may hold a turn without asking for a page.
pub(crate) const STALE: Duration = Duration::from_millis(20);

/// The turns of one store.
pub(crate) struct Turns {
    /// Who holds each turn (0: nobody) and when it last asked for a page
    /// (milliseconds since `epoch`).
    slots: Box<[(AtomicU64, AtomicU64)]>,
    next_id: AtomicU64,
    released: Arc<Notify>,
    epoch: Instant,
}

impl Turns {
    /// `n` turns (at least one).
    pub(crate) fn new(n: usize) -> Self {
        Self {
            slots: (0..n.max(1))
                .map(|_| (AtomicU64::new(0), AtomicU64::new(0)))
                .collect(),
            next_id: AtomicU64::new(1),
            released: Arc::new(Notify::new()),
            epoch: Instant::now(),
        }
    }

    /// Two turns per core. In the storm bench (BENCHMARKS.md) one or two
    /// per core kept lookups' p99 under 10 ms and eight per core did not;
    /// fewer turns cost more CPU per snapshot (a stream that reads the
    /// records alone misses the caches that streams reading them together
    /// share).
    pub(crate) fn per_core() -> Self {
        Self::new(2 * std::thread::available_parallelism().map_or(2, |n| n.get()))
    }

    /// A place in line for one stream; it holds no turn yet.
    pub(crate) fn place(self: &Arc<Self>) -> Place {
        Place {
            turns: Arc::clone(self),
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            slot: None,
            wait: None,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// A free turn, or one held by a stream gone quiet.
    fn try_take(&self, id: u64) -> Option<usize> {
        for (i, (owner, _)) in self.slots.iter().enumerate() {
            if owner
                .compare_exchange(0, id, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                self.slots[i].1.store(self.now_ms(), Ordering::Relaxed);
                return Some(i);
            }
        }
        let now = self.now_ms();
        for (i, (owner, active)) in self.slots.iter().enumerate() {
            let holder = owner.load(Ordering::Acquire);
            if holder != 0
                && now.saturating_sub(active.load(Ordering::Relaxed)) >= STALE.as_millis() as u64
                && owner
                    .compare_exchange(holder, id, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                active.store(now, Ordering::Relaxed);
                return Some(i);
            }
        }
        None
    }
}

/// One stream's place in line: a turn once `poll_turn` has said so.
pub(crate) struct Place {
    turns: Arc<Turns>,
    id: u64,
    slot: Option<usize>,
    wait: Option<Wait>,
}

/// While waiting: a turn given back, or time to look for a quiet one.
type Wait = (Pin<Box<OwnedNotified>>, Pin<Box<Sleep>>);

impl Place {
    /// Ready once this stream holds a turn (kept, or taken now); each call
    /// counts as asking for a page.
    pub(crate) fn poll_turn(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let turns = &self.turns;
        if let Some(i) = self.slot {
            let (owner, active) = &turns.slots[i];
            if owner.load(Ordering::Acquire) == self.id {
                active.store(turns.now_ms(), Ordering::Relaxed);
                return Poll::Ready(());
            }
            // Taken back while this stream was not polled.
            self.slot = None;
        }
        loop {
            // Registered before looking, so a turn given back in between
            // still wakes this stream.
            let (notified, sleep) = self.wait.get_or_insert_with(|| {
                let mut notified = Box::pin(Arc::clone(&turns.released).notified_owned());
                notified.as_mut().enable();
                (notified, Box::pin(tokio::time::sleep(STALE)))
            });
            if let Some(i) = turns.try_take(self.id) {
                self.slot = Some(i);
                // A wake-up this took without using it goes on to the next
                // waiter as the `Notified` is dropped (tokio does so).
                self.wait = None;
                return Poll::Ready(());
            }
            let woken = notified.as_mut().poll(cx).is_ready();
            let timed_out = sleep.as_mut().poll(cx).is_ready();
            if !woken && !timed_out {
                return Poll::Pending;
            }
            self.wait = None;
        }
    }

    /// Gives the turn back (the snapshot is sent).
    pub(crate) fn release(&mut self) {
        if let Some(i) = self.slot.take()
            && self.turns.slots[i]
                .0
                .compare_exchange(self.id, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.turns.released.notify_one();
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use super::*;

    fn ready(p: &mut Place) -> bool {
        p.poll_turn(&mut Context::from_waker(std::task::Waker::noop()))
            .is_ready()
    }

    /// Two turns: a third stream waits until one is given back, and is
    /// woken when it is.
    #[tokio::test]
    async fn a_stream_waits_for_a_turn_given_back() {
        let turns = Arc::new(Turns::new(2));
        let (mut a, mut b, mut c) = (turns.place(), turns.place(), turns.place());
        assert!(ready(&mut a) && ready(&mut b));
        assert!(!ready(&mut c));
        let waiting = tokio::spawn(async move {
            poll_fn(|cx| c.poll_turn(cx)).await;
            c
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        a.release();
        let mut c = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .unwrap();
        assert!(ready(&mut c), "kept");
        assert!(!ready(&mut a), "a gave its turn up and must wait again");
        drop(c);
        assert!(ready(&mut a), "a dropped stream gives its turn back");
    }

    /// A stream that stops asking for pages (its client stopped reading)
    /// loses its turn after `STALE`; it waits in line when polled again.
    #[tokio::test(start_paused = true)]
    async fn a_quiet_stream_loses_its_turn() {
        let turns = Arc::new(Turns::new(1));
        let (mut quiet, mut next) = (turns.place(), turns.place());
        assert!(ready(&mut quiet));
        assert!(!ready(&mut next));
        let started = Instant::now();
        let mut next = tokio::time::timeout(Duration::from_secs(5), async move {
            poll_fn(|cx| next.poll_turn(cx)).await;
            next
        })
        .await
        .expect("the quiet stream's turn was taken back");
        assert!(started.elapsed() >= STALE);
        assert!(!ready(&mut quiet));
        assert!(ready(&mut next));
    }
}
