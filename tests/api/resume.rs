//! Resuming a watch from the last revision seen misses nothing.
//!
//! Clients follow the proto: they apply records by revision and, after a
//! disconnect, reopen the stream with `since_revision` set to the highest
//! revision they have seen (of any event). This holds only if, within one
//! stream, revisions never go down: an event of a tenant changed earlier
//! must never follow one of a tenant changed later.
//!
//! The test churns many tenants through every writer the service has (polls
//! of a changing SuperOffice, signed notifications, and the store's own
//! poll path at a high rate), while named and watch-all watchers, fast and
//! slow, hang up and resume again and again. Every stream is checked for
//! order as it is read; once the churn stops, every watcher's view must
//! equal what GetTenantState answers for every tenant it watches.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use rand::{Rng, SeedableRng, rngs::StdRng};
use tenant_status::{
    ChangeType, ContextId, TenantState as S,
    pb::{self, WatchEventType as E, tenant_status_service_client::TenantStatusServiceClient},
    testing::Observation,
    testing::PollResult,
};
use tonic::transport::Channel;

use crate::helpers::*;

const TENANTS: usize = 40;

/// How long the churn lasts: 5 s, or `RESUME_CHURN_SECS` for a longer run
/// (RELIABILITY.md has the runs).
fn churn() -> Duration {
    let secs = std::env::var("RESUME_CHURN_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    Duration::from_secs(secs)
}

fn name(i: usize) -> String {
    format!("Cust{i:03}")
}

/// What a watcher holds of one tenant: its record as of `revision`.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    revision: u64,
    state: i32,
    endpoint: String,
}

#[derive(Debug)]
struct Watcher {
    label: String,
    names: Vec<String>,
    /// Reads one event, then sleeps, now and then, over a small HTTP/2
    /// window: the server has to hold back and coalesce for it.
    slow: bool,
}

#[derive(Default)]
struct View {
    tenants: HashMap<String, Seen>,
    /// The highest revision of any event seen: the resume point.
    last_seen: u64,
    streams: usize,
    events: usize,
}

impl View {
    fn apply(&mut self, t: &pb::Tenant) {
        let seen = Seen {
            revision: t.revision,
            state: t.state,
            endpoint: t.endpoint.clone(),
        };
        match self.tenants.get(&t.context_identifier) {
            Some(old) if old.revision >= t.revision => {}
            _ => {
                self.tenants.insert(t.context_identifier.clone(), seen);
            }
        }
    }
}

/// Reads one stream until `until` (or its end), checking that revisions
/// never go down and that changes come only after SYNCED. Returns whether
/// SYNCED was seen.
async fn read_stream(
    w: &Watcher,
    client: &mut TenantStatusServiceClient<Channel>,
    view: &mut View,
    until: tokio::time::Instant,
    rng: &mut StdRng,
) -> bool {
    let mut stream = client
        .watch_tenant(pb::WatchTenantRequest {
            context_identifiers: w.names.clone(),
            since_revision: view.last_seen,
        })
        .await
        .unwrap_or_else(|e| panic!("{}: WatchTenant refused: {e}", w.label))
        .into_inner();
    view.streams += 1;
    let mut synced = false;
    // The highest revision this stream has carried so far.
    let mut high = 0u64;
    loop {
        let msg = match tokio::time::timeout_at(until, stream.message()).await {
            Err(_) => return synced, // hang up, as a client cancelling would
            Ok(Err(status)) => panic!("{}: stream error {status}", w.label),
            Ok(Ok(None)) => panic!("{}: the stream ended", w.label),
            Ok(Ok(Some(m))) => m,
        };
        view.events += 1;
        let k = kind(&msg);
        let rev = msg.revision;
        match k {
            E::Snapshot | E::Changed | E::Removed => {
                assert!(
                    k == E::Snapshot || synced,
                    "{}: {k:?} before SYNCED",
                    w.label
                );
                assert!(
                    rev > high,
                    "{}: {k:?} of {} at revision {rev} after revision {high} in the same stream",
                    w.label,
                    msg.context_identifier
                );
                if k == E::Removed {
                    view.tenants.remove(&msg.context_identifier);
                } else {
                    let t = msg.tenant.as_ref().expect("a record");
                    assert_eq!(t.revision, rev, "{}: the event's revision", w.label);
                    assert!(
                        w.names.is_empty() || w.names.contains(&t.context_identifier),
                        "{}: an event of {}, which it does not watch",
                        w.label,
                        t.context_identifier
                    );
                    view.apply(t);
                }
            }
            E::Synced | E::Heartbeat => {
                assert!(
                    rev >= high,
                    "{}: {k:?} at revision {rev} after revision {high}",
                    w.label
                );
                synced |= k == E::Synced;
            }
            E::Reset => {
                // Only ever first, and then the view starts over.
                assert!(high == 0 && !synced, "{}: RESET mid-stream", w.label);
                view.tenants.clear();
            }
            E::Unspecified => panic!("{}: an unspecified event", w.label),
        }
        high = high.max(rev);
        view.last_seen = view.last_seen.max(rev);
        if w.slow && rng.random_ratio(1, 20) {
            tokio::time::sleep(Duration::from_millis(rng.random_range(50..300))).await;
        }
    }
}

/// Hangs up and resumes every 0.2–1.2 s until `stop`, then resumes once
/// more and reads until SYNCED and a little beyond.
async fn run_watcher(
    w: Watcher,
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    settled: Arc<tokio::sync::Notify>,
    seed: u64,
) -> (Watcher, View) {
    let mut endpoint = Channel::from_shared(format!("http://{addr}")).unwrap();
    if w.slow {
        endpoint = endpoint
            .initial_stream_window_size(512)
            .initial_connection_window_size(512);
    }
    let mut client = TenantStatusServiceClient::new(endpoint.connect().await.unwrap());
    let mut rng = StdRng::seed_from_u64(seed);
    let mut view = View::default();
    let settled = settled.notified();
    tokio::pin!(settled);
    while !stop.load(Ordering::Relaxed) {
        let until =
            tokio::time::Instant::now() + Duration::from_millis(rng.random_range(200..1200));
        read_stream(&w, &mut client, &mut view, until, &mut rng).await;
    }
    settled.await;
    // The churn is over and the store settled: one last resume brings the
    // view up to date. A slow reader sleeps now and then, so allow it time.
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    assert!(
        read_stream(&w, &mut client, &mut view, until, &mut rng).await,
        "{}: no SYNCED on the last resume",
        w.label
    );
    (w, view)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_that_resume_from_the_last_revision_seen_miss_nothing() {
    let names: Vec<String> = (0..TENANTS).map(name).collect();
    let app = spawn_app_with(|fake, config| {
        for n in &names {
            fake.set(
                n,
                running(n, "sod2.superoffice.com", Duration::from_millis(150)),
            );
        }
        config.tenants = names.iter().map(|n| ContextId::parse(n).unwrap()).collect();
        config.heartbeat_interval = Duration::from_millis(200);
        config.webhook.rate_limit = None;
    })
    .await;
    eventually("every tenant tracked", || app.store.len() == TENANTS).await;

    let stop = Arc::new(AtomicBool::new(false));
    let settled = Arc::new(tokio::sync::Notify::new());
    let mut watchers = Vec::new();
    for i in 0..8 {
        let slow = i % 2 == 1;
        let named = i % 4 < 2;
        let w = Watcher {
            label: format!(
                "watcher {i} ({}, {})",
                if named { "named" } else { "all" },
                if slow { "slow" } else { "fast" }
            ),
            // Overlapping windows of ten tenants each.
            names: if named {
                (0..10).map(|k| name((i * 7 + k * 3) % TENANTS)).collect()
            } else {
                Vec::new()
            },
            slow,
        };
        watchers.push(tokio::spawn(run_watcher(
            w,
            app.addr,
            Arc::clone(&stop),
            Arc::clone(&settled),
            i as u64,
        )));
    }

    // SuperOffice changes tenants; polls pick the changes up.
    let fake = app.fake.clone();
    let churn_stop = Arc::clone(&stop);
    let superoffice = tokio::spawn(async move {
        let mut rng = StdRng::seed_from_u64(100);
        let mut n = 0u32;
        while !churn_stop.load(Ordering::Relaxed) {
            let ctx = name(rng.random_range(0..TENANTS));
            let host = format!("sod{}.superoffice.com", rng.random_range(2..5));
            let spec = match rng.random_range(0..4) {
                0 => {
                    tenant_status::sim::fake_superoffice::TenantSpec::new("Suspended", &ctx, &host)
                }
                1 => tenant_status::sim::fake_superoffice::TenantSpec::new(
                    "OfflineMaintenance",
                    &ctx,
                    &host,
                ),
                _ => tenant_status::sim::fake_superoffice::TenantSpec::running(&ctx, &host),
            };
            fake.set(&ctx, spec.valid_for(Duration::from_millis(150)));
            n += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        n
    });
    // SuperOffice notifies: signed Suspend and Move notifications.
    let notifier = {
        let stop = Arc::clone(&stop);
        let fake = app.fake.clone();
        let http = app.http.clone();
        let url = app.webhook_url.clone();
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(200);
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let ctx = name(rng.random_range(0..TENANTS));
                let status = if rng.random_bool(0.5) {
                    fake.notify(&http, &url, ChangeType::Suspend, &ctx, None)
                        .await
                } else {
                    let host = format!("sod{}.superoffice.com", rng.random_range(2..5));
                    fake.notify(&http, &url, ChangeType::Move, &ctx, Some(&host))
                        .await
                };
                assert_eq!(status.unwrap(), reqwest::StatusCode::NO_CONTENT);
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            n
        })
    };
    // The store's poll path at a high rate, from another thread, so that
    // changes of different tenants interleave with the streams' reads.
    let writer = {
        let stop = Arc::clone(&stop);
        let store = Arc::clone(&app.store);
        std::thread::spawn(move || {
            let mut rng = StdRng::seed_from_u64(300);
            let ids: Vec<_> = (0..TENANTS)
                .map(|i| ContextId::parse(&name(i)).unwrap())
                .collect();
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let ctx = &ids[rng.random_range(0..TENANTS)];
                let endpoint = format!("https://direct{}/{ctx}", rng.random_range(0..1000));
                store.apply_poll(
                    ctx,
                    PollResult::Observed(Observation {
                        state: S::Running,
                        api: format!("{endpoint}/api"),
                        endpoint,
                        version: String::new(),
                        valid_until: Some(SystemTime::now() + Duration::from_millis(150)),
                    }),
                    SystemTime::now(),
                );
                n += 1;
                std::thread::sleep(Duration::from_micros(rng.random_range(100..600)));
            }
            n
        })
    };

    tokio::time::sleep(churn()).await;
    stop.store(true, Ordering::Relaxed);
    let changes = (
        superoffice.await.unwrap(),
        notifier.await.unwrap(),
        writer.join().unwrap(),
    );
    // Settled: the last notification's confirming polls are answered and
    // the polls agree with SuperOffice, so the revision stays put.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut last = app.store.revision();
    loop {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let now = app.store.revision();
        if now == last {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the store did not settle within 20 s"
        );
        last = now;
    }
    settled.notify_waiters();

    let mut truth = HashMap::new();
    for n in &names {
        let t = app.get(n).await.expect("a tracked tenant");
        truth.insert(
            n.clone(),
            Seen {
                revision: t.revision,
                state: t.state,
                endpoint: t.endpoint,
            },
        );
    }
    let (mut streams, mut events) = (0, 0);
    for w in watchers {
        let (w, view) = w.await.expect("the watcher ran clean");
        streams += view.streams;
        events += view.events;
        assert!(
            view.streams >= 3,
            "{}: only {} streams",
            w.label,
            view.streams
        );
        let watched = if w.names.is_empty() { &names } else { &w.names };
        for n in watched {
            assert_eq!(
                view.tenants.get(n),
                truth.get(n),
                "{}: its view of {n} after {} streams and {} events (churn: {changes:?})",
                w.label,
                view.streams,
                view.events
            );
        }
    } // For RELIABILITY.md (`--nocapture`).
    eprintln!(
        "churn (SuperOffice changes, notifications, direct writes): {changes:?}; {streams} streams, {events} events, every view equal to GetTenantState"
    );
}
