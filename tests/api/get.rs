use std::time::Duration;

use tenant_status::sim::fake_superoffice::Failure;
use tonic::Code;

use crate::helpers::*;
use tenant_status::pb::{ChangeSource, TenantState};

#[tokio::test]
async fn an_untracked_tenant_is_fetched_once_then_answered_from_memory() {
    let app = spawn_app().await;
    serve_running(&app.fake, "Cust1");
    let t = app.get("Cust1").await.unwrap();
    assert_eq!(t.context_identifier, "Cust1");
    assert_eq!(state(&t), TenantState::Running);
    assert!(t.is_running);
    assert_eq!(t.endpoint, "https://sod2.superoffice.com/Cust1");
    assert_eq!(t.api, "https://sod2.superoffice.com/Cust1/api");
    assert_eq!(t.version, "Release_11.10_2026.02.24-02");
    assert!(t.valid_until.is_some() && t.observed_at.is_some() && t.changed_at.is_some());
    assert!(t.revision > 0);
    assert_eq!(t.last_change_source, ChangeSource::Poll as i32);
    assert!(!t.stale && t.last_error.is_empty() && t.last_notification.is_none());
    assert_eq!(app.fake.requests("Cust1"), 1);
    for _ in 0..5 {
        assert_eq!(app.get("Cust1").await.unwrap().revision, t.revision);
    }
    assert_eq!(
        app.fake.requests("Cust1"),
        1,
        "a tracked tenant is answered from memory"
    );
    assert!(app.store.contains("Cust1"), "and tracked from then on");
}

#[tokio::test]
async fn concurrent_lookups_of_a_new_tenant_share_one_request() {
    let app = spawn_app().await;
    app.fake.set(
        "Cust7",
        running("Cust7", "sod3.superoffice.com", Duration::from_secs(600)),
    );
    app.fake
        .fail(Some("Cust7"), Failure::Delay(Duration::from_millis(300)), 1);
    let lookups = (0..20).map(|_| app.get("Cust7"));
    let results = futures_util::future::join_all(lookups).await;
    for r in results {
        assert_eq!(state(&r.unwrap()), TenantState::Running);
    }
    assert_eq!(app.fake.requests("Cust7"), 1);
}

#[tokio::test]
async fn a_tenant_superoffice_does_not_know_is_not_found() {
    let app = spawn_app().await;
    let e = app.get("Cust404").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(e.message(), "SuperOffice does not know tenant Cust404");
    assert!(
        !app.store.contains("Cust404"),
        "unknown tenants are not tracked by a lookup"
    );
    // SuperOffice may also answer 200 with State "Unknown".
    app.fake.unknown_as_200(true);
    let e = app.get("Cust405").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

#[tokio::test]
async fn superoffice_failing_on_a_miss_is_unavailable() {
    let app = spawn_app().await;
    serve_running(&app.fake, "Cust1");
    app.fake.fail(Some("Cust1"), Failure::Status(503), 1);
    let e = app.get("Cust1").await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains("HTTP 503"), "{}", e.message());
    assert!(e.message().contains("Cust1"), "{}", e.message());
    // The failure was not cached: the next lookup asks again and succeeds.
    assert_eq!(
        state(&app.get("Cust1").await.unwrap()),
        TenantState::Running
    );
}

#[tokio::test]
async fn superoffice_unreachable_is_unavailable() {
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (fake, _) = tenant_status::sim::fake_superoffice::FakeSuperOffice::start()
        .await
        .unwrap();
    let app = spawn_with_config(fake, test_config(&format!("http://{closed}"))).await;
    let e = app.get("Cust1").await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains("could not connect"), "{}", e.message());
}

#[tokio::test]
async fn malformed_identifiers_are_refused_and_never_reach_superoffice() {
    let app = spawn_app().await;
    let long = "C".repeat(65);
    for bad in [
        "",
        long.as_str(),
        "Cust/1",
        "../etc",
        "a%2Fb",
        "a b",
        "Cüst",
        "Cust1?x=1",
        "a.b",
    ] {
        let e = app.get(bad).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}");
        assert!(
            e.message().starts_with("context_identifier is not valid: "),
            "{}",
            e.message()
        );
    }
    assert_eq!(app.fake.total_requests(), 0);
}
