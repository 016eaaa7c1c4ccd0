//! Scenario 2: 10,000 (then 50,000) WatchTenant streams on one tenant over
//! 100 connections, plus 100 streams watching every tenant; a change is
//! applied (a signed Move notification) and the time until each stream has
//! it is measured in the load process, which both sends the change and
//! reads the streams. Beside it: the same change through bare tokio watch
//! channels in one process.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use tenant_status::{
    core::tenant::ChangeType,
    pb::{self, tenant_status_service_client::TenantStatusServiceClient},
    sim::superoffice::{FakeSuperOffice, TenantSpec},
};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::common::{self, Latency, Proc, Row};

const ROUNDS: usize = 5;

pub async fn run(quick: bool) -> anyhow::Result<Vec<Row>> {
    let (conns, dashboards) = if quick { (4, 5) } else { (100, 100) };
    let sizes: &[usize] = if quick { &[200] } else { &[10_000, 50_000] };
    let mut rows = Vec::new();
    for &streams in sizes {
        let (lat, per_stream, server_us, load_us) = measure(streams, conns, dashboards).await?;
        let base = baseline(streams + dashboards).await;
        let target_ms = if streams <= 10_000 { 50.0 } else { 250.0 };
        let s = "2 fan-out";
        rows.push(Row::new(
            s,
            &format!("{streams} streams + {dashboards} all-tenant, {conns} conns: change to every stream, p50 / p99 / max"),
            format!("{:.1} / {:.1} / {:.1} ms", lat.p50_ms, lat.p99_ms, lat.max_ms),
            format!("{:.2} / {:.2} / {:.2} ms", base.p50_ms, base.p99_ms, base.max_ms),
            &format!("p99 < {target_ms:.0} ms"),
            Some(lat.p99_ms < target_ms),
        ));
        rows.push(Row::new(
            s,
            &format!("CPU per stream per change ({streams} streams)"),
            format!("server {server_us:.1} µs"),
            format!("load process {load_us:.1} µs"),
            "",
            None,
        ));
        rows.push(Row::new(
            s,
            &format!("server memory per stream ({streams} streams)"),
            format!("{:.1} KiB", per_stream / 1024.0),
            String::new(),
            "< 8 KiB",
            Some(per_stream < 8.0 * 1024.0),
        ));
    }
    Ok(rows)
}

/// Returns the latency of every stream over every round, the server's
/// memory per stream in bytes, and the CPU per stream-event (µs) of the
/// server and of this load process.
async fn measure(
    streams: usize,
    conns: usize,
    dashboards: usize,
) -> anyhow::Result<(Latency, f64, f64, f64)> {
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
    let server = Proc::tenant_status(
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
    Ok((Latency::of(&h), per_stream, server_us, load_us))
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
