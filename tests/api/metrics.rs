//! Metrics: what /metrics tells of the service.

use crate::helpers::*;
use std::time::Duration;
use tenant_status::ChangeType;

#[tokio::test]
async fn metrics_tell_how_the_service_is_doing() {
    let app = spawn_app_tracking("Cust1", Duration::from_secs(600)).await;
    eventually("Cust1 polled", || app.store.contains("Cust1")).await;
    app.get("Cust1").await.unwrap();
    let _ = app.get("bad/id").await.unwrap_err();
    let mut stream = app.watch(&["Cust1"], 0).await.unwrap();
    next(&mut stream).await;
    assert_eq!(
        app.notify(ChangeType::Resume, "Cust1", None).await,
        reqwest::StatusCode::NO_CONTENT
    );
    let (status, _) = app
        .post_notification(&serde_json::json!({"ChangeType": 9}))
        .await;
    assert_eq!(status.as_u16(), 400);

    let (status, text) = app.admin_get("/metrics").await;
    assert_eq!(status, 200);
    let m = parse_metrics(&text);
    let get = |k: &str| *m.get(k).unwrap_or_else(|| panic!("no {k} in:\n{text}"));
    assert_eq!(
        get(r#"tenant_status_tenants{state="Running",stale="false"}"#),
        1.0
    );
    assert!(get(r#"tenant_status_polls_total{outcome="found"}"#) >= 1.0);
    assert!(get("tenant_status_poll_duration_seconds_count") >= 1.0);
    assert_eq!(
        get(r#"tenant_status_notifications_total{outcome="accepted",reason="none"}"#),
        1.0
    );
    assert_eq!(
        get(r#"tenant_status_notifications_total{outcome="rejected",reason="malformed_body"}"#),
        1.0
    );
    assert_eq!(
        get(r#"tenant_status_rpcs_total{method="GetTenantState",code="OK"}"#),
        1.0
    );
    assert_eq!(
        get(r#"tenant_status_rpcs_total{method="GetTenantState",code="INVALID_ARGUMENT"}"#),
        1.0
    );
    assert!(get(r#"tenant_status_rpc_duration_seconds_count{method="GetTenantState"}"#) >= 2.0);
    assert_eq!(get("tenant_status_watch_streams"), 1.0);
    assert!(get("tenant_status_watch_events_sent_total") >= 2.0);
    assert!(get("tenant_status_store_revision") > 0.0);
    assert!(m.contains_key("tenant_status_watch_events_coalesced_total"));
    // What every Prometheus client library exports, and what this build is.
    let build = m
        .keys()
        .find(|k| k.starts_with("tenant_status_build_info{"))
        .unwrap_or_else(|| panic!("no build info in:\n{text}"));
    assert!(
        build.contains(&format!(r#"version="{}""#, env!("CARGO_PKG_VERSION")))
            && build.contains("commit=\""),
        "{build}"
    );
    assert_eq!(m[build], 1.0);
    assert!(get("process_cpu_seconds_total") > 0.0);
    assert!(get("process_resident_memory_bytes") > 1e6);
    assert!(get("process_open_fds") > 3.0);
    assert!(get("process_max_fds") >= get("process_open_fds"));
    assert!(get("process_start_time_seconds") > 1.7e9);

    drop(stream);
    let mut closed = false;
    for _ in 0..100 {
        let (_, text) = app.admin_get("/metrics").await;
        if parse_metrics(&text)["tenant_status_watch_streams"] == 0.0 {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(closed, "an ended stream is no longer counted");
}
