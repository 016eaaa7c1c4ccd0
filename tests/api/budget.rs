//! The budget toward SuperOffice: whatever callers ask, the fake state API
//! (which counts requests in flight, and can answer slowly or 429) never
//! sees more than the budget; watches of new names open at once and learn
//! them; unknown names are forgotten without asking again; a 429 pauses
//! everything.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use futures_util::future::join_all;
use tenant_status::{
    pb,
    sim::fake_superoffice::{Failure, FakeSuperOffice},
};

use crate::{
    cluster::clustered,
    helpers::{
        TestApp, eventually, kind, parse_metrics, running, spawn_app_with, spawn_with_config,
    },
    nats::{self, Nats},
};

/// Reads a watch up to SYNCED: the last record seen of each tenant.
async fn until_synced(
    stream: &mut tonic::Streaming<pb::WatchTenantResponse>,
) -> HashMap<String, pb::Tenant> {
    let mut held = HashMap::new();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(60), stream.message())
            .await
            .expect("SYNCED within 60 s")
            .expect("no stream error")
            .expect("the stream is open");
        match kind(&ev) {
            pb::WatchEventType::Synced => return held,
            pb::WatchEventType::Snapshot => {
                let t = ev.tenant.expect("a snapshot carries a tenant");
                held.insert(t.context_identifier.clone(), t);
            }
            other => panic!("{other:?} before SYNCED"),
        }
    }
}

async fn metric(app: &TestApp, name: &str) -> f64 {
    let (_, text) = app.admin_get("/metrics").await;
    parse_metrics(&text).get(name).copied().unwrap_or(0.0)
}

/// Three watches of 1,000 names each, none tracked, and 200 lookups of
/// other new names, all at once, against a state API that takes 100 ms an
/// answer: SuperOffice never sees more than the budget in flight. Each
/// watch opens at once and reaches SYNCED holding every one of its names:
/// found, unknown, or stale with the error of a fetch that failed. The
/// lookups, ahead of the watches' names in line, all answer.
#[tokio::test]
async fn callers_asking_for_thousands_of_new_names_never_exceed_the_budget() {
    const BUDGET: usize = 48;
    let app = spawn_app_with(|fake, config| {
        config.budget.max_in_flight = BUDGET;
        config.budget.max_wait = Duration::from_secs(30);
        config.policy.max_unknown = 5_000;
        fake.set_latency(Some(Duration::from_millis(100)));
        for w in 0..3 {
            for i in 0..1000 {
                // Every tenth unknown to SuperOffice.
                if i % 10 != 0 {
                    let ctx = format!("W{w}n{i}");
                    fake.set(
                        &ctx,
                        running(&ctx, "sod2.superoffice.com", Duration::from_secs(600)),
                    );
                }
            }
        }
        for i in 0..200 {
            let ctx = format!("Look{i}");
            fake.set(
                &ctx,
                running(&ctx, "sod3.superoffice.com", Duration::from_secs(600)),
            );
        }
        // Two names of the first watch fail their first fetch.
        fake.fail(Some("W0n1"), Failure::Status(503), 1);
        fake.fail(Some("W0n2"), Failure::Status(503), 1);
    })
    .await;
    let names: Vec<Vec<String>> = (0..3)
        .map(|w| (0..1000).map(|i| format!("W{w}n{i}")).collect())
        .collect();
    let mut streams = Vec::new();
    for n in &names {
        let refs: Vec<&str> = n.iter().map(String::as_str).collect();
        streams.push(app.watch(&refs, 0).await.expect("opens at once"));
    }
    // Opening did not wait for the names' fetches: when the third stream
    // opened, SuperOffice had not yet been asked for all 3,000 (they take
    // 6 s at best through 48 permits at 100 ms each). Counted in requests,
    // not seconds, so a loaded machine cannot fail it.
    let asked = app.fake.total_requests();
    assert!(
        asked < 3_000,
        "the streams opened only after {asked} requests to SuperOffice"
    );
    let lookups = join_all((0..200).map(|i| {
        let app = &app;
        async move { app.get(&format!("Look{i}")).await }
    }));
    let watches = join_all(streams.iter_mut().map(until_synced));
    let (looked, held) = tokio::join!(lookups, watches);
    for (i, r) in looked.into_iter().enumerate() {
        let t = r.unwrap_or_else(|e| panic!("lookup {i}: {e}"));
        assert_eq!(t.endpoint, format!("https://sod3.superoffice.com/Look{i}"));
    }
    for (w, held) in held.iter().enumerate() {
        assert_eq!(held.len(), 1000, "watch {w} holds every name at SYNCED");
        for i in 0..1000 {
            let t = &held[&format!("W{w}n{i}")];
            let state = pb::TenantState::try_from(t.state).unwrap();
            if w == 0 && (i == 1 || i == 2) {
                assert!(t.stale, "a failed first fetch arrives stale: {t:?}");
                assert!(t.last_error.contains("503"), "{t:?}");
            } else if i % 10 == 0 {
                assert_eq!(state, pb::TenantState::Unknown, "{t:?}");
            } else {
                assert_eq!(state, pb::TenantState::Running, "{t:?}");
                assert!(!t.stale);
            }
        }
    }
    let peak = app.fake.peak_in_flight();
    assert!(
        peak <= BUDGET,
        "SuperOffice saw {peak} requests in flight; the budget is {BUDGET}"
    );
    assert!(peak >= BUDGET / 2, "the budget was used: {peak}");
    // The failed names are polled again, as any failed poll, and recover.
    eventually("the failed names recover", || {
        app.store.get("W0n1").is_some_and(|r| !r.stale)
            && app.store.get("W0n2").is_some_and(|r| !r.stale)
    })
    .await;
    assert!(metric(&app, "tenant_status_superoffice_budget_in_force").await == BUDGET as f64);
}

/// A lookup that cannot get a permit within `--superoffice-max-wait` is
/// UNAVAILABLE, with a sentence naming the budget; whether the permits are
/// held by a JWKS fetch or by another lookup.
#[tokio::test]
async fn a_lookup_waiting_past_the_max_wait_is_unavailable_with_a_sentence() {
    let app = spawn_app_with(|fake, config| {
        config.budget.max_in_flight = 1;
        config.budget.max_wait = Duration::from_millis(300);
        config.http_timeout = Duration::from_secs(5);
        fake.set_latency(Some(Duration::from_secs(2)));
        fake.set(
            "Slow",
            running("Slow", "sod2.superoffice.com", Duration::from_secs(600)),
        );
        fake.set(
            "Next",
            running("Next", "sod2.superoffice.com", Duration::from_secs(600)),
        );
    })
    .await;
    // The JWKS fetched at start holds the one permit for 2 s: JWKS
    // fetches are in the budget too.
    eventually("the JWKS fetch is in flight", || {
        app.fake.jwks_requests() >= 1 && app.fake.in_flight() == 1
    })
    .await;
    let err = app.get("Next").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    eventually("the JWKS is fetched", || app.fake.in_flight() == 0).await;
    let slow = {
        let app_client = app.client.clone();
        tokio::spawn(async move {
            app_client
                .clone()
                .get_tenant_state(pb::GetTenantStateRequest {
                    context_identifier: "Slow".into(),
                })
                .await
        })
    };
    eventually("the first lookup is in flight", || {
        app.fake.in_flight() == 1
    })
    .await;
    let err = app.get("Next").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(
        err.message()
            .contains("request budget toward SuperOffice is full"),
        "{}",
        err.message()
    );
    assert!(slow.await.unwrap().is_ok(), "the one in flight answers");
    assert_eq!(app.fake.requests("Next"), 0, "never sent");
    assert_eq!(
        metric(&app, "tenant_status_superoffice_budget_refused_total").await,
        2.0
    );
}

/// Unknown names a watch named are forgotten after
/// `--forget-unknown-after` once no stream watches them, by a timer: no
/// request for them goes out after the stream ends.
#[tokio::test]
async fn unknown_names_are_forgotten_with_no_request_once_unwatched() {
    let app = spawn_app_with(|_, config| {
        config.policy.forget_unknown_after = Duration::from_secs(1);
    })
    .await;
    let names: Vec<String> = (0..100).map(|i| format!("Nobody{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut stream = app.watch(&refs, 0).await.unwrap();
    let held = until_synced(&mut stream).await;
    assert_eq!(held.len(), 100);
    // Watched: polled on while the stream lives.
    tokio::time::sleep(Duration::from_millis(800)).await;
    drop(stream);
    let dropped = Instant::now();
    eventually("every unknown name is forgotten", || {
        names.iter().all(|n| app.store.get(n).is_none())
    })
    .await;
    let forgotten = dropped.elapsed();
    assert!(
        forgotten >= Duration::from_millis(900),
        "after the grace: {forgotten:?}"
    );
    // Whatever was in flight when the stream ended has arrived by then.
    let late: Vec<_> = app
        .fake
        .arrivals()
        .into_iter()
        .filter(|t| *t > dropped + Duration::from_millis(200))
        .collect();
    assert!(
        late.is_empty(),
        "{} requests after the stream ended",
        late.len()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after: usize = names.iter().map(|n| app.fake.requests(n) as usize).sum();
    let total = app.fake.total_requests() as usize;
    assert_eq!(after, total, "only these names were ever asked for");
    assert!(
        app.fake
            .arrivals()
            .iter()
            .all(|t| *t <= dropped + Duration::from_millis(200)),
        "nothing asked once forgotten"
    );
    assert_eq!(metric(&app, "tenant_status_unknown_tenants").await, 0.0);
}

/// One 429 with Retry-After 2 s: no request of any kind (poll, lookup)
/// goes out for 2 s, and the budget in force halves, then grows back.
#[tokio::test]
async fn one_429_pauses_every_request_for_its_retry_after() {
    let app = spawn_app_with(|fake, config| {
        config.budget.max_in_flight = 8;
        config.budget.max_wait = Duration::from_secs(10);
        // Polled about every 100 ms: requests flow all the time.
        for i in 0..20 {
            let ctx = format!("Busy{i}");
            fake.set(
                &ctx,
                running(&ctx, "sod2.superoffice.com", Duration::from_millis(100)),
            );
        }
        fake.set(
            "Later",
            running("Later", "sod2.superoffice.com", Duration::from_secs(600)),
        );
        config.tenants = (0..20)
            .map(|i| tenant_status::ContextId::parse(&format!("Busy{i}")).unwrap())
            .collect();
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = app.fake.total_requests();
    assert!(before > 20, "polls flow: {before}");
    app.fake.fail(None, Failure::RateLimited(2), 1);
    eventually("the 429 is served", || app.fake.total_requests() > before).await;
    // The 429 went to the request that arrived then.
    let limited_at = app.fake.arrivals()[before as usize];
    // A lookup during the pause waits it out.
    let t = app.get("Later").await.expect("answered after the pause");
    assert_eq!(t.endpoint, "https://sod2.superoffice.com/Later");
    let arrivals = app.fake.arrivals();
    // Requests already in flight when the 429 came back arrive within a
    // moment of it; after that, none for the Retry-After.
    let quiet: Vec<_> = arrivals
        .iter()
        .filter(|t| **t > limited_at + Duration::from_millis(100))
        .filter(|t| **t < limited_at + Duration::from_millis(1950))
        .collect();
    assert!(
        quiet.is_empty(),
        "{} requests during the pause",
        quiet.len()
    );
    let resumed = arrivals
        .iter()
        .find(|t| **t >= limited_at + Duration::from_millis(1950))
        .expect("requests again after the pause");
    assert!(*resumed < limited_at + Duration::from_secs(4));
    assert_eq!(
        metric(&app, "tenant_status_superoffice_rate_limited_total").await,
        1.0
    );
    assert!(metric(&app, "tenant_status_superoffice_paused_seconds_total").await >= 2.0);
    // Halved, then grown back by the answers since.
    eventually("the budget grows back", || {
        app.fake.total_requests() > before + 100
    })
    .await;
    assert_eq!(
        metric(&app, "tenant_status_superoffice_budget_in_force").await,
        8.0
    );
}

/// Two replicas on a real nats-server share a fleet-wide budget of 8:
/// each takes 4 once it counts the other, and SuperOffice never sees
/// more than 8 in flight whatever both are asked.
#[tokio::test]
async fn two_replicas_together_stay_within_the_fleet_budget() {
    let Some(bin) = nats::required("two_replicas_together_stay_within_the_fleet_budget") else {
        return;
    };
    let server = Nats::start(&bin, "budget").await;
    let (fake, _) = FakeSuperOffice::start().await.unwrap();
    fake.set_latency(Some(Duration::from_millis(100)));
    for i in 0..400 {
        let ctx = format!("Fleet{i}");
        fake.set(
            &ctx,
            running(&ctx, "sod2.superoffice.com", Duration::from_secs(600)),
        );
    }
    let mut apps = Vec::new();
    for r in 0..2 {
        let mut config = clustered(&fake, &[server.url()], &format!("b{r}"));
        config.budget.max_in_flight = 8;
        config.budget.max_wait = Duration::from_secs(30);
        apps.push(spawn_with_config(fake.clone(), config).await);
    }
    for a in &apps {
        let deadline = Instant::now() + Duration::from_secs(20);
        while metric(a, "tenant_status_superoffice_budget_in_force").await != 4.0 {
            assert!(Instant::now() < deadline, "a replica never took its share");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Each replica is asked for 200 new names: lookups on one, a watch on
    // the other.
    let names: Vec<String> = (200..400).map(|i| format!("Fleet{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut stream = apps[1].watch(&refs, 0).await.unwrap();
    let lookups = join_all((0..200).map(|i| {
        let a = &apps[0];
        async move { a.get(&format!("Fleet{i}")).await }
    }));
    let (looked, held) = tokio::join!(lookups, until_synced(&mut stream));
    assert!(looked.iter().all(Result::is_ok));
    assert_eq!(held.len(), 200);
    let peak = fake.peak_in_flight();
    assert!(peak <= 8, "SuperOffice saw {peak} in flight from the fleet");
    // More than one replica's share at once: both were sending.
    assert!(peak > 4, "both replicas used their share: {peak}");
}

/// `--superoffice-max-rate 20`: 60 lookups of new names at once reach
/// SuperOffice at 20 a second after a second's worth at once, so they are
/// spread over about two seconds and every lookup is answered.
#[tokio::test]
async fn the_rate_spreads_a_burst_over_time() {
    let app = spawn_app_with(|fake, config| {
        config.budget.max_rate = Some(20.0);
        config.budget.max_wait = Duration::from_secs(30);
        for i in 0..60 {
            let ctx = format!("Rated{i}");
            fake.set(
                &ctx,
                running(&ctx, "sod2.superoffice.com", Duration::from_secs(600)),
            );
        }
    })
    .await;
    // The JWKS fetch at start takes a token too; let the bucket fill.
    eventually("the JWKS is fetched", || app.fake.jwks_requests() >= 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = app.fake.arrivals().len();
    let looked = join_all((0..60).map(|i| {
        let app = &app;
        async move { app.get(&format!("Rated{i}")).await }
    }))
    .await;
    assert!(looked.iter().all(Result::is_ok));
    let arrivals = app.fake.arrivals()[before..].to_vec();
    assert_eq!(arrivals.len(), 60);
    let span = *arrivals.last().unwrap() - arrivals[0];
    assert!(span >= Duration::from_millis(1900), "spread over {span:?}");
    for (i, t) in arrivals.iter().enumerate() {
        let in_a_second = arrivals[i..]
            .iter()
            .take_while(|u| **u < *t + Duration::from_secs(1))
            .count();
        assert!(in_a_second <= 41, "{in_a_second} within a second");
    }
}
