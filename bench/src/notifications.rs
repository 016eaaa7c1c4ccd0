//! Scenario 3: state-change notifications with real RS256 tokens over 64
//! connections: accepted per second (beside the same HTTP stack with a
//! handler that does nothing), and the time from a POST's send to a
//! watcher's receipt at 1,000 a second.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use tenant_status::{
    ChangeType,
    pb::{self, tenant_status_service_client::TenantStatusServiceClient},
    sim::fake_superoffice::notification_body,
    sim::signer::Signer,
};

use crate::common::{self, Latency, Proc, Row};

const CONNECTIONS: usize = 64;
const PATH: &str = "/NotifyCustomerStateChange";

pub async fn run(quick: bool) -> anyhow::Result<Vec<Row>> {
    let (tenants, burst, paced, rate) = if quick {
        (100, 400, 100, 200.0)
    } else {
        (10_000, 40_000, 3_000, 1_000.0)
    };
    let rate: f64 = std::env::var("BENCH_NOTIFY_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(rate);
    // The fake SuperOffice in its own process answers the confirming
    // polls; the tokens are signed here with a key the service is given as
    // a certificate file.
    let fake_port = common::free_port();
    let fake = common::fake_superoffice(
        "notifications-fake",
        fake_port,
        tenants + paced,
        "3600s",
        &[],
    )?;
    let issuer = "https://sod.superoffice.com";
    let signer = Signer::generate(issuer)?;
    let cert = common::work_dir().join("notifications-signer.crt");
    std::fs::write(&cert, signer.certificate_pem())?;
    eprintln!("signing {} tokens", burst + paced);
    let signed = Instant::now();
    let bodies = sign_all(&signer, burst, tenants);
    // Tenants of their own for the latency phase: one event each.
    let paced_bodies: Vec<(String, String)> = (0..paced)
        .map(|i| {
            let ctx = format!("Cust{}", tenants + 1 + i);
            let body = notification_body(&signer, ChangeType::Resume, &ctx, None).to_string();
            (ctx, body)
        })
        .collect();
    eprintln!("signed in {:.1} s", signed.elapsed().as_secs_f64());

    let flags = common::notification_load_flags(&cert, issuer);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let serve_args = |grpc: u16, hook: u16, admin: u16| -> Vec<String> {
        common::serve_args(
            grpc,
            hook,
            admin,
            &format!("http://127.0.0.1:{fake_port}"),
            &flags,
        )
    };
    // Each runtime mode in turn, each on a fresh server (its own memory
    // of used tokens, so the same bodies serve again).
    let modes = common::runtime_modes();
    let mut per_mode = Vec::new();
    for (i, mode) in modes.iter().enumerate() {
        let (grpc, hook, admin) = (
            common::free_port(),
            common::free_port(),
            common::free_port(),
        );
        let server = Proc::tenant_status_in(
            mode,
            &format!("notifications-server-{i}"),
            &serve_args(grpc, hook, admin),
        )?;
        let hook_url = format!("http://127.0.0.1:{hook}{PATH}");
        let hook_addr = format!("127.0.0.1:{hook}");
        common::wait_listening("the webhook listening", &hook_addr, Duration::from_secs(30))
            .await?;
        // One notification first: the whole path warm.
        let warm = notification_body(&signer, ChangeType::Resume, "Cust1", None).to_string();
        let status = reqwest::Client::new()
            .post(&hook_url)
            .header("content-type", "application/json")
            .body(warm)
            .send()
            .await?
            .status();
        anyhow::ensure!(
            status.as_u16() == 204,
            "the first notification was answered {status}"
        );

        // Latency first, on a quiet service: a watcher of every tenant, 1,000
        // POSTs a second. (After the burst, its confirming and settle polls
        // keep the service and the fake busy for some 15 s.)
        let (server_cpu0, load_cpu0, t0) = (
            server.cpu_secs(),
            common::cpu_secs_of("self"),
            Instant::now(),
        );
        let lat = paced_latency(
            &format!("127.0.0.1:{grpc}"),
            &hook_url,
            paced_bodies.clone(),
            rate,
        )
        .await?;
        let secs = t0.elapsed().as_secs_f64();
        eprintln!(
            "paced phase: server {:.2} core, load {:.2} core, fake {:.2} s CPU",
            (server.cpu_secs() - server_cpu0) / secs,
            (common::cpu_secs_of("self") - load_cpu0) / secs,
            fake.cpu_secs()
        );

        let cpu0 = server.cpu_secs();
        let (ours_rate, ours_refused) = blast(&hook_url, Arc::new(bodies.clone())).await?;
        let cpu_per_1000 = (server.cpu_secs() - cpu0) / burst as f64 * 1000.0;
        server.stop();
        per_mode.push((ours_rate, ours_refused, cpu_per_1000, lat));
    }

    // The same with --state-file: each notification is made durable in
    // the journal (group-committed fdatasync) before its 204.
    let (grpc, hook, admin) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let state_dir = common::work_dir().join("notifications-state");
    let _ = std::fs::remove_dir_all(&state_dir);
    std::fs::create_dir_all(&state_dir)?;
    let mut args = serve_args(grpc, hook, admin);
    args.extend([
        "--state-file".into(),
        state_dir.join("state.json").display().to_string(),
    ]);
    let server = Proc::tenant_status("notifications-server-journal", &args)?;
    let hook_url = format!("http://127.0.0.1:{hook}{PATH}");
    common::wait_listening(
        "the webhook listening",
        &format!("127.0.0.1:{hook}"),
        Duration::from_secs(30),
    )
    .await?;
    let journal_lat =
        paced_latency(&format!("127.0.0.1:{grpc}"), &hook_url, paced_bodies, rate).await?;
    let (journal_rate, journal_refused) = blast(&hook_url, Arc::new(bodies.clone())).await?;
    server.stop();
    fake.stop();

    let (_baseline, base_addr) =
        common::baseline("notifications-baseline", "baseline-http").await?;
    let (base_rate, _) = blast(&format!("http://{base_addr}{PATH}"), Arc::new(bodies)).await?;

    let s = "3 notifications";
    let mut rows = Vec::new();
    for (mode, (ours_rate, ours_refused, cpu_per_1000, lat)) in modes.iter().zip(per_mode) {
        let m = common::mode_suffix(mode);
        rows.extend([
            Row::new(
                s,
                &format!(
                    "accepted/s, RS256, {CONNECTIONS} conns ({burst} POSTs, {tenants} tenants){m}"
                ),
                format!(
                    "{}{}",
                    common::fmt_rate(ours_rate),
                    if ours_refused > 0 {
                        format!(" ({ours_refused} refused)")
                    } else {
                        String::new()
                    }
                ),
                common::fmt_rate(base_rate),
                ">= 10k/s",
                Some(ours_rate >= 10_000.0 && ours_refused == 0),
            ),
            Row::new(
                s,
                &format!("server CPU per 1,000 accepted (verify, apply, confirming polls){m}"),
                format!("{:.0} ms", cpu_per_1000 * 1000.0),
                String::new(),
                "",
                None,
            ),
            Row::new(
                s,
                &format!(
                    "POST sent to watcher's receipt at {rate:.0}/s, p50 / p99 / p99.9 / max{m}"
                ),
                format!(
                    "{:.2} / {:.2} / {:.2} / {:.2} ms",
                    lat.p50_ms, lat.p99_ms, lat.p999_ms, lat.max_ms
                ),
                String::new(),
                "p99 < 5 ms",
                Some(lat.p99_ms < 5.0),
            ),
        ]);
    }
    rows.extend([
        Row::new(
            s,
            "with --state-file (journal fdatasync before each 204): accepted/s",
            format!(
                "{}{}",
                common::fmt_rate(journal_rate),
                if journal_refused > 0 {
                    format!(" ({journal_refused} refused)")
                } else {
                    String::new()
                }
            ),
            common::fmt_rate(base_rate),
            "",
            None,
        ),
        Row::new(
            s,
            &format!(
                "with --state-file: POST sent to watcher's receipt at {rate:.0}/s, p50 / p99 / p99.9 / max"
            ),
            format!(
                "{:.2} / {:.2} / {:.2} / {:.2} ms",
                journal_lat.p50_ms, journal_lat.p99_ms, journal_lat.p999_ms, journal_lat.max_ms
            ),
            String::new(),
            "",
            None,
        ),
    ]);
    Ok(rows)
}

/// `n` notification bodies for tenants Cust1..CustT, signed on every core.
pub(crate) fn sign_all(signer: &Signer, n: usize, tenants: usize) -> Vec<String> {
    let cores = std::thread::available_parallelism().map_or(2, |c| c.get());
    let per = n.div_ceil(cores);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..cores)
            .map(|c| {
                s.spawn(move || {
                    (c * per..((c + 1) * per).min(n))
                        .map(|i| {
                            let ctx = format!("Cust{}", i % tenants + 1);
                            notification_body(signer, ChangeType::Resume, &ctx, None).to_string()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a signing thread"))
            .collect()
    })
}

/// POSTs every body over `CONNECTIONS` connections as fast as they are
/// answered; returns 204s per second and how many were not 204.
pub(crate) async fn blast(url: &str, bodies: Arc<Vec<String>>) -> anyhow::Result<(f64, usize)> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        // One client each: one connection each.
        let client = reqwest::Client::builder()
            .http1_only()
            .pool_max_idle_per_host(1)
            .tcp_nodelay(true)
            .build()?;
        let (url, bodies, next) = (url.to_owned(), Arc::clone(&bodies), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut refused) = (0usize, 0usize);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { break };
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().as_u16() == 204 => ok += 1,
                    _ => refused += 1,
                }
            }
            (ok, refused)
        }));
    }
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        let (o, r) = t.await?;
        ok += o;
        refused += r;
    }
    Ok((ok as f64 / started.elapsed().as_secs_f64(), refused))
}

/// Sends `bodies` at `rate` a second while a watcher of every tenant reads;
/// the latency of each from its send to the watcher's receipt.
pub(crate) async fn paced_latency(
    grpc: &str,
    url: &str,
    bodies: Vec<(String, String)>,
    rate: f64,
) -> anyhow::Result<Latency> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{grpc}"))?
        .tcp_nodelay(true)
        .connect()
        .await
        .context("connecting the watcher")?;
    let mut stream = TenantStatusServiceClient::new(channel)
        .watch_tenant(pb::WatchTenantRequest::default())
        .await?
        .into_inner();
    // Skip the snapshot.
    while let Some(ev) = stream.message().await? {
        if ev.r#type == pb::WatchEventType::Synced as i32 {
            break;
        }
    }
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let total = bodies.len();
    let reader = {
        let sent = Arc::clone(&sent);
        tokio::spawn(async move {
            let mut h = common::histogram();
            let mut seen = 0;
            while seen < total {
                let Ok(Ok(Some(ev))) =
                    tokio::time::timeout(Duration::from_secs(30), stream.message()).await
                else {
                    break;
                };
                let at = Instant::now();
                let Some(t) = ev.tenant else { continue };
                let s = sent.lock().unwrap().remove(&t.context_identifier);
                if let Some(s) = s {
                    seen += 1;
                    let _ = h.record(at.duration_since(s).as_micros().max(1) as u64);
                }
            }
            h
        })
    };
    let clients: Vec<reqwest::Client> = (0..CONNECTIONS)
        .map(|_| {
            reqwest::Client::builder()
                .http1_only()
                .tcp_nodelay(true)
                .build()
                .expect("a client")
        })
        .collect();
    // Connections open before the clock starts (a GET answers 405).
    for c in &clients {
        let _ = c.get(url).send().await;
    }
    let gap = Duration::from_secs_f64(1.0 / rate);
    let start = tokio::time::Instant::now();
    let mut posts = Vec::new();
    for (i, (ctx, body)) in bodies.into_iter().enumerate() {
        tokio::time::sleep_until(start + gap * i as u32).await;
        let client = clients[i % CONNECTIONS].clone();
        let (url, sent) = (url.to_owned(), Arc::clone(&sent));
        posts.push(tokio::spawn(async move {
            let t = Instant::now();
            sent.lock().unwrap().insert(ctx, t);
            let _ = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            t.elapsed()
        }));
    }
    let mut answered = common::histogram();
    for p in posts {
        if let Ok(d) = p.await {
            let _ = answered.record(d.as_micros().max(1) as u64);
        }
    }
    let a = Latency::of(&answered);
    eprintln!(
        "POST to 204: p50 {:.2} p99 {:.2} max {:.2} ms",
        a.p50_ms, a.p99_ms, a.max_ms
    );
    let h = reader.await?;
    anyhow::ensure!(
        h.len() as usize == total,
        "the watcher saw {} of {total} notifications",
        h.len()
    );
    Ok(Latency::of(&h))
}

/// The baseline: the same HTTP stack (axum, hyper) with a handler that
/// reads the body and answers 204.
pub async fn baseline_server(addr: &str) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = axum::Router::new().route(
        PATH,
        axum::routing::post(|_body: axum::body::Bytes| async {
            axum::http::StatusCode::NO_CONTENT
        }),
    );
    axum::serve(listener, app).await?;
    Ok(())
}
