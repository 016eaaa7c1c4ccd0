//! What every scenario needs: child processes (the service, the fake
//! SuperOffice, the baselines, all this same binary), their memory and CPU
//! from /proc, latency histograms, metrics scrapes, and result rows.

use std::{
    collections::HashMap,
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use serde::Serialize;

/// Where logs, generated files and results go.
pub fn work_dir() -> PathBuf {
    let dir = PathBuf::from("target/bench");
    std::fs::create_dir_all(dir.join("logs")).expect("creating target/bench");
    dir
}

/// A child process of this binary, killed when dropped.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    /// Runs `bench <args>` as a child; its output goes to a log file.
    pub fn spawn(name: &str, args: &[String]) -> anyhow::Result<Self> {
        Self::spawn_with_env(name, args, &[])
    }

    /// `spawn`, with `env` added to the child's environment.
    fn spawn_with_env(
        name: &str,
        args: &[String],
        env: &[(&'static str, String)],
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating the bench binary")?;
        let log = std::fs::File::create(work_dir().join("logs").join(format!("{name}.log")))?;
        let child = std::process::Command::new(exe)
            .args(args.iter().map(OsString::from))
            .env("RUST_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self { child })
    }

    /// Runs tenant-status itself (`serve`, `fake-superoffice`, ...) with
    /// the runtime it ships with.
    pub fn tenant_status(name: &str, args: &[String]) -> anyhow::Result<Self> {
        Self::tenant_status_in(&RuntimeMode::shipped(), name, args)
    }

    /// Runs tenant-status with its runtime's settings overridden by `mode`.
    pub fn tenant_status_in(
        mode: &RuntimeMode,
        name: &str,
        args: &[String],
    ) -> anyhow::Result<Self> {
        let mut all = vec![
            "child".to_owned(),
            "--".to_owned(),
            "tenant-status".to_owned(),
        ];
        all.extend_from_slice(args);
        Self::spawn_with_env(name, &all, &mode.env)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory, KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib_of(self.pid())
    }

    /// User plus system CPU time so far, seconds.
    pub fn cpu_secs(&self) -> f64 {
        cpu_secs_of(&self.pid().to_string())
    }

    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Settings of the service's tokio runtime for one run of a scenario,
/// given as `bench <scenario> --runtime <spec>` (repeatable; the modes
/// are measured in turns): `shipped` (what src/runtime.rs builds), or
/// comma-separated `lifo=on|off`, `event=<ticks>`, `gqi=<ticks>` (the
/// global queue interval), each set on the service's process through the
/// environment variables src/runtime.rs reads.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeMode {
    pub label: String,
    pub env: Vec<(&'static str, String)>,
}

impl RuntimeMode {
    pub fn shipped() -> Self {
        Self {
            label: "shipped".into(),
            env: Vec::new(),
        }
    }

    pub fn parse(spec: &str) -> Result<Self, String> {
        use tenant_status::runtime::{
            EVENT_INTERVAL_VAR, GLOBAL_QUEUE_INTERVAL_VAR, LIFO_SLOT_VAR,
        };
        let spec = spec.trim();
        if spec == "shipped" {
            return Ok(Self::shipped());
        }
        let mut env = Vec::new();
        for part in spec.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not key=value (lifo, event, gqi)"))?;
            let var = match k.trim() {
                "lifo" => LIFO_SLOT_VAR,
                "event" => EVENT_INTERVAL_VAR,
                "gqi" => GLOBAL_QUEUE_INTERVAL_VAR,
                other => return Err(format!("{other:?} is not one of lifo, event, gqi")),
            };
            env.push((var, v.trim().to_owned()));
        }
        // The service refuses what it cannot use; refuse it here first.
        tenant_status::runtime::Settings::from_lookup(|name| {
            env.iter().find(|(k, _)| *k == name).map(|(_, v)| v.into())
        })?;
        Ok(Self {
            label: spec.to_owned(),
            env,
        })
    }
}

static RUNTIME_MODES: std::sync::OnceLock<Vec<RuntimeMode>> = std::sync::OnceLock::new();

/// Sets the runtime modes of this run (once, from the command line).
pub fn set_runtime_modes(modes: Vec<RuntimeMode>) {
    let _ = RUNTIME_MODES.set(modes);
}

/// The runtime modes the lookups, fan-out and notifications scenarios
/// measure in turns; just the shipped one unless `--runtime` was given.
pub fn runtime_modes() -> Vec<RuntimeMode> {
    match RUNTIME_MODES.get() {
        Some(m) if !m.is_empty() => m.clone(),
        _ => vec![RuntimeMode::shipped()],
    }
}

/// " [mode]" after a measure's name when several modes are measured.
pub fn mode_suffix(mode: &RuntimeMode) -> String {
    if runtime_modes().len() > 1 {
        format!(" [{}]", mode.label)
    } else {
        String::new()
    }
}

/// User plus system CPU time of a process ("self" for this one), seconds.
pub fn cpu_secs_of(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parens.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// A port free now, for a child process to listen on, chosen below the
/// kernel's ephemeral range (32768-60999 on Linux): a port taken from that
/// range and let go can be handed to any outgoing connection (the load's
/// thousands of them) before the child binds it, which failed a CI run's
/// polling scenario with "Address already in use".
pub fn free_port() -> u16 {
    use rand::Rng;
    let mut rng = rand::rng();
    for _ in 0..1000 {
        let port = rng.random_range(20_000..32_000u16);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Waits until `f` returns true, checking every 20 ms, up to `limit`.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut f: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !f().await {
        if Instant::now() > deadline {
            bail!("{what}: not within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Waits until something accepts TCP connections at `addr`.
pub async fn wait_listening(what: &str, addr: &str, limit: Duration) -> anyhow::Result<()> {
    wait_until(what, limit, || {
        let a = addr.to_owned();
        async move { tokio::net::TcpStream::connect(a).await.is_ok() }
    })
    .await
}

/// Waits until the service's admin listener at `admin` says /readyz.
pub async fn wait_ready(what: &str, admin: &str, limit: Duration) -> anyhow::Result<()> {
    wait_until(what, limit, || {
        let a = admin.to_owned();
        async move {
            reqwest::get(format!("http://{a}/readyz"))
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await
}

/// The fake SuperOffice in its own process on `port`, serving Cust1 to
/// Cust`tenants` with `ValidUntil` `valid_for` after each request.
pub fn fake_superoffice(
    name: &str,
    port: u16,
    tenants: usize,
    valid_for: &str,
    extra: &[&str],
) -> anyhow::Result<Proc> {
    let mut args = vec![
        "fake-superoffice".to_owned(),
        "--addr".into(),
        format!("127.0.0.1:{port}"),
        "--tenants".into(),
        tenants.to_string(),
        "--valid-for".into(),
        valid_for.into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    Proc::tenant_status(name, &args)
}

/// The arguments of `tenant-status serve` on loopback: the gRPC, webhook
/// and admin ports (0: any free one, for a listener the scenario does not
/// use), the state API's base URL, then `extra` flags.
pub fn serve_args(
    grpc: u16,
    hook: u16,
    admin: u16,
    state_api: &str,
    extra: &[&str],
) -> Vec<String> {
    let mut args = vec![
        "serve".to_owned(),
        "--grpc-addr".into(),
        format!("127.0.0.1:{grpc}"),
        "--webhook-addr".into(),
        format!("127.0.0.1:{hook}"),
        "--admin-addr".into(),
        format!("127.0.0.1:{admin}"),
        "--state-api-base-url".into(),
        state_api.into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// The fake SuperOffice serving `tenants` (ValidUntil an hour, so polling
/// stays out of the measurement) and tenant-status tracking them all, each
/// its own process, once every tenant is in the store. Returns both, the
/// gRPC port and the admin address.
pub async fn loaded_server(
    name: &str,
    tenants: usize,
) -> anyhow::Result<(Proc, Proc, u16, String)> {
    loaded_server_in(&RuntimeMode::shipped(), name, tenants).await
}

/// `loaded_server` with the service's runtime in `mode`.
pub async fn loaded_server_in(
    mode: &RuntimeMode,
    name: &str,
    tenants: usize,
) -> anyhow::Result<(Proc, Proc, u16, String)> {
    let fake_port = free_port();
    let fake = fake_superoffice(&format!("{name}-fake"), fake_port, tenants, "3600s", &[])?;
    let file = tenants_file(tenants)?;
    let (grpc, admin) = (free_port(), free_port());
    let server = Proc::tenant_status_in(
        mode,
        &format!("{name}-server"),
        &serve_args(
            grpc,
            0,
            admin,
            &format!("http://127.0.0.1:{fake_port}"),
            &[
                "--tenants-file",
                &file.display().to_string(),
                "--superoffice-max-in-flight",
                "64",
            ],
        ),
    )?;
    let admin_addr = format!("127.0.0.1:{admin}");
    wait_until("every tenant in the store", Duration::from_secs(120), || {
        let admin_addr = admin_addr.clone();
        async move { sum(&scrape(&admin_addr).await, "tenant_status_tenants") >= tenants as f64 }
    })
    .await?;
    Ok((fake, server, grpc, admin_addr))
}

/// The flags of a service under notification load: tokens signed with the
/// key of `cert` by `issuer`, a replay memory large enough for the run, and
/// no rate limits (the load comes from one address, far above a client's
/// share: this measures the webhook, not its limits).
pub fn notification_load_flags(cert: &Path, issuer: &str) -> Vec<String> {
    [
        "--jwt-certificate",
        &cert.display().to_string(),
        "--jwt-issuer",
        issuer,
        "--seen-tokens-max",
        "1000000",
        "--webhook-rate-limit",
        "0",
        "--webhook-rate-limit-total",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A baseline server (`kind` is a `bench` subcommand such as
/// `baseline-grpc`) in its own process on a free port, once it listens.
/// Returns the process and its address.
pub async fn baseline(name: &str, kind: &str) -> anyhow::Result<(Proc, String)> {
    let addr = format!("127.0.0.1:{}", free_port());
    let proc = Proc::spawn(name, &[kind.to_owned(), "--addr".into(), addr.clone()])?;
    wait_listening("the baseline listening", &addr, Duration::from_secs(10)).await?;
    Ok((proc, addr))
}

/// Scrapes an admin listener's /metrics into `name{labels}` -> value.
pub async fn scrape(admin: &str) -> HashMap<String, f64> {
    let Ok(r) = reqwest::get(format!("http://{admin}/metrics")).await else {
        return HashMap::new();
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

/// The sum of every series of `name` (any labels).
pub fn sum(m: &HashMap<String, f64>, name: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| *k == name || k.starts_with(&format!("{name}{{")))
        .map(|(_, v)| v)
        .sum()
}

/// The `q` quantile of a Prometheus histogram, as the upper bound of the
/// bucket it falls in, from the difference of two scrapes.
pub fn histogram_quantile(
    before: &HashMap<String, f64>,
    after: &HashMap<String, f64>,
    name: &str,
    q: f64,
) -> Option<f64> {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut buckets: Vec<(f64, f64)> = after
        .iter()
        .filter_map(|(k, v)| {
            let le = k.strip_prefix(&prefix)?.split('"').next()?;
            let le: f64 = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, v - before.get(k).copied().unwrap_or(0.0)))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    buckets
        .iter()
        .find(|(_, c)| *c >= q * total)
        .map(|(le, _)| *le)
}

/// Resident memory of process `pid`, KiB (0 once it is gone).
pub fn rss_kib_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Pins every thread of process `pid` to `cpus` (taskset's list, e.g.
/// "1" or "0-1"); threads it starts later inherit it.
pub fn pin(pid: u32, cpus: &str) -> anyhow::Result<()> {
    let out = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .output()
        .context("running taskset (util-linux)")?;
    anyhow::ensure!(
        out.status.success(),
        "taskset -a -p -c {cpus} {pid}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// A latency histogram in microseconds.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

/// p50, p99, p99.9 and max of a histogram of microseconds, in ms.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub count: u64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            p50_ms: ms(h.value_at_quantile(0.5)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            count: h.len(),
        }
    }
}

/// One line of the results table.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Row {
    pub scenario: String,
    pub measure: String,
    pub ours: String,
    pub baseline: String,
    pub target: String,
    /// "met", "missed" or "" (no target).
    pub verdict: String,
}

impl Row {
    pub fn new(
        scenario: &str,
        measure: &str,
        ours: String,
        baseline: String,
        target: &str,
        met: Option<bool>,
    ) -> Self {
        Self {
            scenario: scenario.into(),
            measure: measure.into(),
            ours,
            baseline,
            target: target.into(),
            verdict: match met {
                Some(true) => "met".into(),
                Some(false) => "MISSED".into(),
                None => String::new(),
            },
        }
    }
}

pub fn print_table(rows: &[Row]) {
    let mut cells: Vec<[&str; 6]> = vec![[
        "scenario",
        "measure",
        "tenant-status",
        "baseline",
        "target",
        "",
    ]];
    cells.extend(rows.iter().map(|r| {
        [
            r.scenario.as_str(),
            &r.measure,
            &r.ours,
            &r.baseline,
            &r.target,
            &r.verdict,
        ]
    }));
    let widths: Vec<usize> = (0..6)
        .map(|c| {
            cells
                .iter()
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for (n, row) in cells.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        println!("| {} |", line.join(" | "));
        if n == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            println!("|-{}-|", rule.join("-|-"));
        }
    }
}

pub fn write_json(path: &Path, rows: &[Row], quick: bool) -> anyhow::Result<()> {
    let doc = serde_json::json!({
        "quick": quick,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "rows": rows,
    });
    std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
    Ok(())
}

/// The tenants file for `n` tenants, Cust1..CustN (the fake's names).
pub fn tenants_file(n: usize) -> anyhow::Result<PathBuf> {
    let path = work_dir().join(format!("tenants-{n}.txt"));
    let text: String = (1..=n).map(|i| format!("Cust{i}\n")).collect();
    std::fs::write(&path, text)?;
    Ok(path)
}

pub fn fmt_rate(x: f64) -> String {
    if x >= 10_000.0 {
        format!("{:.0}k/s", x / 1000.0)
    } else {
        format!("{x:.0}/s")
    }
}

/// What the load side reads of a watch event: its type and revision.
/// prost skips the tenant's bytes without decoding them, so the load
/// process spends its CPU on the transport, as the server does, and not
/// on building millions of `Tenant` messages on the cores the server
/// needs (in the storm, the full decode took more CPU than the server).
#[derive(Clone, PartialEq, prost::Message)]
pub struct WatchHead {
    #[prost(int32, tag = "1")]
    pub r#type: i32,
    #[prost(uint64, tag = "4")]
    pub revision: u64,
}

/// Opens WatchTenant on `channel`, each event read as a `T`: a message
/// with some of WatchTenantResponse's fields, the rest skipped unread.
pub async fn watch_read_as<T: prost::Message + Default + Send + 'static>(
    channel: tonic::transport::Channel,
    request: tenant_status::pb::WatchTenantRequest,
) -> anyhow::Result<tonic::Streaming<T>> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.context("connecting for WatchTenant")?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/tenantstatus.v1.TenantStatusService/WatchTenant",
    );
    let codec = tonic_prost::ProstCodec::<tenant_status::pb::WatchTenantRequest, T>::default();
    Ok(grpc
        .server_streaming(tonic::Request::new(request), path, codec)
        .await?
        .into_inner())
}

/// CPU seconds of this process's threads whose name starts with one of
/// `prefixes` (Linux truncates names to 15 bytes).
pub fn cpu_secs_of_threads(prefixes: &[&str]) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter(|t| {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            prefixes.iter().any(|p| comm.starts_with(p))
        })
        .map(|t| cpu_secs_of(&format!("self/task/{}", t.file_name().to_string_lossy())))
        .sum()
}

/// Writes a state file of Cust1..Cust`tenants`, each Running on sod2 with
/// ValidUntil `valid_for` from now (the start and outage scenarios).
pub fn running_state_file(tenants: usize, valid_for: Duration, path: &Path) -> anyhow::Result<()> {
    use tenant_status::{
        ContextId, TenantState, testing::Observation, testing::PollResult, testing::Store,
    };
    let store = Store::new();
    let now = std::time::SystemTime::now();
    for i in 1..=tenants {
        let ctx = ContextId::parse(&format!("Cust{i}"))?;
        store.apply_poll(
            &ctx,
            PollResult::Observed(Observation {
                state: TenantState::Running,
                endpoint: format!("https://sod2.superoffice.com/Cust{i}"),
                api: format!("https://sod2.superoffice.com/Cust{i}/api"),
                version: "Release_11.10_2026.02.24-02".into(),
                valid_until: Some(now + valid_for),
            }),
            now,
        );
    }
    tenant_status::persist::save(&store, Vec::new(), path)?;
    Ok(())
}

/// nats-server from NATS_SERVER, else PATH, else Debian's.
pub fn nats_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NATS_SERVER") {
        return Some(PathBuf::from(p));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
}
