//! The poller's tests, under paused time: schedules, backoff, Retry-After,
//! confirmation after a notification, deleted tenants.

use super::*;
use crate::core::ledger::Solo;
use crate::core::store::PollResult;
use crate::core::tenant::TenantState;
use crate::superoffice::budget::Limits;
use crate::superoffice::{FetchOutcome, FetchResult};
use rand::SeedableRng;
use std::sync::Mutex;

fn rng() -> rand::rngs::SmallRng {
    rand::rngs::SmallRng::seed_from_u64(7)
}

#[test]
fn next_poll_follows_valid_until_within_bounds() {
    let p = PollPolicy::default();
    let now = SystemTime::now();
    let mut r = rng();
    for _ in 0..1000 {
        let d = p.after_success(Some(now + Duration::from_secs(60)), now, &mut r);
        assert!(
            d <= Duration::from_secs(60) && d >= Duration::from_secs(54),
            "{d:?}"
        );
    }
    let d = p.after_success(Some(now - Duration::from_secs(60)), now, &mut r);
    assert!(
        d >= Duration::from_millis(4500) && d <= p.min_interval,
        "{d:?}"
    );
    let d = p.after_success(Some(now + Duration::from_secs(86400)), now, &mut r);
    assert!(d <= p.max_interval, "{d:?}");
}

#[test]
fn jitter_spreads_tenants_that_came_due_together() {
    let p = PollPolicy::default();
    let now = SystemTime::now();
    let mut r = rng();
    let mut ds: Vec<_> = (0..1000)
        .map(|_| p.after_success(Some(now + Duration::from_secs(60)), now, &mut r))
        .collect();
    ds.sort();
    assert!(
        ds[999] - ds[0] > Duration::from_secs(5),
        "spread {:?}",
        ds[999] - ds[0]
    );
}

#[test]
fn backoff_doubles_to_a_cap_and_honours_retry_after() {
    let p = PollPolicy::default();
    let mut r = rng();
    let d1 = p.after_failure(1, None, &mut r);
    assert!(d1 >= Duration::from_millis(500) && d1 <= Duration::from_secs(1));
    let d4 = p.after_failure(4, None, &mut r);
    assert!(d4 >= Duration::from_secs(4) && d4 <= Duration::from_secs(8));
    let d_many = p.after_failure(40, None, &mut r);
    assert!(d_many <= p.backoff_max && d_many >= p.backoff_max / 2);
    let d = p.after_failure(1, Some(Duration::from_secs(120)), &mut r);
    assert_eq!(d, Duration::from_secs(120));
}

/// A scripted source, for the scheduling logic only (no I/O).
struct Scripted {
    answers: Mutex<VecDeque<FetchResult>>,
    calls: Mutex<Vec<tokio::time::Instant>>,
}

impl StateSource for Scripted {
    fn fetch<'a>(&'a self, _ctx: &'a ContextId) -> BoxFuture<'a, FetchResult> {
        self.calls.lock().unwrap().push(tokio::time::Instant::now());
        let a = self
            .answers
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Err(FetchError::Status(503)));
        Box::pin(async move { a })
    }
}

/// A running poller over a scripted source.
struct Harness {
    store: Arc<Store>,
    source: Arc<Scripted>,
    handle: PollerHandle,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn start(answers: Vec<FetchResult>, policy: PollPolicy) -> Harness {
    let source = Arc::new(Scripted {
        answers: Mutex::new(answers.into()),
        calls: Mutex::new(Vec::new()),
    });
    let store = Arc::new(Store::new());
    let (poller, handle) = Poller::new(
        Arc::clone(&store),
        Arc::clone(&store) as Arc<dyn Ledger>,
        Arc::new(Solo),
        source.clone(),
        policy,
        Budget::new(Limits::default()),
    );
    let stop = CancellationToken::new();
    let task = tokio::spawn(poller.run(stop.clone()));
    Harness {
        store,
        source,
        handle,
        stop,
        task,
    }
}

impl Harness {
    fn calls(&self) -> usize {
        self.source.calls.lock().unwrap().len()
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

fn running_for(secs: u64) -> FetchResult {
    Ok(FetchOutcome::Found(crate::core::tenant::Observation {
        state: TenantState::Running,
        endpoint: "https://sod2.superoffice.com/Cust1".into(),
        api: String::new(),
        version: String::new(),
        valid_until: Some(SystemTime::now() + Duration::from_secs(secs)),
    }))
}

#[tokio::test(start_paused = true)]
async fn polls_at_valid_until_backs_off_on_failure_and_marks_stale() {
    let policy = PollPolicy {
        jitter: 0.0,
        ..PollPolicy::default()
    };
    let h = start(
        vec![
            running_for(60),
            // valid until already past: the failures that follow make it stale
            running_for(0),
            Err(FetchError::Status(503)),
            Err(FetchError::Status(503)),
            Err(FetchError::Status(503)),
            running_for(60),
        ],
        policy,
    );
    let begin = tokio::time::Instant::now();
    h.handle.track(ContextId::parse("Cust1").unwrap());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(h.store.get("Cust1").unwrap().state, TenantState::Running);
    // Second poll at ValidUntil (60 s), not before.
    tokio::time::sleep(Duration::from_secs(57)).await;
    assert_eq!(h.calls(), 1);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(h.calls(), 2);
    // Then min_interval (5 s), then failures backing off 1 s, 2 s (with jitter).
    tokio::time::sleep(Duration::from_secs(20)).await;
    let calls = h.source.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 6, "{calls:?}");
    let gaps: Vec<_> = calls.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps[1] >= Duration::from_secs(5), "{gaps:?}");
    assert!(gaps[2] >= Duration::from_millis(500) && gaps[2] <= Duration::from_secs(1));
    assert!(gaps[3] >= Duration::from_secs(1) && gaps[3] <= Duration::from_secs(2));
    assert!(gaps[4] >= Duration::from_secs(2) && gaps[4] <= Duration::from_secs(4));
    assert!(
        !h.store.get("Cust1").unwrap().stale,
        "recovered after the failures"
    );
    assert!(calls[0] - begin <= PollPolicy::default().initial_spread);
    h.stop().await;
}

/// SuperOffice unreachable until `until`, then answering again.
struct Outage {
    until: tokio::time::Instant,
    calls: Mutex<Vec<tokio::time::Instant>>,
}

impl StateSource for Outage {
    fn fetch<'a>(&'a self, _ctx: &'a ContextId) -> BoxFuture<'a, FetchResult> {
        let now = tokio::time::Instant::now();
        self.calls.lock().unwrap().push(now);
        let a = if now < self.until {
            Err(FetchError::Connect("connection refused".into()))
        } else {
            running_for(60)
        };
        Box::pin(async move { a })
    }
}

#[tokio::test(start_paused = true)]
async fn superoffice_down_for_an_hour_is_not_hammered_and_recovery_is_prompt() {
    let hour = Duration::from_secs(3600);
    let source = Arc::new(Outage {
        until: tokio::time::Instant::now() + Duration::from_secs(30) + hour,
        calls: Mutex::new(Vec::new()),
    });
    let store = Arc::new(Store::new());
    // Known and running before the outage, its ValidUntil already due
    // (paused time does not move the wall clock that staleness reads).
    let ctx = ContextId::parse("Cust1").unwrap();
    let now = SystemTime::now();
    store.apply_poll(
        &ctx,
        PollResult::Observed(crate::core::tenant::Observation {
            state: TenantState::Running,
            endpoint: "https://sod2.superoffice.com/Cust1".into(),
            api: String::new(),
            version: String::new(),
            valid_until: Some(now),
        }),
        now,
    );
    let policy = PollPolicy::default();
    let (poller, handle) = Poller::new(
        Arc::clone(&store),
        Arc::clone(&store) as Arc<dyn Ledger>,
        Arc::new(Solo),
        source.clone(),
        policy.clone(),
        Budget::new(Limits::default()),
    );
    let stop = CancellationToken::new();
    let task = tokio::spawn(poller.run(stop.clone()));
    handle.track(ctx.clone());
    // Half an hour into the outage: the state is kept, stale, with the
    // reason; polls have backed off to the cap.
    tokio::time::sleep(Duration::from_secs(30) + hour / 2).await;
    let r = store.get("Cust1").unwrap();
    assert_eq!(r.state, TenantState::Running);
    assert!(r.stale);
    assert!(
        r.last_error.contains("connection refused"),
        "{}",
        r.last_error
    );
    tokio::time::sleep(hour / 2).await;
    let during = source.calls.lock().unwrap().len();
    // 1 s doubling to 5 min: about 9 polls to reach the cap, then one
    // per 2.5 to 5 min; never a poll a second.
    assert!((10..=40).contains(&during), "{during} polls in an hour");
    // SuperOffice is back: fresh within one backoff cap.
    tokio::time::sleep(policy.backoff_max + Duration::from_secs(1)).await;
    let r = store.get("Cust1").unwrap();
    assert!(!r.stale, "recovered");
    assert!(r.last_error.is_empty());
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_deleted_tenant_is_forgotten_unless_it_came_back_meanwhile() {
    let deleted = || {
        Ok(FetchOutcome::Found(crate::core::tenant::Observation {
            state: TenantState::Deleted,
            endpoint: String::new(),
            api: String::new(),
            version: String::new(),
            valid_until: None,
        }))
    };
    let policy = PollPolicy {
        deleted_retention: Duration::from_secs(10),
        ..PollPolicy::default()
    };
    let h = start(vec![deleted(), deleted(), running_for(600)], policy);
    let two = ContextId::parse("Cust2").unwrap();
    h.handle.track(ContextId::parse("Cust1").unwrap());
    tokio::time::sleep(Duration::from_secs(2)).await;
    h.handle.track(two.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(h.store.get("Cust1").unwrap().state, TenantState::Deleted);
    assert_eq!(h.store.get("Cust2").unwrap().state, TenantState::Deleted);
    // Cust2 comes back (as a lookup would record it).
    h.store.apply_poll(
        &two,
        PollResult::Observed(crate::core::tenant::Observation {
            state: TenantState::Provisioning,
            endpoint: String::new(),
            api: String::new(),
            version: String::new(),
            valid_until: None,
        }),
        SystemTime::now(),
    );
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(h.store.get("Cust1").is_none(), "forgotten after retention");
    assert_eq!(h.calls(), 3, "no polls while deleted; one for the returner");
    let back = h.store.get("Cust2").unwrap();
    assert_eq!(back.state, TenantState::Running, "still tracked");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn absurd_delays_are_capped_instead_of_killing_the_poller() {
    let absurd = Duration::from_secs(u64::MAX / 4);
    let h = start(
        vec![Err(FetchError::RateLimited(Some(absurd))), running_for(60)],
        PollPolicy::default(),
    );
    h.handle.track(ContextId::parse("Cust1").unwrap());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(h.calls(), 1);
    tokio::time::sleep(MAX_DELAY).await;
    assert_eq!(h.calls(), 2, "polled again after the cap");
    assert!(!h.task.is_finished(), "the poller is alive");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_failing_source_makes_the_record_stale_but_keeps_its_state() {
    let h = start(vec![running_for(0)], PollPolicy::default());
    h.handle.track(ContextId::parse("Cust1").unwrap());
    tokio::time::sleep(Duration::from_secs(600)).await;
    let r = h.store.get("Cust1").unwrap();
    assert_eq!(r.state, TenantState::Running);
    assert!(r.stale);
    assert!(r.last_error.contains("503"), "{}", r.last_error);
    // Backoff: far fewer calls than one a second over ten minutes.
    let n = h.calls();
    assert!(n < 20, "{n} calls in 600 s");
    h.stop().await;
}

/// A source whose requests never end, counting how many are in flight.
struct Hanging {
    inflight: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
    asked: Mutex<Vec<String>>,
}

impl StateSource for Hanging {
    fn fetch<'a>(&'a self, ctx: &'a ContextId) -> BoxFuture<'a, FetchResult> {
        use std::sync::atomic::Ordering::SeqCst;
        self.asked.lock().unwrap().push(ctx.to_string());
        let now = self.inflight.fetch_add(1, SeqCst) + 1;
        self.most.fetch_max(now, SeqCst);
        Box::pin(std::future::pending())
    }
}

#[tokio::test(start_paused = true)]
async fn tenants_nobody_knows_get_a_small_share_of_the_requests_in_flight() {
    let store = Arc::new(Store::new());
    let source = Arc::new(Hanging {
        inflight: Default::default(),
        most: Default::default(),
        asked: Mutex::new(Vec::new()),
    });
    let budget = Budget::new(Limits {
        max_in_flight: 16,
        ..Limits::default()
    });
    let policy = PollPolicy::default();
    let (poller, handle) = Poller::new(
        Arc::clone(&store),
        Arc::clone(&store) as Arc<dyn Ledger>,
        Arc::new(Solo),
        source.clone(),
        policy,
        budget,
    );
    let unknowns = poller.unknowns();
    let stop = CancellationToken::new();
    let task = tokio::spawn(poller.run(stop.clone()));
    // Watched by name: an unknown tenant nobody watches is not polled.
    let junk: Vec<_> = (0..40)
        .map(|i| ContextId::parse(&format!("Junk{i}")).unwrap())
        .collect();
    let _watcher = store.register_watcher(junk);
    for i in 0..40 {
        let c = ContextId::parse(&format!("Junk{i}")).unwrap();
        assert!(unknowns.admit(&c));
        store.track_unknown(&c, SystemTime::now());
        handle.not_found(c);
    }
    for i in 0..4 {
        handle.track(ContextId::parse(&format!("Real{i}")).unwrap());
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    let asked = source.asked.lock().unwrap().clone();
    let junk = asked.iter().filter(|a| a.starts_with("Junk")).count();
    assert_eq!(
        junk, 2,
        "an eighth of 16 in flight, and those never end: {asked:?}"
    );
    assert_eq!(
        asked.iter().filter(|a| a.starts_with("Real")).count(),
        4,
        "known tenants are not held back"
    );
    stop.cancel();
    task.await.unwrap();
}
