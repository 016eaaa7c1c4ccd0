//! The workload of a fault run, each part recording into the history:
//! signed notifications posted round-robin to the replicas and retried
//! with the same body and token on a 503 or a timeout, as SuperOffice
//! does; changes of SuperOffice's truth made through the fake's control
//! API (one before each notification, as SuperOffice changes a tenant
//! and then tells; some silent, for the polls to find); a watcher of every
//! tenant on every replica and one that roams between replicas with
//! `since_revision`; a sampler of the partitions each replica holds; and
//! one of the lease tenures each replica reports (`/cluster/leases`).

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use rand::Rng;
use tenant_status::{
    pb::{self, tenant_status_service_client::TenantStatusServiceClient},
    sim::signer::Signer,
};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::history::{Backwards, Ev, Held, History, Note, Rec, Req, Sync, Tenure, Truth};

/// SuperOffice's truth as the run sets it, and who is busy.
pub struct World {
    pub tenants: usize,
    /// tenant -> (state, host, version number).
    pub truth: Mutex<HashMap<String, (&'static str, String, u64)>>,
    /// Tenants with a notification in flight (retries included): a
    /// tenant gets its next change only once the last is answered, so
    /// the order SuperOffice changed it in is the order it is told.
    busy: Mutex<HashSet<String>>,
    hosts: AtomicU64,
    seq: AtomicU64,
    rr: AtomicUsize,
    pub control: String,
    pub hooks: Vec<String>,
    pub signer: Signer,
    pub history: Arc<History>,
    http: reqwest::Client,
}

pub const FIRST_HOST: &str = "sod2.superoffice.com";

impl World {
    pub fn new(
        tenants: usize,
        control: String,
        hooks: Vec<String>,
        signer: Signer,
        history: Arc<History>,
    ) -> anyhow::Result<Arc<Self>> {
        let truth = (1..=tenants)
            .map(|i| (format!("Cust{i}"), ("Running", FIRST_HOST.to_owned(), 0)))
            .collect();
        Ok(Arc::new(Self {
            tenants,
            truth: Mutex::new(truth),
            busy: Mutex::new(HashSet::new()),
            hosts: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            rr: AtomicUsize::new(0),
            control,
            hooks,
            signer,
            history,
            // One connection per request: a paused replica's socket is not
            // handed to the next request.
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(1))
                .pool_max_idle_per_host(0)
                .build()?,
        }))
    }

    /// A tenant with nothing in flight, marked busy.
    fn pick(&self) -> Option<String> {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let mut rng = rand::rng();
        for _ in 0..20 {
            let ctx = format!("Cust{}", rng.random_range(1..=self.tenants));
            if busy.insert(ctx.clone()) {
                return Some(ctx);
            }
        }
        None
    }

    fn free(&self, ctx: &str) {
        self.busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(ctx);
    }

    pub fn busy_count(&self) -> usize {
        self.busy.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Sets `ctx`'s truth to `state` on a host never used before; returns
    /// the host. The control API is on loopback and answers at once; a
    /// failure there is the bench's, not the service's.
    async fn change(&self, ctx: &str, state: &'static str, silent: bool) -> anyhow::Result<String> {
        let n = self.hosts.fetch_add(1, Ordering::Relaxed) + 1;
        let host = format!("h{n}.superoffice.com");
        let r = self
            .http
            .put(format!("{}/tenants/{ctx}", self.control))
            .header("content-type", "application/json")
            .body(serde_json::json!({"State": state, "Host": host}).to_string())
            .send()
            .await?;
        anyhow::ensure!(
            r.status().is_success(),
            "the fake's control API answered {}",
            r.status()
        );
        let v = {
            let mut truth = self.truth.lock().unwrap_or_else(|e| e.into_inner());
            let e = truth
                .entry(ctx.to_owned())
                .or_insert(("Running", FIRST_HOST.to_owned(), 0));
            *e = (state, host.clone(), e.2 + 1);
            e.2
        };
        let t = Truth {
            ctx: ctx.to_owned(),
            v,
            state,
            host: host.clone(),
            t: self.history.now(),
            silent,
        };
        self.history.line("truth", &t);
        self.history.mem().truths.push(t);
        Ok(host)
    }

    fn state_of(&self, ctx: &str) -> &'static str {
        self.truth
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(ctx)
            .map(|t| t.0)
            .unwrap_or("Running")
    }
}

/// Notifications at `rate` a second until `stop`; returns once every one
/// in flight is answered for good (acknowledged, refused, or its retries
/// spent).
pub async fn notifier(world: Arc<World>, rate: f64, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tasks = tokio::task::JoinSet::new();
    while !stop.is_cancelled() {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        while tasks.try_join_next().is_some() {}
        let Some(ctx) = world.pick() else { continue };
        let w = Arc::clone(&world);
        tasks.spawn(async move {
            if let Err(e) = notify(&w, &ctx).await {
                eprintln!("faults: the workload failed: {e:#}");
            }
            w.free(&ctx);
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Changes the truth of a free tenant now and then, telling nobody: the
/// polls must find it.
pub async fn silent_churn(world: Arc<World>, every: Duration, stop: CancellationToken) {
    while !stop.is_cancelled() {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
        let Some(ctx) = world.pick() else { continue };
        let state = match world.state_of(&ctx) {
            "Running" if rand::rng().random_bool(0.3) => "Suspended",
            "Running" => "Running",
            _ => "Running",
        };
        if let Err(e) = world.change(&ctx, state, true).await {
            eprintln!("faults: the fake's control API failed: {e:#}");
        }
        world.free(&ctx);
    }
}

/// Delays between a notification's attempts.
const RETRY_AFTER: [u64; 9] = [500, 1000, 2000, 3000, 4000, 5000, 5000, 5000, 5000];

async fn notify(world: &World, ctx: &str) -> anyhow::Result<()> {
    let seq = world.seq.fetch_add(1, Ordering::Relaxed) + 1;
    let marker = format!("faults-{seq}");
    // SuperOffice's numbers: Suspend 2, Resume 3, Move 5.
    let (change, number, state) = match world.state_of(ctx) {
        "Running" if rand::rng().random_bool(0.5) => ("Move", 5, "Running"),
        "Running" => ("Suspend", 2, "Suspended"),
        _ if rand::rng().random_bool(0.5) => ("Move", 5, "Suspended"),
        _ => ("Resume", 3, "Running"),
    };
    let host = world.change(ctx, state, false).await?;
    let mut body = serde_json::json!({
        "ChangeType": number,
        "ContextIdentifier": ctx,
        "VersionName": marker,
        "FileVersion": "11.10.2026.0224",
        "Token": world.signer.notification_token(ctx, Duration::from_secs(300)),
    });
    if number == 5 {
        body["PublicEndpoint"] = host.into();
    }
    let body = body.to_string();
    let mut note = Note {
        seq,
        ctx: ctx.to_owned(),
        marker,
        change,
        attempts: 0,
        first_start: world.history.now(),
        last_end: 0.0,
        acked: false,
        replayed: false,
        last_status: 0,
    };
    for attempt in 0..=RETRY_AFTER.len() {
        let replica = world.rr.fetch_add(1, Ordering::Relaxed) % world.hooks.len();
        let start = world.history.now();
        let r = world
            .http
            .post(&world.hooks[replica])
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        let (status, outcome, error) = match r {
            Ok(r) => {
                let status = r.status().as_u16();
                let text = r.text().await.unwrap_or_default();
                // The webhook's error bodies: {"error": sentence, "reason": code}.
                let code = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v["reason"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                let outcome = match status {
                    204 => "ok",
                    503 => "indeterminate",
                    _ => "failed",
                };
                (status, outcome, code)
            }
            Err(e) if e.is_timeout() => (0, "indeterminate", "timeout".to_owned()),
            Err(e) if e.is_connect() => (0, "failed", "connect".to_owned()),
            Err(e) => (0, "indeterminate", format!("{e}")),
        };
        let req = Req {
            seq,
            attempt: attempt as u32 + 1,
            replica,
            ctx: ctx.to_owned(),
            start,
            end: world.history.now(),
            outcome,
            status,
            error: error.clone(),
        };
        world.history.line("request", &req);
        note.attempts += 1;
        note.last_end = req.end;
        note.last_status = status;
        note.replayed |= error == "token_replayed";
        world.history.mem().reqs.push(req);
        if outcome == "ok" {
            note.acked = true;
            break;
        }
        // SuperOffice retries what did not arrive or was not taken; a
        // refusal (4xx) is final.
        let retry = status == 503 || status == 0;
        match RETRY_AFTER.get(attempt) {
            Some(ms) if retry => tokio::time::sleep(Duration::from_millis(*ms)).await,
            _ => break,
        }
    }
    world.history.line("notification", &note);
    world.history.mem().notes.push(note);
    Ok(())
}

/// A watcher of every tenant. With `roam`, it moves to the next replica
/// every `roam`, resuming with the largest revision it received; without,
/// it stays on its one replica and resumes there after every break.
pub async fn watcher(
    name: String,
    targets: Vec<(usize, String)>,
    roam: Option<Duration>,
    history: Arc<History>,
    stop: CancellationToken,
) {
    let mut view: HashMap<String, u64> = HashMap::new();
    let mut largest = 0u64;
    let mut at = 0usize;
    'streams: while !stop.is_cancelled() {
        let (replica, url) = targets[at % targets.len()].clone();
        let stream = history.next_stream();
        let opened = tokio::time::timeout(Duration::from_secs(3), open(&url, largest)).await;
        let mut s = match opened {
            Ok(Ok(s)) => s,
            other => {
                let why = match other {
                    Ok(Err(e)) => format!("{e:#}"),
                    _ => "timed out".into(),
                };
                history.line(
                    "stream",
                    &serde_json::json!({"t": history.now(), "watcher": name, "stream": stream,
                        "replica": replica, "since": largest, "opened": false, "why": why}),
                );
                if roam.is_some() {
                    at += 1;
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(300)) => continue,
                }
            }
        };
        history.line(
            "stream",
            &serde_json::json!({"t": history.now(), "watcher": name, "stream": stream,
                "replica": replica, "since": largest, "opened": true}),
        );
        let until = tokio::time::Instant::now() + roam.unwrap_or(Duration::from_secs(86_400));
        let mut last = 0u64;
        let why = loop {
            let m = tokio::select! {
                _ = stop.cancelled() => break 'streams,
                _ = tokio::time::sleep_until(until) => break "roamed".to_owned(),
                m = s.message() => m,
            };
            let ev = match m {
                Ok(Some(ev)) => ev,
                Ok(None) => break "ended".to_owned(),
                Err(e) => break format!("{:?}: {}", e.code(), e.message()),
            };
            let t = history.now();
            let kind = ev.r#type;
            use pb::WatchEventType as W;
            let strict = [W::Snapshot as i32, W::Changed as i32, W::Removed as i32].contains(&kind);
            let marker = [W::Synced as i32, W::Heartbeat as i32].contains(&kind);
            if (strict && ev.revision <= last) || (marker && ev.revision < last) {
                let b = Backwards {
                    t,
                    watcher: name.clone(),
                    stream,
                    before: last,
                    after: ev.revision,
                    kind,
                };
                history.line("backwards", &b);
                history.mem().backwards.push(b);
            }
            last = last.max(ev.revision);
            largest = largest.max(ev.revision);
            let rec = ev.tenant.as_ref().map(Rec::of);
            if kind == W::Reset as i32 {
                view.clear();
            } else if kind == W::Removed as i32 {
                view.remove(&ev.context_identifier);
            } else if let Some(r) = &rec {
                view.insert(r.ctx.clone(), r.rev);
            }
            let e = Ev {
                t,
                watcher: name.clone(),
                stream,
                replica,
                kind,
                rev: ev.revision,
                rec,
            };
            history.line("event", &e);
            let mut mem = history.mem();
            mem.events.push(e);
            if marker {
                mem.syncs.push(Sync {
                    t,
                    watcher: name.clone(),
                    stream,
                    kind,
                    rev: ev.revision,
                    view: view.clone(),
                });
            }
        };
        history.line(
            "stream_end",
            &serde_json::json!({"t": history.now(), "watcher": name, "stream": stream, "why": why}),
        );
        if roam.is_some() {
            at += 1;
        } else {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            }
        }
    }
}

/// A channel that notices a silent peer within a few seconds, as a
/// careful client's would.
pub async fn channel(url: &str) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(2))
        .http2_keep_alive_interval(Duration::from_secs(2))
        .keep_alive_timeout(Duration::from_secs(2))
        .connect()
        .await?)
}

async fn open(url: &str, since: u64) -> anyhow::Result<tonic::Streaming<pb::WatchTenantResponse>> {
    let mut client =
        TenantStatusServiceClient::new(channel(url).await?).max_decoding_message_size(64 << 20);
    Ok(client
        .watch_tenant(pb::WatchTenantRequest {
            context_identifiers: vec![],
            since_revision: since,
        })
        .await?
        .into_inner())
}

/// Every record on the replica at `url`, through ListTenants.
pub async fn list(url: &str) -> anyhow::Result<Vec<Rec>> {
    let mut client =
        TenantStatusServiceClient::new(channel(url).await?).max_decoding_message_size(64 << 20);
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = tokio::time::timeout(
            Duration::from_secs(5),
            client.list_tenants(pb::ListTenantsRequest {
                page_size: 1000,
                page_token: token,
                states: vec![],
            }),
        )
        .await??
        .into_inner();
        out.extend(page.tenants.iter().map(Rec::of));
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        token = page.next_page_token;
    }
}

/// Partitions held by the replica whose admin listener is `admin`; None
/// when it does not answer within 400 ms (paused, dead).
pub async fn held(http: &reqwest::Client, admin: &str) -> Option<f64> {
    let r = http
        .get(format!("http://{admin}/metrics"))
        .timeout(Duration::from_millis(400))
        .send()
        .await
        .ok()?;
    let text = r.text().await.ok()?;
    Some(
        text.lines()
            .filter(|l| l.starts_with("tenant_status_cluster_partitions_held"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum(),
    )
}

/// Whether the replica at `admin` says /readyz.
pub async fn ready(http: &reqwest::Client, admin: &str) -> bool {
    http.get(format!("http://{admin}/readyz"))
        .timeout(Duration::from_millis(400))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// Samples every replica's partitions every half second.
pub async fn sampler(admins: Vec<String>, history: Arc<History>, stop: CancellationToken) {
    let http = reqwest::Client::new();
    while !stop.is_cancelled() {
        let mut by = Vec::new();
        for a in &admins {
            by.push(held(&http, a).await);
        }
        let h = Held {
            t: history.now(),
            by,
        };
        history.line("held", &h);
        history.mem().held.push(h);
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Samples every replica's lease tenures (`/cluster/leases`) every half
/// second, and once more when stopped. Ended tenures stay in a replica's
/// answer (up to its last 4,096), so a sample need not catch one live; a
/// replica killed takes its unsampled ones with it, but its held ones were
/// sampled with the `until` that bounds them.
pub async fn lease_sampler(admins: Vec<String>, history: Arc<History>, stop: CancellationToken) {
    let http = reqwest::Client::new();
    // Ended tenures already written to the history, per replica.
    let mut written: Vec<HashSet<(u16, u64)>> = vec![HashSet::new(); admins.len()];
    loop {
        let answers = futures_util::future::join_all(admins.iter().map(|a| {
            let http = http.clone();
            async move {
                let r = http
                    .get(format!("http://{a}/cluster/leases"))
                    .timeout(Duration::from_secs(1))
                    .send()
                    .await
                    .ok()?;
                if !r.status().is_success() {
                    return None;
                }
                serde_json::from_slice(&r.bytes().await.ok()?).ok()
            }
        }))
        .await;
        let t = history.now();
        for (i, answer) in answers.into_iter().enumerate() {
            record_leases(&history, t, i, answer, &mut written[i]);
        }
        if stop.is_cancelled() {
            break;
        }
        tokio::select! {
            // One sample more after the stop: the tenures as they ended.
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

fn record_leases(
    history: &History,
    t: f64,
    replica: usize,
    answer: Option<serde_json::Value>,
    written: &mut HashSet<(u16, u64)>,
) {
    let Some(v) = answer else {
        history.mem().lease_samples.1 += 1;
        return;
    };
    let field = |x: &serde_json::Value, f: &str| x[f].as_u64();
    let mut held = Vec::new();
    let mut ended = Vec::new();
    let mut mem = history.mem();
    mem.lease_samples.0 += 1;
    for h in v["held"].as_array().into_iter().flatten() {
        let (Some(p), Some(since), Some(until)) = (
            field(h, "partition"),
            field(h, "since_ms"),
            field(h, "until_ms"),
        ) else {
            continue;
        };
        let p = p as u16;
        held.push(h.clone());
        let until = history.at_wall_ms(until);
        let tenure = mem.tenures.entry((replica, p, since)).or_insert(Tenure {
            replica,
            partition: p,
            since: history.at_wall_ms(since),
            end: until,
            why: String::new(),
        });
        // Held on: it lasts at least to its newest `until`; once it is
        // seen ended, the replica's own end is exact and stays.
        if tenure.why.is_empty() {
            tenure.end = tenure.end.max(until);
        }
    }
    for e in v["ended"].as_array().into_iter().flatten() {
        let (Some(p), Some(since), Some(end)) = (
            field(e, "partition"),
            field(e, "since_ms"),
            field(e, "end_ms"),
        ) else {
            continue;
        };
        let p = p as u16;
        if !written.insert((p, since)) {
            continue;
        }
        ended.push(e.clone());
        let why = e["why"].as_str().unwrap_or("?").to_owned();
        mem.tenures.insert(
            (replica, p, since),
            Tenure {
                replica,
                partition: p,
                since: history.at_wall_ms(since),
                end: history.at_wall_ms(end),
                why,
            },
        );
    }
    drop(mem);
    history.line(
        "leases",
        &serde_json::json!({
            "t": t,
            "replica": replica,
            "now_ms": v["now"],
            "held": held,
            "ended": ended,
        }),
    );
}
