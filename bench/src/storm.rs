//! Scenario: a reconnect storm. 100,000 tenants; 100 watch-all streams open
//! at once (dashboards reconnecting after a deploy) while 16 callers look
//! tenants up. Measures the lookups' latency during the storm, the time
//! until every stream is SYNCED, the server CPU per stream's snapshot and
//! the server's peak memory.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use rand::{Rng, SeedableRng};
use tenant_status::pb::{self, tenant_status_service_client::TenantStatusServiceClient};
use tonic::transport::Channel;

use crate::common::{self, Latency, Row};

const CALLERS: usize = 16;

pub async fn run(quick: bool) -> anyhow::Result<Vec<Row>> {
    let (tenants, streams) = if quick { (1_000, 5) } else { (100_000, 100) };
    let (fake, server, grpc, _admin) = common::loaded_server("storm", tenants).await?;
    let url = format!("http://127.0.0.1:{grpc}");
    let connect = || async {
        Channel::from_shared(url.clone())?
            .tcp_nodelay(true)
            .connect()
            .await
            .context("connecting")
    };

    // Lookups throughout: one connection, CALLERS in flight, on a runtime
    // and thread of their own, so that what they measure is the server's
    // delay and not a queue behind this process's 100 readers.
    let stop = Arc::new(AtomicBool::new(false));
    let storm_on = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let lookups = {
        let (stop, storm_on, done, url) = (
            Arc::clone(&stop),
            Arc::clone(&storm_on),
            Arc::clone(&done),
            url.clone(),
        );
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(lookups(url, tenants, stop, storm_on, done))
        })
    };
    // The lookups alone for a while: the server's CPU per lookup, to take
    // out of the storm's CPU.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (cpu_alone, done_alone) = (server.cpu_secs(), done.load(Ordering::Relaxed));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let cpu_per_lookup =
        (server.cpu_secs() - cpu_alone) / (done.load(Ordering::Relaxed) - done_alone).max(1) as f64;

    // The storm: every stream on its own connection, opened at once.
    let mut channels = Vec::new();
    for _ in 0..streams {
        channels.push(connect().await?);
    }
    let rss_before = server.rss_kib();
    let peak = Arc::new(AtomicU64::new(rss_before));
    let sampler = {
        let (peak, stop, pid) = (Arc::clone(&peak), Arc::clone(&stop), server.pid());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(common::rss_kib_of(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let cpu0 = server.cpu_secs();
    let done0 = done.load(Ordering::Relaxed);
    storm_on.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let mut watchers = Vec::new();
    for ch in channels {
        watchers.push(tokio::spawn(async move {
            let mut stream =
                common::watch_read_as::<common::WatchHead>(ch, pb::WatchTenantRequest::default())
                    .await?;
            let mut records = 0usize;
            let mut first = None;
            while let Some(ev) = stream.message().await? {
                first.get_or_insert_with(Instant::now);
                if ev.r#type == pb::WatchEventType::Synced as i32 {
                    return anyhow::Ok((
                        records,
                        first.unwrap_or_else(Instant::now),
                        Instant::now(),
                    ));
                }
                records += 1;
            }
            anyhow::bail!("the stream ended before SYNCED")
        }));
    }
    let mut last_synced = started;
    let mut first_data = Duration::MAX;
    for w in watchers {
        let (records, first, synced) = w.await??;
        anyhow::ensure!(
            records >= tenants,
            "a snapshot of {records} of {tenants} tenants"
        );
        last_synced = last_synced.max(synced);
        first_data = first_data.min(first.duration_since(started));
    }
    let all_synced = last_synced.duration_since(started);
    let lookups_during = done.load(Ordering::Relaxed) - done0;
    let cpu = server.cpu_secs() - cpu0;
    storm_on.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let h = lookups
        .join()
        .map_err(|_| anyhow::anyhow!("the lookups' thread panicked"))??;
    let _ = sampler.await;
    server.stop();
    fake.stop();

    let lat = Latency::of(&h);
    // Less the lookups' own CPU, at their rate before the storm (a busy
    // server spends more on each, so this is still an upper bound).
    let lookups_cpu = cpu_per_lookup * lookups_during as f64;
    let per_stream_ms = (cpu - lookups_cpu).max(0.0) * 1000.0 / streams as f64;
    let peak_mib = peak.load(Ordering::Relaxed).saturating_sub(rss_before) as f64 / 1024.0;
    let s = "6 storm";
    Ok(vec![
        Row::new(
            s,
            &format!(
                "{tenants} tenants, {streams} watch-all streams at once: GetTenantState p50 / p99 / max during it ({CALLERS} callers)"
            ),
            format!(
                "{:.2} / {:.2} / {:.2} ms ({} lookups)",
                lat.p50_ms, lat.p99_ms, lat.max_ms, lat.count
            ),
            String::new(),
            "p99 < 10 ms, max < 50 ms",
            Some(lat.p99_ms < 10.0 && lat.max_ms < 50.0),
        ),
        Row::new(
            s,
            "first snapshot data / every stream SYNCED",
            format!(
                "{:.2} s / {:.2} s",
                first_data.as_secs_f64(),
                all_synced.as_secs_f64()
            ),
            String::new(),
            "",
            None,
        ),
        Row::new(
            s,
            "server CPU per stream (the storm's, less the lookups' at their rate alone) / peak memory over idle",
            format!(
                "{per_stream_ms:.0} ms ({:.1} s in all, {:.2} s of it lookups) / {peak_mib:.0} MiB",
                cpu, lookups_cpu
            ),
            String::new(),
            "<= 30 ms a stream",
            Some(per_stream_ms <= 30.0),
        ),
    ])
}

/// `CALLERS` looking tenants up on one connection until `stop`; the
/// latencies recorded while `storm_on`.
async fn lookups(
    url: String,
    tenants: usize,
    stop: Arc<AtomicBool>,
    storm_on: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) -> anyhow::Result<hdrhistogram::Histogram<u64>> {
    let channel = Channel::from_shared(url)?
        .tcp_nodelay(true)
        .connect()
        .await
        .context("connecting")?;
    let mut callers = Vec::new();
    for _ in 0..CALLERS {
        let mut client = TenantStatusServiceClient::new(channel.clone());
        let (stop, storm_on, done) = (Arc::clone(&stop), Arc::clone(&storm_on), Arc::clone(&done));
        callers.push(tokio::spawn(async move {
            let mut h = common::histogram();
            let mut rng = rand::rngs::SmallRng::from_rng(&mut rand::rng());
            while !stop.load(Ordering::Relaxed) {
                let id = format!("Cust{}", rng.random_range(1..=tenants));
                let t = Instant::now();
                let r = client
                    .get_tenant_state(pb::GetTenantStateRequest {
                        context_identifier: id,
                    })
                    .await;
                done.fetch_add(1, Ordering::Relaxed);
                if storm_on.load(Ordering::Relaxed) {
                    anyhow::ensure!(r.is_ok(), "a lookup failed: {r:?}");
                    let _ = h.record(t.elapsed().as_micros().max(1) as u64);
                }
            }
            anyhow::Ok(h)
        }));
    }
    let mut h = common::histogram();
    for c in callers {
        h.add(c.await??)?;
    }
    Ok(h)
}
