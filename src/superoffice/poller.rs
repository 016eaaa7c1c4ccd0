//! The poller: one task and one delay queue for every tracked tenant.
//!
//! A tenant is polled again at its ValidUntil, clamped to
//! `[min_interval, max_interval]` and pulled a little earlier by jitter, so
//! that tenants which came due together (a restart) drift apart. Failures
//! back off exponentially up to a cap; a 429's Retry-After is honoured. At
//! most `concurrency` requests are in flight; the rest wait their turn in
//! due order. A DELETED tenant is no longer polled and is forgotten after
//! `deleted_retention`.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures_util::{StreamExt, future::BoxFuture, stream::FuturesUnordered};
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio_util::{sync::CancellationToken, time::DelayQueue};

use crate::{
    admin::metrics::Metrics,
    core::ledger::{Ledger, Removal, WriteError},
    core::store::{PollApplied, PollResult, Store},
    core::tenant::{ContextId, TenantState},
    superoffice::{
        FetchError, FetchOutcome, FetchResult, StateSource,
        unknowns::{Unknowns, Verdict},
    },
};

mod policy;

pub use policy::PollPolicy;

/// The longest the poller ever waits to poll or forget a tenant.
pub const MAX_DELAY: Duration = Duration::from_secs(365 * 24 * 3600);

enum Command {
    /// Track a tenant; poll it soon unless it is already scheduled.
    Track(ContextId),
    /// Track a tenant restored from the state file: its record is served
    /// already, so its first poll may wait, at random within this window,
    /// to spare SuperOffice a stampede.
    TrackWithin(ContextId, Duration),
    /// A lookup just applied a fresh answer; schedule from it.
    Observed(ContextId, Option<SystemTime>),
    /// A lookup found SuperOffice does not know the tenant; keep asking.
    NotFound(ContextId),
    /// A notification arrived: poll now to confirm, then again shortly
    /// while the state settles. Tracks the tenant if it was not.
    Confirm(ContextId),
    /// A tenant this replica just became the poller of (a partition it
    /// took over, or a tenant another replica started tracking): poll at
    /// its ValidUntil, or, when that has passed, at a random point within
    /// the window, so that a takeover does not come as a burst; one never
    /// answered yet, as soon as any new tenant.
    TakeOver(ContextId, Option<SystemTime>, Duration),
}

/// Sends work to the poller task. Cheap to clone.
#[derive(Clone)]
pub struct PollerHandle {
    tx: mpsc::UnboundedSender<Command>,
}

impl PollerHandle {
    pub fn track(&self, ctx: ContextId) {
        let _ = self.tx.send(Command::Track(ctx));
    }
    pub fn track_within(&self, ctx: ContextId, window: Duration) {
        let _ = self.tx.send(Command::TrackWithin(ctx, window));
    }
    pub fn observed(&self, ctx: ContextId, valid_until: Option<SystemTime>) {
        let _ = self.tx.send(Command::Observed(ctx, valid_until));
    }
    pub fn not_found(&self, ctx: ContextId) {
        let _ = self.tx.send(Command::NotFound(ctx));
    }
    pub fn confirm(&self, ctx: ContextId) {
        let _ = self.tx.send(Command::Confirm(ctx));
    }
    pub fn take_over(&self, ctx: ContextId, valid_until: Option<SystemTime>, spread: Duration) {
        let _ = self.tx.send(Command::TakeOver(ctx, valid_until, spread));
    }
}

/// What a poll came to, once its answer was written.
enum Answer {
    Found {
        valid_until: Option<SystemTime>,
        deleted: bool,
    },
    NotFound {
        deleted: bool,
    },
}

/// Why a poll came to nothing.
enum PollFailure {
    /// SuperOffice could not be asked, or answered with an error.
    Fetch(FetchError),
    /// The answer could not be written (the replicas' shared store).
    Write(WriteError),
}

type Polled = (ContextId, Result<Answer, PollFailure>, Duration);

/// A removal written: the tenant, which removal, and whether it was made.
type Removed = (ContextId, Removal, Result<bool, WriteError>);

fn is_deleted(applied: &PollApplied) -> bool {
    applied
        .record()
        .is_some_and(|r| r.state == TenantState::Deleted)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    Poll,
    Forget,
}

#[derive(Default)]
struct Entry {
    key: Option<tokio_util::time::delay_queue::Key>,
    failures: u32,
    /// Waiting in `ready` or in flight.
    busy: bool,
    /// A poll was asked for while one was in flight.
    again: bool,
    /// Polls left to make at the settle interval.
    settle: u32,
}

/// The poller task's state.
pub struct Poller {
    store: Arc<Store>,
    /// Where answers are written: `store` itself, or the replicas' log.
    ledger: Arc<dyn Ledger>,
    source: Arc<dyn StateSource>,
    policy: PollPolicy,
    rx: mpsc::UnboundedReceiver<Command>,
    queue: DelayQueue<(ContextId, Due)>,
    entries: HashMap<ContextId, Entry>,
    /// Due now, waiting for a free slot; with the deadline they were due
    /// at, when scheduled (for the lateness metric).
    ready: VecDeque<(ContextId, Option<tokio::time::Instant>)>,
    inflight: FuturesUnordered<BoxFuture<'static, Polled>>,
    /// Removals being written: a DELETED tenant past its retention, an
    /// unknown one nobody watches.
    removing: FuturesUnordered<BoxFuture<'static, Removed>>,
    rng: rand::rngs::SmallRng,
    metrics: Option<Arc<Metrics>>,
    /// Tenants SuperOffice does not know, tracked only for watchers.
    unknowns: Arc<Unknowns>,
    /// Those of them with a request in flight.
    unknown_polling: HashSet<ContextId>,
    /// Tenants whose first poll is awaited by readiness.
    first_round: HashSet<ContextId>,
    first_round_done: Option<watch::Sender<bool>>,
}

impl Poller {
    pub fn new(
        store: Arc<Store>,
        source: Arc<dyn StateSource>,
        policy: PollPolicy,
    ) -> (Self, PollerHandle) {
        let (tx, rx) = mpsc::unbounded_channel();
        let unknowns = Arc::new(Unknowns::new(
            policy.max_unknown,
            policy.forget_unknown_after,
        ));
        let poller = Self {
            ledger: Arc::clone(&store) as Arc<dyn Ledger>,
            store,
            source,
            policy,
            rx,
            queue: DelayQueue::new(),
            entries: HashMap::new(),
            ready: VecDeque::new(),
            inflight: FuturesUnordered::new(),
            removing: FuturesUnordered::new(),
            rng: rand::SeedableRng::from_rng(&mut rand::rng()),
            metrics: None,
            unknowns,
            unknown_polling: HashSet::new(),
            first_round: HashSet::new(),
            first_round_done: None,
        };
        (poller, PollerHandle { tx })
    }

    /// How many requests for unknown tenants may be in flight at once: an
    /// eighth of `concurrency`, at least one.
    fn unknown_share(&self) -> usize {
        (self.policy.concurrency / 8).max(1)
    }

    /// The unknown tenants tracked for watchers, shared with the tracker
    /// that admits them.
    pub(crate) fn unknowns(&self) -> Arc<Unknowns> {
        Arc::clone(&self.unknowns)
    }

    /// Writes answers to `ledger` (the replicas' shared log) instead of the
    /// store, and polls on schedule only the tenants the ledger says are
    /// this process's to poll.
    pub fn with_ledger(mut self, ledger: Arc<dyn Ledger>) -> Self {
        self.ledger = ledger;
        self
    }

    /// Counts polls and their latency in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// A flag that turns true once each of `tenants` has been polled once,
    /// whatever the outcome (at once when there are none).
    pub fn first_round(
        &mut self,
        tenants: impl IntoIterator<Item = ContextId>,
    ) -> watch::Receiver<bool> {
        self.first_round = tenants.into_iter().collect();
        let (tx, rx) = watch::channel(self.first_round.is_empty());
        self.first_round_done = Some(tx);
        rx
    }

    /// Runs until `shutdown` fires.
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            while self.inflight.len() < self.policy.concurrency.max(1) {
                let Some((ctx, due)) = self.ready.pop_front() else {
                    break;
                };
                // Among replicas, a tenant whose partition another replica
                // holds (or that this one lost) is not ours to poll: drop it
                // from the schedule; its new poller has it.
                if !self.ledger.polls(&ctx) {
                    self.entries.remove(&ctx);
                    self.unknowns.remove(&ctx);
                    continue;
                }
                // Tenants nobody knows get at most an eighth of the
                // requests in flight; the rest of theirs wait a moment.
                if self.unknowns.contains(&ctx) {
                    if self.unknown_polling.len() >= self.unknown_share() {
                        if let Some(e) = self.entries.get_mut(&ctx) {
                            e.busy = false;
                        }
                        self.schedule(ctx, self.policy.backoff_base, Due::Poll);
                        continue;
                    }
                    self.unknown_polling.insert(ctx.clone());
                }
                if let (Some(m), Some(due)) = (&self.metrics, due) {
                    m.poll_lateness(due.elapsed());
                }
                self.start(ctx);
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some((ctx, result, took)) = self.inflight.next(), if !self.inflight.is_empty() => {
                    if let Some(m) = &self.metrics {
                        let outcome = match &result {
                            Ok(Answer::Found { .. }) => "found",
                            Ok(Answer::NotFound { .. }) => "not_found",
                            Err(PollFailure::Fetch(e)) => e.kind(),
                            Err(PollFailure::Write(_)) => "not_stored",
                        };
                        m.poll(outcome, took);
                    }
                    self.unknown_polling.remove(&ctx);
                    if self.first_round.remove(&ctx) && self.first_round.is_empty()
                        && let Some(tx) = &self.first_round_done {
                            let _ = tx.send(true);
                        }
                    self.finish(ctx, result);
                }
                Some((ctx, which, result)) = self.removing.next(), if !self.removing.is_empty() => {
                    self.removed(ctx, which, result);
                }
                Some(cmd) = self.rx.recv() => self.command(cmd),
                Some(expired) = self.queue.next(), if !self.queue.is_empty() => {
                    let deadline = expired.deadline();
                    let (ctx, due) = expired.into_inner();
                    self.expired(ctx, due, deadline);
                }
            }
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Track(ctx) => {
                if !self.entries.contains_key(&ctx) {
                    let d = self.policy.initial_spread.mul_f64(self.rng.random::<f64>());
                    self.schedule(ctx, d, Due::Poll);
                }
            }
            Command::TrackWithin(ctx, window) => {
                if !self.entries.contains_key(&ctx) {
                    let d = window.mul_f64(self.rng.random::<f64>());
                    self.schedule(ctx, d, Due::Poll);
                }
            }
            Command::Observed(ctx, valid_until) => {
                let e = self.entries.entry(ctx.clone()).or_default();
                e.failures = 0;
                if e.busy {
                    return;
                }
                let mut d =
                    self.policy
                        .after_success(valid_until, SystemTime::now(), &mut self.rng);
                if e.settle > 0 {
                    // A notification's settle polls are not given up for a
                    // lookup's answer.
                    d = d.min(self.policy.settle_interval);
                }
                self.schedule(ctx, d, Due::Poll);
            }
            Command::NotFound(ctx) => {
                if let Some(m) = &self.metrics {
                    m.unknown_tenants(self.unknowns.counts());
                }
                let e = self.entries.entry(ctx.clone()).or_default();
                if e.busy || e.key.is_some() {
                    return;
                }
                e.failures += 1;
                let d = self
                    .policy
                    .after_failure(e.failures, None, &mut self.rng)
                    .min(self.policy.max_interval);
                self.schedule(ctx, d, Due::Poll);
            }
            Command::TakeOver(ctx, valid_until, spread) => {
                if self.entries.contains_key(&ctx) {
                    return;
                }
                let now = SystemTime::now();
                let d = match valid_until {
                    Some(v) if v > now => self.policy.after_success(Some(v), now, &mut self.rng),
                    // Overdue: spread out, so a takeover is no burst.
                    Some(_) => spread.mul_f64(self.rng.random::<f64>()),
                    // Never answered yet (just tracked): as any new tenant.
                    None => self.policy.initial_spread.mul_f64(self.rng.random::<f64>()),
                };
                self.schedule(ctx, d, Due::Poll);
            }
            Command::Confirm(ctx) => {
                let e = self.entries.entry(ctx.clone()).or_default();
                e.settle = self.policy.settle_polls;
                if e.busy {
                    e.again = true;
                    return;
                }
                if let Some(k) = e.key.take() {
                    self.queue.remove(&k);
                }
                e.busy = true;
                self.ready.push_back((ctx, None));
            }
        }
    }

    fn schedule(&mut self, ctx: ContextId, delay: Duration, due: Due) {
        // DelayQueue panics past about two years; nothing here should wait
        // longer than a year, whatever a server or a flag says.
        let delay = delay.min(MAX_DELAY);
        let e = self.entries.entry(ctx.clone()).or_default();
        match e.key {
            Some(k) => {
                // Replace whatever was scheduled (a Forget or an older Poll).
                self.queue.remove(&k);
                e.key = Some(self.queue.insert((ctx, due), delay));
            }
            None => e.key = Some(self.queue.insert((ctx, due), delay)),
        }
    }

    fn expired(&mut self, ctx: ContextId, due: Due, deadline: tokio::time::Instant) {
        let Some(e) = self.entries.get_mut(&ctx) else {
            return;
        };
        e.key = None;
        match due {
            Due::Poll => {
                e.busy = true;
                self.ready.push_back((ctx, Some(deadline)));
            }
            Due::Forget => {
                e.busy = true;
                self.remove(ctx, Removal::Deleted);
            }
        }
    }

    /// Writes a removal, decided against the record it deletes: a
    /// notification applied in between (a restore) keeps the tenant.
    fn remove(&mut self, ctx: ContextId, which: Removal) {
        let ledger = Arc::clone(&self.ledger);
        self.removing.push(Box::pin(async move {
            let result = ledger.remove(ctx.clone(), which).await;
            (ctx, which, result)
        }));
    }

    /// What follows a removal's write.
    fn removed(&mut self, ctx: ContextId, which: Removal, result: Result<bool, WriteError>) {
        if let Some(e) = self.entries.get_mut(&ctx) {
            e.busy = false;
        }
        match (which, result) {
            (Removal::Deleted, Ok(true)) => {
                self.entries.remove(&ctx);
                tracing::info!(tenant = %ctx, "forgot a deleted tenant after its retention");
            }
            // No longer deleted (restored, say): never drop a tracked
            // tenant from the schedule; poll it instead.
            (Removal::Deleted, Ok(false)) => {
                if let Some(e) = self.entries.get_mut(&ctx) {
                    e.busy = true;
                }
                self.ready.push_back((ctx, None));
            }
            (Removal::UnknownUnnamed, Ok(true)) => {
                self.entries.remove(&ctx);
                self.unknowns.forgot(&ctx);
                tracing::info!(tenant = %ctx, "forgot a tenant SuperOffice does not know and nobody watches");
            }
            (Removal::UnknownUnnamed, Ok(false)) => {
                self.unknowns.remove(&ctx);
                self.schedule(ctx, self.policy.backoff_max, Due::Poll);
            }
            (which, Err(e)) => {
                tracing::warn!(tenant = %ctx, error = %e, "could not write a removal; trying again later");
                let due = match which {
                    Removal::Deleted => Due::Forget,
                    Removal::UnknownUnnamed => Due::Poll,
                };
                self.schedule(ctx, self.policy.backoff_base, due);
            }
        }
        if which == Removal::UnknownUnnamed
            && let Some(m) = &self.metrics
        {
            m.unknown_tenants(self.unknowns.counts());
        }
    }

    /// Asks SuperOffice, then writes the answer; the poller task goes on
    /// meanwhile. An answer to a request sent before a notification
    /// arrived does not undo that notification, so the write says when the
    /// request went out.
    fn start(&mut self, ctx: ContextId) {
        let source = Arc::clone(&self.source);
        let ledger = Arc::clone(&self.ledger);
        self.inflight.push(Box::pin(async move {
            let started = std::time::Instant::now();
            let result: FetchResult = source.fetch(&ctx).await;
            let took = started.elapsed();
            let now = SystemTime::now();
            let asked_at = now.checked_sub(took).unwrap_or(now);
            let answer = match result {
                Ok(FetchOutcome::Found(obs)) => {
                    let valid_until = obs.valid_until;
                    ledger
                        .apply_poll(ctx.clone(), PollResult::Observed(obs), asked_at, now)
                        .await
                        .map(|a| Answer::Found {
                            valid_until,
                            deleted: is_deleted(&a),
                        })
                        .map_err(PollFailure::Write)
                }
                Ok(FetchOutcome::NotFound) => ledger
                    .apply_poll(ctx.clone(), PollResult::NotFound, asked_at, now)
                    .await
                    .map(|a| Answer::NotFound {
                        deleted: is_deleted(&a),
                    })
                    .map_err(PollFailure::Write),
                Err(err) => {
                    let failed = PollResult::Failed(err.to_string());
                    if let Err(e) = ledger.apply_poll(ctx.clone(), failed, asked_at, now).await {
                        tracing::debug!(tenant = %ctx, error = %e, "could not record a failed poll");
                    }
                    Err(PollFailure::Fetch(err))
                }
            };
            (ctx, answer, took)
        }));
    }

    /// Forgets an unknown tenant nobody watches any more (a REMOVED to
    /// watchers of every tenant), unless something named it meanwhile: a
    /// notification, or an answer that it exists.
    fn forget_unknown(&mut self, ctx: &ContextId) {
        if let Some(e) = self.entries.get_mut(ctx) {
            e.busy = true;
        }
        self.remove(ctx.clone(), Removal::UnknownUnnamed);
    }

    /// What follows an answer: the next poll at ValidUntil (sooner while
    /// settling after a notification), or, for a DELETED tenant, its
    /// forgetting after the retention.
    fn after_answer(
        &mut self,
        deleted: bool,
        valid_until: Option<SystemTime>,
        now: SystemTime,
        settling: bool,
    ) -> (Duration, Due) {
        if deleted && !settling {
            return (self.policy.deleted_retention, Due::Forget);
        }
        let d = self.policy.after_success(valid_until, now, &mut self.rng);
        if settling {
            (d.min(self.policy.settle_interval), Due::Poll)
        } else {
            (d, Due::Poll)
        }
    }

    fn finish(&mut self, ctx: ContextId, result: Result<Answer, PollFailure>) {
        let now = SystemTime::now();
        let Some(e) = self.entries.get_mut(&ctx) else {
            return;
        };
        e.busy = false;
        let again = std::mem::take(&mut e.again);
        let settling = e.settle > 0;
        e.settle = e.settle.saturating_sub(1);
        let settle = |d: Duration, interval: Duration| if settling { d.min(interval) } else { d };
        let (delay, due) = match result {
            Ok(Answer::Found {
                valid_until,
                deleted,
            }) => {
                e.failures = 0;
                // A real tenant after all: tracked like any other now.
                self.unknowns.remove(&ctx);
                self.after_answer(deleted, valid_until, now, settling)
            }
            Ok(Answer::NotFound { deleted }) => {
                e.failures += 1;
                let failures = e.failures;
                if deleted {
                    // Deleted, and SuperOffice has forgotten it too.
                    self.after_answer(true, None, now, settling)
                } else {
                    let d = self
                        .policy
                        .after_failure(failures, None, &mut self.rng)
                        .min(self.policy.max_interval);
                    let elsewhere = self.ledger.watched_elsewhere(&ctx);
                    if elsewhere {
                        // Tracked for another replica's watcher: this
                        // replica polls it, so it keeps the books on it.
                        self.unknowns.admit(&ctx);
                    }
                    let watched = self.store.watched_by_name(&ctx) || elsewhere;
                    match self
                        .unknowns
                        .verdict(&ctx, watched, std::time::Instant::now())
                    {
                        Verdict::NotJunk => (settle(d, self.policy.settle_interval), Due::Poll),
                        // Asked again by the time the grace is over, so
                        // it is forgotten then, not a backoff later.
                        Verdict::Keep(left) => (d.min(left), Due::Poll),
                        Verdict::Forget => {
                            self.forget_unknown(&ctx);
                            return;
                        }
                    }
                }
            }
            Err(failure) => {
                e.failures += 1;
                let failures = e.failures;
                let retry_after = match &failure {
                    PollFailure::Fetch(FetchError::RateLimited(r)) => *r,
                    _ => None,
                };
                match &failure {
                    PollFailure::Fetch(err) => {
                        tracing::warn!(tenant = %ctx, failures, error = %err, "poll failed; keeping the last known state")
                    }
                    PollFailure::Write(err) => {
                        tracing::warn!(tenant = %ctx, failures, error = %err, "could not write a poll's answer; asking again later")
                    }
                }
                (
                    self.policy
                        .after_failure(failures, retry_after, &mut self.rng),
                    Due::Poll,
                )
            }
        };
        if again && due == Due::Poll {
            if let Some(e) = self.entries.get_mut(&ctx) {
                e.busy = true;
            }
            self.ready.push_back((ctx, None));
        } else {
            self.schedule(ctx, delay, due);
        }
    }
}

#[cfg(test)]
mod tests;
