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

    // The fake SuperOffice and tenant-status, each its own process. A long
    // ValidUntil keeps polling out of the measurement.
    let (fake, server, grpc, _admin) = common::loaded_server("lookups", tenants).await?;
    let ids: Arc<Vec<String>> = Arc::new((1..=tenants).map(|i| format!("Cust{i}")).collect());
    let addr = format!("127.0.0.1:{grpc}");
    // Ours and Check in turns (two halves each), so a machine that gets
    // busier or quieter during the run moves both alike.
    let half = measure / 2;
    let (mut ours_h, mut check_h) = (common::histogram(), common::histogram());
    for _ in 0..2 {
        ours_h.add(load(&addr, Call::Lookup(Arc::clone(&ids)), warmup, half).await?)?;
        check_h.add(load(&addr, Call::Check, warmup, half).await?)?;
    }
    let rate = |h: &hdrhistogram::Histogram<u64>| h.len() as f64 / (2.0 * half.as_secs_f64());
    let (ours_rps, ours, check_rps, check) = (
        rate(&ours_h),
        Latency::of(&ours_h),
        rate(&check_h),
        Latency::of(&check_h),
    );
    let h2load = h2load_pair(&addr, quick).await;
    let rss = server.rss_kib();
    server.stop();
    fake.stop();

    let (_baseline, base_addr) = common::baseline("lookups-baseline", "baseline-grpc").await?;
    let base_h = load(&base_addr, Call::Lookup(Arc::clone(&ids)), warmup, measure).await?;
    let (base_rps, base) = (
        base_h.len() as f64 / measure.as_secs_f64(),
        Latency::of(&base_h),
    );

    let s = "1 lookups";
    let ratio = ours_rps / base_rps;
    let p99_ratio = ours.p99_ms / base.p99_ms.max(0.001);
    let check_ratio = ours_rps / check_rps;
    let check_p99 = ours.p99_ms / check.p99_ms.max(0.001);
    let mut rows = vec![
        Row::new(
            s,
            "GetTenantState/s against grpc.health.v1 Check, same server, same client, in turns",
            format!("{} ({check_ratio:.2}x)", common::fmt_rate(ours_rps)),
            format!("Check {}", common::fmt_rate(check_rps)),
            ">= 1.0x Check",
            Some(check_ratio >= 1.0),
        ),
        Row::new(
            s,
            "latency p50 / p99 / p99.9 against Check",
            format!(
                "{:.2} / {:.2} / {:.2} ms ({check_p99:.2}x)",
                ours.p50_ms, ours.p99_ms, ours.p999_ms
            ),
            format!(
                "Check {:.2} / {:.2} / {:.2} ms",
                check.p50_ms, check.p99_ms, check.p999_ms
            ),
            "p99 <= 1.0x Check",
            Some(check_p99 <= 1.0),
        ),
    ];
    match h2load {
        Ok((ours, check)) => rows.push(Row::new(
            s,
            "h2load (16 conns x 16 streams): req/s, mean latency",
            format!(
                "{} ({:.2}x), {:.2} ms",
                common::fmt_rate(ours.0),
                ours.0 / check.0,
                ours.1
            ),
            format!("Check {}, {:.2} ms", common::fmt_rate(check.0), check.1),
            ">= 1.0x Check",
            Some(ours.0 >= check.0),
        )),
        // CI installs h2load and sets this: there the rows must be there.
        Err(e) if std::env::var_os("TENANT_STATUS_REQUIRE_H2LOAD").is_some() => {
            return Err(e.context("TENANT_STATUS_REQUIRE_H2LOAD is set"));
        }
        Err(e) => eprintln!("h2load not run (apt-get install nghttp2-client): {e:#}"),
    }
    rows.extend([
        Row::new(
            s,
            &format!(
                "GetTenantState/s ({tenants} tenants, {CONNECTIONS} conns, {IN_FLIGHT} in flight)"
            ),
            format!("{} ({:.0}%)", common::fmt_rate(ours_rps), ratio * 100.0),
            common::fmt_rate(base_rps),
            ">= 90% of baseline",
            Some(ratio >= 0.9),
        ),
        Row::new(
            s,
            "latency p50 / p99 / p99.9",
            format!(
                "{:.2} / {:.2} / {:.2} ms",
                ours.p50_ms, ours.p99_ms, ours.p999_ms
            ),
            format!(
                "{:.2} / {:.2} / {:.2} ms",
                base.p50_ms, base.p99_ms, base.p999_ms
            ),
            "p99 <= 1.1x baseline",
            Some(p99_ratio <= 1.1),
        ),
        Row::new(
            s,
            "server memory (RSS) with the tenants",
            format!("{:.0} MiB", rss as f64 / 1024.0),
            String::new(),
            "",
            None,
        ),
    ]);
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

/// (requests per second, mean latency in ms) of ours and of Check, each
/// driven by h2load (16 connections, 16 streams each) on the same server:
/// an outside client, not ours. One tenant for every GetTenantState (h2load
/// sends one body).
async fn h2load_pair(addr: &str, quick: bool) -> anyhow::Result<((f64, f64), (f64, f64))> {
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
    let n = if quick { 2_000 } else { 200_000 };
    let run = |body: std::path::PathBuf, path: &'static str| {
        let url = format!("http://{addr}{path}");
        async move {
            let out = tokio::process::Command::new("h2load")
                .args(["-n", &n.to_string(), "-c", "16", "-m", "16"])
                .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
                .arg("-d")
                .arg(&body)
                .arg(&url)
                .output()
                .await
                .context("running h2load (apt-get install nghttp2-client)")?;
            anyhow::ensure!(out.status.success(), "h2load exited with {}", out.status);
            parse_h2load(&String::from_utf8_lossy(&out.stdout))
        }
    };
    let mut ours = Vec::new();
    let mut base = Vec::new();
    // In turns, twice; the better of each (h2load has no warm-up).
    for _ in 0..2 {
        ours.push(
            run(
                lookup.clone(),
                "/tenantstatus.v1.TenantStatusService/GetTenantState",
            )
            .await?,
        );
        base.push(run(check.clone(), "/grpc.health.v1.Health/Check").await?);
    }
    let best = |v: &[(f64, f64)]| {
        v.iter()
            .copied()
            .fold((0.0, 0.0), |a, b| if b.0 > a.0 { b } else { a })
    };
    Ok((best(&ours), best(&base)))
}

/// h2load's "finished in 2.10s, 95238.10 req/s" and "time for request:
/// min max mean sd" lines; fails unless every request succeeded.
fn parse_h2load(out: &str) -> anyhow::Result<(f64, f64)> {
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
    let mean = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("time for request:"))
        .and_then(|l| l.split_whitespace().nth(2).map(str::to_owned))
        .context("no request time in h2load's output")?;
    let ms = if let Some(us) = mean.strip_suffix("us") {
        us.parse::<f64>()? / 1000.0
    } else if let Some(ms) = mean.strip_suffix("ms") {
        ms.parse::<f64>()?
    } else if let Some(s) = mean.strip_suffix('s') {
        s.parse::<f64>()? * 1000.0
    } else {
        anyhow::bail!("h2load's request time {mean:?}")
    };
    Ok((rps, ms))
}

use rand::SeedableRng;

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
