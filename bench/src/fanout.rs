//! Scenario 2: 10,000 (then 50,000) WatchTenant streams on one tenant over
//! 100 connections, plus 100 streams watching every tenant; a change is
//! applied (a signed Move notification) and the time until each stream has
//! it is measured in the load process, which both sends the change and
//! reads the streams. Beside it, the same streams, connections and rounds
//! against a bare tonic server written the ordinary way (one tokio watch
//! channel, each stream encoding the record itself); and the change through
//! bare tokio watch channels in one process (the wake-up alone).
//!
//! Full runs pin the server to CPU 1 and this load process to CPU 0
//! (`taskset`), so the server's figures are its own.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use tenant_status::{
    ChangeType,
    pb::{self, tenant_status_service_client::TenantStatusServiceClient},
    sim::fake_superoffice::{FakeSuperOffice, TenantSpec},
};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::common::{self, Latency, Proc, Row};

const ROUNDS: usize = 5;

pub async fn run(quick: bool) -> anyhow::Result<Vec<Row>> {
    let (conns, dashboards) = if quick { (4, 5) } else { (100, 100) };
    let sizes: &[usize] = if quick { &[200] } else { &[10_000, 50_000] };
    let pin = !quick && std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2;
    if pin {
        common::pin(std::process::id(), "0")?;
    }
    let modes = common::runtime_modes();
    let mut rows = Vec::new();
    for &streams in sizes {
        // Each runtime mode in turn, then the bare server.
        let mut ours_all = Vec::new();
        for mode in &modes {
            ours_all.push(measure(Target::Ours(mode), streams, conns, dashboards, pin).await?);
        }
        let bare = measure(Target::Bare, streams, conns, dashboards, pin).await?;
        let chan = baseline(streams + dashboards).await;
        let base = bare.latency;
        let target_ms = if streams <= 10_000 { 50.0 } else { 250.0 };
        let s = "2 fan-out";
        let pinned = if pin {
            ", server on CPU 1, load on CPU 0"
        } else {
            ""
        };
        for (mode, ours) in modes.iter().zip(&ours_all) {
            let m = common::mode_suffix(mode);
            let lat = ours.latency;
            rows.push(Row::new(
                s,
                &format!("{streams} streams + {dashboards} all-tenant, {conns} conns{pinned}: change to every stream, p50 / p99 / p99.9 / max{m}"),
                format!("{:.1} / {:.1} / {:.1} / {:.1} ms", lat.p50_ms, lat.p99_ms, lat.p999_ms, lat.max_ms),
                format!(
                    "bare tonic {:.1} / {:.1} / {:.1} / {:.1} ms; tokio watch alone {:.2} / {:.2} ms",
                    base.p50_ms, base.p99_ms, base.p999_ms, base.max_ms, chan.p50_ms, chan.p99_ms
                ),
                &format!("p99 < {target_ms:.0} ms"),
                Some(lat.p99_ms < target_ms),
            ));
            let ratio = ours.server_us / bare.server_us.max(0.001);
            rows.push(Row::new(
                s,
                &format!("server CPU per stream per change ({streams} streams){m}"),
                format!(
                    "{:.1} µs ({ratio:.2}x; load process {:.1} µs)",
                    ours.server_us, ours.load_us
                ),
                format!(
                    "bare tonic {:.1} µs (load process {:.1} µs)",
                    bare.server_us, bare.load_us
                ),
                "<= 4 µs and <= 0.5x bare",
                Some(ours.server_us <= 4.0 && ratio <= 0.5),
            ));
            rows.push(Row::new(
                s,
                &format!("server memory per stream ({streams} streams){m}"),
                format!("{:.1} KiB", ours.per_stream / 1024.0),
                format!("bare tonic {:.1} KiB", bare.per_stream / 1024.0),
                "<= 4 KiB",
                Some(ours.per_stream <= 4.0 * 1024.0),
            ));
        }
    }
    if pin {
        common::pin(std::process::id(), "0-1")?;
    }
    Ok(rows)
}

/// The server a run measures.
#[derive(Clone, Copy)]
enum Target<'a> {
    /// tenant-status with its runtime in this mode, changed by a signed
    /// notification to its webhook.
    Ours(&'a common::RuntimeMode),
    /// `bench baseline-watch`, changed by a ListTenants call whose
    /// page_token names the new host (see `watch_baseline_server`).
    Bare,
}

struct Measured {
    latency: Latency,
    /// Server memory per stream, bytes.
    per_stream: f64,
    /// CPU per stream-event, µs.
    server_us: f64,
    load_us: f64,
}

/// Returns the latency of every stream over every round, the server's
/// memory per stream in bytes, and the CPU per stream-event (µs) of the
/// server and of this load process.
async fn measure(
    target: Target<'_>,
    streams: usize,
    conns: usize,
    dashboards: usize,
    pin: bool,
) -> anyhow::Result<Measured> {
    let (fake, _fake_task) = FakeSuperOffice::start().await?;
    let host = |round: usize| format!("sod{}.superoffice.com", 100 + round);
    fake.set(
        "Cust1",
        TenantSpec::running("Cust1", &host(0)).valid_for(Duration::from_secs(3600)),
    );
    let (grpc, hook, admin) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let server = match target {
        Target::Ours(mode) => {
            let server = Proc::tenant_status_in(
                mode,
                &format!("fanout-{streams}"),
                &common::serve_args(
                    grpc,
                    hook,
                    admin,
                    &fake.url(),
                    &["--tenant", "Cust1", "--heartbeat-interval", "1h"],
                ),
            )?;
            let admin_addr = format!("127.0.0.1:{admin}");
            common::wait_ready("ready", &admin_addr, Duration::from_secs(30)).await?;
            server
        }
        Target::Bare => {
            let addr = format!("127.0.0.1:{grpc}");
            let server = Proc::spawn(
                &format!("fanout-bare-{streams}"),
                &["baseline-watch".into(), "--addr".into(), addr.clone()],
            )?;
            common::wait_listening("the bare server", &addr, Duration::from_secs(10)).await?;
            server
        }
    };
    if pin {
        common::pin(server.pid(), "1")?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = server.rss_kib();

    let mut channels = Vec::new();
    for _ in 0..conns {
        channels.push(
            Channel::from_shared(format!("http://127.0.0.1:{grpc}"))?
                .tcp_nodelay(true)
                .connect()
                .await
                .context("connecting")?,
        );
    }
    let synced = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Instant)>();
    let mut tasks = Vec::new();
    for i in 0..streams + dashboards {
        let mut client = TenantStatusServiceClient::new(channels[i % conns].clone());
        let names = if i < streams {
            vec!["Cust1".to_owned()]
        } else {
            Vec::new()
        };
        let (synced, tx) = (Arc::clone(&synced), tx.clone());
        tasks.push(tokio::spawn(async move {
            let mut stream = client
                .watch_tenant(pb::WatchTenantRequest {
                    context_identifiers: names,
                    since_revision: 0,
                })
                .await?
                .into_inner();
            while let Some(ev) = stream.message().await? {
                let at = Instant::now();
                if ev.r#type == pb::WatchEventType::Synced as i32 {
                    synced.fetch_add(1, Ordering::Relaxed);
                } else if ev.r#type == pb::WatchEventType::Changed as i32 {
                    // Which round: the host the endpoint moved to.
                    let round = ev
                        .tenant
                        .as_ref()
                        .and_then(|t| t.endpoint.strip_prefix("https://sod"))
                        .and_then(|r| r.split('.').next())
                        .and_then(|n| n.parse::<usize>().ok())
                        .map(|n| n - 100);
                    if let Some(r) = round {
                        let _ = tx.send((r, at));
                    }
                }
            }
            anyhow::Ok(())
        }));
    }
    drop(tx);
    let total = streams + dashboards;
    common::wait_until("every stream synced", Duration::from_secs(300), || {
        let n = synced.load(Ordering::Relaxed);
        async move { n >= total }
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = server.rss_kib();
    let per_stream = (rss_after.saturating_sub(rss_before) * 1024) as f64 / total as f64;

    let client = reqwest::Client::new();
    let webhook = format!("http://127.0.0.1:{hook}/NotifyCustomerStateChange");
    let mut trigger = TenantStatusServiceClient::new(channels[0].clone());
    let mut h = common::histogram();
    let (server_cpu0, load_cpu0) = (server.cpu_secs(), common::cpu_secs_of("self"));
    for round in 1..=ROUNDS {
        // SuperOffice's state API agrees, so the confirming polls change
        // nothing more.
        fake.set(
            "Cust1",
            TenantSpec::running("Cust1", &host(round)).valid_for(Duration::from_secs(3600)),
        );
        let body = fake.notification(ChangeType::Move, "Cust1", Some(&host(round)));
        let sent = Instant::now();
        if matches!(target, Target::Ours(_)) {
            let status = client
                .post(&webhook)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await?
                .status();
            anyhow::ensure!(
                status.as_u16() == 204,
                "the notification was answered {status}"
            );
        } else {
            trigger
                .list_tenants(pb::ListTenantsRequest {
                    page_token: host(round),
                    ..Default::default()
                })
                .await?;
        }
        let mut got = 0;
        while got < total {
            let (r, at) = tokio::time::timeout(Duration::from_secs(60), rx.recv())
                .await
                .context("a stream did not get the change within 60 s")?
                .context("streams ended")?;
            if r == round {
                got += 1;
                let _ = h.record(at.duration_since(sent).as_micros() as u64);
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // CPU per stream-event, pauses between rounds included (both idle).
    let events = (ROUNDS * total) as f64;
    let server_us = (server.cpu_secs() - server_cpu0) / events * 1e6;
    let load_us = (common::cpu_secs_of("self") - load_cpu0) / events * 1e6;
    for t in &tasks {
        t.abort();
    }
    server.stop();
    Ok(Measured {
        latency: Latency::of(&h),
        per_stream,
        server_us,
        load_us,
    })
}

/// The same fan-out through a bare tokio watch channel: one task per
/// receiver, the time from send to each receipt.
async fn baseline(receivers: usize) -> Latency {
    let (tx, rx) = tokio::sync::watch::channel(Instant::now());
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<u64>();
    let ready = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..receivers {
        let mut rx = rx.clone();
        let done = done_tx.clone();
        let ready = Arc::clone(&ready);
        tasks.push(tokio::spawn(async move {
            rx.borrow_and_update();
            ready.fetch_add(1, Ordering::Relaxed);
            while rx.changed().await.is_ok() {
                let sent = *rx.borrow_and_update();
                let _ = done.send(sent.elapsed().as_micros() as u64);
            }
        }));
    }
    while ready.load(Ordering::Relaxed) < receivers {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut h = common::histogram();
    for _ in 0..ROUNDS {
        let _ = tx.send(Instant::now());
        for _ in 0..receivers {
            if let Some(us) = done_rx.recv().await {
                let _ = h.record(us.max(1));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for t in tasks {
        t.abort();
    }
    Latency::of(&h)
}
