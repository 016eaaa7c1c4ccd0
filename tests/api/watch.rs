use std::time::{Duration, SystemTime};
use tenant_status::{
    ContextId, TenantState as S,
    pb::{TenantState, WatchEventType as E},
    sim::fake_superoffice::{Failure, TenantSpec},
    testing::Observation,
    testing::PollResult,
};
use tonic::Code;

use crate::helpers::*;
use tenant_status::pb::{self, tenant_status_service_client::TenantStatusServiceClient};

fn observed(endpoint: &str) -> PollResult {
    PollResult::Observed(Observation {
        state: S::Running,
        endpoint: endpoint.into(),
        api: String::new(),
        version: String::new(),
        valid_until: Some(SystemTime::now() + Duration::from_secs(600)),
    })
}

#[tokio::test]
async fn snapshot_then_synced_then_changes_then_heartbeats() {
    let app = spawn_app_with(|fake, config| {
        fake.set(
            "Cust1",
            running("Cust1", "sod2.superoffice.com", Duration::from_millis(200)),
        );
        serve_running(fake, "Cust2");
        config.tenants = vec![
            ContextId::parse("Cust1").unwrap(),
            ContextId::parse("Cust2").unwrap(),
        ];
        config.heartbeat_interval = Duration::from_millis(300);
    })
    .await;
    eventually("both tenants polled", || app.store.len() == 2).await;
    let mut s = app.watch(&["Cust1"], 0).await.unwrap();
    let first = next(&mut s).await;
    assert_eq!(kind(&first), E::Snapshot);
    assert_eq!(first.context_identifier, "Cust1");
    let t = first.tenant.unwrap();
    assert_eq!(t.endpoint, "https://sod2.superoffice.com/Cust1");
    assert_eq!(first.revision, t.revision);
    let synced = next(&mut s).await;
    assert_eq!(kind(&synced), E::Synced);
    assert!(synced.revision >= t.revision);

    // A move at SuperOffice reaches the watcher within a poll.
    app.fake.set(
        "Cust1",
        running("Cust1", "sod3.superoffice.com", Duration::from_millis(200)),
    );
    let changed = next_matching(&mut s, "CHANGED", |e| kind(e) != E::Heartbeat).await;
    assert_eq!(kind(&changed), E::Changed);
    let t2 = changed.tenant.unwrap();
    assert_eq!(t2.endpoint, "https://sod3.superoffice.com/Cust1");
    assert!(t2.revision > t.revision);

    // Polls confirming the same state send nothing; heartbeats carry the revision.
    let hb = next(&mut s).await;
    assert_eq!(kind(&hb), E::Heartbeat, "{hb:?}");
    assert!(hb.revision >= t2.revision);
    let hb2 = next(&mut s).await;
    assert_eq!(
        kind(&hb2),
        E::Heartbeat,
        "confirming polls are not changes: {hb2:?}"
    );
    assert!(app.fake.requests("Cust1") >= 3);
}

#[tokio::test]
async fn an_empty_list_watches_every_tenant_including_new_ones() {
    let app = spawn_app_with(|fake, config| {
        for c in ["Cust1", "Cust2", "Cust3"] {
            fake.set(
                c,
                running(c, "sod2.superoffice.com", Duration::from_secs(600)),
            );
        }
        config.tenants = ["Cust3", "Cust1", "Cust2"]
            .iter()
            .map(|c| ContextId::parse(c).unwrap())
            .collect();
    })
    .await;
    eventually("three tenants polled", || app.store.len() == 3).await;
    let mut s = app.watch(&[], 0).await.unwrap();
    let mut names = vec![];
    let mut revisions = vec![];
    for _ in 0..3 {
        let ev = next(&mut s).await;
        assert_eq!(kind(&ev), E::Snapshot);
        names.push(ev.context_identifier);
        revisions.push(ev.revision);
    }
    // In revision order, so that a client cut off mid-snapshot may resume
    // from the last revision it saw.
    assert!(
        revisions.is_sorted(),
        "snapshot in revision order: {revisions:?}"
    );
    names.sort();
    assert_eq!(names, ["Cust1", "Cust2", "Cust3"]);
    assert_eq!(kind(&next(&mut s).await), E::Synced);
    // A tenant tracked later shows up as CHANGED.
    app.fake.set(
        "Cust4",
        running("Cust4", "sod3.superoffice.com", Duration::from_secs(600)),
    );
    app.get("Cust4").await.unwrap();
    let ev = next(&mut s).await;
    assert_eq!(kind(&ev), E::Changed);
    assert_eq!(ev.context_identifier, "Cust4");
}

#[tokio::test]
async fn since_revision_sends_only_what_changed_after_it() {
    let app = spawn_app().await;
    let now = SystemTime::now();
    for i in 1..=5 {
        app.store.apply_poll(
            &ContextId::parse(&format!("Cust{i}")).unwrap(),
            observed("https://a"),
            now,
        );
    }
    let mark = app.store.revision();
    app.store.apply_poll(
        &ContextId::parse("Cust2").unwrap(),
        observed("https://b"),
        now,
    );
    app.store.remove(&ContextId::parse("Cust4").unwrap());
    let mut s = app.watch(&[], mark).await.unwrap();
    let a = next(&mut s).await;
    assert_eq!(
        (kind(&a), a.context_identifier.as_str()),
        (E::Snapshot, "Cust2")
    );
    let b = next(&mut s).await;
    assert_eq!(
        (kind(&b), b.context_identifier.as_str()),
        (E::Removed, "Cust4")
    );
    assert_eq!(kind(&next(&mut s).await), E::Synced);
    // The same for a watch by name.
    let mut s = app.watch(&["Cust1", "Cust2"], mark).await.unwrap();
    let a = next(&mut s).await;
    assert_eq!(
        (kind(&a), a.context_identifier.as_str()),
        (E::Snapshot, "Cust2")
    );
    assert_eq!(kind(&next(&mut s).await), E::Synced);
}

#[tokio::test]
async fn a_resume_this_server_cannot_serve_starts_with_reset_and_a_full_snapshot() {
    let app = spawn_app().await;
    for i in 1..=3 {
        app.store.apply_poll(
            &ContextId::parse(&format!("Cust{i}")).unwrap(),
            observed("https://a"),
            SystemTime::now(),
        );
    }
    // A revision from before this process began (a client of the previous
    // one, after a restart), by name and for every tenant.
    for names in [&["Cust1", "Cust2", "Cust3"][..], &[]] {
        let mut s = app.watch(names, 1).await.unwrap();
        let reset = next(&mut s).await;
        assert_eq!((kind(&reset), reset.revision), (E::Reset, 0));
        let mut snapshot = vec![];
        loop {
            let ev = next(&mut s).await;
            match kind(&ev) {
                E::Snapshot => snapshot.push(ev.context_identifier),
                E::Synced => break,
                other => panic!("{other:?} in the snapshot"),
            }
        }
        snapshot.sort();
        assert_eq!(snapshot, ["Cust1", "Cust2", "Cust3"], "complete");
    }
    // One of its own revisions: no reset.
    let mut s = app.watch(&[], app.store.revision()).await.unwrap();
    assert_eq!(kind(&next(&mut s).await), E::Synced);
}

#[tokio::test]
async fn a_tenant_superoffice_does_not_know_stays_unknown_until_it_appears() {
    let app = spawn_app().await;
    let mut s = app.watch(&["Cust9"], 0).await.unwrap();
    let first = next(&mut s).await;
    assert_eq!(kind(&first), E::Snapshot);
    assert_eq!(state(first.tenant.as_ref().unwrap()), TenantState::Unknown);
    assert_eq!(kind(&next(&mut s).await), E::Synced);
    app.fake.set(
        "Cust9",
        running("Cust9", "sod3.superoffice.com", Duration::from_secs(600)),
    );
    let ev = next_matching(&mut s, "CHANGED to running", |e| kind(e) == E::Changed).await;
    assert_eq!(state(ev.tenant.as_ref().unwrap()), TenantState::Running);
}

/// A watch opens even when SuperOffice fails a name's first fetch: the
/// name arrives in the snapshot, stale, with the failure; SYNCED follows;
/// and when the poll that follows succeeds, the name changes to what it is.
#[tokio::test]
async fn watching_an_untracked_tenant_while_superoffice_fails_opens_with_it_stale() {
    let app = spawn_app_with(|fake, config| {
        serve_running(fake, "Cust1");
        // The poll after the failure comes a second later.
        config.policy.backoff_base = Duration::from_secs(1);
    })
    .await;
    app.fake.fail(None, Failure::Status(502), 1);
    let mut s = app.watch(&["Cust1"], 0).await.unwrap();
    // Tracked (UNKNOWN), then marked stale with the failure: both before
    // SYNCED, as one snapshot event or two.
    let ev = next_matching(&mut s, "a stale SNAPSHOT of Cust1", |e| {
        kind(e) == E::Snapshot && e.tenant.as_ref().is_some_and(|t| t.stale)
    })
    .await;
    let t = ev.tenant.unwrap();
    assert_eq!(state(&t), TenantState::Unknown);
    assert!(t.last_error.contains("HTTP 502"), "{}", t.last_error);
    assert_eq!(kind(&next(&mut s).await), E::Synced);
    let ev = next_matching(&mut s, "Cust1 running", |e| {
        e.tenant
            .as_ref()
            .is_some_and(|t| state(t) == TenantState::Running && !t.stale)
    })
    .await;
    assert_eq!(ev.tenant.unwrap().last_error, "");
    let e = app.watch(&["ok", "not/ok"], 0).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("context_identifiers"),
        "{}",
        e.message()
    );
}

#[tokio::test]
async fn a_deleted_tenant_stops_being_polled_and_is_removed_after_retention() {
    let app = spawn_app_with(|fake, config| {
        fake.set(
            "Cust1",
            running("Cust1", "sod2.superoffice.com", Duration::from_millis(100)),
        );
        config.policy.deleted_retention = Duration::from_millis(500);
    })
    .await;
    let mut s = app.watch(&["Cust1"], 0).await.unwrap();
    assert_eq!(kind(&next(&mut s).await), E::Snapshot);
    assert_eq!(kind(&next(&mut s).await), E::Synced);
    app.fake.set(
        "Cust1",
        TenantSpec::new("Deleted", "Cust1", "sod2.superoffice.com"),
    );
    let ev = next(&mut s).await;
    assert_eq!(kind(&ev), E::Changed);
    assert_eq!(state(ev.tenant.as_ref().unwrap()), TenantState::Deleted);
    let polls = app.fake.requests("Cust1");
    let ev = next(&mut s).await;
    assert_eq!(kind(&ev), E::Removed);
    assert_eq!(ev.context_identifier, "Cust1");
    assert!(ev.revision > 0);
    assert_eq!(
        app.fake.requests("Cust1"),
        polls,
        "a deleted tenant is not polled"
    );
    assert!(!app.store.contains("Cust1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_does_not_read_gets_the_latest_state_without_every_step() {
    let app = spawn_app().await;
    let now = SystemTime::now();
    let ctx = ContextId::parse("Cust1").unwrap();
    app.store.apply_poll(&ctx, observed("https://start"), now);
    let mut named = app.watch(&["Cust1"], 0).await.unwrap();
    let mut all = app.watch(&[], 0).await.unwrap();
    // Neither stream is read while the tenant changes many times.
    const CHANGES: usize = 20_000;
    for i in 0..CHANGES {
        app.store
            .apply_poll(&ctx, observed(&format!("https://step/{i}")), now);
    }
    let last = format!("https://step/{}", CHANGES - 1);
    for (name, s) in [("named", &mut named), ("all", &mut all)] {
        let mut seen = 0;
        loop {
            let ev = next(s).await;
            if kind(&ev) == E::Changed {
                seen += 1;
                if ev.tenant.as_ref().unwrap().endpoint == last {
                    break;
                }
            }
        }
        assert!(
            seen < CHANGES,
            "{name}: {seen} events for {CHANGES} changes: not coalesced"
        );
    }
}

#[tokio::test]
async fn a_disconnected_watcher_frees_its_resources() {
    let app = spawn_app().await;
    app.store.apply_poll(
        &ContextId::parse("Cust1").unwrap(),
        observed("https://a"),
        SystemTime::now(),
    );
    let mut named = app.watch(&["Cust1"], 0).await.unwrap();
    let mut all = app.watch(&[], 0).await.unwrap();
    next(&mut named).await;
    next(&mut all).await;
    assert_eq!(app.store.watcher_counts(), (1, 1));
    drop(named);
    drop(all);
    eventually("watchers released", || app.store.watcher_counts() == (0, 0)).await;
}

#[tokio::test]
async fn shutdown_ends_open_streams_with_unavailable_and_the_server_stops() {
    // A deadline far beyond the test's patience: the server must stop
    // because every stream ended, not because the deadline passed.
    let mut app =
        spawn_app_with(|_, config| config.shutdown_timeout = Duration::from_secs(600)).await;
    app.store.apply_poll(
        &ContextId::parse("Cust1").unwrap(),
        observed("https://a"),
        SystemTime::now(),
    );
    let mut named = app.watch(&["Cust1"], 0).await.unwrap();
    let mut all = app.watch(&[], 0).await.unwrap();
    next(&mut named).await;
    next(&mut all).await;
    app.begin_shutdown();
    for s in [&mut named, &mut all] {
        let end = loop {
            match tokio::time::timeout(Duration::from_secs(5), s.message())
                .await
                .expect("stream ends")
            {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended without a status"),
                Err(status) => break status,
            }
        };
        assert_eq!(end.code(), Code::Unavailable);
        assert!(end.message().contains("shutting down"), "{}", end.message());
    }
    tokio::time::timeout(Duration::from_secs(30), app.shutdown())
        .await
        .expect("the server drained without waiting for its deadline")
        .unwrap();
}

#[tokio::test]
async fn shutdown_finishes_within_the_deadline_when_a_client_never_reads() {
    let mut app = spawn_app().await;
    let now = SystemTime::now();
    let ctx = ContextId::parse("Cust1").unwrap();
    app.store.apply_poll(&ctx, observed("https://a"), now);
    // Fill the connection's flow-control window and never read.
    let _stuck = app.watch(&[], 0).await.unwrap();
    for i in 0..20_000 {
        app.store.apply_poll(
            &ctx,
            observed(&format!("https://{i}/{}", "x".repeat(200))),
            now,
        );
    }
    app.begin_shutdown();
    let r = tokio::time::timeout(Duration::from_secs(8), app.shutdown()).await;
    assert!(r.is_ok(), "the server did not stop within its deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_comes_after_every_change_at_or_below_its_revision() {
    let app =
        spawn_app_with(|_, config| config.heartbeat_interval = Duration::from_millis(2)).await;
    let one = ContextId::parse("Cust1").unwrap();
    let other = ContextId::parse("Cust2").unwrap();
    app.store
        .apply_poll(&one, observed("https://0"), SystemTime::now());
    app.store
        .apply_poll(&other, observed("https://0"), SystemTime::now());
    let mut named = app.watch(&["Cust1"], 0).await.unwrap();
    let mut all = app.watch(&[], 0).await.unwrap();
    // A writer changes both tenants while the streams heartbeat.
    let store = std::sync::Arc::clone(&app.store);
    let writer = tokio::spawn(async move {
        let mut revisions = vec![];
        for i in 1..=3000 {
            let ctx = if i % 2 == 0 { &one } else { &other };
            let a = store.apply_poll(ctx, observed(&format!("https://{i}")), SystemTime::now());
            revisions.push((ctx.to_string(), a.unwrap().record.revision));
            if i % 50 == 0 {
                tokio::task::yield_now().await;
            }
        }
        revisions
    });
    let mut logs = vec![];
    for s in [&mut named, &mut all] {
        let mut log = vec![];
        let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
        while tokio::time::Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_millis(100), s.message()).await {
                Ok(Ok(Some(ev))) => log.push(ev),
                Ok(other) => panic!("stream ended: {other:?}"),
                Err(_) => {}
            }
        }
        logs.push(log);
    }
    let revisions = writer.await.unwrap();
    // Per tenant, its change revisions in order (they only grow).
    let mut by_tenant: std::collections::HashMap<String, Vec<u64>> = Default::default();
    for (ctx, rev) in revisions {
        by_tenant.entry(ctx).or_default().push(rev);
    }
    for (which, log) in ["named", "all"].iter().zip(&logs) {
        let mut latest: std::collections::HashMap<String, u64> = Default::default();
        let mut heartbeats = 0;
        for ev in log {
            match kind(ev) {
                E::Snapshot | E::Changed => {
                    latest.insert(ev.context_identifier.clone(), ev.revision);
                }
                E::Heartbeat | E::Synced => {
                    heartbeats += 1;
                    // Each watched tenant's newest change at or below this
                    // revision has been received already.
                    for (ctx, revs) in &by_tenant {
                        if *which == "named" && ctx != "Cust1" {
                            continue;
                        }
                        let at_or_below = revs.partition_point(|r| *r <= ev.revision);
                        if at_or_below == 0 {
                            continue;
                        }
                        let newest = revs[at_or_below - 1];
                        let got = latest.get(ctx).copied().unwrap_or(0);
                        assert!(
                            got >= newest,
                            "{which}: heartbeat {} before {ctx}'s change {newest} (had {got})",
                            ev.revision
                        );
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(heartbeats > 10, "{which}: only {heartbeats} heartbeats");
    }
}

#[tokio::test]
async fn ten_thousand_streams_opened_and_dropped_at_once_leave_nothing_behind() {
    let app = spawn_app_tracking("Cust1", Duration::from_secs(600)).await;
    eventually("Cust1 tracked", || app.store.contains("Cust1")).await;
    let mut channels = Vec::new();
    for _ in 0..10 {
        channels.push(
            tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
    }
    let mut opened = Vec::new();
    for i in 0..10_000 {
        let mut client = TenantStatusServiceClient::new(channels[i % 10].clone());
        opened.push(tokio::spawn(async move {
            let names = if i % 100 == 0 {
                Vec::new()
            } else {
                vec!["Cust1".to_owned()]
            };
            let mut s = client
                .watch_tenant(pb::WatchTenantRequest {
                    context_identifiers: names,
                    since_revision: 0,
                })
                .await?
                .into_inner();
            s.message().await?;
            Ok::<_, tonic::Status>(s)
        }));
    }
    let mut streams = Vec::new();
    for o in opened {
        streams.push(o.await.unwrap().expect("every stream opens"));
    }
    eventually("the server counts them", || {
        let (named, all) = app.store.watcher_counts();
        named == 1 && all == 100
    })
    .await;
    drop(streams);
    drop(channels);
    eventually("every subscription released", || {
        app.store.watcher_counts() == (0, 0)
    })
    .await;
    // And the service still answers.
    assert_eq!(app.get("Cust1").await.unwrap().context_identifier, "Cust1");
}

#[tokio::test]
async fn made_up_names_are_bounded_and_forgotten_once_nobody_watches_them() {
    let app = spawn_app_with(|fake, config| {
        serve_running(fake, "Real1");
        config.policy.forget_unknown_after = Duration::from_secs(1);
        config.policy.max_unknown = 50;
    })
    .await;
    let mut all = app.watch(&[], 0).await.unwrap();
    assert_eq!(kind(&next(&mut all).await), E::Synced);
    let (_real, _) = watch_until_running(&app, "Real1").await;
    let names: Vec<String> = (0..50).map(|i| format!("Junk{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut junk = app.watch(&refs, 0).await.unwrap();
    // Learned as the stream goes: all of them by SYNCED.
    let mut ev = next(&mut junk).await;
    while kind(&ev) == E::Snapshot {
        ev = next(&mut junk).await;
    }
    assert_eq!(kind(&ev), E::Synced);
    assert!(
        names.iter().all(|n| app.store.contains(n)),
        "tracked while watched"
    );
    // Past --max-unknown-tenants: the stream opens, learns that the name
    // is unknown, and ends refused, naming the flag.
    let mut over = app.watch(&["Junk999"], 0).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(10), over.message())
        .await
        .expect("an answer within 10 s")
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(
        e.message().contains("--max-unknown-tenants"),
        "{}",
        e.message()
    );
    // Nothing changes for tenants that exist.
    assert_eq!(
        state(&app.get("Real1").await.unwrap()),
        TenantState::Running
    );
    // The watcher leaves; after the grace the names are forgotten, and a
    // watcher of every tenant hears of each.
    drop(junk);
    let mut removed = std::collections::HashSet::new();
    while removed.len() < names.len() {
        let ev = next(&mut all).await;
        if kind(&ev) == E::Removed {
            removed.insert(ev.context_identifier);
        }
    }
    assert!(names.iter().all(|n| removed.contains(n)));
    assert!(names.iter().all(|n| !app.store.contains(n)));
    assert!(app.store.contains("Real1"));
    // SuperOffice is asked about them no more.
    let asked: u64 = names.iter().map(|n| app.fake.requests(n)).sum();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        names.iter().map(|n| app.fake.requests(n)).sum::<u64>(),
        asked
    );
    let (_, text) = app.admin_get("/metrics").await;
    let m = parse_metrics(&text);
    assert_eq!(m["tenant_status_unknown_tenants"], 0.0);
    assert_eq!(m["tenant_status_unknown_tenants_forgotten_total"], 50.0);
    // Room again.
    let mut again = app.watch(&["Junk999"], 0).await.unwrap();
    let ev = next(&mut again).await;
    assert_eq!(kind(&ev), E::Snapshot);
    assert_eq!(kind(&next(&mut again).await), E::Synced);
}

/// Snapshots of every tenant take turns (a few streams at a time), and a
/// stream whose client stops reading mid-snapshot loses its turn: more
/// such streams than there are turns still leave a reader's snapshot to
/// arrive whole, in revision order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stop_reading_mid_snapshot_do_not_hold_up_other_snapshots() {
    let app = spawn_app().await;
    let now = SystemTime::now();
    const TENANTS: usize = 3_000;
    for i in 0..TENANTS {
        let ctx = ContextId::parse(&format!("Cust{i}")).unwrap();
        app.store
            .apply_poll(&ctx, observed(&format!("https://sod2/Cust{i}")), now);
    }
    // Small windows: each of these stops the server's sending after 16 KiB,
    // a few dozen records into its snapshot, and is never read.
    let turns = 2 * std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut stuck = Vec::new();
    for _ in 0..turns + 2 {
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
            .unwrap()
            .initial_stream_window_size(16 * 1024)
            .initial_connection_window_size(16 * 1024)
            .connect()
            .await
            .unwrap();
        let mut client = TenantStatusServiceClient::new(channel);
        stuck.push(
            client
                .watch_tenant(pb::WatchTenantRequest::default())
                .await
                .unwrap()
                .into_inner(),
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut reader = app.watch(&[], 0).await.unwrap();
    let mut revisions = Vec::new();
    let synced = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let ev = next(&mut reader).await;
            match kind(&ev) {
                E::Snapshot => revisions.push(ev.revision),
                E::Synced => return ev.revision,
                other => panic!("{other:?} before SYNCED"),
            }
        }
    })
    .await
    .expect("the reader's snapshot was held up by streams nobody reads");
    assert_eq!(revisions.len(), TENANTS);
    assert!(revisions.is_sorted());
    assert_eq!(synced, app.store.revision());
    drop(stuck);
}
