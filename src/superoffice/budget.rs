//! One budget for everything tenant-status sends to SuperOffice: polls,
//! first lookups, a watch's untracked names, polls of unknown names and
//! JWKS fetches all take a permit from it before they go out.
//!
//! SuperOffice's state API serves every vendor, and it is the vendor it
//! rate limits, so what callers ask for must not turn into requests one
//! for one. The budget is:
//!
//! - **a bound on requests in flight** (`--superoffice-max-in-flight`),
//!   and optionally **a rate** (`--superoffice-max-rate`, a token bucket
//!   one second deep). Among replicas both are fleet-wide figures: each
//!   replica takes its share, the figure divided by the live members.
//! - **in order of need**: lookups a caller waits for (and JWKS fetches)
//!   first; then what should be known and is not (a watch's new names,
//!   polls whose answer has run out); then polls on schedule. In each
//!   class, first come first served. The poller keeps unknown
//!   names to a small share of its own.
//! - **polite under a 429**: one answer of 429 pauses every request for
//!   its Retry-After (or a backoff, doubling, when it gives none), and
//!   halves the bound; answers that are not 429 grow it back by one per
//!   bound's worth of answers (AIMD, as TCP does).
//!
//! A lookup waits at most `--superoffice-max-wait` for a permit: past it,
//! the caller is told the budget is full rather than kept waiting.
//!
//! One room although it is long: the bound, the rate, the three lines, the
//! pause after a 429 and the replica's share are one state under one lock
//! (`Inner`), and each permit given and each answer reported changes
//! several of them at once; split, every part would reach into that lock.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{sync::oneshot, time::Instant};

use crate::{
    metrics::Metrics,
    superoffice::{FetchError, FetchResult},
};

/// Who asks, in order of precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    /// A caller waits for the answer: a first lookup (GetTenantState), a
    /// JWKS fetch for a notification. Waits at most `max_wait`.
    Lookup = 0,
    /// Something is not known and should be: a watch's untracked name (its
    /// stream is open and learns it when it comes), a poll whose record
    /// has run out, a notification's confirming poll.
    Learn = 1,
    /// A poll on schedule, its record still valid.
    Routine = 2,
}

/// The budget's settings (fleet-wide figures among replicas).
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_in_flight: usize,
    /// Requests a second; `None`: no bound but the one in flight.
    pub max_rate: Option<f64>,
    /// The longest a lookup waits for a permit.
    pub max_wait: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_in_flight: 32,
            max_rate: None,
            max_wait: Duration::from_secs(5),
        }
    }
}

/// A lookup waited its whole `--superoffice-max-wait` for a permit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "tenant-status's request budget toward SuperOffice is full ({in_flight} requests in flight, the most this replica may have; waited {waited:?}){paused}"
)]
pub struct BudgetFull {
    pub in_flight: usize,
    pub waited: Duration,
    /// Set when SuperOffice's own rate limiting paused every request.
    pub paused: String,
}

/// How many counts in a row must find fewer members before each replica's
/// share grows (the lease keeper counts every third of a lease TTL, so
/// about one TTL).
const SHRINK_AFTER: u32 = 3;

/// The first pause after a 429 that names no Retry-After, doubling on each
/// one after it up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

struct Waiter {
    id: u64,
    tx: oneshot::Sender<()>,
}

struct Inner {
    /// Live replicas sharing the fleet-wide figures (1 alone).
    members: usize,
    /// A smaller count seen, and in how many counts in a row: a share
    /// grows only once the fleet has looked smaller for `SHRINK_AFTER`
    /// counts, so a member whose key lapsed for a moment (a slow renewal)
    /// does not let the others take its share while it still sends.
    fewer: Option<(usize, u32)>,
    /// The bound AIMD has arrived at, up to the fleet-wide figure; the
    /// bound in force is the smaller of it and this replica's share.
    aimd: f64,
    /// Answers since the bound last grew.
    answers: usize,
    in_flight: usize,
    queues: [VecDeque<Waiter>; 3],
    next_id: u64,
    paused_until: Option<Instant>,
    /// The pause the next 429 without Retry-After brings.
    backoff: Duration,
    /// When the bound was last halved: a 429 answering a request sent
    /// before then is the same congestion, and halves nothing more.
    decreased_at: Option<Instant>,
    tokens: f64,
    refilled: Instant,
    /// A timer task is set to hand out permits at this moment (the end of
    /// a pause, or the next token).
    wake_at: Option<Instant>,
}

/// The budget; shared by the poller, the lookups and the JWKS fetcher.
pub struct Budget {
    limits: Limits,
    inner: Mutex<Inner>,
    metrics: Option<Arc<Metrics>>,
    waited_nanos: AtomicU64,
    peak: AtomicU64,
}

impl Budget {
    pub fn new(limits: Limits) -> Arc<Self> {
        Self::build(limits, None)
    }

    pub fn with_metrics(limits: Limits, metrics: Arc<Metrics>) -> Arc<Self> {
        Self::build(limits, Some(metrics))
    }

    fn build(limits: Limits, metrics: Option<Arc<Metrics>>) -> Arc<Self> {
        let now = Instant::now();
        let budget = Arc::new(Self {
            inner: Mutex::new(Inner {
                members: 1,
                fewer: None,
                aimd: limits.max_in_flight.max(1) as f64,
                answers: 0,
                in_flight: 0,
                queues: [VecDeque::new(), VecDeque::new(), VecDeque::new()],
                next_id: 0,
                paused_until: None,
                backoff: FIRST_BACKOFF,
                decreased_at: None,
                tokens: limits.max_rate.unwrap_or(0.0).max(1.0),
                refilled: now,
                wake_at: None,
            }),
            limits,
            metrics,
            waited_nanos: AtomicU64::new(0),
            peak: AtomicU64::new(0),
        });
        budget.report(&budget.lock());
        budget
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// This replica's share of a fleet-wide figure: at least one request.
    fn share(&self, inner: &Inner) -> usize {
        (self.limits.max_in_flight / inner.members.max(1)).max(1)
    }

    /// The bound in force now: this replica's share, or less after 429s.
    fn bound(&self, inner: &Inner) -> usize {
        (inner.aimd.floor() as usize).clamp(1, self.share(inner))
    }

    fn rate(&self, inner: &Inner) -> Option<f64> {
        self.limits
            .max_rate
            .map(|r| (r / inner.members.max(1) as f64).max(f64::MIN_POSITIVE))
    }

    /// The requests this replica may have in flight now.
    pub fn in_force(&self) -> usize {
        let inner = self.lock();
        self.bound(&inner)
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    /// The most requests ever in flight at once here.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed) as usize
    }

    /// Time spent waiting for permits, in all.
    pub fn waited(&self) -> Duration {
        Duration::from_nanos(self.waited_nanos.load(Ordering::Relaxed))
    }

    /// Among replicas: how many share the fleet-wide figures, as counted
    /// now. More members shrink the share at once; fewer grow it only
    /// after `SHRINK_AFTER` counts in a row agree.
    pub fn set_members(self: &Arc<Self>, members: usize) {
        let members = members.max(1);
        let mut inner = self.lock();
        if members < inner.members {
            let seen = match inner.fewer {
                Some((n, times)) if n == members => times + 1,
                _ => 1,
            };
            inner.fewer = Some((members, seen));
            if seen < SHRINK_AFTER {
                return;
            }
        }
        inner.fewer = None;
        if inner.members != members {
            inner.members = members;
            tracing::info!(
                members = inner.members,
                in_flight = self.bound(&inner),
                "SuperOffice request budget: this replica's share changed"
            );
            self.dispatch(&mut inner);
            self.report(&inner);
        }
    }

    /// A permit to send one request, waiting at most `deadline` (`None`:
    /// as long as it takes).
    pub async fn acquire(
        self: &Arc<Self>,
        class: Class,
        deadline: Option<Duration>,
    ) -> Result<Permit, BudgetFull> {
        let started = Instant::now();
        let mut waiting = {
            let mut inner = self.lock();
            if self.try_take(&mut inner, class) {
                return Ok(Permit::new(self));
            }
            let id = inner.next_id;
            inner.next_id += 1;
            let (tx, rx) = oneshot::channel();
            inner.queues[class as usize].push_back(Waiter { id, tx });
            self.dispatch(&mut inner);
            Waiting {
                budget: Arc::clone(self),
                class,
                id,
                rx: Some(rx),
            }
        };
        let rx = waiting.rx.as_mut().expect("set above");
        let granted = match deadline {
            Some(d) => tokio::time::timeout(d, rx).await.ok(),
            None => Some(rx.await),
        };
        let waited = started.elapsed();
        self.waited_nanos
            .fetch_add(waited.as_nanos() as u64, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.budget_waited(waited);
        }
        match granted {
            Some(Ok(())) => {
                waiting.rx = None;
                Ok(Permit::new(self))
            }
            // The sender is dropped only with the budget: not here, since
            // `waiting` holds it.
            Some(Err(_)) => Err(self.full(waited)),
            None => {
                // Timed out; but a permit may have been handed over since.
                if waiting.give_up() {
                    Ok(Permit::new(self))
                } else {
                    if let Some(m) = &self.metrics {
                        m.budget_refused();
                    }
                    Err(self.full(waited))
                }
            }
        }
    }

    fn full(&self, waited: Duration) -> BudgetFull {
        let inner = self.lock();
        let paused = match inner.paused_until {
            Some(until) if until > Instant::now() => format!(
                "; SuperOffice answered 429, so nothing is sent for another {:?}",
                until - Instant::now()
            ),
            _ => String::new(),
        };
        BudgetFull {
            in_flight: inner.in_flight,
            waited,
            paused,
        }
    }

    fn refill(&self, inner: &mut Inner, now: Instant) {
        if let Some(rate) = self.rate(inner) {
            let elapsed = now.saturating_duration_since(inner.refilled).as_secs_f64();
            // A bucket one second deep (at least one token): a burst is at
            // most a second's worth.
            inner.tokens = (inner.tokens + elapsed * rate).min(rate.max(1.0));
            inner.refilled = now;
        }
    }

    /// Whether a request may go out now, apart from who is waiting.
    fn open(&self, inner: &mut Inner, now: Instant) -> bool {
        if inner.paused_until.is_some_and(|u| u > now) {
            return false;
        }
        if inner.in_flight >= self.bound(inner) {
            return false;
        }
        self.refill(inner, now);
        self.limits.max_rate.is_none() || inner.tokens >= 1.0
    }

    fn take(&self, inner: &mut Inner) {
        inner.in_flight += 1;
        if self.limits.max_rate.is_some() {
            inner.tokens -= 1.0;
        }
        self.peak
            .fetch_max(inner.in_flight as u64, Ordering::Relaxed);
        self.report(inner);
    }

    /// Takes a permit at once, if one is free and nobody of the same or a
    /// higher class is waiting.
    fn try_take(&self, inner: &mut Inner, class: Class) -> bool {
        let ahead = inner.queues[..=class as usize]
            .iter()
            .any(|q| !q.is_empty());
        if ahead || !self.open(inner, Instant::now()) {
            return false;
        }
        self.take(inner);
        true
    }

    /// Hands permits to waiters, in class order, while the budget allows;
    /// sets a timer when only time (a pause, the rate) holds them back.
    fn dispatch(self: &Arc<Self>, inner: &mut Inner) {
        loop {
            let now = Instant::now();
            let Some(q) = inner.queues.iter().position(|q| !q.is_empty()) else {
                return;
            };
            if !self.open(inner, now) {
                break;
            }
            let waiter = inner.queues[q].pop_front().expect("not empty");
            // A waiter gone (its caller cancelled) takes nothing.
            if waiter.tx.send(()).is_ok() {
                self.take(inner);
            }
        }
        // Blocked: by requests in flight (a permit's return dispatches
        // again), or by time.
        let now = Instant::now();
        let at = match inner.paused_until {
            Some(u) if u > now => Some(u),
            _ => match self.rate(inner) {
                Some(rate) if inner.tokens < 1.0 && inner.in_flight < self.bound(inner) => {
                    Some(now + Duration::from_secs_f64((1.0 - inner.tokens) / rate))
                }
                _ => None,
            },
        };
        if let Some(at) = at
            && inner.wake_at.is_none_or(|w| w > at)
        {
            inner.wake_at = Some(at);
            let budget = Arc::clone(self);
            tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                let mut inner = budget.lock();
                if inner.wake_at == Some(at) {
                    inner.wake_at = None;
                }
                budget.dispatch(&mut inner);
            });
        }
    }

    fn release(self: &Arc<Self>) {
        let mut inner = self.lock();
        inner.in_flight = inner.in_flight.saturating_sub(1);
        self.dispatch(&mut inner);
        self.report(&inner);
    }

    /// SuperOffice answered 429 to a request sent at `sent`: nothing goes
    /// out for `retry_after` (or a backoff), and the bound halves, once for
    /// all the requests that were in flight together.
    fn rate_limited(self: &Arc<Self>, retry_after: Option<Duration>, sent: Instant) {
        let now = Instant::now();
        let mut inner = self.lock();
        let pause = match retry_after {
            Some(d) => d.min(MAX_BACKOFF * 10),
            None => {
                let d = inner.backoff;
                inner.backoff = (d * 2).min(MAX_BACKOFF);
                d
            }
        };
        let until = now + pause;
        if inner.paused_until.is_none_or(|u| u < until) {
            inner.paused_until = Some(until);
        }
        if inner.decreased_at.is_none_or(|at| sent >= at) {
            let share = self.share(&inner) as f64;
            inner.aimd = (inner.aimd.min(share) / 2.0).max(1.0);
            inner.answers = 0;
            inner.decreased_at = Some(now);
            tracing::warn!(
                pause = ?pause,
                in_flight = self.bound(&inner),
                "SuperOffice is rate limiting (HTTP 429): every request waits, and fewer go out at once"
            );
            if let Some(m) = &self.metrics {
                m.budget_rate_limited(pause);
            }
        }
        self.dispatch(&mut inner);
        self.report(&inner);
    }

    /// SuperOffice answered (anything but 429): the bound grows back by
    /// one for each bound's worth of answers.
    fn answered(&self) {
        let mut inner = self.lock();
        inner.backoff = FIRST_BACKOFF;
        let share = self.share(&inner) as f64;
        if inner.aimd >= self.limits.max_in_flight as f64 {
            return;
        }
        inner.answers += 1;
        if inner.answers as f64 >= inner.aimd.min(share) {
            inner.answers = 0;
            inner.aimd = (inner.aimd + 1.0).min(self.limits.max_in_flight as f64);
            self.report(&inner);
        }
    }

    fn report(&self, inner: &Inner) {
        if let Some(m) = &self.metrics {
            m.budget_state(self.bound(inner), inner.in_flight);
        }
    }
}

/// A waiter in line; gives back a permit handed to a caller that has gone.
struct Waiting {
    budget: Arc<Budget>,
    class: Class,
    id: u64,
    rx: Option<oneshot::Receiver<()>>,
}

impl Waiting {
    /// Leaves the line. True when a permit was handed over meanwhile (the
    /// caller has it now).
    fn give_up(&mut self) -> bool {
        let Some(mut rx) = self.rx.take() else {
            return false;
        };
        let mut inner = self.budget.lock();
        let q = &mut inner.queues[self.class as usize];
        if let Some(i) = q.iter().position(|w| w.id == self.id) {
            q.remove(i);
            return false;
        }
        // Not in line, so handed over (under the lock): it is in `rx`.
        rx.try_recv().is_ok()
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.rx.is_some() && self.give_up() {
            self.budget.release();
        }
    }
}

/// Leave to send one request; given back when dropped.
pub struct Permit {
    budget: Arc<Budget>,
    /// When it was handed out: about when its request went.
    granted: Instant,
}

impl Permit {
    fn new(budget: &Arc<Budget>) -> Self {
        Self {
            budget: Arc::clone(budget),
            granted: Instant::now(),
        }
    }

    /// SuperOffice answered this request 429 (with its Retry-After, if
    /// any): every request slows.
    pub fn rate_limited(&self, retry_after: Option<Duration>) {
        self.budget.rate_limited(retry_after, self.granted);
    }

    /// SuperOffice answered this request, not 429: the bound may grow back.
    pub fn answered(&self) {
        self.budget.answered();
    }

    /// Tells the budget how a state API request went: a 429 slows every
    /// request, an answer lets the bound grow back, and a request that got
    /// no usable answer (a timeout, a 5xx) tells nothing.
    pub fn report(&self, result: &FetchResult) {
        match result {
            Ok(_) => self.answered(),
            Err(FetchError::RateLimited(retry_after)) => self.rate_limited(*retry_after),
            Err(_) => {}
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.budget.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(n: usize) -> Limits {
        Limits {
            max_in_flight: n,
            max_rate: None,
            max_wait: Duration::from_secs(5),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_in_flight_than_the_bound_and_urgent_first() {
        let b = Budget::new(limits(2));
        let p1 = b.acquire(Class::Routine, None).await.unwrap();
        let _p2 = b.acquire(Class::Routine, None).await.unwrap();
        assert_eq!(b.in_flight(), 2);
        let order = Arc::new(Mutex::new(Vec::new()));
        let routine = {
            let (b, order) = (Arc::clone(&b), Arc::clone(&order));
            tokio::spawn(async move {
                let p = b.acquire(Class::Routine, None).await.unwrap();
                order.lock().unwrap().push("routine");
                p
            })
        };
        tokio::task::yield_now().await;
        let urgent = {
            let (b, order) = (Arc::clone(&b), Arc::clone(&order));
            tokio::spawn(async move {
                let p = b.acquire(Class::Lookup, None).await.unwrap();
                order.lock().unwrap().push("urgent");
                p
            })
        };
        tokio::task::yield_now().await;
        assert_eq!(b.in_flight(), 2, "both wait");
        drop(p1);
        let pu = urgent.await.unwrap();
        assert_eq!(*order.lock().unwrap(), ["urgent"], "urgent went first");
        drop(pu);
        let _pr = routine.await.unwrap();
        assert_eq!(*order.lock().unwrap(), ["urgent", "routine"]);
        assert_eq!(b.peak(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lookup_waits_no_longer_than_its_deadline_and_a_cancelled_one_leaks_nothing() {
        let b = Budget::new(limits(1));
        let held = b.acquire(Class::Routine, None).await.unwrap();
        let err = b
            .acquire(Class::Lookup, Some(Duration::from_secs(5)))
            .await
            .err()
            .unwrap();
        assert_eq!(err.waited, Duration::from_secs(5));
        assert!(
            err.to_string()
                .contains("budget toward SuperOffice is full")
        );
        // A waiter whose caller goes away is dropped from the line.
        let gone =
            tokio::time::timeout(Duration::from_millis(10), b.acquire(Class::Lookup, None)).await;
        assert!(gone.is_err());
        drop(held);
        assert_eq!(b.in_flight(), 0, "nothing handed to the cancelled waiter");
        let _again = b.acquire(Class::Lookup, None).await.unwrap();
        assert_eq!(b.in_flight(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_pauses_everyone_and_halves_the_bound_which_grows_back() {
        let b = Budget::new(limits(8));
        let p1 = b.acquire(Class::Lookup, None).await.unwrap();
        let p2 = b.acquire(Class::Routine, None).await.unwrap();
        tokio::time::advance(Duration::from_millis(100)).await;
        p1.rate_limited(Some(Duration::from_secs(2)));
        drop(p1);
        assert_eq!(b.in_force(), 4);
        // Another 429 for a request sent with the first: the same
        // congestion, no second halving.
        p2.rate_limited(Some(Duration::from_secs(1)));
        drop(p2);
        assert_eq!(b.in_force(), 4);
        let t0 = Instant::now();
        let p = b.acquire(Class::Lookup, None).await.unwrap();
        assert_eq!(
            t0.elapsed(),
            Duration::from_secs(2),
            "waited out Retry-After"
        );
        for _ in 0..4 {
            p.answered();
        }
        assert_eq!(b.in_force(), 5, "grew back by one");
        // A 429 for a request sent after the halving: halved again.
        p.rate_limited(None);
        assert_eq!(b.in_force(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_spaces_requests_out() {
        let b = Budget::new(Limits {
            max_in_flight: 100,
            max_rate: Some(10.0),
            max_wait: Duration::from_secs(5),
        });
        let t0 = Instant::now();
        for _ in 0..30 {
            drop(b.acquire(Class::Routine, None).await.unwrap());
        }
        // Ten at once (the bucket is a second deep), then ten a second.
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(1900) && took <= Duration::from_millis(2100),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn replicas_take_their_share_and_grow_it_only_when_the_fleet_stays_smaller() {
        let b = Budget::new(limits(32));
        b.set_members(3);
        assert_eq!(b.in_force(), 10, "more members: at once");
        // One count that misses a member (its key lapsed a moment): the
        // share stays.
        b.set_members(2);
        assert_eq!(b.in_force(), 10);
        b.set_members(3);
        b.set_members(2);
        b.set_members(2);
        assert_eq!(b.in_force(), 10, "two counts in a row are not enough");
        b.set_members(2);
        assert_eq!(b.in_force(), 16, "three are");
        for _ in 0..3 {
            b.set_members(1);
        }
        assert_eq!(b.in_force(), 32);
        b.set_members(100);
        assert_eq!(b.in_force(), 1, "at least one each");
    }
}
