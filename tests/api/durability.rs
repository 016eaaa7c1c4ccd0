//! Nothing acknowledged is lost, and every failure says so: a sender that
//! gives up mid-request, a NATS that stalls during the token's claim, a
//! state directory removed while running, a full disk, a damaged or newer
//! state file, a notification for a tenant not tracked yet.

use std::{path::Path, time::Duration};

use serde_json::Value;
use tenant_status::{
    ChangeType, pb,
    sim::fake_superoffice::{FakeSuperOffice, TenantSpec},
};

use crate::{
    cluster::clustered,
    helpers::*,
    nats::{self, Nats},
};

/// POSTs `body` with a client that gives up after `patience`, as a sender
/// with a short timeout does; `None` when it gave up.
async fn post_impatiently(url: &str, body: &Value, patience: Duration) -> Option<u16> {
    let client = reqwest::Client::builder()
        .timeout(patience)
        .build()
        .unwrap();
    client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

fn count(text: &str, series: &str) -> f64 {
    parse_metrics(text).get(series).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn a_notification_whose_sender_gave_up_is_applied_and_its_retry_answered() {
    let app = spawn_app_with(|fake, config| {
        serve_running(fake, "Cust1");
        config.tenants = vec!["Cust1".parse().unwrap()];
        // Slower than the sender's patience, as a stalled disk would be.
        config.webhook.accept_delay = Duration::from_millis(800);
    })
    .await;
    eventually("Cust1 tracked", || app.store.contains("Cust1")).await;
    let url = format!("http://{}/NotifyCustomerStateChange", app.webhook_addr);
    let body = app.fake.notification(ChangeType::Suspend, "Cust1", None);
    assert_eq!(
        post_impatiently(&url, &body, Duration::from_millis(200)).await,
        None,
        "the sender gave up before the answer"
    );
    // Its connection is gone; the notification is applied all the same.
    eventually("the abandoned notification applied", || {
        app.store
            .get("Cust1")
            .is_some_and(|r| r.state == tenant_status::TenantState::Suspended)
    })
    .await;
    let revision = app.store.revision();
    // SuperOffice's retry: answered as the first attempt would have been,
    // and applied once.
    let (status, json) = app.post_notification(&body).await;
    assert_eq!(status.as_u16(), 204, "{json}");
    assert_eq!(app.store.revision(), revision, "nothing applied twice");
    let (_, text) = app.admin_get("/metrics").await;
    assert_eq!(
        count(
            &text,
            r#"tenant_status_notifications_total{outcome="accepted",reason="retry"}"#
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        count(
            &text,
            r#"tenant_status_notifications_total{outcome="rejected",reason="token_replayed"}"#
        ),
        0.0
    );
}

#[tokio::test]
async fn a_claim_lost_to_a_stalled_nats_is_applied_on_retry_once() {
    let Some(bin) = nats::required("a_claim_lost_to_a_stalled_nats_is_applied_on_retry_once")
    else {
        return;
    };
    let server = Nats::start(&bin, "stalled-claim").await;
    let (fake, _) = FakeSuperOffice::start().await.unwrap();
    fake.set(
        "Cust1",
        running("Cust1", "sod2.superoffice.com", Duration::from_secs(600)),
    );
    let urls = [server.url()];
    let a = spawn_with_config(fake.clone(), clustered(&fake, &urls, "a")).await;
    let b = spawn_with_config(fake.clone(), clustered(&fake, &urls, "b")).await;
    a.get("Cust1").await.unwrap();
    let url = |app: &TestApp| format!("http://{}/NotifyCustomerStateChange", app.webhook_addr);
    let body = fake.notification(ChangeType::Suspend, "Cust1", None);
    // NATS stalls while the token is claimed: the claim's request times
    // out (3 s) although it may land when NATS wakes, and the sender gives
    // up after 1 s.
    server.pause();
    let first = post_impatiently(&url(&a), &body, Duration::from_secs(1)).await;
    assert_ne!(
        first,
        Some(204),
        "nothing can be acknowledged while NATS is stalled"
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    server.resume();
    // SuperOffice retries the same body and token until it gets a 2xx.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut answers = Vec::new();
    loop {
        let status = post_impatiently(&url(&a), &body, Duration::from_secs(5)).await;
        answers.push(status);
        if status == Some(204) {
            break;
        }
        assert_ne!(status, Some(401), "a retry is not a replay: {answers:?}");
        assert!(
            std::time::Instant::now() < deadline,
            "never accepted: {answers:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let suspended = a.get("Cust1").await.unwrap();
    assert_eq!(state(&suspended), pb::TenantState::Suspended);
    // On the other replica too, and there the retry is answered as applied
    // and applies nothing again.
    let mut on_b = None;
    for _ in 0..100 {
        let t = b.get("Cust1").await.unwrap();
        if t.revision == suspended.revision {
            on_b = Some(t);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(on_b.is_some(), "B reads A's write");
    let (status, json) = b.post_notification(&body).await;
    assert_eq!(status.as_u16(), 204, "{json}");
    let (status, json) = a.post_notification(&body).await;
    assert_eq!(status.as_u16(), 204, "{json}");
    assert_eq!(a.get("Cust1").await.unwrap().revision, suspended.revision);
    assert_eq!(b.get("Cust1").await.unwrap().revision, suspended.revision);
    // The token on another notification is still a replay, on either.
    let (status, json) = b
        .post_notification(&replayed_as(&body, ChangeType::Resume))
        .await;
    assert_eq!(status.as_u16(), 401, "{json}");
}

/// The binary with a state file at `state_file`, saved every 100 ms.
fn state_file_args(fake: &FakeSuperOffice, state_file: &Path) -> Vec<String> {
    [
        "--state-api-base-url",
        &fake.url(),
        "--state-file",
        &state_file.to_string_lossy(),
        "--state-file-interval",
        "100ms",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

async fn admin(admin_addr: &str, path: &str) -> (u16, Value) {
    let r = reqwest::get(format!("http://{admin_addr}{path}"))
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, json_response(r).await.1)
}

async fn post(webhook: &str, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("http://{webhook}/NotifyCustomerStateChange"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, json_response(r).await.1)
}

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_removed_state_directory_refuses_notifications_until_it_is_back() {
    let dir = temp_dir("vanished").join("state");
    std::fs::create_dir_all(&dir).unwrap();
    let state_file = dir.join("state.json");
    let (fake, _) = FakeSuperOffice::start().await.unwrap();
    for ctx in ["Gone1", "Gone2", "Gone3"] {
        fake.set(
            ctx,
            TenantSpec::new("Suspended", ctx, "sod2.superoffice.com"),
        );
    }
    let args = state_file_args(&fake, &state_file);
    let started = start_binary_full(&args, &[]).await;
    let (mut child, webhook, admin_addr) = (started.child, started.webhook, started.admin);
    let before = fake.notification(ChangeType::Suspend, "Gone1", None);
    assert_eq!(post(&webhook, &before).await.0, 204);
    wait_for("ready", async || {
        admin(&admin_addr, "/readyz").await.0 == 200
    })
    .await;

    std::fs::remove_dir_all(&dir).unwrap();
    let during = fake.notification(ChangeType::Suspend, "Gone2", None);
    let (status, json) = post(&webhook, &during).await;
    assert_eq!(
        status, 503,
        "a journal gone from disk acknowledges nothing: {json}"
    );
    assert_eq!(json["reason"], "not_stored", "{json}");
    let (status, json) = admin(&admin_addr, "/readyz").await;
    assert_eq!(status, 503, "{json}");
    assert!(
        json["reason"]
            .as_str()
            .unwrap()
            .contains("cannot be made durable"),
        "{json}"
    );
    // Refused at once while it lasts, not written into the void.
    assert_eq!(post(&webhook, &during).await.0, 503);

    std::fs::create_dir_all(&dir).unwrap();
    wait_for("ready again by itself", async || {
        admin(&admin_addr, "/readyz").await.0 == 200
    })
    .await;
    let after = fake.notification(ChangeType::Suspend, "Gone3", None);
    assert_eq!(post(&webhook, &after).await.0, 204);
    let metrics = reqwest::get(format!("http://{admin_addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        count(
            &metrics,
            r#"tenant_status_journal_write_failures_total{cause="gone"}"#
        ) >= 1.0,
        "{metrics}"
    );
    assert_eq!(count(&metrics, "tenant_status_notifications_durable"), 1.0);

    // A kill -9 now loses nothing acknowledged: the save that made it
    // ready again holds the first, the journal the last.
    child.kill().await.unwrap();
    let started = start_binary_full(&args, &[]).await;
    let mut client = pb::tenant_status_service_client::TenantStatusServiceClient::connect(format!(
        "http://{}",
        started.grpc
    ))
    .await
    .unwrap();
    for ctx in ["Gone1", "Gone3"] {
        let t = client
            .get_tenant_state(pb::GetTenantStateRequest {
                context_identifier: ctx.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .tenant
            .unwrap();
        let note = t.last_notification.unwrap_or_else(|| panic!("{ctx} lost"));
        assert_eq!(note.change_type, pb::ChangeType::Suspend as i32, "{ctx}");
    }
    // The refused one was never applied; SuperOffice's retry is welcome.
    assert_eq!(post(&started.webhook, &during).await.0, 204);
}

/// A tmpfs of `size` at a new directory, or `None` (and why) where this
/// process cannot mount one (not root, no tmpfs).
fn small_disk(size: &str) -> Option<std::path::PathBuf> {
    let dir = temp_dir("full-disk").join("mnt");
    std::fs::create_dir_all(&dir).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(&dir)
        .output();
    match mounted {
        Ok(o) if o.status.success() => Some(dir),
        Ok(o) => {
            eprintln!(
                "skipped the full-disk test: cannot mount a tmpfs here (run as root): {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            None
        }
        Err(e) => {
            eprintln!("skipped the full-disk test: cannot run mount: {e}");
            None
        }
    }
}

struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_says_so_and_recovers_when_space_is_freed() {
    let Some(dir) = small_disk("1m") else {
        return;
    };
    let _unmount = Unmount(dir.clone());
    let state_file = dir.join("state.json");
    let app = spawn_app_with(|fake, config| {
        for i in 0..60 {
            let ctx = format!("Full{i}");
            fake.set(
                &ctx,
                TenantSpec::new("Suspended", &ctx, "sod2.superoffice.com"),
            );
        }
        config.state_file = Some(state_file.clone());
        config.state_file_interval = Duration::from_millis(100);
    })
    .await;
    let (status, json) = app
        .post_notification(&app.fake.notification(ChangeType::Suspend, "Full0", None))
        .await;
    assert_eq!(status.as_u16(), 204, "{json}");
    // Fill the disk.
    let filler = dir.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    // Notifications go on until the journal cannot take one: each 204 was
    // written and synced; the first refusal is 503 not_stored.
    let mut acknowledged = vec!["Full0".to_string()];
    let mut refused = None;
    for i in 1..60 {
        let ctx = format!("Full{i}");
        let body = app.fake.notification(ChangeType::Suspend, &ctx, None);
        let (status, json) = app.post_notification(&body).await;
        match status.as_u16() {
            204 => acknowledged.push(ctx),
            503 => {
                assert_eq!(json["reason"], "not_stored", "{json}");
                refused = Some(body);
                break;
            }
            other => panic!("unexpected {other}: {json}"),
        }
    }
    let refused = refused.expect("a full disk refuses notifications");
    let (status, json) = app.admin_get("/readyz").await;
    assert_eq!(status.as_u16(), 503, "{json}");
    assert!(json.contains("no space"), "{json}");
    let (_, text) = app.admin_get("/metrics").await;
    assert!(
        count(
            &text,
            r#"tenant_status_journal_write_failures_total{cause="no_space"}"#
        ) >= 1.0,
        "{text}"
    );
    assert_eq!(
        count(&text, "tenant_status_state_file_last_save_ok"),
        0.0,
        "{text}"
    );
    assert_eq!(count(&text, "tenant_status_notifications_durable"), 0.0);
    // Failing saves, retried every 100 ms, leave no trail of journal files.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let journals = || {
        std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("state.json.journal-")
            })
            .count()
    };
    assert!(journals() <= 2, "{} journal files", journals());

    std::fs::remove_file(&filler).unwrap();
    eventually("ready again once space is freed", || {
        std::fs::metadata(&state_file).is_ok()
    })
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while app.admin_get("/readyz").await.0.as_u16() != 200 {
        assert!(std::time::Instant::now() < deadline, "not ready again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, json) = app.post_notification(&refused).await;
    assert_eq!(
        status.as_u16(),
        204,
        "the refused one is welcome now: {json}"
    );
    // Everything acknowledged is in the state file on disk.
    app.shutdown().await.unwrap();
    let saved = tenant_status::persist::load(&state_file).unwrap().unwrap();
    for ctx in &acknowledged {
        assert!(
            saved
                .records
                .iter()
                .any(|r| r.context_identifier.as_str() == ctx && r.last_notification.is_some()),
            "{ctx} acknowledged and not saved"
        );
    }
}

#[tokio::test]
async fn a_damaged_state_file_loads_all_it_can_and_a_newer_one_stops_the_start() {
    let dir = temp_dir("damaged");
    let state_file = dir.join("state.json");
    let (fake, _) = FakeSuperOffice::start().await.unwrap();
    let config = || {
        let mut c = test_config(&fake.url());
        c.state_file = Some(state_file.clone());
        c
    };
    for ctx in ["Keep1", "Bad2", "Keep3"] {
        fake.set(
            ctx,
            TenantSpec::new("Suspended", ctx, "sod2.superoffice.com"),
        );
    }
    let app = spawn_with_config(fake.clone(), config()).await;
    for ctx in ["Keep1", "Bad2", "Keep3"] {
        app.get(ctx).await.unwrap();
    }
    let body = fake.notification(ChangeType::Suspend, "Keep1", None);
    assert_eq!(app.post_notification(&body).await.0.as_u16(), 204);
    app.shutdown().await.unwrap();
    // One record damaged.
    let mut v: Value = serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
    for t in v["tenants"].as_array_mut().unwrap() {
        if t["context_identifier"] == "Bad2" {
            t["state"] = serde_json::json!(1234);
        }
    }
    std::fs::write(&state_file, v.to_string()).unwrap();
    // SuperOffice is unreachable now: what is served comes from the file.
    fake.fail_at_random(1.0);
    let app = spawn_with_config(fake.clone(), config()).await;
    for ctx in ["Keep1", "Keep3"] {
        let t = app.get(ctx).await.unwrap();
        assert_eq!(state(&t), pb::TenantState::Suspended, "{ctx}");
    }
    assert!(!app.store.contains("Bad2"), "the damaged record is skipped");
    // The remembered token survived the damage: its retry is known.
    assert_eq!(app.post_notification(&body).await.0.as_u16(), 204);
    let (status, _) = app
        .post_notification(&replayed_as(&body, ChangeType::Resume))
        .await;
    assert_eq!(status.as_u16(), 401);
    app.shutdown().await.unwrap();

    // A file of a newer format (a rollback): the start is refused, with
    // both versions named, and the file is left as it is.
    let mut v: Value = serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
    v["version"] = serde_json::json!(99);
    std::fs::write(&state_file, v.to_string()).unwrap();
    let written = std::fs::read(&state_file).unwrap();
    let (code, text) = run_binary(&[
        "serve",
        "--state-api-base-url",
        &fake.url(),
        "--grpc-addr",
        "127.0.0.1:0",
        "--webhook-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
        "--state-file",
        &state_file.to_string_lossy(),
    ]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("format version 99, newer than this build reads (1)"),
        "{text}"
    );
    assert_eq!(
        std::fs::read(&state_file).unwrap(),
        written,
        "nothing moved"
    );
}

#[tokio::test]
async fn a_first_notification_holds_for_a_tenant_not_tracked_before() {
    let app = spawn_app_with(|fake, config| {
        // The state API lags: it still says Running, its ValidUntil short,
        // so the confirming polls keep coming.
        fake.set(
            "Cust7",
            running("Cust7", "sod2.superoffice.com", Duration::from_millis(300)),
        );
        config.webhook.notification_hold = Duration::from_secs(60);
    })
    .await;
    assert!(!app.store.contains("Cust7"), "not tracked before");
    let body = app.fake.notification(ChangeType::Suspend, "Cust7", None);
    let (status, json) = app.post_notification(&body).await;
    assert_eq!(status.as_u16(), 204, "{json}");
    let polls = app.fake.requests("Cust7");
    eventually("several lagging answers", || {
        app.fake.requests("Cust7") >= polls + 3
    })
    .await;
    let t = app.get("Cust7").await.unwrap();
    assert_eq!(state(&t), pb::TenantState::Suspended, "the hold holds");
    assert!(t.held_until.is_some());
    // Once the state API confirms it, the poll has the word again.
    app.fake.set(
        "Cust7",
        TenantSpec::new("Suspended", "Cust7", "sod2.superoffice.com"),
    );
    eventually("confirmed", || {
        app.store.get("Cust7").is_some_and(|r| r.hold.is_none())
    })
    .await;
}
