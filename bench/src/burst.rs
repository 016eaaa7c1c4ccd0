//! Scenario: a burst of changes. 10,000 tenants and 100 watch-all streams
//! while the tenants change 10,000 times a second for 5 s; each stream
//! must end on the latest revision of every tenant.
//!
//! The changes are made in the store directly, from a thread of their own:
//! a signed notification costs about 90 µs of its own (scenario 3), so
//! through the webhook this would measure the webhook, not the fan-out.
//! The service runs in this process on a runtime of its own (threads named
//! `ts-server`), so its CPU is read per thread, apart from the readers'.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context;
use rand::{Rng, SeedableRng};
use tenant_status::{
    ContextId, TenantState,
    app::Application,
    config::Config,
    pb,
    sim::fake_superoffice::FakeSuperOffice,
    testing::{Observation, PollResult, Store},
};
use tonic::transport::Channel;

use crate::common::{self, Row};

/// What a reader keeps of an event: which tenant, which revision.
#[derive(Clone, PartialEq, prost::Message)]
struct Named {
    #[prost(int32, tag = "1")]
    r#type: i32,
    #[prost(string, tag = "3")]
    context_identifier: String,
    #[prost(uint64, tag = "4")]
    revision: u64,
}

const SERVER_THREADS: &str = "ts-server";
const WRITER_THREAD: &str = "ts-churn";

pub async fn run(quick: bool) -> anyhow::Result<Vec<Row>> {
    let (tenants, streams, rate, secs) = if quick {
        (500, 5, 1_000, 1)
    } else {
        (10_000, 100, 10_000, 5)
    };
    let (store, addr, stop) = start_server().await?;
    let names: Vec<ContextId> = (0..tenants)
        .map(|i| ContextId::parse(&format!("Cust{i}")).expect("a valid identifier"))
        .collect();
    for (i, n) in names.iter().enumerate() {
        change(&store, n, &format!("https://sod2.superoffice.com/Cust{i}"));
    }

    // The readers: each on its own connection, keeping every tenant's
    // latest revision, until they have seen the burst's last one.
    let last = Arc::new(AtomicU64::new(0));
    let synced = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for _ in 0..streams {
        let channel = Channel::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect()
            .await
            .context("connecting")?;
        let mut stream =
            common::watch_read_as::<Named>(channel, pb::WatchTenantRequest::default()).await?;
        let (last, synced) = (Arc::clone(&last), Arc::clone(&synced));
        readers.push(tokio::spawn(async move {
            let mut seen: HashMap<String, u64> = HashMap::new();
            let (mut top, mut events, mut top_at) = (0u64, 0u64, Instant::now());
            loop {
                let end = last.load(Ordering::Acquire);
                if end > 0 && top >= end {
                    return anyhow::Ok((seen, events, top_at));
                }
                let ev = tokio::time::timeout(Duration::from_secs(10), stream.message())
                    .await
                    .context("no event in 10 s")??
                    .context("the stream ended")?;
                if ev.r#type == pb::WatchEventType::Changed as i32 {
                    events += 1;
                }
                if ev.r#type == pb::WatchEventType::Synced as i32 {
                    synced.fetch_add(1, Ordering::Relaxed);
                }
                if ev.revision > top {
                    (top, top_at) = (ev.revision, Instant::now());
                }
                if ev.r#type == pb::WatchEventType::Snapshot as i32
                    || ev.r#type == pb::WatchEventType::Changed as i32
                {
                    seen.insert(ev.context_identifier, ev.revision);
                }
            }
        }));
    }
    // Every stream past its snapshot before the burst begins.
    common::wait_until("every stream SYNCED", Duration::from_secs(60), || {
        let synced = Arc::clone(&synced);
        async move { synced.load(Ordering::Relaxed) == streams }
    })
    .await?;

    let cpu0 = common::cpu_secs_of_threads(&[SERVER_THREADS]);
    let total = rate * secs;
    let writer = {
        let (store, names) = (Arc::clone(&store), names.clone());
        std::thread::Builder::new()
            .name(WRITER_THREAD.into())
            .spawn(move || {
                let cpu0 = common::cpu_secs_of_threads(&[WRITER_THREAD]);
                let mut rng = rand::rngs::SmallRng::seed_from_u64(15);
                let start = Instant::now();
                for k in 0..total {
                    let due = start + Duration::from_secs_f64(k as f64 / rate as f64);
                    let now = Instant::now();
                    if due > now + Duration::from_micros(200) {
                        std::thread::sleep(due - now);
                    }
                    let i = rng.random_range(0..names.len());
                    change(
                        &store,
                        &names[i],
                        &format!("https://sod3.superoffice.com/Cust{i}?{k}"),
                    );
                }
                (
                    start.elapsed(),
                    Instant::now(),
                    common::cpu_secs_of_threads(&[WRITER_THREAD]) - cpu0,
                )
            })?
    };
    let (took, ended, writer_cpu) = tokio::task::spawn_blocking(move || writer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the writer panicked"))?;
    let end = store.revision();
    last.store(end, Ordering::Release);
    let mut events = 0u64;
    let mut wrong = 0usize;
    let mut drained = Duration::ZERO;
    for r in readers {
        let (seen, n, top_at) = r.await??;
        events += n;
        drained = drained.max(top_at.saturating_duration_since(ended));
        for name in &names {
            let latest = store.get(name).map(|r| r.revision);
            if seen.get(name.as_str()).copied() != latest {
                wrong += 1;
            }
        }
    }
    let server_cpu = common::cpu_secs_of_threads(&[SERVER_THREADS]) - cpu0;
    stop.notify_one();
    anyhow::ensure!(
        wrong == 0,
        "{wrong} (stream, tenant) pairs did not end on the tenant's latest revision"
    );

    let achieved = total as f64 / took.as_secs_f64();
    let per_change_us = (server_cpu + writer_cpu) * 1e6 / total as f64;
    let sent = events as f64 / total as f64;
    let s = "7 burst";
    Ok(vec![
        Row::new(
            s,
            &format!(
                "{tenants} tenants, {streams} watch-all streams, {rate} changes/s for {secs} s: every stream ends on every tenant's latest revision"
            ),
            format!(
                "yes, all {streams} x {tenants}; last change to every stream's receipt {:.0} ms; {achieved:.0} changes/s made",
                drained.as_secs_f64() * 1000.0
            ),
            String::new(),
            "each ends on the latest",
            Some(wrong == 0),
        ),
        Row::new(
            s,
            "server CPU per change (the store's writer and the service's threads); per change sent to a stream",
            format!(
                "{per_change_us:.0} µs ({writer_cpu:.2} s writer, {server_cpu:.2} s service); {:.2} µs, {sent:.1} of {streams} streams sent each change (the rest coalesced into a later one)",
                (server_cpu + writer_cpu) * 1e6 / events.max(1) as f64
            ),
            String::new(),
            "measured",
            None,
        ),
    ])
}

/// Runs the service on a runtime and threads of its own; returns its
/// store, its gRPC address and what stops it.
async fn start_server() -> anyhow::Result<(Arc<Store>, String, Arc<tokio::sync::Notify>)> {
    let stop = Arc::new(tokio::sync::Notify::new());
    let (tx, rx) = tokio::sync::oneshot::channel();
    let stopped = Arc::clone(&stop);
    std::thread::spawn(move || -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(SERVER_THREADS)
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let (fake, _) = FakeSuperOffice::start().await?;
            let mut config = Config::for_base_url(&fake.url())?;
            config.heartbeat_interval = Duration::from_millis(500);
            let app = Application::build(config).await?;
            let _ = tx.send((app.store(), app.grpc_addr().to_string()));
            app.run_until(async move { stopped.notified().await }).await
        })
    });
    let (store, addr) = rx.await.context("the service did not start")?;
    Ok((store, addr, stop))
}

fn change(store: &Store, ctx: &ContextId, endpoint: &str) {
    let observation = Observation {
        state: TenantState::Running,
        endpoint: endpoint.into(),
        api: String::new(),
        version: String::new(),
        valid_until: Some(SystemTime::now() + Duration::from_secs(3600)),
    };
    let _ = store.apply_poll(ctx, PollResult::Observed(observation), SystemTime::now());
}
