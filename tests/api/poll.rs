use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tenant_status::{
    ContextId,
    pb::{TenantState, WatchEventType as E},
    sim::fake_superoffice::{Failure, FakeSuperOffice},
    superoffice::SuperOfficeClient,
};

use crate::helpers::*;

#[tokio::test]
async fn configured_tenants_are_polled_at_valid_until() {
    let app = spawn_app_tracking("Cust1", Duration::from_millis(300)).await;
    eventually("first poll", || app.store.contains("Cust1")).await;
    eventually("polled again after ValidUntil", || {
        app.fake.requests("Cust1") >= 3
    })
    .await;
    // Far fewer polls than the 100 ms minimum would allow: ValidUntil paces them.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let n = app.fake.requests("Cust1");
    assert!(n <= 8, "{n} polls in about a second with ValidUntil 300 ms");
}

#[tokio::test]
async fn failures_keep_the_last_state_mark_it_stale_and_recover() {
    let app = spawn_app_tracking("Cust1", Duration::from_millis(100)).await;
    let mut s = app.watch(&["Cust1"], 0).await.unwrap();
    assert_eq!(kind(&next(&mut s).await), E::Snapshot);
    assert_eq!(kind(&next(&mut s).await), E::Synced);
    app.fake.fail(None, Failure::Status(500), 1_000);
    let ev = next_matching(&mut s, "stale", |e| kind(e) == E::Changed).await;
    let t = ev.tenant.unwrap();
    assert!(t.stale, "{t:?}");
    assert_eq!(
        state(&t),
        TenantState::Running,
        "the last known state is kept"
    );
    assert!(t.is_running);
    assert!(t.last_error.contains("HTTP 500"), "{}", t.last_error);
    let got = app.get("Cust1").await.unwrap();
    assert!(got.stale && state(&got) == TenantState::Running);
    // Backoff: the failing API is not hammered at the 100 ms minimum.
    let before = app.fake.requests("Cust1");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = app.fake.requests("Cust1") - before;
    assert!(during <= 6, "{during} requests in 2 s while failing");
    app.fake.heal();
    let ev = next_matching(&mut s, "recovered", |e| kind(e) == E::Changed).await;
    let t = ev.tenant.unwrap();
    assert!(!t.stale && t.last_error.is_empty());
}

#[tokio::test]
async fn each_kind_of_failure_is_survived() {
    for failure in [
        Failure::InvalidJson,
        // 100 MB: refused at the client's 64 KiB limit, not read.
        Failure::HugeBody(100 * 1024 * 1024),
        Failure::Reset,
        Failure::Status(404),
        // An answer after 60 s: the 2 s test timeout gives up first.
        Failure::Delay(Duration::from_secs(60)),
        Failure::Status(500),
        Failure::Status(503),
    ] {
        let app = spawn_app_tracking("Cust1", Duration::from_millis(100)).await;
        eventually("first poll", || app.store.contains("Cust1")).await;
        let before = app.store.get("Cust1").unwrap();
        app.fake.fail(Some("Cust1"), failure.clone(), 1);
        let n = app.fake.requests("Cust1");
        eventually("a poll after the failure", || {
            app.fake.requests("Cust1") >= n + 2
        })
        .await;
        let after = app.get("Cust1").await.unwrap();
        if failure == Failure::Status(404) {
            // 404 means SuperOffice does not know the tenant: that is a state.
            continue;
        }
        assert_eq!(state(&after), TenantState::Running, "{failure:?}");
        assert_eq!(after.endpoint, before.endpoint, "{failure:?}");
    }
}

#[tokio::test]
async fn a_429_retry_after_is_honoured() {
    let app = spawn_app_tracking("Cust1", Duration::from_millis(100)).await;
    eventually("first poll", || app.store.contains("Cust1")).await;
    app.fake.fail(Some("Cust1"), Failure::RateLimited(2), 1);
    let n = app.fake.requests("Cust1");
    eventually("the 429 was served", || app.fake.requests("Cust1") > n).await;
    let after_429 = app.fake.requests("Cust1");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        app.fake.requests("Cust1"),
        after_429,
        "asked again before Retry-After"
    );
    eventually("polling resumes after Retry-After", || {
        app.fake.requests("Cust1") > after_429
    })
    .await;
}

/// A resolver the test switches: while up, `state-api.test` is the fake's
/// address; while down, every lookup fails as an NXDOMAIN would.
struct SwitchableDns {
    up: Arc<AtomicBool>,
    lookups: Arc<AtomicU64>,
    addr: SocketAddr,
}

impl reqwest::dns::Resolve for SwitchableDns {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        let (up, addr) = (self.up.load(Ordering::SeqCst), self.addr);
        Box::pin(async move {
            if up && name.as_str() == "state-api.test" {
                Ok(Box::new(std::iter::once(addr)) as reqwest::dns::Addrs)
            } else {
                Err(format!("no record for {}", name.as_str()).into())
            }
        })
    }
}

#[tokio::test]
async fn a_dns_failure_keeps_the_last_state_backs_off_and_recovers() {
    let (fake, _) = FakeSuperOffice::start().await.unwrap();
    fake.set(
        "Cust1",
        running("Cust1", "sod2.superoffice.com", Duration::from_millis(100)),
    );
    let base = format!("http://state-api.test:{}", fake.addr().port());
    let mut config = test_config(&base);
    config.tenants = vec![ContextId::parse("Cust1").unwrap()];
    let up = Arc::new(AtomicBool::new(true));
    let lookups = Arc::new(AtomicU64::new(0));
    let client = SuperOfficeClient::with_resolver(
        &config.state_api_base_url,
        config.http_timeout,
        Arc::new(SwitchableDns {
            up: Arc::clone(&up),
            lookups: Arc::clone(&lookups),
            addr: fake.addr(),
        }),
    )
    .unwrap();
    let app = spawn_with_source(fake, config, Arc::new(client)).await;
    let mut s = app.watch(&["Cust1"], 0).await.unwrap();
    next_matching(&mut s, "running", |e| {
        e.tenant
            .as_ref()
            .is_some_and(|t| state(t) == TenantState::Running && !t.stale)
    })
    .await;

    // The name stops resolving. Pooled connections would still be used,
    // so the fake also drops them: polls must look the name up again.
    up.store(false, Ordering::SeqCst);
    app.fake.fail(Some("Cust1"), Failure::Reset, 10);
    // The first failure makes it stale (a CHANGED event); a new reason on
    // a stale record is not news to watchers, so read the record.
    next_matching(&mut s, "stale", |e| {
        e.tenant.as_ref().is_some_and(|t| t.stale)
    })
    .await;
    let mut t = app.get("Cust1").await.unwrap();
    for _ in 0..100 {
        if t.last_error.contains("could not resolve") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        t = app.get("Cust1").await.unwrap();
    }
    assert!(t.last_error.contains("could not resolve"), "{t:?}");
    assert!(t.stale, "{t:?}");
    assert_eq!(state(&t), TenantState::Running, "the last state is kept");
    assert!(t.last_error.contains("state-api.test"), "{}", t.last_error);
    // Backoff: not a lookup every 100 ms.
    let before = lookups.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = lookups.load(Ordering::SeqCst) - before;
    assert!(during <= 6, "{during} lookups in 2 s while DNS fails");
    let (_, metrics) = app.admin_get("/metrics").await;
    assert!(metrics.contains(r#"outcome="dns""#), "{metrics}");

    // DNS comes back: fresh within one backoff cap (2 s in tests).
    app.fake.heal();
    up.store(true, Ordering::SeqCst);
    let ev = next_matching(&mut s, "recovered", |e| {
        e.tenant.as_ref().is_some_and(|t| !t.stale)
    })
    .await;
    let t = ev.tenant.unwrap();
    assert!(t.last_error.is_empty(), "{}", t.last_error);
    assert_eq!(state(&t), TenantState::Running);
}
