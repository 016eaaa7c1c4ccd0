//! Replicas sharing one truth through a real nats-server (JetStream KV):
//! notifications cross replicas, each tenant is polled once fleet-wide,
//! a dead replica's partitions are taken over, watchers resume anywhere,
//! and NATS going away loses nothing acknowledged.

use std::time::{Duration, Instant};

use tenant_status::{
    ChangeType,
    cluster::{ClusterConfig, PARTITIONS, partition_of},
    config::Config,
    pb,
    sim::fake_superoffice::{Failure, FakeSuperOffice},
};

use crate::{
    helpers::{
        TestApp, eventually, kind, next, next_matching, parse_metrics, replayed_as, running,
        spawn_with_config, start_binary_full, state, test_config,
    },
    nats::{self, Nats},
};

const TTL: Duration = Duration::from_secs(2);

pub(crate) fn clustered(fake: &FakeSuperOffice, urls: &[String], id: &str) -> Config {
    let mut config = test_config(&fake.url());
    let mut cluster = ClusterConfig::new(urls.to_vec(), id);
    cluster.lease_ttl = TTL;
    config.cluster = Some(cluster);
    config
}

/// `n` replicas against one fake SuperOffice and `urls`.
async fn replicas(
    fake: &FakeSuperOffice,
    urls: &[String],
    n: usize,
    setup: impl Fn(&mut Config),
) -> Vec<TestApp> {
    let mut apps = Vec::new();
    for i in 0..n {
        let mut config = clustered(fake, urls, &format!("r{i}"));
        setup(&mut config);
        apps.push(spawn_with_config(fake.clone(), config).await);
    }
    apps
}

async fn metric(app: &TestApp, name: &str) -> f64 {
    let (_, text) = app.admin_get("/metrics").await;
    parse_metrics(&text).get(name).copied().unwrap_or(0.0)
}

/// Waits until the replicas hold every partition between them, each its
/// share.
async fn balanced(apps: &[&TestApp]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut held = Vec::new();
        for a in apps {
            held.push(metric(a, "tenant_status_cluster_partitions_held").await);
        }
        let share = f64::from(PARTITIONS) / apps.len() as f64;
        if held.iter().sum::<f64>() == f64::from(PARTITIONS)
            && held
                .iter()
                .all(|h| *h >= share.floor() - 2.0 && *h <= share.ceil())
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "partitions never balanced: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_notification_posted_to_one_replica_reaches_a_watcher_on_another() {
    let Some(bin) =
        nats::required("a_notification_posted_to_one_replica_reaches_a_watcher_on_another")
    else {
        return;
    };
    let server = Nats::start(&bin, "cross").await;
    let (fake, _) = FakeSuperOffice::start().await.unwrap();
    fake.set(
        "Cust1",
        running("Cust1", "sod2.superoffice.com", Duration::from_secs(60)),
    );
    let apps = replicas(&fake, &[server.url()], 2, |_| {}).await;
    let (a, b) = (&apps[0], &apps[1]);
    // A lookup on A tracks the tenant fleet-wide: B serves it from memory.
    assert_eq!(
        state(&a.get("Cust1").await.unwrap()),
        pb::TenantState::Running
    );
    let mut watch = b.watch(&["Cust1"], 0).await.unwrap();
    let first = next(&mut watch).await;
    assert_eq!(kind(&first), pb::WatchEventType::Snapshot);
    let before = first.tenant.unwrap().revision;
    assert_eq!(kind(&next(&mut watch).await), pb::WatchEventType::Synced);

    let body = fake.notification(ChangeType::Suspend, "Cust1", None);
    let (status, _) = a.post_notification(&body).await;
    assert_eq!(status, 204);
    let changed = next_matching(&mut watch, "to SUSPENDED", |e: &pb::WatchTenantResponse| {
        e.tenant
            .as_ref()
            .is_some_and(|t| t.state == pb::TenantState::Suspended as i32)
    })
    .await;
    let t = changed.tenant.unwrap();
    assert!(t.revision > before);
    assert_eq!(t.last_change_source, pb::ChangeSource::Notification as i32);
    // The same revision on both replicas: revisions are the shared log's.
    assert_eq!(b.get("Cust1").await.unwrap().revision, t.revision);
    assert_eq!(a.get("Cust1").await.unwrap().revision, t.revision);

    // The token, accepted by A, is known to B: the same notification is a
    // retry, answered as applied and applied nothing; on another one it is
    // a replay.
    let (status, json) = b.post_notification(&body).await;
    assert_eq!(status, 204, "{json}");
    let (status, json) = b
        .post_notification(&replayed_as(&body, ChangeType::Resume))
        .await;
    assert_eq!(status, 401, "{json}");
    assert_eq!(json["reason"], "token_replayed");
    assert_eq!(b.get("Cust1").await.unwrap().revision, t.revision);
}

#[tokio::test]
async fn each_tenant_is_polled_once_per_valid_until_fleet_wide() {
    let Some(bin) = nats::required("each_tenant_is_polled_once_per_valid_until_fleet_wide") else {
        return;
    };
    let server = Nats::start(&bin, "once").await;
    let (fake, _) = FakeSuperOffice::start().await.unwrap();
    let names: Vec<String> = (0..30).map(|i| format!("Cust{i}")).collect();
    for n in &names {
        fake.set(
            n,
            running(n, "sod2.superoffice.com", Duration::from_secs(1)),
        );
    }
    let tenants: Vec<_> = names
        .iter()
        .map(|n| tenant_status::ContextId::parse(n).unwrap())
        .collect();
    let apps = replicas(&fake, &[server.url()], 3, |c| c.tenants = tenants.clone()).await;
    balanced(&apps.iter().collect::<Vec<_>>()).await;
    eventually("every tenant polled", || {
        names.iter().all(|n| fake.requests(n) > 0)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before: Vec<u64> = names.iter().map(|n| fake.requests(n)).collect();
    let window = Duration::from_secs(6);
    tokio::time::sleep(window).await;
    let polls: Vec<u64> = names
        .iter()
        .zip(&before)
        .map(|(n, b)| fake.requests(n) - b)
        .collect();
    // ValidUntil is 1 s: about 6 polls each in 6 s (jitter pulls some a
    // little earlier). Three replicas each polling would make 18.
    for (n, p) in names.iter().zip(&polls) {
        assert!(
            (3..=9).contains(p),
            "{n} was polled {p} times in 6 s: {polls:?}"
        );
    }
}

#[tokio::test]
async fn a_killed_replicas_partitions_are_taken_over_and_nothing_acknowledged_is_lost() {
    let Some(bin) = nats::required("a_killed_replicas_partitions_are_taken_over") else {
        return;
    };
    let server = Nats::start(&bin, "kill").await;
    let (fake, _) = FakeSuperOffice::start().await.unwrap();
    let names: Vec<String> = (0..40).map(|i| format!("Cust{i}")).collect();
    for n in &names {
        fake.set(
            n,
            running(n, "sod2.superoffice.com", Duration::from_secs(60)),
        );
    }
    let ttl = "2s".to_string();
    let args = |id: &str| {
        vec![
            "--state-api-base-url".to_string(),
            fake.url(),
            "--nats-url".into(),
            server.url(),
            "--replica-id".into(),
            id.into(),
            "--lease-ttl".into(),
            ttl.clone(),
        ]
    };
    let doomed = start_binary_full(&args("doomed"), &[]).await;
    let (mut doomed, doomed_hook, doomed_admin) = (doomed.child, doomed.webhook, doomed.admin);
    let survivor = start_binary_full(&args("survivor"), &[]).await;
    let (_survivor, grpc, admin) = (survivor.child, survivor.grpc, survivor.admin);
    let http = reqwest::Client::new();
    let held = |admin: String| {
        let http = http.clone();
        async move {
            let text = http
                .get(format!("http://{admin}/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            parse_metrics(&text)
                .get("tenant_status_cluster_partitions_held")
                .copied()
                .unwrap_or(0.0)
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while held(doomed_admin.clone()).await + held(admin.clone()).await != f64::from(PARTITIONS)
        || held(doomed_admin.clone()).await == 0.0
    {
        assert!(
            Instant::now() < deadline,
            "the two replicas never shared the partitions"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Notifications acknowledged by the replica about to die.
    let url = format!("http://{doomed_hook}/NotifyCustomerStateChange");
    for n in &names {
        let status = fake
            .notify(&http, &url, ChangeType::Suspend, n, None)
            .await
            .unwrap();
        assert_eq!(status, 204);
    }
    doomed.start_kill().unwrap();
    let killed = Instant::now();
    let _ = doomed.wait().await;
    while held(admin.clone()).await != f64::from(PARTITIONS) {
        assert!(
            killed.elapsed() < 2 * TTL + Duration::from_secs(2),
            "the dead replica's partitions were not taken over within 2 × the lease TTL"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = killed.elapsed();
    eprintln!("partitions taken over {took:?} after the kill (lease TTL {TTL:?})");
    // Every acknowledged notification is there on the survivor.
    let mut client = pb::tenant_status_service_client::TenantStatusServiceClient::connect(format!(
        "http://{grpc}"
    ))
    .await
    .unwrap();
    for n in &names {
        let t = client
            .get_tenant_state(pb::GetTenantStateRequest {
                context_identifier: n.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .tenant
            .unwrap();
        assert!(t.last_notification.is_some(), "{n} lost its notification");
    }
}

#[tokio::test]
async fn a_watcher_resumes_on_another_replica_and_misses_nothing() {
    let Some(bin) = nats::required("a_watcher_resumes_on_another_replica_and_misses_nothing")
    else {
        return;
    };
    let server = Nats::start(&bin, "resume").await;
    let (fake, _) = FakeSuperOffice::start().await.unwrap();
    let names: Vec<String> = (0..12).map(|i| format!("Cust{i}")).collect();
    for n in &names {
        fake.set(
            n,
            running(n, "sod2.superoffice.com", Duration::from_secs(60)),
        );
    }
    let apps = replicas(&fake, &[server.url()], 2, |c| {
        c.policy.deleted_retention = Duration::from_millis(300)
    })
    .await;
    let (a, b) = (&apps[0], &apps[1]);
    for n in &names {
        a.get(n).await.unwrap();
    }
    // A dashboard watches every tenant on A, then A goes away for it.
    let mut watch = a.watch(&[], 0).await.unwrap();
    let mut last = 0;
    loop {
        let e = next(&mut watch).await;
        last = last
            .max(e.revision)
            .max(e.tenant.as_ref().map_or(0, |t| t.revision));
        if kind(&e) == pb::WatchEventType::Synced {
            break;
        }
    }
    drop(watch);
    // Changes made meanwhile, through both replicas: suspensions, a move,
    // and a deletion that is forgotten after its retention (a removal).
    for (i, n) in names.iter().enumerate() {
        let app = if i % 2 == 0 { a } else { b };
        let change = if i == 3 {
            ChangeType::Move
        } else {
            ChangeType::Suspend
        };
        let host = (i == 3).then_some("sod3.superoffice.com");
        assert_eq!(app.notify(change, n, host).await, 204);
    }
    fake.remove("Cust11");
    assert_eq!(a.notify(ChangeType::Delete, "Cust11", None).await, 204);
    eventually("Cust11 forgotten on both", || {
        !a.store.contains("Cust11") && !b.store.contains("Cust11")
    })
    .await;
    // It resumes on B from the last revision it saw on A.
    let mut resumed = b.watch(&[], last).await.unwrap();
    let mut seen = std::collections::HashMap::new();
    let mut removed = false;
    loop {
        let e = next(&mut resumed).await;
        match kind(&e) {
            pb::WatchEventType::Reset => panic!("a resume from a revision B knows must not reset"),
            pb::WatchEventType::Removed => {
                assert_eq!(e.context_identifier, "Cust11");
                removed = true;
            }
            pb::WatchEventType::Synced => break,
            _ => {
                if let Some(t) = e.tenant {
                    assert!(
                        t.revision > last,
                        "{} at {} was seen already",
                        t.context_identifier,
                        t.revision
                    );
                    seen.insert(t.context_identifier.clone(), t);
                }
            }
        }
    }
    assert!(removed, "the removal made while away was missed");
    for n in &names[..11] {
        let t = seen
            .get(n.as_str())
            .unwrap_or_else(|| panic!("{n}'s change was missed"));
        assert_eq!(t.revision, b.get(n).await.unwrap().revision);
    }
    assert!(seen["Cust3"].endpoint.contains("sod3"));
}

#[tokio::test]
async fn nats_stopped_and_restarted_replicas_go_not_ready_then_catch_up_losing_nothing() {
    let Some(bin) = nats::required("nats_stopped_and_restarted") else {
        return;
    };
    let mut server = Nats::start(&bin, "restart").await;
    let (fake, _) = FakeSuperOffice::start().await.unwrap();
    let names: Vec<String> = (0..10).map(|i| format!("Cust{i}")).collect();
    for n in &names {
        fake.set(
            n,
            running(n, "sod2.superoffice.com", Duration::from_secs(60)),
        );
    }
    let apps = replicas(&fake, &[server.url()], 2, |_| {}).await;
    let (a, b) = (&apps[0], &apps[1]);
    for n in &names[..6] {
        a.get(n).await.unwrap();
    }
    for n in &names[..5] {
        assert_eq!(a.notify(ChangeType::Suspend, n, None).await, 204);
    }
    let mut watch = b.watch(&[], 0).await.unwrap();
    server.kill();
    for app in [a, b] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while app.admin_get("/readyz").await.0 != 503 {
            assert!(
                Instant::now() < deadline,
                "a replica cut off from NATS stayed ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Reads go on from memory, marked stale: this replica cannot vouch
    // for them. The webhook refuses what it cannot store, so SuperOffice
    // retries (elsewhere, or later).
    let t = b.get("Cust0").await.unwrap();
    assert_eq!(state(&t), pb::TenantState::Suspended);
    assert!(
        t.stale,
        "a replica cut off from NATS serves its records as stale"
    );
    // Its watch streams end once it has been cut off longer than a lease
    // TTL, so their clients resume elsewhere; new ones are refused.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match watch.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended without a status"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the watch stream ends within 10 s of NATS going away");
    assert_eq!(ended.code(), tonic::Code::Unavailable, "{ended:?}");
    assert!(ended.message().contains("another replica"), "{ended:?}");
    let refused = b.watch(&[], 0).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    let body = fake.notification(ChangeType::Suspend, "Cust5", None);
    let r = a
        .post_raw_response(Some("application/json"), body.to_string().into_bytes())
        .await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    server.restart().await;
    for app in [a, b] {
        let deadline = Instant::now() + Duration::from_secs(20);
        while app.admin_get("/readyz").await.0 != 200 {
            assert!(
                Instant::now() < deadline,
                "a replica did not catch up after NATS came back"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // SuperOffice's retry of the refused notification is welcome now.
    let (status, json) = b.post_notification(&body).await;
    assert_eq!(status, 204, "{json}");
    for n in &names[..6] {
        for app in [a, b] {
            // B answered the retry once it read it back; A reads it from
            // the log moments later.
            let deadline = Instant::now() + Duration::from_secs(5);
            let t = loop {
                let t = app.get(n).await.unwrap();
                if state(&t) == pb::TenantState::Suspended || Instant::now() > deadline {
                    break t;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            assert_eq!(
                state(&t),
                pb::TenantState::Suspended,
                "{n} after the restart"
            );
            assert!(!t.stale, "{n} still stale after the replica caught up");
        }
    }
}

#[tokio::test]
async fn a_three_node_nats_cluster_loses_a_node_under_load_and_nothing_acknowledged_is_lost() {
    let Some(bin) = nats::required("a_three_node_nats_cluster_loses_a_node") else {
        return;
    };
    // Three copies of each bucket: refused on nats-server 2.9.
    if !nats::serves_clusters(&bin, "a_three_node_nats_cluster_loses_a_node") {
        return;
    }
    let mut nodes = Nats::cluster(&bin, "trio").await;
    let urls: Vec<String> = nodes.iter().map(Nats::url).collect();
    let (fake, _) = FakeSuperOffice::start().await.unwrap();
    let names: Vec<String> = (0..60).map(|i| format!("Cust{i}")).collect();
    for n in &names {
        fake.set(
            n,
            running(n, "sod2.superoffice.com", Duration::from_secs(60)),
        );
    }
    // Started at once on the fresh cluster: JetStream is still electing
    // its meta leader and cannot place R3 buckets yet; each replica tries
    // again at start until it can (up to 30 s), rather than exiting.
    let mut apps = Vec::new();
    for (i, first) in [0usize, 1].into_iter().enumerate() {
        let mut order = urls.clone();
        order.rotate_left(first);
        let mut config = clustered(&fake, &order, &format!("r{i}"));
        if let Some(c) = config.cluster.as_mut() {
            c.bucket_replicas = 3;
        }
        apps.push(spawn_with_config(fake.clone(), config).await);
    }
    let (a, b) = (&apps[0], &apps[1]);
    // SuperOffice's side: each notification is retried on a 503 (to the
    // other replica, as a load balancer would) until it is acknowledged.
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    for (i, n) in names.iter().enumerate() {
        if i == 20 {
            nodes[0].kill();
        }
        let body = fake.notification(ChangeType::Suspend, n, None);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut attempt = i;
        loop {
            let app = if attempt % 2 == 0 { a } else { b };
            let (status, json) = app.post_notification(&body).await;
            if status == 204 {
                acknowledged.push(n.clone());
                break;
            }
            assert_eq!(status, 503, "{json}");
            refused += 1;
            assert!(
                Instant::now() < deadline,
                "{n} was refused for 20 s after a node was lost"
            );
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    eprintln!("{refused} answers were 503 while the NATS cluster recovered");
    assert_eq!(acknowledged.len(), names.len());
    for n in &acknowledged {
        for app in [a, b] {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match app.get(n).await {
                    Ok(t)
                        if t.last_notification
                            .as_ref()
                            .is_some_and(|x| x.change_type == pb::ChangeType::Suspend as i32) =>
                    {
                        break;
                    }
                    other => {
                        assert!(
                            Instant::now() < deadline,
                            "{n} acknowledged but its notification is not there: {other:?}"
                        );
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn a_confirming_poll_wakes_no_watcher_in_the_fleet_but_refreshes_every_replica() {
    let Some(bin) = nats::required("a_confirming_poll_wakes_no_watcher_in_the_fleet") else {
        return;
    };
    let server = Nats::start(&bin, "confirm").await;
    let (fake, _) = FakeSuperOffice::start().await.unwrap();
    fake.set(
        "Cust1",
        running("Cust1", "sod2.superoffice.com", Duration::from_millis(300)),
    );
    let apps = replicas(&fake, &[server.url()], 2, |c| {
        c.heartbeat_interval = Duration::from_millis(500)
    })
    .await;
    let (a, b) = (&apps[0], &apps[1]);
    let first = a.get("Cust1").await.unwrap();
    let mut watch = b.watch(&["Cust1"], first.revision).await.unwrap();
    assert_eq!(kind(&next(&mut watch).await), pb::WatchEventType::Synced);
    // Its poller (whichever replica holds its partition) confirms it
    // every 300 ms: the record's freshness moves on both replicas...
    let polled = fake.requests("Cust1");
    eventually("several confirming polls", || {
        fake.requests("Cust1") >= polled + 4
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    for app in [a, b] {
        let t = app.get("Cust1").await.unwrap();
        assert_eq!(
            t.revision, first.revision,
            "a confirming poll took a revision"
        );
        let secs = |t: &pb::Tenant| t.observed_at.map(|o| (o.seconds, o.nanos));
        assert!(
            secs(&t) > secs(&first),
            "the other replica's record did not get fresher"
        );
    }
    // ...and nobody is woken: heartbeats only.
    let mut heartbeats = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    while let Ok(e) = tokio::time::timeout_at(until, watch.message()).await {
        let e = e.unwrap().unwrap();
        assert_eq!(kind(&e), pb::WatchEventType::Heartbeat, "{e:?}");
        heartbeats += 1;
    }
    assert!(heartbeats > 0);
}

#[tokio::test]
async fn an_unknown_tenant_watched_on_one_replica_is_kept_by_whichever_polls_it() {
    let Some(bin) = nats::required("an_unknown_tenant_watched_on_one_replica_is_kept") else {
        return;
    };
    let server = Nats::start(&bin, "interest").await;
    // The fake knows none of them.
    let (fake, _) = FakeSuperOffice::start().await.unwrap();
    let apps = replicas(&fake, &[server.url()], 2, |c| {
        c.policy.forget_unknown_after = Duration::from_secs(1);
    })
    .await;
    let (a, b) = (&apps[0], &apps[1]);
    balanced(&[a, b]).await;
    // Ten names: about half fall in partitions replica A polls.
    let names: Vec<String> = (0..10).map(|i| format!("Nobody{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut watch = b.watch(&refs, 0).await.unwrap();
    next_matching(&mut watch, "SYNCED", |e: &pb::WatchTenantResponse| {
        kind(e) == pb::WatchEventType::Synced
    })
    .await;
    // Well past --forget-unknown-after, and several polls each: the
    // replica polling a name keeps it while a stream on B watches it.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for n in &names {
        assert!(a.store.contains(n), "{n} forgotten on A while B watches it");
        assert!(b.store.contains(n), "{n} forgotten on B while B watches it");
    }
    // Once nobody watches them, they are forgotten fleet-wide.
    drop(watch);
    let deadline = Instant::now() + Duration::from_secs(20);
    while names
        .iter()
        .any(|n| a.store.contains(n) || b.store.contains(n))
    {
        assert!(
            Instant::now() < deadline,
            "unwatched unknown tenants were never forgotten"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for `/readyz` to answer `status`, failing after `within`; how
/// long it took.
async fn readiness_becomes(app: &TestApp, status: u16, within: Duration) -> (Duration, String) {
    let started = Instant::now();
    loop {
        let (s, body) = app.admin_get("/readyz").await;
        if s == status {
            return (started.elapsed(), body);
        }
        assert!(
            started.elapsed() < within,
            "/readyz still {s} after {within:?}, not {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_paused_nats_server_turns_its_replica_stale_and_not_ready_within_a_lease_ttl() {
    let Some(bin) = nats::required("a_paused_nats_server") else {
        return;
    };
    let server = Nats::start(&bin, "pause").await;
    let (fake, _) = FakeSuperOffice::start().await.unwrap();
    fake.set(
        "Cust1",
        running("Cust1", "sod2.superoffice.com", Duration::from_secs(60)),
    );
    let apps = replicas(&fake, &[server.url()], 1, |_| {}).await;
    let a = &apps[0];
    readiness_becomes(a, 200, Duration::from_secs(10)).await;
    assert!(!a.get("Cust1").await.unwrap().stale);
    // Paused, the server keeps its socket open: nothing fails, nothing
    // answers.
    server.pause();
    let (took, why) = readiness_becomes(a, 503, TTL * 4).await;
    assert!(why.contains("NATS"), "{why}");
    let t = a.get("Cust1").await.unwrap();
    assert!(t.stale, "a replica NATS does not answer serves stale");
    assert_eq!(state(&t), pb::TenantState::Running, "the state is kept");
    // Counted by the replica's monitor, a quarter second at most later.
    let deadline = Instant::now() + Duration::from_secs(2);
    while metric(a, "tenant_status_cluster_stalls_total").await < 1.0
        && metric(a, "tenant_status_cluster_connected").await != 0.0
    {
        assert!(
            Instant::now() < deadline,
            "the stall is not counted, and the connection counts as up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("not ready {took:?} after the pause (lease TTL {TTL:?}): {why}");
    server.resume();
    readiness_becomes(a, 200, Duration::from_secs(20)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.get("Cust1").await.unwrap().stale {
        assert!(
            Instant::now() < deadline,
            "still stale after NATS came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_poll_answer_whose_lease_moved_away_meanwhile_is_dropped_and_counted() {
    let Some(bin) = nats::required("a_poll_answer_whose_lease_moved_away") else {
        return;
    };
    let server = Nats::start(&bin, "fence").await;
    let (fake, _) = FakeSuperOffice::start().await.unwrap();
    // Alone, A holds every partition; when B joins, A gives back the upper
    // half (its share is 32): this tenant's partition among them.
    let name = (0..)
        .map(|i| format!("Fence{i}"))
        .find(|n| partition_of(n) >= PARTITIONS / 2)
        .unwrap();
    fake.set(
        &name,
        running(&name, "sod2.superoffice.com", Duration::from_secs(1)),
    );
    let mut config = clustered(&fake, &[server.url()], "r0");
    config.http_timeout = Duration::from_secs(15);
    let a = spawn_with_config(fake.clone(), config).await;
    readiness_becomes(&a, 200, Duration::from_secs(10)).await;
    a.get(&name).await.unwrap();
    // A's next poll (at ValidUntil) hangs for 6 s; meanwhile the lease of
    // its partition moves to B.
    let asked = fake.requests(&name);
    fake.fail(Some(&name), Failure::Delay(Duration::from_secs(6)), 1);
    eventually("A's poll to go out", || fake.requests(&name) > asked).await;
    let b = spawn_with_config(fake.clone(), clustered(&fake, &[server.url()], "r1")).await;
    balanced(&[&a, &b]).await;
    let fenced = r#"tenant_status_cluster_poll_answers_fenced_total{reason="lease"}"#;
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric(&a, fenced).await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "A's answer, asked while it held the lease and answered after it moved, was not fenced"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_resume_from_a_revision_no_replica_issued_starts_over_with_reset() {
    let Some(bin) = nats::required("a_resume_from_a_revision_no_replica_issued") else {
        return;
    };
    let server = Nats::start(&bin, "ahead").await;
    let (fake, _) = FakeSuperOffice::start().await.unwrap();
    fake.set(
        "Cust1",
        running("Cust1", "sod2.superoffice.com", Duration::from_secs(60)),
    );
    let apps = replicas(&fake, &[server.url()], 1, |_| {}).await;
    let a = &apps[0];
    a.get("Cust1").await.unwrap();
    // A revision ahead of every replica and of the log itself: waited for
    // briefly, then RESET and a complete snapshot (a revision the log has
    // issued but this replica not read is UNAVAILABLE instead; see the
    // unit test of `resume_from`).
    let mut watch = a.watch(&["Cust1"], 1_000_000).await.unwrap();
    let first = next(&mut watch).await;
    assert_eq!(kind(&first), pb::WatchEventType::Reset, "{first:?}");
    let snapshot = next(&mut watch).await;
    assert_eq!(kind(&snapshot), pb::WatchEventType::Snapshot);
    assert_eq!(snapshot.tenant.unwrap().context_identifier, "Cust1");
}

#[tokio::test]
async fn several_bucket_copies_on_a_nats_server_older_than_2_10_are_refused_at_start() {
    let debian = std::path::Path::new("/usr/sbin/nats-server");
    let version = std::process::Command::new(debian)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if !version.contains("v2.9.") {
        eprintln!(
            "skipped: no nats-server 2.9 at {} ({version:?})",
            debian.display()
        );
        return;
    }
    let server = Nats::start(debian, "old").await;
    let (fake, _) = FakeSuperOffice::start().await.unwrap();
    let mut config = clustered(&fake, &[server.url()], "r0");
    config.cluster.as_mut().unwrap().bucket_replicas = 3;
    let refused = match tenant_status::app::Application::build(config).await {
        Ok(_) => panic!("three copies on nats-server 2.9 were accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(refused.contains("needs nats-server 2.10"), "{refused}");
    assert!(refused.contains("diverge"), "{refused}");
}

/// A replica's `/cluster/leases`: its tenures as (partition, since, end).
async fn tenures(app: &TestApp) -> serde_json::Value {
    let (status, body) = app.admin_get("/cluster/leases").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("/cluster/leases answers JSON")
}

fn ms(v: &serde_json::Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} is not a number of milliseconds: {v}"))
}

/// The partitions held, each with its (since_ms, until_ms), checked to be
/// well-formed against the answer's `now`.
fn held_tenures(t: &serde_json::Value) -> std::collections::BTreeMap<u16, (u64, u64)> {
    let now = ms(t, "now");
    let mut held = std::collections::BTreeMap::new();
    for h in t["held"].as_array().expect("a held list") {
        let p = u16::try_from(ms(h, "partition")).unwrap();
        let (since, until) = (ms(h, "since_ms"), ms(h, "until_ms"));
        assert!(p < PARTITIONS, "{h}");
        assert!(since <= now && since < until, "{h} at {now}");
        assert!(
            until + 60_000 > now && until <= now + 60_000,
            "{h} is not a lease of about a TTL at {now}"
        );
        assert!(held.insert(p, (since, until)).is_none(), "{p} held twice");
    }
    for e in t["ended"].as_array().expect("an ended list") {
        let (since, end) = (ms(e, "since_ms"), ms(e, "end_ms"));
        assert!(u16::try_from(ms(e, "partition")).unwrap() < PARTITIONS);
        assert!(since <= end && end <= now, "{e} at {now}");
        assert!(
            ["lapsed", "lost", "given_back", "shutdown"].contains(&e["why"].as_str().unwrap_or("")),
            "{e}"
        );
    }
    held
}

#[tokio::test]
async fn a_replica_reports_its_lease_tenures_and_a_partition_handed_over_never_overlaps() {
    let Some(bin) = nats::required("a_replica_reports_its_lease_tenures") else {
        return;
    };
    let server = Nats::start(&bin, "tenures").await;
    let (fake, _) = FakeSuperOffice::start().await.unwrap();
    let a = spawn_with_config(fake.clone(), clustered(&fake, &[server.url()], "r0")).await;
    balanced(&[&a]).await;
    let alone = tenures(&a).await;
    assert_eq!(alone["replica"], "r0");
    assert_eq!(
        held_tenures(&alone).keys().copied().collect::<Vec<_>>(),
        (0..PARTITIONS).collect::<Vec<_>>(),
        "alone, r0 holds every partition: {alone}"
    );
    let (status, body) = a.admin_get("/nothing-here").await;
    assert_eq!(status, 404);
    assert!(body.contains("/cluster/leases"), "{body}");

    // B joins: A gives half back, B takes it. Every partition is held by
    // exactly one of them, and each B took began after A's tenure of it
    // ended.
    let b = spawn_with_config(fake.clone(), clustered(&fake, &[server.url()], "r1")).await;
    balanced(&[&a, &b]).await;
    let (ta, tb) = (tenures(&a).await, tenures(&b).await);
    let (held_a, held_b) = (held_tenures(&ta), held_tenures(&tb));
    let mut all: Vec<u16> = held_a.keys().chain(held_b.keys()).copied().collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..PARTITIONS).collect::<Vec<_>>(),
        "every partition held once: {ta} {tb}"
    );
    assert!(!held_b.is_empty());
    let ended_a = ta["ended"].as_array().unwrap();
    for (p, (since_b, _)) in &held_b {
        let before = ended_a
            .iter()
            .find(|e| e["partition"] == *p)
            .unwrap_or_else(|| panic!("r0 held {p} when alone and its tenure never ended: {ta}"));
        assert_eq!(before["why"], "given_back", "{before}");
        assert!(
            ms(before, "end_ms") <= *since_b,
            "r1's tenure of {p} from {since_b} overlaps r0's: {before}"
        );
    }
}
