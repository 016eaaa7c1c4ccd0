//! Lookups of new names under the budget toward SuperOffice: 5,000
//! GetTenantState calls for tenants not tracked yet, all at once, against a
//! fake state API (its own process) that answers in 100 ms. With the
//! default budget (32 in flight) SuperOffice never sees more than 32; the
//! baseline is the same burst with the budget out of the way (a bound far
//! above the burst), which is what SuperOffice saw before there was one.
//! Latency is what the budget costs the callers: at best the burst divided
//! by the budget, times the answer time.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tenant_status::pb::{self, tenant_status_service_client::TenantStatusServiceClient};
use tonic::transport::Channel;

use crate::common::{self, Latency, Proc, Row};

const LATENCY: Duration = Duration::from_millis(100);
const BUDGET: usize = 32;
const CONNECTIONS: usize = 8;

/// What one burst came to.
struct Burst {
    latency: Latency,
    answered: usize,
    refused: usize,
    peak: u64,
    took: Duration,
}

pub async fn run(quick: bool) -> anyhow::Result<Vec<Row>> {
    let names = if quick { 200 } else { 5_000 };
    let ours = burst(names, BUDGET).await?;
    let base = burst(names, 1_000_000).await?;
    let s = "newnames";
    let best = names as f64 / BUDGET as f64 * LATENCY.as_secs_f64() * 1000.0;
    Ok(vec![
        Row::new(
            s,
            &format!(
                "{names} lookups of new names at once: peak requests in flight at SuperOffice (state API answers in 100 ms)"
            ),
            format!("{} (budget {BUDGET})", ours.peak),
            format!("no budget: {}", base.peak),
            &format!("<= {BUDGET}"),
            Some(ours.peak <= BUDGET as u64),
        ),
        Row::new(
            s,
            "lookup latency p50 / p99 / max; answered, refused",
            format!(
                "{:.0} / {:.0} / {:.0} ms; {} answered, {} refused",
                ours.latency.p50_ms,
                ours.latency.p99_ms,
                ours.latency.max_ms,
                ours.answered,
                ours.refused
            ),
            format!(
                "no budget: {:.0} / {:.0} / {:.0} ms; {} answered",
                base.latency.p50_ms, base.latency.p99_ms, base.latency.max_ms, base.answered
            ),
            &format!("all answered; max near {best:.0} ms ({names} / {BUDGET} x 100 ms)"),
            Some(ours.refused == 0 && ours.answered == names),
        ),
        Row::new(
            s,
            "the whole burst answered in",
            format!("{:.1} s", ours.took.as_secs_f64()),
            format!("no budget: {:.1} s", base.took.as_secs_f64()),
            "",
            None,
        ),
    ])
}

/// Starts a fake SuperOffice and tenant-status with `budget` in flight,
/// and looks up `names` new tenants at once.
async fn burst(names: usize, budget: usize) -> anyhow::Result<Burst> {
    let (fake_port, control) = (common::free_port(), common::free_port());
    let fake = common::fake_superoffice(
        &format!("newnames-fake-{budget}"),
        fake_port,
        names,
        "3600s",
        &[
            "--latency",
            "100ms",
            "--control-addr",
            &format!("127.0.0.1:{control}"),
        ],
    )?;
    // The control API listens once every tenant is set.
    let control_addr = format!("127.0.0.1:{control}");
    common::wait_listening(
        "the fake's control API",
        &control_addr,
        Duration::from_secs(60),
    )
    .await?;
    let (grpc, admin) = (common::free_port(), common::free_port());
    let server = Proc::tenant_status(
        &format!("newnames-server-{budget}"),
        &common::serve_args(
            grpc,
            0,
            admin,
            &format!("http://127.0.0.1:{fake_port}"),
            &[
                "--superoffice-max-in-flight",
                &budget.to_string(),
                // Long enough that every lookup waits its turn: the row
                // measures the queue, not refusals.
                "--superoffice-max-wait",
                "10m",
            ],
        ),
    )?;
    let admin_addr = format!("127.0.0.1:{admin}");
    common::wait_ready("newnames server", &admin_addr, Duration::from_secs(60)).await?;
    let stats = format!("http://127.0.0.1:{control}/stats");
    let http = reqwest::Client::new();
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        let channel = Channel::from_shared(format!("http://127.0.0.1:{grpc}"))?
            .connect()
            .await?;
        clients.push(TenantStatusServiceClient::new(channel));
    }
    let clients = Arc::new(clients);
    let started = Instant::now();
    let calls = (1..=names).map(|i| {
        let clients = Arc::clone(&clients);
        tokio::spawn(async move {
            let mut c = clients[i % CONNECTIONS].clone();
            let t = Instant::now();
            let r = c
                .get_tenant_state(pb::GetTenantStateRequest {
                    context_identifier: format!("Cust{i}"),
                })
                .await;
            (
                r.map(|_| ())
                    .map_err(|e| format!("{:?}: {}", e.code(), e.message())),
                t.elapsed(),
            )
        })
    });
    let results = futures_util::future::join_all(calls).await;
    let took = started.elapsed();
    let mut h = common::histogram();
    let (mut answered, mut refused) = (0, 0);
    let mut errors = std::collections::BTreeMap::<String, usize>::new();
    for r in results {
        let (result, t) = r?;
        match result {
            Ok(()) => {
                answered += 1;
                h.record(t.as_micros().max(1) as u64)?;
            }
            Err(e) => {
                refused += 1;
                *errors.entry(e).or_default() += 1;
            }
        }
    }
    for (e, n) in &errors {
        eprintln!("budget {budget}: {n} lookups failed: {e}");
    }
    let s: serde_json::Value =
        serde_json::from_slice(&http.get(&stats).send().await?.bytes().await?)?;
    let peak = s["peak_in_flight"].as_u64().unwrap_or(0);
    server.stop();
    fake.stop();
    Ok(Burst {
        latency: Latency::of(&h),
        answered,
        refused,
        peak,
        took,
    })
}
