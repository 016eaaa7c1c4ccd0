//! The state file and the journal: a restart serves what was saved, a
//! corrupt file is set aside, and no acknowledged notification is lost to a
//! SIGTERM or a kill -9.

use crate::helpers::*;
use std::time::Duration;
use tenant_status::{
    ChangeType, ContextId,
    pb::{self, tenant_status_service_client::TenantStatusServiceClient},
    sim::fake_superoffice::Failure,
};

#[tokio::test]
async fn a_restart_serves_the_saved_records_before_the_first_poll() {
    let dir = temp_dir("restart");
    let state_file = dir.join("state.json");
    let first = {
        let state = state_file.clone();
        spawn_app_with(move |fake, config| {
            serve_running(fake, "Cust1");
            config.tenants = vec![ContextId::parse("Cust1").unwrap()];
            config.state_file = Some(state);
        })
        .await
    };
    eventually("Cust1 polled", || first.store.contains("Cust1")).await;
    first.fake.set(
        "Cust1",
        running("Cust1", "sod3.superoffice.com", Duration::from_secs(600)),
    );
    assert_eq!(
        first
            .notify(ChangeType::Move, "Cust1", Some("sod3.superoffice.com"))
            .await,
        reqwest::StatusCode::NO_CONTENT
    );
    first.shutdown().await.unwrap();
    assert!(state_file.exists(), "written at shutdown");

    // The second process: its SuperOffice answers nothing for a while.
    let second = spawn_app_with(|fake, config| {
        fake.fail(None, Failure::Delay(Duration::from_secs(5)), 100);
        config.tenants = vec![ContextId::parse("Cust1").unwrap()];
        config.state_file = Some(state_file.clone());
        config.restore_spread = Duration::from_secs(2);
    })
    .await;
    let t = second.get("Cust1").await.unwrap();
    assert_eq!(t.endpoint, "https://sod3.superoffice.com/Cust1");
    assert_eq!(state(&t), pb::TenantState::Running);
    assert!(t.stale, "stale until re-polled");
    assert_eq!(
        pb::ChangeType::try_from(t.last_notification.unwrap().change_type).unwrap(),
        pb::ChangeType::Move
    );
    assert_eq!(second.fake.total_requests(), 0, "served before any poll");
    // Restored tenants count as ready at once.
    assert_eq!(second.admin_get("/readyz").await.0, 200);
}

#[tokio::test]
async fn a_corrupt_state_file_is_set_aside_not_fatal() {
    let dir = temp_dir("corrupt");
    let state = dir.join("state.json");
    std::fs::write(&state, "{ this is not json").unwrap();
    let app = spawn_app_with(|_, config| config.state_file = Some(state.clone())).await;
    assert!(app.store.is_empty());
    let aside: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1);
    app.shutdown().await.unwrap();
    assert!(tenant_status::persist::load(&state).unwrap().is_some());
}

#[tokio::test]
async fn every_acknowledged_notification_survives_a_sigterm_in_a_burst() {
    let dir = temp_dir("burst");
    let state = dir.join("state.json");
    let mut app = spawn_app_with(|_, config| config.state_file = Some(state.clone())).await;
    let fake = app.fake.clone();
    let url = app.webhook_url.clone();
    let client = reqwest::Client::new();
    let mut sends = Vec::new();
    for n in 0..300 {
        let (fake, url, client) = (fake.clone(), url.clone(), client.clone());
        sends.push(tokio::spawn(async move {
            let ctx = format!("Burst{n}");
            let status = fake
                .notify(&client, &url, ChangeType::Suspend, &ctx, None)
                .await;
            (ctx, status)
        }));
        // A steady stream of notifications; SIGTERM lands in the middle.
        tokio::time::sleep(Duration::from_millis(2)).await;
        if n == 150 {
            app.begin_shutdown();
        }
    }
    let mut acknowledged = Vec::new();
    for s in sends {
        let (ctx, status) = s.await.unwrap();
        if matches!(status, Ok(s) if s == reqwest::StatusCode::NO_CONTENT) {
            acknowledged.push(ctx);
        }
    }
    app.task.take().unwrap().await.unwrap().unwrap();
    assert!(
        acknowledged.len() >= 50,
        "{} acknowledged",
        acknowledged.len()
    );
    let saved = tenant_status::persist::load(&state)
        .unwrap()
        .unwrap()
        .records;
    let saved: std::collections::HashSet<String> = saved
        .iter()
        .map(|r| r.context_identifier.to_string())
        .collect();
    for ctx in &acknowledged {
        assert!(saved.contains(ctx), "{ctx} was acknowledged but not saved");
    }
}

#[tokio::test]
async fn every_acknowledged_notification_survives_a_kill_9() {
    let (fake, _) = tenant_status::sim::fake_superoffice::FakeSuperOffice::start()
        .await
        .unwrap();
    let dir = temp_dir("kill9");
    let state_file = dir.join("state.json");
    let args: Vec<String> = [
        "--state-api-base-url",
        &fake.url(),
        "--state-file",
        state_file.to_str().unwrap(),
        // No save of the state file in this test's lifetime: what the
        // restart finds, the journal kept.
        "--state-file-interval",
        "1h",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (mut child, _, webhook) = start_binary(&args).await;
    let url = format!("http://{webhook}/NotifyCustomerStateChange");
    let client = reqwest::Client::new();
    let sends = (0..200).map(|n| {
        let ctx = format!("Kill{n}");
        fake.set(
            &ctx,
            tenant_status::sim::fake_superoffice::TenantSpec::new(
                "Suspended",
                &ctx,
                "sod2.superoffice.com",
            ),
        );
        let (fake, url, client) = (fake.clone(), url.clone(), client.clone());
        async move {
            let status = fake
                .notify(&client, &url, ChangeType::Suspend, &ctx, None)
                .await;
            (ctx, status)
        }
    });
    let acknowledged: Vec<String> = futures_util::future::join_all(sends)
        .await
        .into_iter()
        .filter(|(_, s)| matches!(s, Ok(s) if s.as_u16() == 204))
        .map(|(ctx, _)| ctx)
        .collect();
    assert_eq!(acknowledged.len(), 200, "all accepted before the kill");
    // One more, whose body we keep to replay after the restart.
    let kept = fake.notification(ChangeType::Suspend, "Kill0", None);
    let first = client
        .post(&url)
        .header("content-type", "application/json")
        .body(kept.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(first.status().as_u16(), 204);
    // SIGKILL at once: no drain, no save.
    child.kill().await.unwrap();
    assert!(
        tenant_status::persist::load(&state_file).unwrap().is_none(),
        "the state file was never written"
    );

    let (_child, grpc, webhook) = start_binary(&args).await;
    // The journal remembers the token too, with what it carried: its retry
    // after the restart is answered as applied, and the token on another
    // notification refused, as either would have been before it.
    let post = |body: serde_json::Value| {
        client
            .post(format!("http://{webhook}/NotifyCustomerStateChange"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    let retry = post(kept.clone()).await.unwrap();
    assert_eq!(retry.status().as_u16(), 204);
    let again = post(replayed_as(&kept, ChangeType::Resume)).await.unwrap();
    assert_eq!(again.status().as_u16(), 401);
    let (_, json) = json_response(again).await;
    assert_eq!(json["reason"], "token_replayed", "{json}");
    let mut client = TenantStatusServiceClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    for ctx in &acknowledged {
        let t = client
            .get_tenant_state(pb::GetTenantStateRequest {
                context_identifier: ctx.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("{ctx} was acknowledged and lost: {e:?}"))
            .into_inner()
            .tenant
            .unwrap();
        assert_eq!(state(&t), pb::TenantState::Suspended, "{ctx}");
        let note = t.last_notification.expect("the notification is kept");
        assert_eq!(note.change_type, pb::ChangeType::Suspend as i32, "{ctx}");
    }
}

#[tokio::test]
async fn a_token_used_before_a_clean_restart_is_known_after_it() {
    let dir = temp_dir("replay");
    let state_file = dir.join("state.json");
    let (fake, _) = tenant_status::sim::fake_superoffice::FakeSuperOffice::start()
        .await
        .unwrap();
    let config = || {
        let mut c = test_config(&fake.url());
        c.state_file = Some(state_file.clone());
        c
    };
    fake.set(
        "Cust1",
        tenant_status::sim::fake_superoffice::TenantSpec::new(
            "Suspended",
            "Cust1",
            "sod2.superoffice.com",
        ),
    );
    let app = spawn_with_config(fake.clone(), config()).await;
    let body = fake.notification(ChangeType::Suspend, "Cust1", None);
    let (status, json) = app.post_notification(&body).await;
    assert_eq!(status.as_u16(), 204, "{json}");
    // A clean shutdown saves the state file and removes the journal.
    app.shutdown().await.unwrap();
    let saved = tenant_status::persist::load(&state_file).unwrap().unwrap();
    assert_eq!(saved.seen_tokens.len(), 1, "the used token is saved");

    let app = spawn_with_config(fake.clone(), config()).await;
    let revision = app.get("Cust1").await.unwrap().revision;
    // Its retry is answered as applied and applies nothing; the token on
    // another notification is a replay.
    let (status, json) = app.post_notification(&body).await;
    assert_eq!(status.as_u16(), 204, "{json}");
    let (status, json) = app
        .post_notification(&replayed_as(&body, ChangeType::Resume))
        .await;
    assert_eq!(status.as_u16(), 401, "{json}");
    assert_eq!(json["reason"], "token_replayed");
    assert_eq!(app.get("Cust1").await.unwrap().revision, revision);
    assert_eq!(
        state(&app.get("Cust1").await.unwrap()),
        pb::TenantState::Suspended,
        "the notification itself was kept"
    );
    // A new token is welcome.
    let (status, json) = app
        .post_notification(&fake.notification(ChangeType::Resume, "Cust1", None))
        .await;
    assert_eq!(status.as_u16(), 204, "{json}");
}
