//! `spawn_app()`: the real server on port 0, talking to a real fake
//! SuperOffice on port 0, with a generated gRPC client.

use std::{
    collections::HashMap, net::SocketAddr, path::PathBuf, process::Command, sync::Arc,
    time::Duration,
};

use tenant_status::{
    ChangeType,
    app::Application,
    config::Config,
    pb::{self, WatchTenantResponse, tenant_status_service_client::TenantStatusServiceClient},
    sim::fake_superoffice::{FakeSuperOffice, TenantSpec},
    superoffice::StateSource,
    testing::Store,
};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{Status, Streaming, transport::Channel};

pub struct TestApp {
    pub addr: SocketAddr,
    /// The webhook's full URL.
    pub webhook_url: String,
    pub webhook_addr: SocketAddr,
    /// The admin listener: /metrics, /livez, /readyz.
    pub admin_addr: SocketAddr,
    pub http: reqwest::Client,
    pub client: TenantStatusServiceClient<Channel>,
    pub channel: Channel,
    pub fake: FakeSuperOffice,
    pub store: Arc<Store>,
    stop: Option<oneshot::Sender<()>>,
    pub task: Option<JoinHandle<anyhow::Result<()>>>,
}

/// A test configuration: fast polls and short deadlines.
pub fn test_config(base_url: &str) -> Config {
    let mut config = Config::for_base_url(base_url).expect("a valid test configuration");
    config.policy.min_interval = Duration::from_millis(100);
    config.policy.backoff_base = Duration::from_millis(100);
    config.policy.backoff_max = Duration::from_secs(2);
    config.policy.initial_spread = Duration::from_millis(50);
    config.policy.settle_interval = Duration::from_millis(200);
    config.http_timeout = Duration::from_secs(2);
    config.shutdown_timeout = Duration::from_secs(3);
    config
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_, _| {}).await
}

/// Spawns the app after `setup` has scripted the fake and adjusted the
/// configuration.
pub async fn spawn_app_with(setup: impl FnOnce(&FakeSuperOffice, &mut Config)) -> TestApp {
    let (fake, _) = FakeSuperOffice::start().await.expect("fake SuperOffice");
    let mut config = test_config(&fake.url());
    setup(&fake, &mut config);
    spawn_with_config(fake, config).await
}

/// The app tracking `ctx` from the start, which the fake serves as Running
/// on sod2, valid for `valid_for`.
pub async fn spawn_app_tracking(ctx: &str, valid_for: Duration) -> TestApp {
    spawn_app_with(|fake, config| {
        fake.set(ctx, running(ctx, "sod2.superoffice.com", valid_for));
        config.tenants = vec![tenant_status::ContextId::parse(ctx).unwrap()];
    })
    .await
}

pub async fn spawn_with_config(fake: FakeSuperOffice, config: Config) -> TestApp {
    let app = Application::build(config.clone())
        .await
        .expect("the app builds");
    spawn_built(fake, &config, app).await
}

/// As `spawn_with_config`, with another source of state (a client whose
/// DNS the test controls, say).
pub async fn spawn_with_source(
    fake: FakeSuperOffice,
    config: Config,
    source: Arc<dyn StateSource>,
) -> TestApp {
    let app = Application::build_with_source(config.clone(), source)
        .await
        .expect("the app builds");
    spawn_built(fake, &config, app).await
}

async fn spawn_built(fake: FakeSuperOffice, config: &Config, app: Application) -> TestApp {
    let config_path = config.webhook.path.clone();
    let config_tls = config.tls.is_some();
    let addr = app.grpc_addr();
    let webhook_addr = app.webhook_addr();
    let admin_addr = app.admin_addr();
    let tls = config_tls;
    let webhook_url = format!("http://{webhook_addr}{}", config_path);
    let store = app.store();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let endpoint = Channel::from_shared(format!("http://{addr}")).unwrap();
    // A TLS server is reached by the tests' own TLS clients; this one
    // stays unconnected.
    let channel = if tls {
        endpoint.connect_lazy()
    } else {
        endpoint.connect().await.expect("connects to the server")
    };
    TestApp {
        addr,
        webhook_url,
        webhook_addr,
        admin_addr,
        http: reqwest::Client::new(),
        client: TenantStatusServiceClient::new(channel.clone()),
        channel,
        fake,
        store,
        stop: Some(stop),
        task: Some(task),
    }
}

impl TestApp {
    /// Starts the shutdown (as SIGTERM would).
    pub fn begin_shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    /// Shuts down and waits for the server to stop.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.begin_shutdown();
        self.task.take().unwrap().await.unwrap()
    }

    /// GETs `path` from the admin listener; returns the status and body.
    pub async fn admin_get(&self, path: &str) -> (reqwest::StatusCode, String) {
        let r = self
            .http
            .get(format!("http://{}{path}", self.admin_addr))
            .send()
            .await
            .expect("the admin listener answers");
        (r.status(), r.text().await.expect("a body"))
    }

    /// POSTs `body` to the webhook as JSON; returns the status and the
    /// JSON body (Null when empty).
    pub async fn post_notification(
        &self,
        body: &serde_json::Value,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        self.post_raw(Some("application/json"), body.to_string().into_bytes())
            .await
    }

    /// POSTs raw bytes to the webhook with `content_type`.
    pub async fn post_raw(
        &self,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        json_response(self.post_raw_response(content_type, body).await).await
    }

    /// POSTs raw bytes to the webhook; the whole response (for headers).
    pub async fn post_raw_response(
        &self,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> reqwest::Response {
        let mut req = self.http.post(&self.webhook_url).body(body);
        if let Some(ct) = content_type {
            req = req.header(reqwest::header::CONTENT_TYPE, ct);
        }
        req.send().await.expect("the webhook answers")
    }

    /// SuperOffice sends a signed notification; returns the status.
    pub async fn notify(
        &self,
        change: ChangeType,
        ctx: &str,
        public_endpoint: Option<&str>,
    ) -> reqwest::StatusCode {
        self.fake
            .notify(&self.http, &self.webhook_url, change, ctx, public_endpoint)
            .await
            .expect("the webhook answers")
    }

    pub async fn get(&self, ctx: &str) -> Result<pb::Tenant, Status> {
        self.client
            .clone()
            .get_tenant_state(pb::GetTenantStateRequest {
                context_identifier: ctx.into(),
            })
            .await
            .map(|r| r.into_inner().tenant.expect("a tenant"))
    }

    pub async fn watch(
        &self,
        names: &[&str],
        since: u64,
    ) -> Result<Streaming<WatchTenantResponse>, Status> {
        self.client
            .clone()
            .watch_tenant(pb::WatchTenantRequest {
                context_identifiers: names.iter().map(|s| s.to_string()).collect(),
                since_revision: since,
            })
            .await
            .map(|r| r.into_inner())
    }
}

/// A response's status and JSON body (Null when empty).
pub async fn json_response(r: reqwest::Response) -> (reqwest::StatusCode, serde_json::Value) {
    let status = r.status();
    let bytes = r.bytes().await.expect("a body");
    let json = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("a JSON body")
    };
    (status, json)
}

/// A Running tenant on `host`, valid for `valid_for`.
pub fn running(ctx: &str, host: &str, valid_for: Duration) -> TenantSpec {
    TenantSpec::running(ctx, host).valid_for(valid_for)
}

/// The next message of a stream, failing the test after 10 s.
pub async fn next(stream: &mut Streaming<WatchTenantResponse>) -> WatchTenantResponse {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an event within 10 s")
        .expect("no stream error")
        .expect("the stream is open")
}

/// Reads events until one matches, failing after 10 s.
pub async fn next_matching(
    stream: &mut Streaming<WatchTenantResponse>,
    what: &str,
    f: impl Fn(&WatchTenantResponse) -> bool,
) -> WatchTenantResponse {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ev = tokio::time::timeout_at(deadline, stream.message())
            .await
            .unwrap_or_else(|_| panic!("no event {what} within 10 s"))
            .expect("no stream error")
            .expect("the stream is open");
        if f(&ev) {
            return ev;
        }
    }
}

/// The fake serves `ctx` as Running on sod2, valid for 10 minutes.
pub fn serve_running(fake: &FakeSuperOffice, ctx: &str) {
    fake.set(
        ctx,
        running(ctx, "sod2.superoffice.com", Duration::from_secs(600)),
    );
}

/// Watches `ctx` and waits for an event that shows it RUNNING; returns the
/// stream and that event.
pub async fn watch_until_running(
    app: &TestApp,
    ctx: &str,
) -> (Streaming<WatchTenantResponse>, WatchTenantResponse) {
    let mut stream = app.watch(&[ctx], 0).await.unwrap();
    let ev = next_matching(&mut stream, "a RUNNING snapshot", |ev| {
        ev.tenant
            .as_ref()
            .is_some_and(|t| state(t) == pb::TenantState::Running)
    })
    .await;
    (stream, ev)
}

/// Waits until `f` holds, failing after 10 s.
pub async fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within 10 s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the service trusts a key from the JWKS (its
/// `tenant_status_jwks_keys` gauge above 0), failing after 10 s with the
/// JWKS's metrics. On a loaded machine the first fetch may still be under
/// way or retrying when a test means to post.
pub async fn until_jwks_keys(app: &TestApp) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = app.admin_get("/metrics").await;
        if parse_metrics(&text)
            .get("tenant_status_jwks_keys")
            .is_some_and(|k| *k > 0.0)
        {
            return;
        }
        let jwks: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("tenant_status_jwks"))
            .collect();
        assert!(
            tokio::time::Instant::now() < deadline,
            "no JWKS key within 10 s: {jwks:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn kind(ev: &WatchTenantResponse) -> pb::WatchEventType {
    pb::WatchEventType::try_from(ev.r#type).expect("a known event type")
}

pub fn state(t: &pb::Tenant) -> pb::TenantState {
    pb::TenantState::try_from(t.state).expect("a known state")
}

pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "ts-{name}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Parses the OpenMetrics text into `name{labels}` → value.
pub fn parse_metrics(text: &str) -> HashMap<String, f64> {
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF"
    );
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').expect("name and value");
            (name.to_owned(), value.parse().expect("a number"))
        })
        .collect()
}

pub fn run_binary(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tenant-status"))
        .args(args)
        .env_remove("TENANT_STATUS_CONFIG")
        .output()
        .expect("the binary runs");
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    (out.status.code().unwrap_or(-1), text)
}

/// The real binary, serving with `args`; returns the process and its gRPC
/// and webhook addresses, read from its JSON log.
pub async fn start_binary(args: &[String]) -> (tokio::process::Child, String, String) {
    start_binary_with_env(args, &[]).await
}

/// As `start_binary`, with these environment variables set.
pub async fn start_binary_with_env(
    args: &[String],
    envs: &[(&str, &str)],
) -> (tokio::process::Child, String, String) {
    let s = start_binary_full(args, envs).await;
    (s.child, s.grpc, s.webhook)
}

/// The real binary serving, and its listeners' addresses.
pub struct Started {
    pub child: tokio::process::Child,
    pub grpc: String,
    pub webhook: String,
    pub admin: String,
}

/// The real binary, serving with `args` and `envs`; its addresses are read
/// from its JSON log.
pub async fn start_binary_full(args: &[String], envs: &[(&str, &str)]) -> Started {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tenant-status"))
        .envs(envs.iter().copied())
        .arg("--log-format")
        .arg("json")
        .arg("serve")
        .args([
            "--grpc-addr",
            "127.0.0.1:0",
            "--webhook-addr",
            "127.0.0.1:0",
        ])
        .args(["--admin-addr", "127.0.0.1:0"])
        .args(args)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let (mut grpc, mut webhook, mut admin) = (None, None, None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while grpc.is_none() || webhook.is_none() {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .expect("the binary starts within 20 s")
            .unwrap()
            .expect("the binary is running");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        match v["message"].as_str() {
            Some("tenant-status is serving gRPC") => {
                grpc = v["grpc_addr"].as_str().map(String::from);
                admin = v["admin_addr"].as_str().map(String::from);
            }
            Some("serving the state-change webhook") => {
                webhook = v["addr"].as_str().map(String::from)
            }
            _ => {}
        }
    }
    // Keep draining the log so the process never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Started {
        child,
        grpc: grpc.unwrap(),
        webhook: webhook.unwrap(),
        admin: admin.unwrap_or_default(),
    }
}

/// `body`'s token on another notification (its ChangeType changed): a
/// replay, which a retry of `body` itself is not.
pub fn replayed_as(body: &serde_json::Value, change: ChangeType) -> serde_json::Value {
    let mut other = body.clone();
    other["ChangeType"] = serde_json::json!(change as i64);
    other
}
