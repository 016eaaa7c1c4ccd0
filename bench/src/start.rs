//! Scenario 5: from process start to SERVING with 100,000 tenants in a
//! state file, beside the same start with none.

use std::time::{Duration, Instant};

use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::common::{self, Proc, Row};

pub async fn run(quick: bool) -> anyhow::Result<Vec<Row>> {
    let tenants = if quick { 1_000 } else { 100_000 };
    let path = common::work_dir().join(format!("state-{tenants}.json"));
    common::running_state_file(tenants, Duration::from_secs(60), &path)?;
    let size = std::fs::metadata(&path)?.len();

    let mut best = [f64::MAX; 2];
    for _ in 0..3 {
        for (i, state) in [Some(&path), None].into_iter().enumerate() {
            let t = time_to_serving(state.map(|p| p.display().to_string())).await?;
            best[i] = best[i].min(t.as_secs_f64());
        }
    }
    let s = "5 start";
    Ok(vec![Row::new(
        s,
        &format!(
            "start to SERVING, {tenants} tenants in the state file ({:.0} MiB), best of 3",
            size as f64 / 1_048_576.0
        ),
        format!("{:.0} ms", best[0] * 1000.0),
        format!("no state file: {:.0} ms", best[1] * 1000.0),
        "< 1 s",
        Some(best[0] < 1.0),
    )])
}

async fn time_to_serving(state_file: Option<String>) -> anyhow::Result<Duration> {
    let grpc = common::free_port();
    // Nothing listens at the state API: no poll matters within the
    // measurement.
    let mut args = common::serve_args(grpc, 0, 0, "http://127.0.0.1:9", &[]);
    if let Some(p) = state_file {
        args.extend(["--state-file".into(), p]);
    }
    let started = Instant::now();
    let server = Proc::tenant_status("start", &args)?;
    let url = format!("http://127.0.0.1:{grpc}");
    loop {
        if started.elapsed() > Duration::from_secs(60) {
            anyhow::bail!("not SERVING within 60 s");
        }
        if let Ok(channel) = tonic::transport::Channel::from_shared(url.clone())?
            .connect()
            .await
        {
            let r = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await;
            if r.is_ok_and(|r| r.into_inner().status == 1) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = started.elapsed();
    server.stop();
    Ok(took)
}
