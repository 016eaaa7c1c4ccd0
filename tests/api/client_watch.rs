//! `tenant-status watch`: the real binary following a real server, through
//! a broken connection (resumed without a gap) and a restart (RESET and a
//! complete snapshot).

use std::{net::SocketAddr, process::Stdio, time::Duration};

use serde_json::Value;
use tenant_status::ChangeType;
use tokio::{
    io::{AsyncBufReadExt, BufReader, Lines},
    net::{TcpListener, TcpStream},
    process::{Child, ChildStderr, ChildStdout},
    sync::watch,
};

use crate::client::{addr_of, command, run_client};
use crate::helpers::*;

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
    /// Where connections go: a server restarted elsewhere is the same
    /// address to the client.
    upstream: std::sync::Arc<std::sync::Mutex<SocketAddr>>,
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
        let upstream = std::sync::Arc::new(std::sync::Mutex::new(upstream));
        let target = std::sync::Arc::clone(&upstream);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let (generation, up) = *rx.borrow();
                if !up {
                    continue; // dropped: closed at once
                }
                let mut rx = rx.clone();
                let upstream = *target.lock().unwrap();
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
        Self {
            addr,
            upstream,
            control,
        }
    }

    /// New connections go to `upstream` from now on.
    fn retarget(&self, upstream: SocketAddr) {
        *self.upstream.lock().unwrap() = upstream;
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
            tenant_status::ContextId::parse("Cust1").unwrap(),
            tenant_status::ContextId::parse("Cust2").unwrap(),
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
    let on = |host: &'static str| {
        move |fake: &tenant_status::sim::fake_superoffice::FakeSuperOffice,
              _: &mut tenant_status::config::Config| {
            fake.set("Cust1", running("Cust1", host, Duration::from_secs(600)));
        }
    };
    let mut app = spawn_app_with(on("sod2.superoffice.com")).await;
    assert!(app.get("Cust1").await.is_ok());
    // One address for the client whichever process serves it: each binds
    // a port of its own (a port chosen, released and bound again can be
    // taken by another test in between).
    let proxy = Proxy::start(app.addr).await;
    let addr = format!("http://{}", proxy.addr);
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
    // A new process, which never issued the revision the client resumes
    // from; the tenant has moved meanwhile.
    let app = spawn_app_with(on("sod3.superoffice.com")).await;
    assert!(app.get("Cust1").await.is_ok());
    proxy.retarget(app.addr);

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
