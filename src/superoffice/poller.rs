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
    core::ledger::{Fleet, Ledger, Removal, WriteError},
    core::store::{PollApplied, PollResult, Store},
    core::tenant::{ContextId, TenantState},
    metrics::Metrics,
    superoffice::{
        FetchError, FetchOutcome, FetchResult, StateSource,
        budget::{Budget, Class},
        unknowns::{Unknowns, Verdict},
    },
};

/// Lines a minute, at most, saying that one tenant started failing or
/// recovered; the minute's summary counts the rest.
const LOG_LINES: u32 = 20;

/// How often the failures are summed up in the log while any fail and
/// something changed; while nothing changes, the interval doubles up to
/// `SUMMARY_MAX`.
const SUMMARY_EVERY: Duration = Duration::from_secs(60);
const SUMMARY_MAX: Duration = Duration::from_secs(3600);

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
    /// Among replicas: the tenant's partition was lost while the request
    /// waited for its permit, so it was not sent; its new poller has it.
    NotOurs,
}

impl PollFailure {
    fn kind(&self) -> &'static str {
        match self {
            Self::Fetch(e) => e.kind(),
            Self::Write(_) => "not_stored",
            Self::NotOurs => "not_ours",
        }
    }
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
    /// Tenants whose last poll failed, with the cause.
    failing: HashMap<ContextId, &'static str>,
    /// Lines logged about single tenants this minute, and those left out.
    logged: (u32, u32),
    /// Whether a tenant started failing or recovered since the last
    /// summary, and the interval of summaries now.
    failing_changed: bool,
    summary_every: Duration,
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
            failing: HashMap::new(),
            logged: (0, 0),
            failing_changed: false,
            summary_every: SUMMARY_EVERY,
            unknowns,
            unknown_polling: HashSet::new(),
            first_round: HashSet::new(),
            first_round_done: None,
        };
        (poller, PollerHandle { tx })
    }

    /// How many requests for unknown tenants may be in flight at once: an
    /// eighth of the budget in force, at least one.
    fn unknown_share(&self, in_force: usize) -> usize {
        (in_force / 8).max(1)
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
        let summary = tokio::time::sleep(SUMMARY_EVERY);
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
                // Tenants nobody knows get at most an eighth of the
                // requests in flight; the rest of theirs wait a moment.
                if self.unknowns.contains(&ctx) {
                    // Asked for only while a stream watches it: one that
                    // nobody watches is parked until the sweep forgets it
                    // (or finds it watched again).
                    if !self.store.watched_by_name(&ctx) && !self.fleet.watched_elsewhere(&ctx) {
                        if let Some(e) = self.entries.get_mut(&ctx) {
                            e.busy = false;
                        }
                        continue;
                    }
                    if self.unknown_polling.len() >= self.unknown_share(in_force) {
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
                () = &mut summary, if !self.failing.is_empty() || self.logged.1 > 0 => {
                    self.summarise();
                    summary.as_mut().reset(tokio::time::Instant::now() + self.summary_every);
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
        self.failing.remove(ctx);
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

    /// The timer that keeps unknown tenants free: one no stream watches is
    /// not polled any more, and is forgotten once the grace has passed; one
    /// watched again is polled again.
    fn sweep_unknowns(&mut self) {
        let now = std::time::Instant::now();
        for ctx in self.unknowns.list() {
            let watched = self.store.watched_by_name(&ctx) || self.fleet.watched_elsewhere(&ctx);
            let Some(e) = self.entries.get_mut(&ctx) else {
                // Not polled here (another replica's, or just dropped):
                // only the books to keep.
                if self.unknowns.verdict(&ctx, watched, now) == Verdict::Forget {
                    self.unknowns.remove(&ctx);
                }
                continue;
            };
            if e.busy {
                // In flight or being forgotten: decided when it is back.
                continue;
            }
            let parked = e.key.is_none();
            match self.unknowns.verdict(&ctx, watched, now) {
                Verdict::NotJunk => {}
                Verdict::Keep(_) if watched => {
                    if parked {
                        self.schedule(ctx, Duration::ZERO, Due::Poll);
                    }
                }
                Verdict::Keep(_) => {
                    if let Some(k) = e.key.take() {
                        self.queue.remove(&k);
                    }
                }
                Verdict::Forget => self.forget_unknown(&ctx),
            }
        }
        if let Some(m) = &self.metrics {
            m.unknown_tenants(self.unknowns.counts());
        }
    }

    /// Whether a line about one tenant may go to the log this minute.
    fn may_log(&mut self) -> bool {
        if self.logged.0 < LOG_LINES {
            self.logged.0 += 1;
            true
        } else {
            self.logged.1 += 1;
            false
        }
    }

    /// The minute's summary of failing polls.
    fn summarise(&mut self) {
        let (_, left_out) = std::mem::take(&mut self.logged);
        self.summary_every = if std::mem::take(&mut self.failing_changed) {
            SUMMARY_EVERY
        } else {
            (self.summary_every * 2).min(SUMMARY_MAX)
        };
        if self.failing.is_empty() && left_out == 0 {
            return;
        }
        let mut by_cause = std::collections::BTreeMap::<&str, usize>::new();
        for cause in self.failing.values() {
            *by_cause.entry(cause).or_default() += 1;
        }
        let causes = by_cause
            .iter()
            .map(|(c, n)| format!("{c}: {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        tracing::warn!(
            failing = self.failing.len(),
            causes = %causes,
            lines_left_out = left_out,
            "tenants whose polls are failing now; each keeps its last known state, marked stale once its ValidUntil passes"
        );
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
                self.failing.remove(&ctx);
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
                self.failing.remove(&ctx);
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
    fn start(&mut self, ctx: ContextId, class: Class) {
        let source = Arc::clone(&self.source);
        let ledger = Arc::clone(&self.ledger);
        let fleet = Arc::clone(&self.fleet);
        let budget = Arc::clone(&self.budget);
        self.inflight.push(Box::pin(async move {
            // Its turn in the budget; without a deadline it is never
            // refused.
            let permit = match budget.acquire(class, None).await {
                Ok(p) => p,
                Err(e) => {
                    let e = FetchError::BudgetFull(e.to_string());
                    return (ctx, Err(PollFailure::Fetch(e)), Duration::ZERO);
                }
            };
            // Among replicas, the wait may have outlasted the lease: a
            // request sent now would be a second poller's.
            if !fleet.polls(&ctx) {
                return (ctx, Err(PollFailure::NotOurs), Duration::ZERO);
            }
            let started = std::time::Instant::now();
            let result: FetchResult = source.fetch(&ctx).await;
            let took = started.elapsed();
            permit.report(&result);
            drop(permit);
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
            // Its scheduled polls are cancelled now, not answered later.
            if let Some(k) = e.key.take() {
                self.queue.remove(&k);
            }
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

    /// Logs a tenant starting to fail or recovering (within the minute's
    /// allowance); the summary counts the rest.
    fn note_outcome(&mut self, ctx: &ContextId, result: &Result<Answer, PollFailure>) {
        match result {
            Ok(_) => {
                let Some(cause) = self.failing.remove(ctx) else {
                    return;
                };
                self.failing_changed = true;
                if self.may_log() {
                    tracing::info!(tenant = %ctx, was = cause, "polls of this tenant are answered again");
                }
            }
            Err(failure) => {
                if self.failing.insert(ctx.clone(), failure.kind()).is_some() {
                    return;
                }
                self.failing_changed = true;
                if self.may_log() {
                    match failure {
                        PollFailure::Fetch(err) => {
                            tracing::warn!(tenant = %ctx, error = %err, "polls of this tenant started failing; keeping its last known state")
                        }
                        PollFailure::Write(err) => {
                            tracing::warn!(tenant = %ctx, error = %err, "could not write a poll's answer; asking again later")
                        }
                        PollFailure::NotOurs => {}
                    }
                }
            }
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
        self.note_outcome(&ctx, &result);
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
