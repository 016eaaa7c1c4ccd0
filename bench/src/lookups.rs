//! Scenario 1: GetTenantState over loopback, 16 connections, 256 requests
//! in flight, with 100,000 tenants in the store; beside grpc.health.v1
//! Check on the same server (tonic-health's handler: the framework's
//! trivial call), driven alternately by the same client and, when it is
//! installed, by h2load; and beside a bare tonic server that answers a
//! message of the same size from a constant.

use std::{
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use futures_util::Stream;
use prost::Message;
use rand::Rng;
use tenant_status::pb::{
    self,
    tenant_status_service_server::{TenantStatusService, TenantStatusServiceServer},
};
use tonic::{Request, Response, Status, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::common::{self, Latency, Row};

const CONNECTIONS: usize = 16;
const IN_FLIGHT: usize = 256;

pub async fn run(quick: bool) -> anyhow::Result<Vec<Row>> {
    let tenants = if quick { 1_000 } else { 100_000 };
    let (warmup, measure) = if quick {
        (Duration::from_millis(300), Duration::from_secs(1))
    } else {
        (Duration::from_secs(2), Duration::from_secs(10))
    };

    // The fake SuperOffice and tenant-status, each its own process, once
    // for each runtime mode measured. A long ValidUntil keeps polling out
    // of the measurement.
    let modes = common::runtime_modes();
    let mut servers = Vec::new();
    for (i, mode) in modes.iter().enumerate() {
        let (fake, server, grpc, _admin) =
            common::loaded_server_in(mode, &format!("lookups-{i}"), tenants).await?;
        servers.push((fake, server, format!("127.0.0.1:{grpc}")));
    }
    // The goal's baseline: a tonic server started as its documentation
    // shows, tonic-health's Check alone, on tokio's defaults.
    let (_health, health_addr) =
        common::baseline("lookups-baseline-health", "baseline-health").await?;
    let ids: Arc<Vec<String>> = Arc::new((1..=tenants).map(|i| format!("Cust{i}")).collect());
    // Every mode's GetTenantState, every mode's Check and the baseline's
    // Check in turns (two halves each), so a machine that gets busier or
    // quieter during the run moves them all alike.
    let half = measure / 2;
    let mut ours_h: Vec<_> = modes.iter().map(|_| common::histogram()).collect();
    let mut check_h: Vec<_> = modes.iter().map(|_| common::histogram()).collect();
    let mut health_h = common::histogram();
    for _ in 0..2 {
        for (i, (_, _, addr)) in servers.iter().enumerate() {
            ours_h[i].add(load(addr, Call::Lookup(Arc::clone(&ids)), warmup, half).await?)?;
        }
        for (i, (_, _, addr)) in servers.iter().enumerate() {
            check_h[i].add(load(addr, Call::Check, warmup, half).await?)?;
        }
        health_h.add(load(&health_addr, Call::Check, warmup, half).await?)?;
    }
    let rate = |h: &hdrhistogram::Histogram<u64>| h.len() as f64 / (2.0 * half.as_secs_f64());
    let h2load = h2load_all(
        &servers.iter().map(|s| s.2.clone()).collect::<Vec<_>>(),
        &health_addr,
        quick,
    )
    .await;
    let rss: Vec<u64> = servers.iter().map(|s| s.1.rss_kib()).collect();
    for (fake, server, _) in servers {
        server.stop();
        fake.stop();
    }
    drop(_health);

    let (_baseline, base_addr) = common::baseline("lookups-baseline", "baseline-grpc").await?;
    let base_h = load(&base_addr, Call::Lookup(Arc::clone(&ids)), warmup, measure).await?;
    let (base_rps, base) = (
        base_h.len() as f64 / measure.as_secs_f64(),
        Latency::of(&base_h),
    );
    let (health_rps, health) = (rate(&health_h), Latency::of(&health_h));

    let s = "1 lookups";
    let ms3 = |l: &Latency| format!("{:.2} / {:.2} / {:.2} ms", l.p50_ms, l.p99_ms, l.p999_ms);
    let mut rows = Vec::new();
    for (i, mode) in modes.iter().enumerate() {
        let m = common::mode_suffix(mode);
        let (ours_rps, ours) = (rate(&ours_h[i]), Latency::of(&ours_h[i]));
        let (check_rps, check) = (rate(&check_h[i]), Latency::of(&check_h[i]));
        let goal_ratio = ours_rps / health_rps;
        let goal_p99 = ours.p99_ms / health.p99_ms.max(0.001);
        let ratio = ours_rps / base_rps;
        let p99_ratio = ours.p99_ms / base.p99_ms.max(0.001);
        let check_ratio = ours_rps / check_rps;
        let check_p99 = ours.p99_ms / check.p99_ms.max(0.001);
        rows.extend([
            Row::new(
                s,
                &format!(
                    "GetTenantState/s against a default-configured tonic server's Check (tokio's defaults), same client, in turns{m}"
                ),
                format!("{} ({goal_ratio:.2}x)", common::fmt_rate(ours_rps)),
                format!("tonic-health {}", common::fmt_rate(health_rps)),
                ">= 1.3x",
                Some(goal_ratio >= 1.3),
            ),
            Row::new(
                s,
                &format!("latency p50 / p99 / p99.9 against the default-configured Check{m}"),
                format!("{} ({goal_p99:.2}x)", ms3(&ours)),
                format!("tonic-health {}", ms3(&health)),
                "p99 <= 1.0x",
                Some(goal_p99 <= 1.0),
            ),
            Row::new(
                s,
                &format!(
                    "GetTenantState/s against grpc.health.v1 Check, same server, same client, in turns{m}"
                ),
                format!("{} ({check_ratio:.2}x)", common::fmt_rate(ours_rps)),
                format!("Check {}", common::fmt_rate(check_rps)),
                ">= 1.0x Check",
                Some(check_ratio >= 1.0),
            ),
            Row::new(
                s,
                &format!("latency p50 / p99 / p99.9 against Check{m}"),
                format!("{} ({check_p99:.2}x)", ms3(&ours)),
                format!("Check {}", ms3(&check)),
                "p99 <= 1.0x Check",
                Some(check_p99 <= 1.0),
            ),
        ]);
        match &h2load {
            Ok(h) => {
                let (ours, check, health) = (&h.ours[i], &h.check[i], &h.health);
                rows.push(Row::new(
                    s,
                    &format!(
                        "h2load (16 conns x 16 streams): req/s; p50 / p99 / p99.9 against Check, same server{m}"
                    ),
                    format!(
                        "{} ({:.2}x); {}",
                        common::fmt_rate(ours.rps),
                        ours.rps / check.rps,
                        ms3(&ours.latency)
                    ),
                    format!("Check {}; {}", common::fmt_rate(check.rps), ms3(&check.latency)),
                    ">= 1.0x Check",
                    Some(ours.rps >= check.rps),
                ));
                rows.push(Row::new(
                    s,
                    &format!(
                        "h2load (16 conns x 16 streams): req/s; p50 / p99 / p99.9 against the default-configured Check{m}"
                    ),
                    format!(
                        "{} ({:.2}x); {}",
                        common::fmt_rate(ours.rps),
                        ours.rps / health.rps,
                        ms3(&ours.latency)
                    ),
                    format!(
                        "tonic-health {}; {}",
                        common::fmt_rate(health.rps),
                        ms3(&health.latency)
                    ),
                    ">= 1.3x, p99 <= 1.0x",
                    Some(
                        ours.rps >= 1.3 * health.rps
                            && ours.latency.p99_ms <= health.latency.p99_ms
                    ),
                ));
            }
            // CI installs h2load and sets this: there the rows must be there.
            Err(e) if std::env::var_os("TENANT_STATUS_REQUIRE_H2LOAD").is_some() => {
                anyhow::bail!("TENANT_STATUS_REQUIRE_H2LOAD is set: {e:#}");
            }
            Err(e) if i == 0 => eprintln!("h2load not run (apt-get install nghttp2-client): {e:#}"),
            Err(_) => {}
        }
        rows.extend([
            Row::new(
                s,
                &format!(
                    "GetTenantState/s ({tenants} tenants, {CONNECTIONS} conns, {IN_FLIGHT} in flight){m}"
                ),
                format!("{} ({:.0}%)", common::fmt_rate(ours_rps), ratio * 100.0),
                common::fmt_rate(base_rps),
                ">= 90% of baseline",
                Some(ratio >= 0.9),
            ),
            Row::new(
                s,
                &format!("latency p50 / p99 / p99.9{m}"),
                ms3(&ours),
                ms3(&base),
                "p99 <= 1.1x baseline",
                Some(p99_ratio <= 1.1),
            ),
            Row::new(
                s,
                &format!("server memory (RSS) with the tenants{m}"),
                format!("{:.0} MiB", rss[i] as f64 / 1024.0),
                String::new(),
                "",
                None,
            ),
        ]);
    }
    Ok(rows)
}

/// What the callers call.
#[derive(Clone)]
enum Call {
    /// GetTenantState of a random one of these tenants.
    Lookup(Arc<Vec<String>>),
    /// grpc.health.v1 Check of the server ("").
    Check,
}

/// `IN_FLIGHT` callers over `CONNECTIONS` connections for `warmup` plus
/// `measure`; returns requests per second and latency over `measure`.
async fn load(
    addr: &str,
    call: Call,
    warmup: Duration,
    measure: Duration,
) -> anyhow::Result<hdrhistogram::Histogram<u64>> {
    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        channels.push(
            Channel::from_shared(format!("http://{addr}"))?
                .tcp_nodelay(true)
                .connect()
                .await
                .with_context(|| format!("connecting to {addr}"))?,
        );
    }
    let begin = Instant::now() + warmup;
    let end = begin + measure;
    let mut tasks = Vec::new();
    for i in 0..IN_FLIGHT {
        let mut client = tonic::client::Grpc::new(channels[i % CONNECTIONS].clone());
        let mut health = HealthClient::new(channels[i % CONNECTIONS].clone());
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = common::histogram();
            let mut errors = 0u64;
            let mut rng = rand::rngs::SmallRng::from_rng(&mut rand::rng());
            loop {
                let t = Instant::now();
                if t >= end {
                    break;
                }
                let r = match &call {
                    Call::Lookup(ids) => {
                        let id = ids[rng.random_range(0..ids.len())].clone();
                        get_unread(
                            &mut client,
                            pb::GetTenantStateRequest {
                                context_identifier: id,
                            },
                        )
                        .await
                    }
                    Call::Check => health
                        .check(HealthCheckRequest {
                            service: String::new(),
                        })
                        .await
                        .map(drop),
                };
                if t >= begin {
                    match r {
                        Ok(_) => {
                            let _ = h.record(t.elapsed().as_micros() as u64);
                        }
                        Err(_) => errors += 1,
                    }
                }
            }
            (h, errors)
        }));
    }
    let mut all = common::histogram();
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await?;
        all.add(&h)?;
        errors += e;
    }
    anyhow::ensure!(errors == 0, "{errors} lookups failed against {addr}");
    Ok(all)
}

/// Calls GetTenantState and reads nothing of the answer: prost skips its
/// fields, as Check's client has next to nothing to read and h2load reads
/// nothing. Decoding a whole `Tenant` for each answer on the cores the
/// server needs made the comparison with Check the client's, not the
/// server's.
async fn get_unread(
    grpc: &mut tonic::client::Grpc<Channel>,
    request: pb::GetTenantStateRequest,
) -> Result<(), tonic::Status> {
    #[derive(Clone, PartialEq, prost::Message)]
    struct Unread {}
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/tenantstatus.v1.TenantStatusService/GetTenantState",
    );
    let codec = tonic_prost::ProstCodec::<pb::GetTenantStateRequest, Unread>::default();
    grpc.unary(tonic::Request::new(request), path, codec)
        .await
        .map(drop)
}

/// What h2load measured of one target: requests per second and the
/// latency of every request (from its --log-file).
struct H2load {
    rps: f64,
    latency: Latency,
}

/// h2load's figures for every server's GetTenantState and Check, and the
/// default-configured server's Check.
struct H2loadAll {
    ours: Vec<H2load>,
    check: Vec<H2load>,
    health: H2load,
}

/// Each server's GetTenantState and Check, and the default-configured
/// server's Check, each driven by h2load (16 connections, 16 streams each):
/// an outside client, not ours. One tenant for every GetTenantState (h2load
/// sends one body).
async fn h2load_all(servers: &[String], health: &str, quick: bool) -> anyhow::Result<H2loadAll> {
    let dir = common::work_dir();
    let frame = |m: &[u8]| {
        let mut v = vec![0u8];
        v.extend_from_slice(&(m.len() as u32).to_be_bytes());
        v.extend_from_slice(m);
        v
    };
    let lookup = dir.join("h2load-lookup.bin");
    std::fs::write(
        &lookup,
        frame(
            &pb::GetTenantStateRequest {
                context_identifier: "Cust1".into(),
            }
            .encode_to_vec(),
        ),
    )?;
    let check = dir.join("h2load-check.bin");
    std::fs::write(
        &check,
        frame(&HealthCheckRequest::default().encode_to_vec()),
    )?;
    const LOOKUP: &str = "/tenantstatus.v1.TenantStatusService/GetTenantState";
    const CHECK: &str = "/grpc.health.v1.Health/Check";
    let n = if quick { 2_000 } else { 200_000 };
    let run = |addr: &str, body: &std::path::Path, path: &'static str| {
        let url = format!("http://{addr}{path}");
        let body = body.to_owned();
        let log = dir.join("h2load-requests.tsv");
        async move {
            let out = tokio::process::Command::new("h2load")
                .args(["-n", &n.to_string(), "-c", "16", "-m", "16"])
                .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
                .arg("-d")
                .arg(&body)
                .arg(format!("--log-file={}", log.display()))
                .arg(&url)
                .output()
                .await
                .context("running h2load (apt-get install nghttp2-client)")?;
            anyhow::ensure!(out.status.success(), "h2load exited with {}", out.status);
            let rps = parse_h2load(&String::from_utf8_lossy(&out.stdout))?;
            let latency = h2load_latency(&std::fs::read_to_string(&log)?)?;
            anyhow::Ok(H2load { rps, latency })
        }
    };
    // In turns, twice; the better of each (h2load has no warm-up).
    let mut ours: Vec<Option<H2load>> = servers.iter().map(|_| None).collect();
    let mut checks: Vec<Option<H2load>> = servers.iter().map(|_| None).collect();
    let mut base: Option<H2load> = None;
    let keep = |best: &mut Option<H2load>, new: H2load| {
        if best.as_ref().is_none_or(|b| new.rps > b.rps) {
            *best = Some(new);
        }
    };
    for _ in 0..2 {
        for (i, addr) in servers.iter().enumerate() {
            keep(&mut ours[i], run(addr, &lookup, LOOKUP).await?);
        }
        for (i, addr) in servers.iter().enumerate() {
            keep(&mut checks[i], run(addr, &check, CHECK).await?);
        }
        keep(&mut base, run(health, &check, CHECK).await?);
    }
    let all = |v: Vec<Option<H2load>>| v.into_iter().flatten().collect::<Vec<_>>();
    Ok(H2loadAll {
        ours: all(ours),
        check: all(checks),
        health: base.context("h2load measured nothing")?,
    })
}

/// h2load's "finished in 2.10s, 95238.10 req/s" line; fails unless every
/// request succeeded.
fn parse_h2load(out: &str) -> anyhow::Result<f64> {
    let rps = out
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|r| r.strip_suffix(" req/s"))
        .and_then(|r| r.parse::<f64>().ok())
        .context("no req/s in h2load's output")?;
    let ok = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("requests: "))
        .context("no requests line in h2load's output")?;
    anyhow::ensure!(ok.contains(" 0 failed, 0 errored"), "h2load: {ok}");
    Ok(rps)
}

/// p50 / p99 / p99.9 of h2load's --log-file: start (µs since the epoch),
/// HTTP status, µs until the end of the response, tab-separated.
fn h2load_latency(log: &str) -> anyhow::Result<Latency> {
    let mut h = common::histogram();
    for line in log.lines() {
        let us: u64 = line
            .split('\t')
            .nth(2)
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("h2load's log line {line:?}"))?;
        let _ = h.record(us.max(1));
    }
    anyhow::ensure!(!h.is_empty(), "h2load's log is empty");
    Ok(Latency::of(&h))
}

use rand::SeedableRng;

/// The goal's baseline: tonic's server with its defaults and
/// tonic-health's reporter, as their documentation starts them, on the
/// bench's runtime (tokio's defaults, as `#[tokio::main]` builds them).
pub async fn baseline_health_server(addr: &str) -> anyhow::Result<()> {
    let addr = addr.parse().context("the baseline's address")?;
    let (_reporter, health) = tonic_health::server::health_reporter();
    tonic::transport::Server::builder()
        .add_service(health)
        .serve(addr)
        .await?;
    Ok(())
}

/// The baseline: a bare tonic server that answers every GetTenantState
/// with the same record, the size of a real one.
pub async fn baseline_server(addr: &str) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(TenantStatusServiceServer::new(Constant(sample())))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await?;
    Ok(())
}

/// A record as tenant-status answers it for a fake SuperOffice tenant.
pub(crate) fn sample() -> pb::Tenant {
    let now = std::time::SystemTime::now();
    pb::Tenant {
        context_identifier: "Cust12345".into(),
        state: pb::TenantState::Running as i32,
        is_running: true,
        endpoint: "https://sod2.superoffice.com/Cust12345".into(),
        api: "https://sod2.superoffice.com/Cust12345/api".into(),
        version: "Release_11.10_2026.02.24-02".into(),
        valid_until: Some((now + Duration::from_secs(3600)).into()),
        observed_at: Some(now.into()),
        revision: 1_795_425_098_078_360,
        last_change_source: pb::ChangeSource::Poll as i32,
        last_notification: None,
        stale: false,
        last_error: String::new(),
        changed_at: Some(now.into()),
        held_until: None,
    }
}

struct Constant(pb::Tenant);

type NoStream = Pin<Box<dyn Stream<Item = Result<pb::WatchTenantResponse, Status>> + Send>>;

#[tonic::async_trait]
impl TenantStatusService for Constant {
    async fn get_tenant_state(
        &self,
        _: Request<pb::GetTenantStateRequest>,
    ) -> Result<Response<pb::GetTenantStateResponse>, Status> {
        Ok(Response::new(pb::GetTenantStateResponse {
            tenant: Some(self.0.clone()),
        }))
    }

    type WatchTenantStream = NoStream;

    async fn watch_tenant(
        &self,
        _: Request<pb::WatchTenantRequest>,
    ) -> Result<Response<NoStream>, Status> {
        Err(Status::unimplemented("the baseline answers lookups only"))
    }

    async fn list_tenants(
        &self,
        _: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        Err(Status::unimplemented("the baseline answers lookups only"))
    }
}
