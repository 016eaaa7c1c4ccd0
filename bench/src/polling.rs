//! Scenario 4: 100,000 tenants against the fake SuperOffice run as its own
//! process, ValidUntil 60 s: polls a second achieved against the
//! schedule's 1,667, lateness against the due time (p99, from the service's
//! own histogram), CPU per 1,000 polls, and memory.

use std::time::{Duration, Instant};

use crate::common::{self, Proc, Row};

pub async fn run(quick: bool) -> anyhow::Result<Vec<Row>> {
    let (tenants, valid_for) = if quick {
        (1_000, Duration::from_secs(3))
    } else {
        (100_000, Duration::from_secs(60))
    };
    // Memory of an idle service, for the per-tenant figure.
    let idle_rss = {
        let admin = common::free_port();
        let idle = Proc::tenant_status(
            "polling-idle",
            &common::serve_args(0, 0, admin, "http://127.0.0.1:9", &[]),
        )?;
        common::wait_until("the idle service", Duration::from_secs(30), || async move {
            reqwest::get(format!("http://127.0.0.1:{admin}/livez"))
                .await
                .is_ok()
        })
        .await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let rss = idle.rss_kib();
        idle.stop();
        rss
    };

    let fake_port = common::free_port();
    let fake = common::fake_superoffice(
        "polling-fake",
        fake_port,
        tenants,
        &format!("{}ms", valid_for.as_millis()),
        &[],
    )?;
    let file = common::tenants_file(tenants)?;
    let admin = common::free_port();
    let server = Proc::tenant_status(
        "polling-server",
        &common::serve_args(
            0,
            0,
            admin,
            &format!("http://127.0.0.1:{fake_port}"),
            &[
                "--tenants-file",
                &file.display().to_string(),
                "--poll-min-interval",
                "1s",
                "--ready-timeout",
                "10m",
            ],
        ),
    )?;
    let started = Instant::now();
    let admin_addr = format!("127.0.0.1:{admin}");
    common::wait_ready("the first round", &admin_addr, Duration::from_secs(600)).await?;
    let first_round = started.elapsed();
    // Steady state: every tenant has come due once more after its first
    // poll. Measure over the next full ValidUntil period.
    tokio::time::sleep((valid_for + Duration::from_secs(1)).saturating_sub(started.elapsed()))
        .await;
    let (m0, cpu0, fake_cpu0, t0) = (
        common::scrape(&admin_addr).await,
        server.cpu_secs(),
        fake.cpu_secs(),
        Instant::now(),
    );
    tokio::time::sleep(valid_for).await;
    let (m1, cpu1, fake_cpu1, window) = (
        common::scrape(&admin_addr).await,
        server.cpu_secs(),
        fake.cpu_secs(),
        t0.elapsed(),
    );
    let rss = server.rss_kib();
    let polls = common::sum(&m1, "tenant_status_polls_total")
        - common::sum(&m0, "tenant_status_polls_total");
    let failed = polls
        - (m1
            .get(r#"tenant_status_polls_total{outcome="found"}"#)
            .unwrap_or(&0.0)
            - m0.get(r#"tenant_status_polls_total{outcome="found"}"#)
                .unwrap_or(&0.0));
    let rate = polls / window.as_secs_f64();
    let schedule = tenants as f64 / valid_for.as_secs_f64();
    let late_p99 =
        common::histogram_quantile(&m0, &m1, "tenant_status_poll_lateness_seconds", 0.99);
    let cores = (cpu1 - cpu0) / window.as_secs_f64();
    let per_1000 = (cpu1 - cpu0) / polls.max(1.0) * 1000.0;
    let per_tenant = (rss.saturating_sub(idle_rss) * 1024) as f64 / tenants as f64;
    server.stop();
    fake.stop();

    let s = "4 polling";
    Ok(vec![
        Row::new(
            s,
            &format!(
                "polls/s, {tenants} tenants, ValidUntil {}s",
                valid_for.as_secs()
            ),
            format!("{rate:.0}/s ({failed:.0} failed)"),
            format!("schedule {schedule:.0}/s"),
            ">= 95% of schedule",
            Some(rate >= 0.95 * schedule && failed == 0.0),
        ),
        Row::new(
            s,
            "lateness after due time, p99 (histogram bucket bound)",
            late_p99.map_or("n/a".into(), |l| format!("<= {:.0} ms", l * 1000.0)),
            String::new(),
            "< 1 s",
            Some(late_p99.is_some_and(|l| l < 1.0)),
        ),
        Row::new(
            s,
            "CPU for the poll load / per 1,000 polls",
            format!("{cores:.2} core / {:.0} ms", per_1000 * 1000.0),
            format!(
                "fake SuperOffice: {:.2} core",
                (fake_cpu1 - fake_cpu0) / window.as_secs_f64()
            ),
            "< 0.5 core",
            Some(cores < 0.5),
        ),
        Row::new(
            s,
            "memory per tenant (RSS over an idle service)",
            format!("{per_tenant:.0} B ({:.0} MiB in all)", rss as f64 / 1024.0),
            format!("idle {:.0} MiB", idle_rss as f64 / 1024.0),
            "< 1 KiB",
            Some(per_tenant < 1024.0),
        ),
        Row::new(
            s,
            "first round (every tenant polled once)",
            format!("{:.1} s", first_round.as_secs_f64()),
            String::new(),
            "",
            None,
        ),
    ])
}
