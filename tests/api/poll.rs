use std::time::Duration;

use tenant_status::{
    fake_superoffice::Failure,
    pb::{TenantState, WatchEventType as E},
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
