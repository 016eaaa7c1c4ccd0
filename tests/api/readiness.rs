//! Readiness and liveness on the admin listener.

use crate::helpers::*;
use std::time::Duration;
use tenant_status::{ContextId, sim::fake_superoffice::Failure};

#[tokio::test]
async fn ready_once_the_first_poll_round_is_done_and_alive_throughout() {
    let app = spawn_app_with(|fake, config| {
        serve_running(fake, "Cust1");
        fake.fail(
            Some("Cust1"),
            Failure::Delay(Duration::from_millis(1500)),
            1,
        );
        config.tenants = vec![ContextId::parse("Cust1").unwrap()];
    })
    .await;
    let (status, body) = app.admin_get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("first poll round"), "{body}");
    let (status, _) = app.admin_get("/livez").await;
    assert_eq!(status, 200);
    let mut ready = false;
    for _ in 0..100 {
        if app.admin_get("/readyz").await.0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "ready after the first round");
    assert!(app.store.contains("Cust1"));
    let (status, body) = app.admin_get("/nothing").await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn ready_after_the_timeout_when_superoffice_does_not_answer() {
    let app = spawn_app_with(|fake, config| {
        fake.fail(Some("Cust1"), Failure::Delay(Duration::from_secs(30)), 1);
        config.tenants = vec![ContextId::parse("Cust1").unwrap()];
        config.ready_timeout = Duration::from_millis(300);
    })
    .await;
    let mut ready = false;
    for _ in 0..60 {
        if app.admin_get("/readyz").await.0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready);
}
