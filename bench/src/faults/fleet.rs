//! The processes of a fault run and the faults done to them: a three-node
//! NATS JetStream cluster on this machine, three replicas (the third in a
//! network namespace of its own when one can be made, so it can be cut
//! off from NATS alone), the fake SuperOffice, and a recording proxy in
//! front of the fake for each replica.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use axum::{
    Router,
    body::Body,
    extract::State,
    http::{StatusCode, Uri, header},
    response::{IntoResponse, Response},
};

use super::history::{History, Poll, host_of};
use crate::common::{self, Proc};

pub fn nats_version(bin: &std::path::Path) -> String {
    Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// Where things listen. Without a namespace, all on 127.0.0.1.
pub struct Net {
    /// The host's side of the veth pair: the proxies listen here.
    pub host_ip: String,
    /// A second address on the host's side, only for NATS: the namespace
    /// is cut off from NATS by a blackhole route to it alone.
    pub nats_ip: String,
    /// The namespace and the third replica's address in it.
    pub ns: Option<(String, String)>,
    pub why_not: String,
}

const NS: &str = "tsfaults";
const VETH_HOST: &str = "tsf-h";
const VETH_NS: &str = "tsf-n";

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    anyhow::ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

impl Net {
    /// A namespace with a veth pair (10.231.0.1 and .3 on the host's
    /// side, .2 in the namespace), all traffic on this machine; or
    /// loopback only, saying why.
    pub fn make() -> Self {
        Self::teardown();
        let made = (|| -> anyhow::Result<()> {
            ip(&["netns", "add", NS])?;
            ip(&[
                "link", "add", VETH_HOST, "type", "veth", "peer", "name", VETH_NS,
            ])?;
            ip(&["link", "set", VETH_NS, "netns", NS])?;
            ip(&["addr", "add", "10.231.0.1/24", "dev", VETH_HOST])?;
            ip(&["addr", "add", "10.231.0.3/32", "dev", VETH_HOST])?;
            ip(&["link", "set", VETH_HOST, "up"])?;
            ip(&[
                "netns",
                "exec",
                NS,
                "ip",
                "addr",
                "add",
                "10.231.0.2/24",
                "dev",
                VETH_NS,
            ])?;
            ip(&["netns", "exec", NS, "ip", "link", "set", VETH_NS, "up"])?;
            ip(&["netns", "exec", NS, "ip", "link", "set", "lo", "up"])?;
            ip(&[
                "netns",
                "exec",
                NS,
                "ip",
                "route",
                "replace",
                "10.231.0.3/32",
                "via",
                "10.231.0.1",
            ])?;
            Ok(())
        })();
        match made {
            Ok(()) => Self {
                host_ip: "10.231.0.1".into(),
                nats_ip: "10.231.0.3".into(),
                ns: Some((NS.into(), "10.231.0.2".into())),
                why_not: String::new(),
            },
            Err(e) => {
                Self::teardown();
                Self {
                    host_ip: "127.0.0.1".into(),
                    nats_ip: "127.0.0.1".into(),
                    ns: None,
                    why_not: format!("{e:#}"),
                }
            }
        }
    }

    /// Cuts the namespace off from NATS (`cut`) or heals it: a blackhole
    /// route drops its packets to NATS' address, silently, as a broken
    /// link would; everything else still flows.
    pub fn partition(&self, cut: bool) -> anyhow::Result<()> {
        let route = if cut {
            vec!["blackhole", "10.231.0.3/32"]
        } else {
            vec!["10.231.0.3/32", "via", "10.231.0.1"]
        };
        let mut args = vec!["netns", "exec", NS, "ip", "route", "replace"];
        args.extend(route);
        ip(&args)
    }

    pub fn teardown() {
        let _ = Command::new("ip")
            .args(["link", "del", VETH_HOST])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", NS])
            .stderr(Stdio::null())
            .status();
    }
}

/// SIGSTOP (`stop`) or SIGCONT to `pid`.
pub fn pause(pid: u32, stop: bool) -> anyhow::Result<()> {
    let sig = if stop { "-STOP" } else { "-CONT" };
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()?
        .success();
    anyhow::ensure!(ok, "kill {sig} {pid} failed");
    Ok(())
}

/// One node of the NATS cluster.
pub struct NatsNode {
    pub name: String,
    pub client: String,
    pub monitor: String,
    args: Vec<String>,
    bin: PathBuf,
    pub child: Option<Child>,
    starts: u32,
}

impl NatsNode {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn start(&mut self) -> anyhow::Result<()> {
        self.starts += 1;
        let log = std::fs::File::create(
            common::work_dir()
                .join("logs")
                .join(format!("faults-{}-{}.log", self.name, self.starts)),
        )?;
        let child = Command::new(&self.bin)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting nats-server")?;
        self.child = Some(child);
        Ok(())
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NatsNode {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = pause(pid, false);
        }
        self.kill();
    }
}

/// Three JetStream nodes routed to each other on loopback; clients and
/// monitoring on `ip`.
pub fn nats_cluster(bin: &std::path::Path, ip: &str) -> anyhow::Result<Vec<NatsNode>> {
    let ports: Vec<(u16, u16, u16)> = (0..3)
        .map(|_| {
            (
                common::free_port(),
                common::free_port(),
                common::free_port(),
            )
        })
        .collect();
    let routes = ports
        .iter()
        .map(|(_, c, _)| format!("nats://127.0.0.1:{c}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes = Vec::new();
    for (i, (p, c, m)) in ports.iter().enumerate() {
        let name = format!("nats{}", i + 1);
        let dir = common::work_dir().join(format!("faults-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        let args = [
            "-js",
            "-sd",
            &dir.display().to_string(),
            "-a",
            ip,
            "-p",
            &p.to_string(),
            "-m",
            &m.to_string(),
            "--cluster",
            &format!("nats://127.0.0.1:{c}"),
            "--routes",
            &routes,
            "--cluster_name",
            "faults",
            "-n",
            &name,
        ]
        .map(String::from)
        .to_vec();
        let mut node = NatsNode {
            name,
            client: format!("{ip}:{p}"),
            monitor: format!("{ip}:{m}"),
            args,
            bin: bin.to_path_buf(),
            child: None,
            starts: 0,
        };
        node.start()?;
        nodes.push(node);
    }
    Ok(nodes)
}

/// The node whose monitoring port answers `/jsz?leader-only=true` (the
/// others answer 400 "not leader").
pub async fn meta_leader(http: &reqwest::Client, nodes: &[NatsNode]) -> Option<usize> {
    for (i, n) in nodes.iter().enumerate() {
        let r = http
            .get(format!("http://{}/jsz?leader-only=true", n.monitor))
            .send()
            .await;
        if r.is_ok_and(|r| r.status().is_success()) {
            return Some(i);
        }
    }
    None
}

/// Whether the meta leader sees both other nodes as current peers: before
/// that, an R3 bucket cannot be placed ("no suitable peers").
pub async fn meta_ready(http: &reqwest::Client, nodes: &[NatsNode]) -> bool {
    let Some(i) = meta_leader(http, nodes).await else {
        return false;
    };
    let url = format!("http://{}/jsz?leader-only=true", nodes[i].monitor);
    let Ok(r) = http.get(url).send().await else {
        return false;
    };
    let Ok(body) = r.bytes().await else {
        return false;
    };
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    v["meta_cluster"]["replicas"]
        .as_array()
        .is_some_and(|peers| {
            peers.len() + 1 >= nodes.len() && peers.iter().all(|p| p["current"] == true)
        })
}

/// The node `replica` ("tenant-status a") is connected to, from each
/// node's `/connz`.
pub async fn node_of(http: &reqwest::Client, nodes: &[NatsNode], replica: &str) -> Option<usize> {
    let name = format!("tenant-status {replica}");
    for (i, n) in nodes.iter().enumerate() {
        let Ok(r) = http.get(format!("http://{}/connz", n.monitor)).send().await else {
            continue;
        };
        let Ok(body) = r.bytes().await else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
            continue;
        };
        let found = v["connections"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["name"] == name.as_str()));
        if found {
            return Some(i);
        }
    }
    None
}

/// One replica: its addresses and how to start it again.
pub struct Replica {
    pub id: String,
    pub grpc: String,
    pub hook: String,
    pub admin: String,
    args: Vec<String>,
    ns: Option<String>,
    pub proc: Option<Proc>,
    starts: u32,
}

impl Replica {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: &str,
        bind_ip: &str,
        ns: Option<String>,
        state_api: &str,
        nats_url: &str,
        tenants_file: &std::path::Path,
        cert: &std::path::Path,
        issuer: &str,
        lease_ttl: &str,
    ) -> Self {
        let (grpc, hook, admin) = (
            common::free_port(),
            common::free_port(),
            common::free_port(),
        );
        let mut args: Vec<String> = [
            "serve",
            "--grpc-addr",
            &format!("{bind_ip}:{grpc}"),
            "--webhook-addr",
            &format!("{bind_ip}:{hook}"),
            "--admin-addr",
            &format!("{bind_ip}:{admin}"),
            "--state-api-base-url",
            state_api,
            "--tenants-file",
            &tenants_file.display().to_string(),
            "--nats-url",
            nats_url,
            "--nats-bucket-replicas",
            "3",
            "--replica-id",
            id,
            "--lease-ttl",
            lease_ttl,
            "--heartbeat-interval",
            "2s",
        ]
        .map(String::from)
        .to_vec();
        args.extend(common::notification_load_flags(cert, issuer));
        Self {
            id: id.to_owned(),
            grpc: format!("http://{bind_ip}:{grpc}"),
            hook: format!("http://{bind_ip}:{hook}/NotifyCustomerStateChange"),
            admin: format!("{bind_ip}:{admin}"),
            args,
            ns,
            proc: None,
            starts: 0,
        }
    }

    pub fn start(&mut self) -> anyhow::Result<()> {
        self.starts += 1;
        let name = format!("faults-replica-{}-{}", self.id, self.starts);
        let mut all = vec![
            "child".to_owned(),
            "--".to_owned(),
            "tenant-status".to_owned(),
        ];
        all.extend(self.args.iter().cloned());
        self.proc = Some(match &self.ns {
            None => Proc::spawn(&name, &all)?,
            Some(ns) => {
                let exe = std::env::current_exe()?;
                let log = std::fs::File::create(
                    common::work_dir().join("logs").join(format!("{name}.log")),
                )?;
                // `ip netns exec` execs the program: the pid is the
                // replica's.
                let child = Command::new("ip")
                    .args(["netns", "exec", ns])
                    .arg(exe)
                    .args(&all)
                    .env("RUST_LOG", "warn")
                    .stdin(Stdio::null())
                    .stdout(log.try_clone()?)
                    .stderr(log)
                    .spawn()
                    .context("starting a replica in the namespace")?;
                Proc { child }
            }
        });
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    pub fn kill(&mut self) {
        if let Some(p) = self.proc.take() {
            p.stop();
        }
    }

    /// The names of this replica's log files so far.
    pub fn logs(&self) -> Vec<PathBuf> {
        (1..=self.starts)
            .map(|n| {
                common::work_dir()
                    .join("logs")
                    .join(format!("faults-replica-{}-{n}.log", self.id))
            })
            .collect()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = pause(pid, false);
        }
    }
}

struct ProxyState {
    replica: usize,
    fake: String,
    http: reqwest::Client,
    history: Arc<History>,
}

/// A proxy in front of the fake SuperOffice for replica `replica`,
/// listening on `ip`: every state-API request it forwards is recorded
/// with the replica that made it, which is how the checker sees who
/// polled what and when. Returns its base URL.
pub async fn proxy(
    replica: usize,
    ip: &str,
    fake: &str,
    history: Arc<History>,
) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind((ip, 0))
        .await
        .with_context(|| format!("binding the proxy on {ip}"))?;
    let addr = listener.local_addr()?;
    let state = Arc::new(ProxyState {
        replica,
        fake: fake.to_owned(),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?,
        history,
    });
    let app = Router::new().fallback(forward).with_state(state);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://{addr}"))
}

async fn forward(State(p): State<Arc<ProxyState>>, uri: Uri) -> Response {
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let start = p.history.now();
    let answer = async {
        let r = p.http.get(format!("{}{path}", p.fake)).send().await?;
        let status = r.status().as_u16();
        let body = r.bytes().await?;
        Ok::<_, reqwest::Error>((status, body))
    }
    .await;
    let Ok((status, body)) = answer else {
        return (StatusCode::BAD_GATEWAY, "the fake did not answer").into_response();
    };
    if let Some(ctx) = path.strip_prefix("/api/state/") {
        let host = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["Endpoint"].as_str().map(host_of))
            .unwrap_or_default();
        let poll = Poll {
            replica: p.replica,
            ctx: ctx.split('?').next().unwrap_or(ctx).to_owned(),
            start,
            end: p.history.now(),
            status,
            host,
        };
        p.history.line("poll", &poll);
        p.history.mem().polls.push(poll);
    }
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(body),
    )
        .into_response()
}
