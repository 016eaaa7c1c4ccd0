//! Scenario 1: GetTenantState over loopback, 16 connections, 256 requests
//! in flight, with 100,000 tenants in the store; beside a bare tonic server
//! that answers a message of the same size from a constant.

use std::{
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use futures_util::Stream;
use rand::Rng;
use tenant_status::pb::{
    self,
    tenant_status_service_client::TenantStatusServiceClient,
    tenant_status_service_server::{TenantStatusService, TenantStatusServiceServer},
};
use tonic::{Request, Response, Status, transport::Channel};

use crate::common::{self, Latency, Proc, Row};

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
    let fake_port = common::free_port();
    let fake = common::fake_superoffice("lookups-fake", fake_port, tenants, "3600s", &[])?;
    let file = common::tenants_file(tenants)?;
    let (grpc, admin) = (common::free_port(), common::free_port());
    let server = Proc::tenant_status(
        "lookups-server",
        &common::serve_args(
            grpc,
            0,
            admin,
            &format!("http://127.0.0.1:{fake_port}"),
            &[
                "--tenants-file",
                &file.display().to_string(),
                "--poll-concurrency",
                "64",
            ],
        ),
    )?;
    let admin_addr = format!("127.0.0.1:{admin}");
    common::wait_until(
        "every tenant in the store",
        Duration::from_secs(120),
        || {
            let admin_addr = admin_addr.clone();
            async move {
                common::sum(&common::scrape(&admin_addr).await, "tenant_status_tenants")
                    >= tenants as f64
            }
        },
    )
    .await?;
    let ids: Arc<Vec<String>> = Arc::new((1..=tenants).map(|i| format!("Cust{i}")).collect());
    let (ours_rps, ours) = load(&format!("127.0.0.1:{grpc}"), &ids, warmup, measure).await?;
    let rss = server.rss_kib();
    server.stop();
    fake.stop();

    let (_baseline, base_addr) = common::baseline("lookups-baseline", "baseline-grpc").await?;
    let (base_rps, base) = load(&base_addr, &ids, warmup, measure).await?;

    let s = "1 lookups";
    let ratio = ours_rps / base_rps;
    let p99_ratio = ours.p99_ms / base.p99_ms.max(0.001);
    Ok(vec![
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
    ])
}

/// `IN_FLIGHT` callers over `CONNECTIONS` connections for `warmup` plus
/// `measure`; returns requests per second and latency over `measure`.
async fn load(
    addr: &str,
    ids: &Arc<Vec<String>>,
    warmup: Duration,
    measure: Duration,
) -> anyhow::Result<(f64, Latency)> {
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
        let mut client = TenantStatusServiceClient::new(channels[i % CONNECTIONS].clone());
        let ids = Arc::clone(ids);
        tasks.push(tokio::spawn(async move {
            let mut h = common::histogram();
            let mut errors = 0u64;
            let mut rng = rand::rngs::SmallRng::from_rng(&mut rand::rng());
            loop {
                let id = ids[rng.random_range(0..ids.len())].clone();
                let t = Instant::now();
                if t >= end {
                    break;
                }
                let r = client
                    .get_tenant_state(pb::GetTenantStateRequest {
                        context_identifier: id,
                    })
                    .await;
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
    Ok((all.len() as f64 / measure.as_secs_f64(), Latency::of(&all)))
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
fn sample() -> pb::Tenant {
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
