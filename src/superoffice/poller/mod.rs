//! The poller: one task and one delay queue for every tracked tenant.
//!
//! A tenant is polled again at its ValidUntil, clamped to
//! `[min_interval, max_interval]` and pulled a little earlier by jitter, so
//! that tenants which came due together (a restart) drift apart. Failures
//! back off exponentially up to a cap; a 429's Retry-After is honoured.
//! Every request takes a permit from the budget toward SuperOffice
//! (`budget`), shared with the lookups; the rest wait their turn in due
//! order. A DELETED tenant is no longer polled and is forgotten after
//! `deleted_retention`. An unknown tenant no stream watches is not polled,
//! and is forgotten by a timer once `--forget-unknown-after` has passed.
//!
//! Failures are logged in proportion: a line when a tenant starts failing
//! and one when it recovers (at most `LOG_LINES` of them a minute), and a
//! summary a minute of how many fail, by cause; the metrics count the rest.
//!
//! This file holds the schedule: the task's loop, its commands, and what
//! follows an answer. `handle.rs` is how others send it work,
//! `request.rs` one poll, `removal.rs` the removals it writes,
//! `unknown.rs` its treatment of tenants SuperOffice does not know,
//! `failures.rs` the log of failing polls, `policy.rs` the intervals.

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
    core::ledger::{Fleet, Ledger, Removal},
    core::store::Store,
    core::tenant::ContextId,
    metrics::Metrics,
    superoffice::{
        FetchError, StateSource,
        budget::{Budget, Class},
        unknowns::{Unknowns, Verdict},
    },
};

mod failures;
mod handle;
mod policy;
mod removal;
mod request;
mod unknown;

use failures::FailureLog;
use handle::Command;
pub use handle::PollerHandle;
pub use policy::PollPolicy;
use removal::Removed;
use request::{Answer, PollFailure, Polled};

/// The longest the poller ever waits to poll or forget a tenant.
pub const MAX_DELAY: Duration = Duration::from_secs(365 * 24 * 3600);

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
    /// Which tenants this process polls on its schedule (all of them
    /// alone; those of its partitions among replicas).
    fleet: Arc<dyn Fleet>,
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
    /// The budget toward SuperOffice, shared with the lookups.
    budget: Arc<Budget>,
    /// Tenants whose polls fail now, and the log's allowance for them.
    failures: FailureLog,
    /// Tenants SuperOffice does not know, tracked only for watchers.
    unknowns: Arc<Unknowns>,
    /// Those of them with a request in flight.
    unknown_polling: HashSet<ContextId>,
    /// Tenants whose first poll is awaited by readiness.
    first_round: HashSet<ContextId>,
    first_round_done: Option<watch::Sender<bool>>,
}

impl Poller {
    /// `ledger` and `fleet` are the mode's (see `Backing`): the store and
    /// `Solo` alone, the shared log among replicas.
    pub fn new(
        store: Arc<Store>,
        ledger: Arc<dyn Ledger>,
        fleet: Arc<dyn Fleet>,
        source: Arc<dyn StateSource>,
        policy: PollPolicy,
        budget: Arc<Budget>,
    ) -> (Self, PollerHandle) {
        let (tx, rx) = mpsc::unbounded_channel();
        let unknowns = Arc::new(Unknowns::new(
            policy.max_unknown,
            policy.forget_unknown_after,
        ));
        let poller = Self {
            ledger,
            fleet,
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
            budget,
            failures: FailureLog::new(),
            unknowns,
            unknown_polling: HashSet::new(),
            first_round: HashSet::new(),
            first_round_done: None,
        };
        (poller, PollerHandle { tx })
    }

    /// The unknown tenants tracked for watchers, shared with the tracker
    /// that admits them.
    pub(crate) fn unknowns(&self) -> Arc<Unknowns> {
        Arc::clone(&self.unknowns)
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
        // Unknown tenants nobody watches stop being polled, and are
        // forgotten, by this timer: never by asking SuperOffice again.
        let every = (self.policy.forget_unknown_after / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(5));
        let mut sweep = tokio::time::interval(every);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let summary = tokio::time::sleep(self.failures.every());
        tokio::pin!(summary);
        loop {
            // As many in flight (or waiting for a permit) as the budget
            // lets this process send: the lookups share it, and come first.
            let in_force = self.budget.in_force();
            while self.inflight.len() < in_force {
                let Some((ctx, due)) = self.ready.pop_front() else {
                    break;
                };
                // Among replicas, a tenant whose partition another replica
                // holds (or that this one lost) is not ours to poll: drop it
                // from the schedule; its new poller has it.
                if !self.fleet.polls(&ctx) {
                    self.drop_tenant(&ctx);
                    continue;
                }
                if self.unknowns.contains(&ctx) && !self.unknown_may_go(&ctx, in_force) {
                    continue;
                }
                if let (Some(m), Some(due)) = (&self.metrics, due) {
                    m.poll_lateness(due.elapsed());
                }
                let class = self.class_of(&ctx, due.is_none());
                self.start(ctx, class);
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some((ctx, result, took)) = self.inflight.next(), if !self.inflight.is_empty() => {
                    if let Some(m) = &self.metrics {
                        let outcome = match &result {
                            Ok(Answer::Found { .. }) => "found",
                            Ok(Answer::NotFound { .. }) => "not_found",
                            Err(f) => f.kind(),
                        };
                        // Not sent at all: no poll to count.
                        if outcome != "not_ours" {
                            m.poll(outcome, took);
                        }
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
                _ = sweep.tick(), if !self.unknowns.is_empty() => self.sweep_unknowns(),
                () = &mut summary, if self.failures.pending() => {
                    self.failures.summarise();
                    summary.as_mut().reset(tokio::time::Instant::now() + self.failures.every());
                }
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

    /// Drops a tenant from this poller's books (its new poller has it).
    fn drop_tenant(&mut self, ctx: &ContextId) {
        if let Some(k) = self.entries.remove(ctx).and_then(|e| e.key) {
            self.queue.remove(&k);
        }
        self.unknowns.remove(ctx);
        self.failures.forget(ctx);
    }

    /// Which of the budget's lines a poll waits in: behind lookups, and
    /// ahead of polls on schedule when its answer is overdue (a record
    /// run out, a notification to confirm, a tenant never answered).
    fn class_of(&self, ctx: &ContextId, unscheduled: bool) -> Class {
        if self.unknowns.contains(ctx) {
            return Class::Routine;
        }
        if unscheduled {
            return Class::Learn;
        }
        let now = SystemTime::now();
        match self.store.get(ctx) {
            Some(r) if !r.stale && r.valid_until.is_some_and(|v| v > now) => Class::Routine,
            _ => Class::Learn,
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
        if matches!(result, Err(PollFailure::NotOurs)) {
            self.drop_tenant(&ctx);
            return;
        }
        if !self.entries.contains_key(&ctx) {
            return;
        }
        self.failures.note(&ctx, &result);
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
                    let elsewhere = self.fleet.watched_elsewhere(&ctx);
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
                tracing::debug!(tenant = %ctx, failures, cause = failure.kind(), "poll failed");
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
