//! The state-change webhook over real sockets: SuperOffice's signed POSTs
//! reach WatchTenant streams, are confirmed by a poll, are applied once, and
//! every bad request is refused with its status and reason, changing
//! nothing.

use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use tenant_status::{
    ChangeType, pb,
    sim::fake_superoffice::{Failure, TenantSpec},
    sim::signer::Signer,
    token::unix_seconds,
};

use crate::helpers::*;

fn change_type(t: &pb::Tenant) -> pb::ChangeType {
    pb::ChangeType::try_from(
        t.last_notification
            .as_ref()
            .expect("a notification")
            .change_type,
    )
    .unwrap()
}

fn source(t: &pb::Tenant) -> pb::ChangeSource {
    pb::ChangeSource::try_from(t.last_change_source).unwrap()
}

#[tokio::test]
async fn a_notification_reaches_a_watcher_at_once_and_a_poll_confirms_it() {
    let app = spawn_app_tracking("Cust1", Duration::from_secs(600)).await;
    let (mut stream, first) = watch_until_running(&app, "Cust1").await;
    let polls_before = app.fake.requests("Cust1");
    // SuperOffice suspends the tenant: its state API and its notification
    // agree.
    let mut suspended = running("Cust1", "sod2.superoffice.com", Duration::from_secs(600));
    suspended.state = "Suspended".into();
    app.fake.set("Cust1", suspended);

    assert_eq!(
        app.notify(ChangeType::Suspend, "Cust1", None).await,
        reqwest::StatusCode::NO_CONTENT
    );
    // Acknowledged means stored.
    assert_eq!(
        app.store.get("Cust1").unwrap().state,
        tenant_status::TenantState::Suspended
    );
    let ev = next_matching(&mut stream, "CHANGED", |ev| {
        kind(ev) == pb::WatchEventType::Changed
    })
    .await;
    let t = ev.tenant.unwrap();
    assert_eq!(state(&t), pb::TenantState::Suspended);
    assert!(!t.is_running);
    assert_eq!(source(&t), pb::ChangeSource::Notification);
    assert_eq!(change_type(&t), pb::ChangeType::Suspend);
    let n = t.last_notification.as_ref().unwrap();
    assert_eq!(n.version_name, "Release_11.10_2026.02.24-02");
    assert_eq!(n.file_version, "11.10.2026.0224");
    assert!(n.received_at.is_some());
    assert!(t.revision > first.tenant.unwrap().revision);

    // Polled at once to confirm, long before ValidUntil (10 minutes).
    eventually("a confirming poll", || {
        app.fake.requests("Cust1") > polls_before
    })
    .await;
    // The poll agrees, so nothing meaningful changes: no further event.
    let quiet = tokio::time::timeout(Duration::from_millis(500), stream.message()).await;
    assert!(quiet.is_err(), "unexpected event {quiet:?}");
    let t = app.get("Cust1").await.unwrap();
    assert_eq!(state(&t), pb::TenantState::Suspended);
}

/// The next CHANGED record.
async fn changed(stream: &mut tonic::Streaming<pb::WatchTenantResponse>) -> pb::Tenant {
    next_matching(stream, "CHANGED", |ev| {
        kind(ev) == pb::WatchEventType::Changed
    })
    .await
    .tenant
    .expect("a record")
}

/// The states a watcher sees for `ctx` until `until`, consecutive repeats
/// folded.
async fn states_seen(
    stream: &mut tonic::Streaming<pb::WatchTenantResponse>,
    until: tokio::time::Instant,
) -> Vec<pb::TenantState> {
    let mut seen = vec![];
    while let Ok(Ok(Some(ev))) = tokio::time::timeout_at(until, stream.message()).await {
        if let Some(t) = ev.tenant
            && seen.last() != Some(&state(&t))
        {
            seen.push(state(&t));
        }
    }
    seen
}

#[tokio::test]
async fn an_upgrade_holds_while_the_state_api_lags_and_never_flaps() {
    // Polled every 300 ms, so the lagging answers keep coming.
    let app = spawn_app_tracking("Cust1", Duration::from_millis(300)).await;
    let (mut stream, _) = watch_until_running(&app, "Cust1").await;
    // SuperOffice announces the upgrade; its state API still says Running.
    assert_eq!(
        app.notify(ChangeType::Upgrade, "Cust1", None).await,
        reqwest::StatusCode::NO_CONTENT
    );
    let lagging_polls = app.fake.requests("Cust1");
    eventually("several lagging answers", || {
        app.fake.requests("Cust1") >= lagging_polls + 4
    })
    .await;
    let held = app.get("Cust1").await.unwrap();
    assert_eq!(state(&held), pb::TenantState::OfflineMaintenance);
    assert!(held.held_until.is_some(), "the record shows it holds");
    // Then the upgrade shows at SuperOffice, and then it is over.
    app.fake.set(
        "Cust1",
        TenantSpec::new("OfflineMaintenance", "Cust1", "sod2.superoffice.com")
            .valid_for(Duration::from_millis(300)),
    );
    let confirming = app.fake.requests("Cust1");
    eventually("the upgrade confirmed", || {
        app.fake.requests("Cust1") >= confirming + 2
    })
    .await;
    assert!(
        app.get("Cust1").await.unwrap().held_until.is_none(),
        "confirmed"
    );
    app.fake.set(
        "Cust1",
        running("Cust1", "sod2.superoffice.com", Duration::from_millis(300)),
    );
    let seen = states_seen(
        &mut stream,
        tokio::time::Instant::now() + Duration::from_secs(2),
    )
    .await;
    assert_eq!(
        seen,
        [
            pb::TenantState::OfflineMaintenance,
            pb::TenantState::Running
        ],
        "once each, in that order: no flap"
    );
}

#[tokio::test]
async fn the_poll_has_the_last_word_when_it_moves_on_or_the_hold_ends() {
    let app = spawn_app_with(|fake, config| {
        fake.set(
            "Cust1",
            running("Cust1", "sod2.superoffice.com", Duration::from_millis(300)),
        );
        fake.set(
            "Cust2",
            running("Cust2", "sod2.superoffice.com", Duration::from_millis(300)),
        );
        config.tenants = ["Cust1", "Cust2"]
            .iter()
            .map(|c| tenant_status::ContextId::parse(c).unwrap())
            .collect();
        config.webhook.notification_hold = Duration::from_secs(1);
    })
    .await;
    let (mut one, _) = watch_until_running(&app, "Cust1").await;
    let (mut two, _) = watch_until_running(&app, "Cust2").await;
    // Cust1: an upgrade is announced, but the state API answers Suspended,
    // neither the implied state nor the one before: it has moved on.
    app.fake.set(
        "Cust1",
        TenantSpec::new("Suspended", "Cust1", "sod2.superoffice.com")
            .valid_for(Duration::from_millis(300)),
    );
    assert_eq!(
        app.notify(ChangeType::Upgrade, "Cust1", None).await,
        reqwest::StatusCode::NO_CONTENT
    );
    let announced = changed(&mut one).await;
    assert_eq!(state(&announced), pb::TenantState::OfflineMaintenance);
    assert_eq!(source(&announced), pb::ChangeSource::Notification);
    let polled = changed(&mut one).await;
    assert_eq!(state(&polled), pb::TenantState::Suspended);
    assert_eq!(source(&polled), pb::ChangeSource::Poll);
    // The notification stays on the record.
    assert_eq!(change_type(&polled), pb::ChangeType::Upgrade);
    // Cust2: the state API never catches up; after --notification-hold (1 s
    // here) its answer is taken.
    let notified = std::time::Instant::now();
    assert_eq!(
        app.notify(ChangeType::Upgrade, "Cust2", None).await,
        reqwest::StatusCode::NO_CONTENT
    );
    let announced = changed(&mut two).await;
    assert_eq!(state(&announced), pb::TenantState::OfflineMaintenance);
    let after = changed(&mut two).await;
    assert_eq!(state(&after), pb::TenantState::Running);
    assert!(
        notified.elapsed() >= Duration::from_secs(1),
        "held for the whole hold: {:?}",
        notified.elapsed()
    );
}

#[tokio::test]
async fn a_move_points_the_endpoint_at_the_new_host_at_once() {
    let app = spawn_app_tracking("Cust1", Duration::from_secs(600)).await;
    let mut stream = app.watch(&["Cust1"], 0).await.unwrap();
    next_matching(&mut stream, "a snapshot on sod2", |ev| {
        ev.tenant
            .as_ref()
            .is_some_and(|t| t.endpoint == "https://sod2.superoffice.com/Cust1")
    })
    .await;
    app.fake.set(
        "Cust1",
        running("Cust1", "sod3.superoffice.com", Duration::from_secs(600)),
    );
    assert_eq!(
        app.notify(ChangeType::Move, "Cust1", Some("sod3.superoffice.com"))
            .await,
        reqwest::StatusCode::NO_CONTENT
    );
    let t = next_matching(&mut stream, "CHANGED", |ev| {
        kind(ev) == pb::WatchEventType::Changed
    })
    .await
    .tenant
    .unwrap();
    assert_eq!(t.endpoint, "https://sod3.superoffice.com/Cust1");
    assert_eq!(t.api, "https://sod3.superoffice.com/Cust1/api");
    assert_eq!(change_type(&t), pb::ChangeType::Move);
    assert_eq!(
        t.last_notification.unwrap().public_endpoint,
        "sod3.superoffice.com"
    );
    assert!(t.is_running);
}

#[tokio::test]
async fn a_notification_for_an_untracked_tenant_starts_tracking_it() {
    let app = spawn_app().await;
    let mut deleted = running("Cust5", "sod2.superoffice.com", Duration::from_secs(600));
    deleted.state = "Deleted".into();
    app.fake.set("Cust5", deleted);
    assert!(!app.store.contains("Cust5"));
    assert_eq!(
        app.notify(ChangeType::Delete, "Cust5", None).await,
        reqwest::StatusCode::NO_CONTENT
    );
    // Stored before the answer; the confirming poll may already have
    // filled in the endpoint, but the notification stays on the record.
    let t = app.get("Cust5").await.unwrap();
    assert_eq!(state(&t), pb::TenantState::Deleted);
    assert_eq!(change_type(&t), pb::ChangeType::Delete);
    eventually("the poller to confirm Cust5", || {
        app.fake.requests("Cust5") >= 1
    })
    .await;
    // Settling: polled again shortly after, whatever ValidUntil says.
    eventually("a second confirming poll", || {
        app.fake.requests("Cust5") >= 2
    })
    .await;
}

#[tokio::test]
async fn the_same_notification_delivered_twice_is_applied_once() {
    let app = spawn_app_tracking("Cust1", Duration::from_secs(600)).await;
    eventually("Cust1 tracked", || app.store.contains("Cust1")).await;
    let body = app.fake.notification(ChangeType::Resume, "Cust1", None);
    let (status, _) = app.post_notification(&body).await;
    assert_eq!(status, reqwest::StatusCode::NO_CONTENT);
    let revision = app.store.revision();
    // Delivered again (a sender that gave up waiting retries): answered as
    // the first time, applied once.
    let (status, json) = app.post_notification(&body).await;
    assert_eq!(status, reqwest::StatusCode::NO_CONTENT, "{json}");
    assert_eq!(app.store.revision(), revision, "a retry changes nothing");
    // The token on another notification is a replay.
    let (status, json) = app
        .post_notification(&replayed_as(&body, ChangeType::Suspend))
        .await;
    assert_eq!(status, reqwest::StatusCode::UNAUTHORIZED);
    assert_eq!(json["reason"], "token_replayed");
    assert_eq!(app.store.revision(), revision, "a replay changes nothing");
    assert_eq!(
        state(&app.get("Cust1").await.unwrap()),
        pb::TenantState::Running
    );
    let (_, text) = app.admin_get("/metrics").await;
    let m = parse_metrics(&text);
    assert_eq!(
        m.get(r#"tenant_status_notifications_total{outcome="accepted",reason="retry"}"#),
        Some(&1.0),
        "{text}"
    );
}

/// The claims of a token the fake would sign for `ctx`.
fn claims(app: &TestApp, ctx: &str) -> Value {
    app.fake
        .signer()
        .notification_claims(ctx, Duration::from_secs(300))
}

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

fn with_token(ctx: &str, token: &str) -> Value {
    json!({
        "ChangeType": 2,
        "ContextIdentifier": ctx,
        "VersionName": "v",
        "FileVersion": "1",
        "Token": token,
    })
}

#[tokio::test]
async fn every_kind_of_bad_token_is_refused_with_its_reason_and_changes_nothing() {
    let app = spawn_app().await;
    let signer = app.fake.signer().clone();
    let foreign = Signer::generate(signer.issuer()).unwrap();
    let now = unix_seconds(std::time::SystemTime::now());
    let ctx = "Cust9";
    let with = |patch: Value| {
        let mut c = claims(&app, ctx);
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let good = signer.sign(&claims(&app, ctx));
    let tampered = {
        let parts: Vec<&str> = good.split('.').collect();
        format!(
            "{}.{}.{}",
            parts[0],
            b64(&with(json!({"exp": now + 86_400}))),
            parts[2]
        )
    };
    let hs256 = |secret: &str| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims(&app, ctx),
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "a foreign key",
            foreign.sign(&claims(&app, ctx)),
            "token_signature",
        ),
        (
            "expired",
            signer.sign(&with(json!({"nbf": now - 900, "exp": now - 600}))),
            "token_expired",
        ),
        (
            "not yet valid",
            signer.sign(&with(json!({"nbf": now + 600, "exp": now + 900}))),
            "token_not_yet_valid",
        ),
        (
            "another issuer",
            signer.sign(&with(json!({"iss": "https://online.superoffice.com"}))),
            "token_issuer",
        ),
        (
            "no expiry",
            signer.sign(&with(json!({"exp": null}))),
            "token_missing_claim",
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT"})),
                b64(&claims(&app, ctx))
            ),
            "token_algorithm",
        ),
        (
            "HS256 keyed with the certificate",
            hs256(signer.certificate_pem()),
            "token_algorithm",
        ),
        (
            "HS256 keyed with the public key",
            hs256(signer.public_key_pem()),
            "token_algorithm",
        ),
        (
            "another tenant's token",
            signer.sign(&claims(&app, "Cust10")),
            "token_context_mismatch",
        ),
        ("a tampered payload", tampered, "token_signature"),
        ("garbage", "not-a-token".into(), "token_malformed"),
        ("three dots", "a.b.c".into(), "token_malformed"),
    ];
    let revision = app.store.revision();
    for (what, token, reason) in cases {
        let (status, json) = app.post_notification(&with_token(ctx, &token)).await;
        assert_eq!(status, reqwest::StatusCode::UNAUTHORIZED, "{what}: {json}");
        assert_eq!(json["reason"], reason, "{what}: {json}");
        let message = json["error"].as_str().unwrap();
        assert!(message.starts_with("the token"), "{what}: {message}");
        assert!(
            !token.is_empty() && !message.contains(&token[..token.len().min(20)]),
            "{what}: the answer echoes the token"
        );
    }
    assert!(
        !app.store.contains(ctx),
        "a refused notification tracks nobody"
    );
    assert_eq!(app.store.revision(), revision);
    assert_eq!(app.fake.requests(ctx), 0, "nor polls anyone");

    // The good token still works after all that.
    let (status, _) = app.post_notification(&with_token(ctx, &good)).await;
    assert_eq!(status, reqwest::StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn malformed_requests_get_their_status_and_a_json_reason() {
    let app = spawn_app().await;
    let token = app
        .fake
        .signer()
        .notification_token("Cust1", Duration::from_secs(60));
    let ok = |v: Value| v.to_string().into_bytes();
    let json_ct = Some("application/json");
    // What, content type, body, expected status and reason.
    type Case<'a> = (&'a str, Option<&'a str>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "not JSON",
            json_ct,
            b"hello".to_vec(),
            400,
            "malformed_body",
        ),
        (
            "truncated",
            json_ct,
            b"{\"ChangeType\": 2,".to_vec(),
            400,
            "malformed_body",
        ),
        (
            "no Token",
            json_ct,
            ok(json!({"ChangeType": 2, "ContextIdentifier": "Cust1"})),
            400,
            "malformed_body",
        ),
        (
            "ChangeType as a string",
            json_ct,
            ok(json!({"ChangeType": "Suspend", "ContextIdentifier": "Cust1", "Token": token})),
            400,
            "malformed_body",
        ),
        (
            "unknown ChangeType",
            json_ct,
            ok(json!({"ChangeType": 6, "ContextIdentifier": "Cust1", "Token": token})),
            400,
            "unknown_change_type",
        ),
        (
            "a path in the identifier",
            json_ct,
            ok(json!({"ChangeType": 2, "ContextIdentifier": "../Cust1", "Token": token})),
            400,
            "bad_context_identifier",
        ),
        (
            "a Move without PublicEndpoint",
            json_ct,
            ok(json!({"ChangeType": 5, "ContextIdentifier": "Cust1", "Token": token})),
            400,
            "missing_public_endpoint",
        ),
        (
            "text/plain",
            Some("text/plain"),
            ok(json!({"ChangeType": 2, "ContextIdentifier": "Cust1", "Token": token})),
            415,
            "unsupported_media_type",
        ),
        (
            "no content type",
            None,
            ok(json!({"ChangeType": 2, "ContextIdentifier": "Cust1", "Token": token})),
            415,
            "unsupported_media_type",
        ),
        (
            "over 64 KiB",
            json_ct,
            ok(
                json!({"ChangeType": 2, "ContextIdentifier": "Cust1", "Token": token, "Pad": "x".repeat(70_000)}),
            ),
            413,
            "body_too_large",
        ),
    ];
    let revision = app.store.revision();
    for (what, ct, body, status, reason) in cases {
        let (got, json) = app.post_raw(ct, body).await;
        assert_eq!(got.as_u16(), status, "{what}: {json}");
        assert_eq!(json["reason"], reason, "{what}: {json}");
        assert!(
            json["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}"
        );
        assert!(
            !json.to_string().contains(&token),
            "{what}: echoes the token"
        );
    }
    assert_eq!(app.store.revision(), revision);
    assert!(!app.store.contains("Cust1"));

    // Another method on the webhook path.
    let r = app.http.get(&app.webhook_url).send().await.unwrap();
    assert_eq!(r.headers()["allow"], "POST");
    let (status, json) = json_response(r).await;
    assert_eq!(status.as_u16(), 405);
    assert_eq!(json["reason"], "method_not_allowed");

    // The public listener serves the webhook and nothing else.
    for path in [
        "/",
        "/metrics",
        "/grpc.health.v1.Health/Check",
        "/api/state/Cust1",
    ] {
        let r = app
            .http
            .get(format!("http://{}{path}", app.webhook_addr))
            .send()
            .await
            .unwrap();
        let (status, json) = json_response(r).await;
        assert_eq!(status.as_u16(), 404, "{path}");
        assert_eq!(json["reason"], "not_found");
    }
}

#[tokio::test]
async fn keys_come_from_the_jwks_and_a_rotation_is_picked_up() {
    // Unknown key ids may refetch the JWKS at once in this test.
    let app = spawn_app_with(|_, config| {
        config.webhook.verifier.jwks_refetch_interval = Duration::ZERO;
    })
    .await;
    assert_eq!(
        app.notify(ChangeType::Resume, "Cust1", None).await,
        reqwest::StatusCode::NO_CONTENT
    );
    let fetched = app.fake.jwks_requests();
    assert!(fetched >= 1);
    // SuperOffice rotates to a new key and publishes it.
    let next_key = Signer::generate(app.fake.signer().issuer()).unwrap();
    let token = next_key.notification_token("Cust1", Duration::from_secs(60));
    let (status, json) = app.post_notification(&with_token("Cust1", &token)).await;
    assert_eq!(status.as_u16(), 401, "{json}");
    assert_eq!(
        app.fake.jwks_requests(),
        fetched + 1,
        "an unknown kid refetches"
    );
    app.fake.publish_key(&next_key);
    let token = next_key.notification_token("Cust1", Duration::from_secs(60));
    let (status, json) = app.post_notification(&with_token("Cust1", &token)).await;
    assert_eq!(status, reqwest::StatusCode::NO_CONTENT, "{json}");
}

#[tokio::test]
async fn unknown_key_ids_refetch_the_jwks_at_most_once_a_minute() {
    // The default interval, 60 s, is far longer than this test.
    let app = spawn_app().await;
    eventually("the JWKS prefetched at start", || {
        app.fake.jwks_requests() == 1
    })
    .await;
    let forger = Signer::generate(app.fake.signer().issuer()).unwrap();
    for _ in 0..20 {
        let token = forger.notification_token("Cust1", Duration::from_secs(60));
        let (status, json) = app.post_notification(&with_token("Cust1", &token)).await;
        assert_eq!(status.as_u16(), 401);
        assert_eq!(json["reason"], "token_signature");
    }
    assert_eq!(
        app.fake.jwks_requests(),
        1,
        "forged key ids cannot make us hammer the JWKS"
    );
}

#[tokio::test]
async fn a_key_withdrawn_from_the_jwks_is_refused_after_the_next_refresh() {
    let app = spawn_app_with(|_, config| {
        config.webhook.verifier.jwks_refresh_interval = Duration::from_millis(300);
    })
    .await;
    assert_eq!(
        app.notify(ChangeType::Suspend, "Cust1", None).await,
        reqwest::StatusCode::NO_CONTENT
    );
    // The key leaked: SuperOffice publishes a new one and withdraws it.
    let next_key = Signer::generate(app.fake.signer().issuer()).unwrap();
    app.fake.publish_key(&next_key);
    app.fake.withdraw_own_key(true);
    let before = app.fake.jwks_requests();
    eventually("the JWKS refreshed on its schedule", || {
        app.fake.jwks_requests() >= before + 2
    })
    .await;
    let (status, json) = app
        .post_notification(&app.fake.notification(ChangeType::Resume, "Cust1", None))
        .await;
    assert_eq!(status.as_u16(), 401, "{json}");
    assert!(
        ["token_signature", "token_no_keys"].contains(&json["reason"].as_str().unwrap()),
        "{json}"
    );
    let token = next_key.notification_token("Cust1", Duration::from_secs(60));
    let (status, json) = app.post_notification(&with_token("Cust1", &token)).await;
    assert_eq!(status, reqwest::StatusCode::NO_CONTENT, "{json}");
    let (_, text) = app.admin_get("/metrics").await;
    let m = parse_metrics(&text);
    assert_eq!(m["tenant_status_jwks_keys"], 1.0, "only the new key");
    assert!(m["tenant_status_jwks_last_refresh_timestamp_seconds"] > 1.7e9);
    assert_eq!(m["tenant_status_jwks_refresh_failures_total"], 0.0);
}

#[tokio::test]
async fn a_failed_jwks_refresh_keeps_the_known_keys_and_is_counted() {
    let app = spawn_app_with(|_, config| {
        config.webhook.verifier.jwks_refresh_interval = Duration::from_millis(200);
        config.webhook.verifier.jwks_refetch_interval = Duration::from_millis(200);
    })
    .await;
    eventually("the JWKS fetched", || app.fake.jwks_requests() >= 1).await;
    // A broken publication: no usable key at all.
    app.fake.withdraw_own_key(true);
    let before = app.fake.jwks_requests();
    eventually("two failed refreshes", || {
        app.fake.jwks_requests() >= before + 2
    })
    .await;
    assert_eq!(
        app.notify(ChangeType::Suspend, "Cust1", None).await,
        reqwest::StatusCode::NO_CONTENT,
        "an empty JWKS never replaces the keys we had"
    );
    let (_, text) = app.admin_get("/metrics").await;
    let m = parse_metrics(&text);
    assert!(
        m["tenant_status_jwks_refresh_failures_total"] >= 2.0,
        "{text}"
    );
    assert_eq!(m["tenant_status_jwks_keys"], 1.0);
}

/// With no key at all (the JWKS could not be used at start), every
/// notification is refused, so the JWKS is fetched again within seconds
/// (1 s, then doubling) rather than after the refetch interval (60 s by
/// default).
#[tokio::test]
async fn with_no_key_at_start_the_jwks_is_fetched_again_within_seconds() {
    let app = spawn_app_with(|fake, _| {
        // A broken publication at start: no usable key.
        fake.withdraw_own_key(true);
    })
    .await;
    eventually("the first JWKS fetch", || app.fake.jwks_requests() >= 1).await;
    let body = app.fake.notification(ChangeType::Suspend, "Cust1", None);
    let (status, json) = app.post_notification(&body).await;
    assert_eq!(status.as_u16(), 401, "{json}");
    assert_eq!(json["reason"], "token_no_keys", "{json}");
    app.fake.withdraw_own_key(false);
    eventually("a key, long before the 60 s refetch interval", || {
        app.fake.jwks_requests() >= 2
    })
    .await;
    until_jwks_keys(&app).await;
    assert_eq!(
        app.notify(ChangeType::Suspend, "Cust1", None).await,
        reqwest::StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn a_shorter_cache_control_max_age_brings_the_refresh_forward() {
    let app = spawn_app_with(|fake, config| {
        fake.set_jwks_max_age(Some(1));
        // The hour-long default schedule; the refetch interval is the
        // floor under max-age.
        config.webhook.verifier.jwks_refetch_interval = Duration::from_millis(100);
    })
    .await;
    eventually(
        "fetched three times within seconds, not within hours",
        || app.fake.jwks_requests() >= 3,
    )
    .await;
}

#[tokio::test]
async fn a_certificate_file_alone_is_enough() {
    let dir = std::env::temp_dir().join(format!("ts-webhook-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = dir.join("SOD_SuperOfficeFederatedLogin.crt");
    let app = spawn_app_with(|fake, config| {
        std::fs::write(&cert, fake.signer().certificate_pem()).unwrap();
        config.webhook.verifier.keys = tenant_status::token::load_keys(&cert).unwrap();
        config.webhook.verifier.jwks_url = None;
    })
    .await;
    assert_eq!(
        app.notify(ChangeType::Suspend, "Cust1", None).await,
        reqwest::StatusCode::NO_CONTENT
    );
    assert_eq!(app.fake.jwks_requests(), 0);
}

#[tokio::test]
async fn a_poll_asked_before_a_notification_never_undoes_it() {
    let app = spawn_app_tracking("Cust1", Duration::from_secs(600)).await;
    let (mut stream, _) = watch_until_running(&app, "Cust1").await;
    // The next answer takes 1.5 s; a Resume's confirming poll asks now and
    // is still in flight when the tenant is suspended.
    app.fake.fail(
        Some("Cust1"),
        Failure::Delay(Duration::from_millis(1500)),
        1,
    );
    let polls = app.fake.requests("Cust1");
    assert_eq!(
        app.notify(ChangeType::Resume, "Cust1", None).await,
        reqwest::StatusCode::NO_CONTENT
    );
    eventually("the slow poll under way", || {
        app.fake.requests("Cust1") > polls
    })
    .await;
    let mut suspended = running("Cust1", "sod2.superoffice.com", Duration::from_secs(600));
    suspended.state = "Suspended".into();
    app.fake.set("Cust1", suspended);
    assert_eq!(
        app.notify(ChangeType::Suspend, "Cust1", None).await,
        reqwest::StatusCode::NO_CONTENT
    );
    // The slow answer (Running, asked before the Suspend) must not flip
    // the tenant back; the poll after it confirms SUSPENDED.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut seen_suspended = false;
    while let Ok(Ok(Some(ev))) = tokio::time::timeout_at(deadline, stream.message()).await {
        if let Some(t) = ev.tenant {
            if state(&t) == pb::TenantState::Suspended {
                seen_suspended = true;
            } else if seen_suspended {
                panic!("flipped back to {:?} after SUSPENDED", state(&t));
            }
        }
    }
    assert!(seen_suspended);
    assert!(
        app.fake.requests("Cust1") >= polls + 2,
        "confirmed after the slow answer"
    );
    assert_eq!(
        state(&app.get("Cust1").await.unwrap()),
        pb::TenantState::Suspended
    );
}

#[tokio::test]
async fn resume_and_backup_restored_leave_the_state_to_the_poll() {
    let app = spawn_app_tracking("Cust1", Duration::from_secs(600)).await;
    eventually("Cust1 tracked", || app.store.contains("Cust1")).await;
    for change in [ChangeType::Resume, ChangeType::BackupRestored] {
        assert_eq!(
            app.notify(change, "Cust1", None).await,
            reqwest::StatusCode::NO_CONTENT
        );
        let t = app.get("Cust1").await.unwrap();
        assert_eq!(state(&t), pb::TenantState::Running);
        assert_eq!(t.endpoint, "https://sod2.superoffice.com/Cust1");
    }
}

#[tokio::test]
async fn a_deleted_tenant_superoffice_forgets_is_removed_after_its_retention() {
    let app = spawn_app_with(|fake, config| {
        serve_running(fake, "Cust1");
        config.tenants = vec![tenant_status::ContextId::parse("Cust1").unwrap()];
        config.policy.deleted_retention = Duration::from_millis(500);
    })
    .await;
    let mut stream = app.watch(&["Cust1"], 0).await.unwrap();
    next_matching(&mut stream, "a snapshot", |ev| ev.tenant.is_some()).await;
    app.fake.remove("Cust1");
    assert_eq!(
        app.notify(ChangeType::Delete, "Cust1", None).await,
        reqwest::StatusCode::NO_CONTENT
    );
    let deleted = next_matching(&mut stream, "DELETED", |ev| {
        ev.tenant
            .as_ref()
            .is_some_and(|t| state(t) == pb::TenantState::Deleted)
    })
    .await;
    assert!(deleted.tenant.is_some());
    // SuperOffice answers 404 from now on; the tenant stays DELETED, then
    // is forgotten once settled and retained.
    next_matching(&mut stream, "REMOVED", |ev| {
        kind(ev) == pb::WatchEventType::Removed
    })
    .await;
    assert!(!app.store.contains("Cust1"));
}
