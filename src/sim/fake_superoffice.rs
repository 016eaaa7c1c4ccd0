//! A simulated SuperOffice: the state API as a real HTTP server with
//! scripted tenant states, injectable failures and request counts; the
//! environment's JWKS; and signed state-change notifications sent to a
//! webhook, as SuperOffice sends them.
//!
//! Tests, the demo and the benchmarks talk to it over real sockets, exactly
//! as tenant-status talks to SuperOffice.
//!
//! One room although it is long: one simulated server, whose script,
//! injected failures and request log are one state under one lock that
//! both its handlers and the tests steering it read.

use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Path, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;
use tokio::net::TcpListener;

use crate::{core::tenant::ChangeType, sim::signer::Signer};

/// What the fake says about one tenant during one step of its script.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantSpec {
    /// SuperOffice's state name ("Running", "OfflineMaintenance", ...).
    pub state: String,
    pub endpoint: Option<String>,
    pub api: Option<String>,
    pub version: Option<String>,
    /// ValidUntil is this far after the request (or the step's end, if
    /// sooner).
    pub valid_for: Duration,
}

impl TenantSpec {
    /// A tenant in `state` on `host`, the way SuperOffice lays out URLs.
    pub fn new(state: &str, ctx: &str, host: &str) -> Self {
        Self {
            state: state.to_owned(),
            endpoint: Some(format!("https://{host}/{ctx}")),
            api: Some(format!("https://{host}/{ctx}/api")),
            version: Some("Release_11.10_2026.02.24-02".to_owned()),
            valid_for: Duration::from_secs(60),
        }
    }

    pub fn running(ctx: &str, host: &str) -> Self {
        Self::new("Running", ctx, host)
    }

    pub fn valid_for(mut self, d: Duration) -> Self {
        self.valid_for = d;
        self
    }

    pub fn version(mut self, v: &str) -> Self {
        self.version = Some(v.to_owned());
        self
    }
}

/// A failure the fake serves instead of an answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// An HTTP status with a JSON error body.
    Status(u16),
    /// 429 with `Retry-After: secs`.
    RateLimited(u64),
    /// Answer normally, but only after this long.
    Delay(Duration),
    /// 200 with a body that is not JSON.
    InvalidJson,
    /// 200 with a body larger than any state response.
    HugeBody(usize),
    /// Send the headers, then break the connection mid-body.
    Reset,
}

struct Script {
    steps: Vec<(Duration, TenantSpec)>,
    started: Instant,
}

impl Script {
    /// The current step and when it ends.
    fn current(&self, now: Instant) -> (&TenantSpec, Instant) {
        let total: Duration = self.steps.iter().map(|(d, _)| *d).sum();
        if self.steps.len() == 1 || total.is_zero() {
            return (&self.steps[0].1, now + Duration::from_secs(86400));
        }
        let elapsed = now.duration_since(self.started).as_nanos();
        let into_cycle = elapsed % total.as_nanos();
        let cycle_start = now - Duration::from_nanos(into_cycle as u64);
        let mut at = cycle_start;
        for (d, spec) in &self.steps {
            at += *d;
            if now < at {
                return (spec, at);
            }
        }
        (&self.steps[0].1, at)
    }
}

#[derive(Default)]
struct Inner {
    tenants: HashMap<String, Script>,
    /// Failures for one tenant, then for any (key "").
    failures: HashMap<String, VecDeque<Failure>>,
    requests: HashMap<String, u64>,
    total: u64,
    jwks_requests: u64,
    /// Keys published beside the signer's (a rotation in progress).
    extra_keys: Vec<jsonwebtoken::jwk::Jwk>,
    /// The signer's own key withdrawn from the JWKS (revoked).
    own_key_withdrawn: bool,
    /// A Cache-Control max-age on the JWKS, in seconds.
    jwks_max_age: Option<u64>,
    unknown_as_200: bool,
    /// This fraction of answers, at random, is a 503.
    fail_ratio: f64,
    /// Every request (state and JWKS) waits this long before its answer.
    latency: Option<Duration>,
    /// Requests being answered now, and the most there ever were at once.
    in_flight: usize,
    peak_in_flight: usize,
    /// When each request arrived (state and JWKS), up to `MAX_LOGGED`.
    arrivals: Vec<Instant>,
}

/// The most arrival times the fake keeps.
const MAX_LOGGED: usize = 1_000_000;

impl Inner {
    /// A request arrived: counted in flight until the guard is dropped
    /// (answered, or the client hung up).
    fn arrived(inner: &Arc<Mutex<Inner>>) -> (InFlight, Option<Duration>) {
        let mut g = inner.lock().unwrap_or_else(|e| e.into_inner());
        g.in_flight += 1;
        g.peak_in_flight = g.peak_in_flight.max(g.in_flight);
        if g.arrivals.len() < MAX_LOGGED {
            g.arrivals.push(Instant::now());
        }
        (InFlight(Arc::clone(inner)), g.latency)
    }
}

/// Counts a request in flight while it lives.
struct InFlight(Arc<Mutex<Inner>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        g.in_flight = g.in_flight.saturating_sub(1);
    }
}

/// A handle to a running fake; cheap to clone.
#[derive(Clone)]
pub struct FakeSuperOffice {
    inner: Arc<Mutex<Inner>>,
    addr: SocketAddr,
    signer: Signer,
}

impl FakeSuperOffice {
    /// Serves on `listener` until `shutdown` completes.
    pub fn serve(
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<(Self, tokio::task::JoinHandle<()>)> {
        let addr = listener.local_addr()?;
        let signer = Signer::shared(&format!("http://{addr}")).map_err(std::io::Error::other)?;
        let inner = Arc::new(Mutex::new(Inner::default()));
        let jwks = signer.jwks();
        let app = Router::new()
            .route("/api/state/{ctx}", get(state))
            .route(
                "/login/.well-known/jwks",
                get(move |State(shared): State<Arc<Mutex<Inner>>>| async move {
                    let (_in_flight, latency) = Inner::arrived(&shared);
                    shared
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .jwks_requests += 1;
                    if let Some(d) = latency {
                        tokio::time::sleep(d).await;
                    }
                    let inner = shared.lock().unwrap_or_else(|e| e.into_inner());
                    let mut set = jwks.clone();
                    if inner.own_key_withdrawn {
                        set.keys.clear();
                    }
                    set.keys.extend(inner.extra_keys.iter().cloned());
                    let cache = inner
                        .jwks_max_age
                        .map(|s| format!("public, max-age={s}"))
                        .unwrap_or_else(|| "no-store".to_owned());
                    ([(axum::http::header::CACHE_CONTROL, cache)], Json(set))
                }),
            )
            .with_state(Arc::clone(&inner));
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(error = %e, "the fake SuperOffice stopped");
            }
        });
        Ok((
            Self {
                inner,
                addr,
                signer,
            },
            task,
        ))
    }

    /// Binds 127.0.0.1 on a free port and serves until the returned
    /// handle's task is aborted or the process ends.
    pub async fn start() -> std::io::Result<(Self, tokio::task::JoinHandle<()>)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        Self::serve(listener, std::future::pending())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL to give tenant-status as `--state-api-base-url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The key this SuperOffice signs notification tokens with; its issuer
    /// is `url()`.
    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// How often the JWKS was fetched.
    pub fn jwks_requests(&self) -> u64 {
        self.lock().jwks_requests
    }

    /// Publishes `other`'s key in the JWKS too, as during a rotation.
    pub fn publish_key(&self, other: &Signer) {
        self.lock().extra_keys.extend(other.jwks().keys);
    }

    /// Withdraws (or puts back) the signer's own key from the JWKS, as
    /// SuperOffice would revoke a leaked key; `publish_key` keys stay.
    pub fn withdraw_own_key(&self, withdrawn: bool) {
        self.lock().own_key_withdrawn = withdrawn;
    }

    /// Serves the JWKS with `Cache-Control: max-age` (None: `no-store`).
    pub fn set_jwks_max_age(&self, seconds: Option<u64>) {
        self.lock().jwks_max_age = seconds;
    }

    /// A notification body as SuperOffice sends it, with a fresh token.
    pub fn notification(
        &self,
        change: ChangeType,
        ctx: &str,
        public_endpoint: Option<&str>,
    ) -> serde_json::Value {
        notification_body(&self.signer, change, ctx, public_endpoint)
    }

    /// POSTs a signed notification to `webhook_url`, as SuperOffice does;
    /// returns the status it was answered with.
    pub async fn notify(
        &self,
        client: &reqwest::Client,
        webhook_url: &str,
        change: ChangeType,
        ctx: &str,
        public_endpoint: Option<&str>,
    ) -> reqwest::Result<reqwest::StatusCode> {
        let body = self.notification(change, ctx, public_endpoint);
        let response = client
            .post(webhook_url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await?;
        Ok(response.status())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets a tenant's state from now on.
    pub fn set(&self, ctx: &str, spec: TenantSpec) {
        self.script(ctx, vec![(Duration::ZERO, spec)]);
    }

    /// Runs a tenant through `steps` (each held for its duration), over and
    /// over.
    pub fn script(&self, ctx: &str, steps: Vec<(Duration, TenantSpec)>) {
        assert!(!steps.is_empty(), "a script needs at least one step");
        self.lock().tenants.insert(
            ctx.to_owned(),
            Script {
                steps,
                started: Instant::now(),
            },
        );
    }

    /// Makes SuperOffice forget a tenant.
    pub fn remove(&self, ctx: &str) {
        self.lock().tenants.remove(ctx);
    }

    /// Serves `failure` for the next `times` requests for `ctx` (any tenant
    /// when `None`).
    pub fn fail(&self, ctx: Option<&str>, failure: Failure, times: usize) {
        let mut inner = self.lock();
        let q = inner
            .failures
            .entry(ctx.unwrap_or_default().to_owned())
            .or_default();
        q.extend(std::iter::repeat_n(failure, times));
    }

    /// Drops every queued failure.
    pub fn heal(&self) {
        self.lock().failures.clear();
    }

    /// Answer unknown tenants with 200 and State "Unknown" instead of 404.
    /// Answers this fraction of requests, at random, with 503.
    pub fn fail_at_random(&self, ratio: f64) {
        self.lock().fail_ratio = ratio.clamp(0.0, 1.0);
    }

    pub fn unknown_as_200(&self, yes: bool) {
        self.lock().unknown_as_200 = yes;
    }

    /// Requests received for `ctx`.
    pub fn requests(&self, ctx: &str) -> u64 {
        self.lock().requests.get(ctx).copied().unwrap_or(0)
    }

    /// Requests received in all.
    pub fn total_requests(&self) -> u64 {
        self.lock().total
    }

    /// Makes every request (state and JWKS) wait `latency` before its
    /// answer, as a busy SuperOffice would (`None`: answer at once).
    pub fn set_latency(&self, latency: Option<Duration>) {
        self.lock().latency = latency;
    }

    /// Requests (state and JWKS) being answered now.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    /// The most requests (state and JWKS) ever in flight at once.
    pub fn peak_in_flight(&self) -> usize {
        self.lock().peak_in_flight
    }

    /// When each request (state and JWKS) arrived, in order.
    pub fn arrivals(&self) -> Vec<Instant> {
        self.lock().arrivals.clone()
    }
}

/// ValidUntil as SuperOffice writes it: 7 fractional digits and a Z.
pub fn format_valid_until(t: SystemTime) -> String {
    let s = humantime::format_rfc3339_nanos(t).to_string();
    format!("{}Z", &s[..27])
}

async fn state(State(inner): State<Arc<Mutex<Inner>>>, Path(ctx): Path<String>) -> Response {
    let (_in_flight, latency) = Inner::arrived(&inner);
    if let Some(d) = latency {
        tokio::time::sleep(d).await;
    }
    let (failure, answer) = {
        let mut g = inner.lock().unwrap_or_else(|e| e.into_inner());
        g.total += 1;
        *g.requests.entry(ctx.clone()).or_default() += 1;
        let failure = match g.failures.get_mut(&ctx).and_then(|q| q.pop_front()) {
            Some(f) => Some(f),
            None => g.failures.get_mut("").and_then(|q| q.pop_front()),
        };
        let failure = failure.or_else(|| {
            (g.fail_ratio > 0.0 && rand::random::<f64>() < g.fail_ratio)
                .then_some(Failure::Status(503))
        });
        let now = Instant::now();
        let answer = match g.tenants.get(&ctx) {
            Some(script) => {
                let (spec, step_end) = script.current(now);
                let valid_for = spec.valid_for.min(step_end - now);
                Some(body_for(&ctx, spec, SystemTime::now() + valid_for))
            }
            None if g.unknown_as_200 => Some(json!({
                "ContextIdentifier": ctx, "State": "Unknown", "IsRunning": false,
            })),
            None => None,
        };
        (failure, answer)
    };
    match failure {
        Some(Failure::Status(code)) => {
            let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return (code, Json(json!({"error": "injected failure"}))).into_response();
        }
        Some(Failure::RateLimited(secs)) => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, secs.to_string())],
                Json(json!({"error": "too many requests"})),
            )
                .into_response();
        }
        Some(Failure::Delay(d)) => tokio::time::sleep(d).await,
        Some(Failure::InvalidJson) => {
            return (
                [(header::CONTENT_TYPE, "application/json")],
                "{\"State\": \"Runn",
            )
                .into_response();
        }
        Some(Failure::HugeBody(n)) => {
            // Streamed from one shared chunk: a 100 MB answer costs the
            // fake nothing, and stops when the client hangs up.
            let chunk = Bytes::from(vec![b' '; 64 * 1024]);
            let chunks = n.div_ceil(chunk.len());
            let body = futures_util::stream::iter(
                (0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
            );
            return (
                [(header::CONTENT_TYPE, "application/json")],
                Body::from_stream(body),
            )
                .into_response();
        }
        Some(Failure::Reset) => {
            let broken = futures_util::stream::iter([
                Ok(Bytes::from_static(b"{\"ContextIdent")),
                Err(std::io::Error::other("injected reset")),
            ]);
            return (
                [(header::CONTENT_TYPE, "application/json")],
                Body::from_stream(broken),
            )
                .into_response();
        }
        None => {}
    }
    match answer {
        Some(body) => Json(body).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("unknown tenant {ctx}")})),
        )
            .into_response(),
    }
}

fn body_for(ctx: &str, spec: &TenantSpec, valid_until: SystemTime) -> serde_json::Value {
    let is_running = matches!(spec.state.as_str(), "Running" | "OnlineMaintenance");
    let mut body = json!({
        "ContextIdentifier": ctx,
        "State": spec.state,
        "IsRunning": is_running,
        "ValidUntil": format_valid_until(valid_until),
    });
    let o = body.as_object_mut().expect("an object");
    if let Some(e) = &spec.endpoint {
        o.insert("Endpoint".into(), json!(e));
    }
    if let Some(a) = &spec.api {
        o.insert("Api".into(), json!(a));
    }
    if let Some(v) = &spec.version {
        o.insert("Version".into(), json!(v));
    }
    body
}

/// A notification body as SuperOffice sends it, signed by `signer` with a
/// token valid for five minutes.
pub fn notification_body(
    signer: &Signer,
    change: ChangeType,
    ctx: &str,
    public_endpoint: Option<&str>,
) -> serde_json::Value {
    let mut body = json!({
        "ChangeType": change as i64,
        "ContextIdentifier": ctx,
        "VersionName": "Release_11.10_2026.02.24-02",
        "FileVersion": "11.10.2026.0224",
        "Token": signer.notification_token(ctx, Duration::from_secs(300)),
    });
    if let Some(e) = public_endpoint {
        body["PublicEndpoint"] = json!(e);
    }
    body
}

/// `tenant-status fake-superoffice`: the simulated SuperOffice as its own
/// process, until `shutdown` completes.
pub async fn run_standalone(
    args: crate::config::FakeArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&args.addr).await?;
    let (fake, task) = FakeSuperOffice::serve(listener, shutdown)?;
    if args.demo_script {
        crate::sim::demo::script(&fake, args.valid_for);
    }
    fake.fail_at_random(args.fail_ratio);
    fake.set_latency(args.latency);
    for n in 1..=args.tenants {
        let ctx = format!("Cust{n}");
        fake.set(
            &ctx,
            TenantSpec::running(&ctx, "sod2.superoffice.com").valid_for(args.valid_for),
        );
    }
    eprintln!("simulated SuperOffice state API at {}", fake.url());
    if let Some(addr) = &args.control_addr {
        let listener = TcpListener::bind(addr).await?;
        eprintln!("its control API at http://{}", listener.local_addr()?);
        let control =
            crate::sim::control::serve(listener, fake, args.valid_for, std::future::pending());
        tokio::spawn(async move {
            if let Err(e) = control.await {
                tracing::error!(error = %e, "the fake's control API stopped");
            }
        });
    }
    task.await?;
    Ok(())
}
