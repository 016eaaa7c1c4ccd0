//! The client commands (`get`, `list`, `watch`, `completions`): the real
//! binary as a client of a real server, as an operator or a script runs it.

use std::{net::SocketAddr, process::Stdio, sync::Arc, time::Duration};

use serde_json::Value;
use tenant_status::{
    config::TlsFiles, core::tenant::ChangeType, serve::grpc::BearerTokens, sim::devcerts::DevCerts,
    sim::superoffice::Failure,
};
use tokio::{
    io::{AsyncBufReadExt, BufReader, Lines},
    net::{TcpListener, TcpStream},
    process::{Child, ChildStderr, ChildStdout},
    sync::watch,
};

use crate::helpers::*;

/// The binary with `args`, none of the caller's TENANT_STATUS_* settings.
fn command(args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tenant-status"));
    cmd.args(args).kill_on_drop(true);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("TENANT_STATUS_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// Runs the client to its end: exit code, stdout, stderr.
async fn run_client(args: &[&str]) -> (i32, String, String) {
    let out = tokio::time::timeout(Duration::from_secs(30), command(args).output())
        .await
        .expect("the client ends within 30 s")
        .expect("the binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn addr_of(app: &TestApp) -> String {
    format!("http://{}", app.addr)
}

fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[tokio::test]
async fn get_prints_a_readable_table_and_json_for_scripts() {
    let app = spawn_app_tracking("Cust1", Duration::from_secs(600)).await;
    serve_running(&app.fake, "Cust2");
    let addr = addr_of(&app);
    let (code, out, err) = run_client(&["get", "--addr", &addr, "Cust1", "Cust2"]).await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("TENANT") && lines[0].contains("OBSERVED"));
    for (line, ctx) in lines[1..].iter().zip(["Cust1", "Cust2"]) {
        assert!(line.starts_with(ctx), "{line}");
        assert!(line.contains("running") && line.contains("sod2.superoffice.com"));
        assert!(line.contains("s ago"), "the observation's age: {line}");
    }

    let (code, out, _) = run_client(&["get", "--addr", &addr, "-o", "json", "Cust1"]).await;
    assert_eq!(code, 0);
    let records = json_lines(&out);
    assert_eq!(records.len(), 1);
    let t = &records[0];
    assert_eq!(t["contextIdentifier"], "Cust1");
    assert_eq!(t["state"], "TENANT_STATE_RUNNING");
    assert_eq!(t["isRunning"], true);
    assert_eq!(t["stale"], false);
    assert_eq!(t["heldUntil"], Value::Null);
    let revision: u64 = t["revision"].as_str().unwrap().parse().unwrap();
    assert_eq!(revision, app.get("Cust1").await.unwrap().revision);
}

#[tokio::test]
async fn get_exit_codes_tell_not_found_from_unavailable() {
    let app = spawn_app_tracking("Cust1", Duration::from_secs(600)).await;
    let addr = addr_of(&app);
    let (code, out, err) = run_client(&["get", "--addr", &addr, "Cust1", "Cust404"]).await;
    assert_eq!(code, 3, "NOT_FOUND: {err}");
    assert!(out.contains("Cust1"), "what was found is printed: {out}");
    assert!(
        err.contains("Cust404") && err.contains("NOT_FOUND"),
        "{err}"
    );

    app.fake.fail(Some("Cust5"), Failure::Status(503), 100);
    let (code, _, err) = run_client(&["get", "--addr", &addr, "Cust5"]).await;
    assert_eq!(code, 4, "SuperOffice unavailable for a new tenant: {err}");
    assert!(err.contains("UNAVAILABLE"), "{err}");

    let (code, _, err) = run_client(&["get", "--addr", &addr, "../etc"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("INVALID_ARGUMENT"), "{err}");

    // Nothing listens on a port just freed.
    let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed = format!("http://{}", free.local_addr().unwrap());
    drop(free);
    let (code, _, err) = run_client(&["get", "--addr", &closed, "Cust1"]).await;
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("cannot reach tenant-status"), "{err}");

    let (code, _, err) = run_client(&["get", "--addr", "ftp://x", "Cust1"]).await;
    assert_eq!(code, 2, "a flag that cannot be used: {err}");
    assert!(err.contains("--addr"), "{err}");
    let (code, _, err) = run_client(&["get", "--token-file", "/nonexistent", "Cust1"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--token-file: cannot read /nonexistent"),
        "{err}"
    );
}

#[tokio::test]
async fn list_filters_by_state_and_reads_every_page() {
    let app = spawn_app_with(|fake, config| {
        for ctx in ["Cust1", "Cust2", "Cust3"] {
            serve_running(fake, ctx);
        }
        fake.set(
            "Cust4",
            tenant_status::sim::superoffice::TenantSpec::new(
                "Suspended",
                "Cust4",
                "sod2.superoffice.com",
            ),
        );
        config.tenants = ["Cust1", "Cust2", "Cust3", "Cust4"]
            .iter()
            .map(|c| tenant_status::core::tenant::ContextId::parse(c).unwrap())
            .collect();
    })
    .await;
    eventually("every tenant polled", || {
        app.store.get("Cust4").is_some_and(|r| r.revision > 0)
    })
    .await;
    let addr = addr_of(&app);
    let (code, out, err) =
        run_client(&["list", "--addr", &addr, "--page-size", "1", "-o", "json"]).await;
    assert_eq!(code, 0, "{err}");
    let names: Vec<Value> = json_lines(&out)
        .iter()
        .map(|t| t["contextIdentifier"].clone())
        .collect();
    assert_eq!(names, ["Cust1", "Cust2", "Cust3", "Cust4"]);

    let (code, out, _) = run_client(&["list", "--addr", &addr, "--state", "suspended"]).await;
    assert_eq!(code, 0);
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{out}");
    assert!(
        rows[0].starts_with("Cust4") && rows[0].contains("suspended") && rows[0].contains("down")
    );
}

#[tokio::test]
async fn the_client_presents_a_bearer_token_and_a_client_certificate() {
    let dir = temp_dir("client-auth");
    let tokens = dir.join("tokens");
    std::fs::write(
        &tokens,
        "# the server's own file\nsecret-token-of-the-cli\n",
    )
    .unwrap();
    let access = Arc::new(BearerTokens::from_file(&tokens).unwrap());
    let certs = DevCerts::generate().unwrap();
    certs.write(&dir).unwrap();
    let tls = TlsFiles {
        cert_pem: certs.server_pem.clone().into_bytes(),
        key_pem: certs.server_key.clone().into_bytes(),
        client_ca_pem: Some(certs.ca_pem.clone().into_bytes()),
    };
    let app = spawn_app_with(move |fake, config| {
        serve_running(fake, "Cust1");
        config.access = Some(access);
        config.tls = Some(tls);
    })
    .await;
    let addr = format!("https://localhost:{}", app.addr.port());
    let path = |f: &str| dir.join(f).display().to_string();
    let (ca, cert, key, token) = (
        path("ca.pem"),
        path("client.pem"),
        path("client.key"),
        tokens.display().to_string(),
    );
    let tls_args = [
        "--addr",
        &addr,
        "--ca-file",
        &ca,
        "--tls-client-cert",
        &cert,
        "--tls-client-key",
        &key,
    ];
    let mut with_all = vec!["get"];
    with_all.extend(tls_args);
    with_all.extend(["--token-file", &token, "Cust1"]);
    let (code, out, err) = run_client(&with_all).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Cust1") && out.contains("running"), "{out}");

    let mut no_token = vec!["get"];
    no_token.extend(tls_args);
    no_token.push("Cust1");
    let (code, _, err) = run_client(&no_token).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("UNAUTHENTICATED"), "{err}");

    let (code, _, err) = run_client(&[
        "get",
        "--addr",
        &addr,
        "--ca-file",
        &ca,
        "--token-file",
        &token,
        "Cust1",
    ])
    .await;
    assert_ne!(
        code, 0,
        "mTLS refuses a client without a certificate: {err}"
    );

    let (code, _, err) =
        run_client(&["get", "--addr", &addr, "--tls-client-cert", &cert, "Cust1"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--tls-client-key"), "{err}");
}

/// A running `tenant-status watch`, its output read line by line.
struct WatchProcess {
    _child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Lines<BufReader<ChildStderr>>,
}

impl WatchProcess {
    fn start(args: &[&str]) -> Self {
        let mut child = command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Self {
            stdout: BufReader::new(child.stdout.take().unwrap()).lines(),
            stderr: BufReader::new(child.stderr.take().unwrap()).lines(),
            _child: child,
        }
    }

    /// The next event (one JSON line), failing after 20 s.
    async fn event(&mut self) -> Value {
        let line = self.line().await;
        serde_json::from_str(&line).unwrap()
    }

    /// The next line on stdout, failing after 20 s.
    async fn line(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(20), self.stdout.next_line())
            .await
            .expect("a line within 20 s")
            .unwrap()
            .expect("the watch is running")
    }

    /// Events up to and including the next SYNCED.
    async fn until_synced(&mut self) -> Vec<Value> {
        let mut events = Vec::new();
        loop {
            let ev = self.event().await;
            let done = ev["type"] == "WATCH_EVENT_TYPE_SYNCED";
            events.push(ev);
            if done {
                return events;
            }
        }
    }

    /// The next line on stderr containing `what`, failing after 20 s.
    async fn note(&mut self, what: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let line = tokio::time::timeout_at(deadline, self.stderr.next_line())
                .await
                .unwrap_or_else(|_| panic!("no {what:?} on stderr within 20 s"))
                .unwrap()
                .expect("the watch is running");
            if line.contains(what) {
                return line;
            }
        }
    }
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

/// A TCP proxy whose connections can be cut, and new ones refused, to
/// break a watch without touching the server.
struct Proxy {
    addr: SocketAddr,
    /// (generation, up): a connection lives while the generation it began
    /// in is current; while down, new connections are closed at once.
    control: watch::Sender<(u64, bool)>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (control, _) = watch::channel((0u64, true));
        let rx = control.subscribe();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let (generation, up) = *rx.borrow();
                if !up {
                    continue; // dropped: closed at once
                }
                let mut rx = rx.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = rx.wait_for(|(g, _)| *g != generation) => {}
                    }
                });
            }
        });
        Self { addr, control }
    }

    fn down(&self) {
        self.control.send_modify(|(g, up)| {
            *g += 1;
            *up = false;
        });
    }

    fn up(&self) {
        self.control.send_modify(|(_, up)| *up = true);
    }
}

#[tokio::test]
async fn watch_resumes_from_the_last_revision_after_a_broken_connection() {
    let app = spawn_app_with(|fake, config| {
        serve_running(fake, "Cust1");
        serve_running(fake, "Cust2");
        config.tenants = vec![
            tenant_status::core::tenant::ContextId::parse("Cust1").unwrap(),
            tenant_status::core::tenant::ContextId::parse("Cust2").unwrap(),
        ];
    })
    .await;
    eventually("both tenants polled", || {
        ["Cust1", "Cust2"].iter().all(|c| {
            app.store
                .get(c)
                .is_some_and(|r| r.state.name() == "Running")
        })
    })
    .await;
    let proxy = Proxy::start(app.addr).await;
    let addr = format!("http://{}", proxy.addr);
    let mut watch =
        WatchProcess::start(&["watch", "--addr", &addr, "-o", "json", "Cust1", "Cust2"]);
    let first = watch.until_synced().await;
    assert_eq!(
        kinds(&first),
        [
            "WATCH_EVENT_TYPE_SNAPSHOT",
            "WATCH_EVENT_TYPE_SNAPSHOT",
            "WATCH_EVENT_TYPE_SYNCED"
        ]
    );
    let synced: u64 = first[2]["revision"].as_str().unwrap().parse().unwrap();

    proxy.down();
    let note = watch.note("watch interrupted").await;
    assert!(
        note.contains(&format!("resume from revision {synced}")),
        "{note}"
    );
    // Cust1 changes while the client cannot reach the server.
    assert_eq!(
        app.notify(ChangeType::Suspend, "Cust1", None).await,
        reqwest::StatusCode::NO_CONTENT
    );
    proxy.up();

    let resumed = watch.until_synced().await;
    assert_eq!(
        kinds(&resumed),
        ["WATCH_EVENT_TYPE_SNAPSHOT", "WATCH_EVENT_TYPE_SYNCED"],
        "only what changed since the last revision, no RESET: {resumed:?}"
    );
    let t = &resumed[0]["tenant"];
    assert_eq!(t["contextIdentifier"], "Cust1");
    assert_eq!(t["state"], "TENANT_STATE_SUSPENDED");
    let revision: u64 = t["revision"].as_str().unwrap().parse().unwrap();
    assert!(revision > synced);
}

#[tokio::test]
async fn watch_takes_a_reset_and_the_complete_snapshot_after_a_server_restart() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let on_port = |host: &'static str| {
        move |fake: &tenant_status::sim::superoffice::FakeSuperOffice,
              config: &mut tenant_status::config::Config| {
            fake.set("Cust1", running("Cust1", host, Duration::from_secs(600)));
            config.grpc_addr = format!("127.0.0.1:{port}");
        }
    };
    let mut app = spawn_app_with(on_port("sod2.superoffice.com")).await;
    assert!(app.get("Cust1").await.is_ok());
    let addr = format!("http://127.0.0.1:{port}");
    // By name, so that each snapshot has it even before a poll.
    let mut watch = WatchProcess::start(&["watch", "--addr", &addr, "-o", "json", "Cust1"]);
    let first = watch.until_synced().await;
    assert_eq!(
        kinds(&first),
        ["WATCH_EVENT_TYPE_SNAPSHOT", "WATCH_EVENT_TYPE_SYNCED"]
    );

    app.begin_shutdown();
    app.task.take().unwrap().await.unwrap().unwrap();
    let note = watch.note("watch interrupted").await;
    assert!(note.contains("UNAVAILABLE"), "{note}");
    // A new process on the same address, which never issued the revision
    // the client resumes from; the tenant has moved meanwhile.
    let app = spawn_app_with(on_port("sod3.superoffice.com")).await;
    assert!(app.get("Cust1").await.is_ok());

    let after = watch.until_synced().await;
    assert_eq!(
        kinds(&after),
        [
            "WATCH_EVENT_TYPE_RESET",
            "WATCH_EVENT_TYPE_SNAPSHOT",
            "WATCH_EVENT_TYPE_SYNCED"
        ]
    );
    assert_eq!(
        after[1]["tenant"]["endpoint"],
        "https://sod3.superoffice.com/Cust1"
    );
}

#[tokio::test]
async fn watch_prints_a_line_per_event_for_people() {
    let app = spawn_app_tracking("Cust1", Duration::from_secs(600)).await;
    assert!(app.get("Cust1").await.is_ok());
    let mut watch = WatchProcess::start(&["watch", "--addr", &addr_of(&app), "Cust1"]);
    let snapshot = watch.line().await;
    assert!(
        snapshot.contains("SNAPSHOT") && snapshot.contains("Cust1") && snapshot.contains("running"),
        "{snapshot}"
    );
    assert!(watch.line().await.contains("SYNCED"));
    app.notify(ChangeType::Upgrade, "Cust1", None).await;
    let changed = watch.line().await;
    for part in [
        "CHANGED",
        "offline maintenance",
        "down",
        "notification: upgrade",
        "held until",
    ] {
        assert!(changed.contains(part), "{part:?} in {changed}");
    }
}

#[tokio::test]
async fn a_watch_that_cannot_open_fails_at_once() {
    let (code, _, err) = run_client(&["watch", "--addr", "http://127.0.0.1:1"]).await;
    assert_eq!(code, 4, "{err}");
    let app = spawn_app().await;
    let (code, _, err) = run_client(&["watch", "--addr", &addr_of(&app), "not/valid"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("INVALID_ARGUMENT"), "{err}");
}

#[tokio::test]
async fn completions_for_bash_zsh_and_fish_know_the_commands() {
    for shell in ["bash", "zsh", "fish"] {
        let (code, out, err) = run_client(&["completions", shell]).await;
        assert_eq!(code, 0, "{err}");
        for word in ["watch", "list", "since-revision", "offline-maintenance"] {
            assert!(out.contains(word), "{shell}: {word}");
        }
    }
}
