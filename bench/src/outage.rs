//! SuperOffice down, many tenants: what the state file costs while every
//! poll fails, and how long SIGTERM takes, final save included.
//!
//! The service restores a state file of 500,000 Running tenants (ValidUntil
//! ten minutes ahead), while nothing listens at the state API, so every
//! re-poll fails at once. Measured over the window: the process's CPU, the
//! saves' share of a core (from `tenant_status_state_file_save_duration`),
//! the number of saves, the log lines written (from the first save after the
//! start on: that one folds the journal replayed at start); then the time
//! from SIGTERM to exit with `--shutdown-timeout 10s`, and whether the final
//! save made it.

use std::time::{Duration, Instant};

use crate::common::{self, Proc, Row};

pub async fn run(quick: bool) -> anyhow::Result<Vec<Row>> {
    let (tenants, window) = if quick {
        (2_000, Duration::from_secs(5))
    } else {
        (500_000, Duration::from_secs(90))
    };
    let dir = common::work_dir().join("outage");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("state.json");
    common::running_state_file(tenants, Duration::from_secs(600), &path)?;
    let size = std::fs::metadata(&path)?.len();

    let admin = common::free_port();
    let admin_addr = format!("127.0.0.1:{admin}");
    let spread = format!("{}s", window.as_secs() * 2 / 3);
    // Nothing listens on port 9: every poll fails at once.
    let args = common::serve_args(
        0,
        0,
        admin,
        "http://127.0.0.1:9",
        &[
            "--state-file",
            &path.display().to_string(),
            "--restore-spread",
            &spread,
            "--shutdown-timeout",
            "10s",
        ],
    );
    let mut server = Proc::tenant_status("outage-server", &args)?;
    common::wait_until("every tenant restored", Duration::from_secs(300), || {
        let a = admin_addr.clone();
        async move {
            common::sum(&common::scrape(&a).await, "tenant_status_tenants") >= tenants as f64
        }
    })
    .await?;
    // The first save after a start folds the journal replayed at start:
    // a one-off, left out of the window.
    common::wait_until("the first save", Duration::from_secs(300), || {
        let a = admin_addr.clone();
        async move {
            common::sum(
                &common::scrape(&a).await,
                "tenant_status_state_file_save_duration_seconds_count",
            ) >= 1.0
        }
    })
    .await?;
    let log = common::work_dir().join("logs").join("outage-server.log");
    let lines = || {
        std::fs::read_to_string(&log)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let before = common::scrape(&admin_addr).await;
    let (cpu0, lines0, t0) = (server.cpu_secs(), lines(), Instant::now());
    tokio::time::sleep(window).await;
    let after = common::scrape(&admin_addr).await;
    let (cpu1, lines1, took) = (server.cpu_secs(), lines(), t0.elapsed());
    let delta = |name: &str| common::sum(&after, name) - common::sum(&before, name);
    let save_secs = delta("tenant_status_state_file_save_duration_seconds_sum");
    let saves = delta("tenant_status_state_file_save_duration_seconds_count");
    let polls_failed = common::sum(&after, "tenant_status_polls_total")
        - common::sum(&before, "tenant_status_polls_total");
    let secs = took.as_secs_f64();
    let save_share = save_secs / secs;
    let cpu_share = (cpu1 - cpu0) / secs;

    // SIGTERM, and the time to exit.
    let mtime = || std::fs::metadata(&path).and_then(|m| m.modified()).ok();
    let saved_before = mtime();
    let pid = server.pid();
    let term = Instant::now();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    let exited = loop {
        if let Some(status) = server.child.try_wait()? {
            break status;
        }
        anyhow::ensure!(
            term.elapsed() < Duration::from_secs(60),
            "still running 60 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let stop = term.elapsed();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let final_save = if text.contains("deadline came before the state file was saved") {
        "final save cut by the deadline (the journal holds what was acknowledged)"
    } else if mtime() != saved_before {
        "final save made"
    } else {
        "no final save"
    };
    anyhow::ensure!(exited.success(), "exited with {exited}");

    let s = "outage";
    Ok(vec![
        Row::new(
            s,
            &format!(
                "state file saves, {tenants} tenants ({:.0} MiB), SuperOffice down, {:.0} s",
                size as f64 / 1_048_576.0,
                secs
            ),
            format!("{:.1} % of a core ({saves:.0} saves)", save_share * 100.0),
            format!(
                "process {:.1} % of a core; {polls_failed:.0} polls failed; {} log lines",
                cpu_share * 100.0,
                lines1.saturating_sub(lines0)
            ),
            "< 5 % of a core",
            Some(save_share < 0.05),
        ),
        Row::new(
            s,
            &format!("SIGTERM to exit, {tenants} tenants, --shutdown-timeout 10s"),
            format!("{:.2} s", stop.as_secs_f64()),
            final_save.to_string(),
            "< 10 s",
            Some(stop < Duration::from_secs(10)),
        ),
    ])
}
