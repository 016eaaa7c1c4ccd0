//! Operating the service: metrics, readiness, configuration errors, warm
//! restart from the state file, TLS and bearer-token access. All over real
//! sockets; configuration errors through the real binary.

use std::{collections::HashMap, path::PathBuf, process::Command, time::Duration};

use tenant_status::{
    config::TlsFiles,
    core::tenant::{ChangeType, ContextId},
    pb::{self, tenant_status_service_client::TenantStatusServiceClient},
    serve::grpc::BearerTokens,
    sim::devcerts::DevCerts,
    sim::superoffice::Failure,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::helpers::*;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "ts-{name}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Parses the OpenMetrics text into `name{labels}` → value.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF"
    );
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').expect("name and value");
            (name.to_owned(), value.parse().expect("a number"))
        })
        .collect()
}

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

fn run_binary(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tenant-status"))
        .args(args)
        .env_remove("TENANT_STATUS_CONFIG")
        .output()
        .expect("the binary runs");
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test]
async fn a_bad_configuration_stops_start_up_with_one_sentence_naming_the_setting() {
    let dir = temp_dir("badconfig");
    let empty = dir.join("tenants.txt");
    std::fs::write(&empty, "# nobody yet\n").unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--superoffice-env", "prod"], "invalid value 'prod'"),
        (
            vec![
                "--superoffice-env",
                "sod",
                "--jwt-certificate",
                "/nonexistent/so.crt",
            ],
            "--jwt-certificate: cannot read /nonexistent/so.crt",
        ),
        (
            vec!["--state-api-base-url", "htp:/nowhere"],
            "--state-api-base-url:",
        ),
        (
            vec![
                "--superoffice-env",
                "sod",
                "--tenants-file",
                empty.to_str().unwrap(),
            ],
            "names no tenant",
        ),
        (
            vec![
                "--superoffice-env",
                "sod",
                "--grpc-addr",
                &taken,
                "--webhook-addr",
                "127.0.0.1:0",
                "--admin-addr",
                "127.0.0.1:0",
            ],
            "--grpc-addr: cannot listen on",
        ),
    ];
    for (args, expected) in cases {
        let mut all = vec!["serve"];
        all.extend(&args);
        let (code, text) = run_binary(&all);
        assert_ne!(code, 0, "{args:?}");
        let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        assert!(
            first.contains(expected),
            "{args:?}: the first line says it: {text}"
        );
    }
    let (code, text) = run_binary(&[
        "check-config",
        "--superoffice-env",
        "sod",
        "--tenant",
        "Cust1",
    ]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("valid"), "{text}");
    let (code, text) = run_binary(&[
        "check-config",
        "--superoffice-env",
        "sod",
        "--tenant",
        "../x",
    ]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("--tenant:"), "{text}");
}

#[test]
fn tenants_come_from_the_variable_named_after_the_flag_and_from_its_older_name() {
    let check = |vars: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tenant-status"));
        cmd.args(["check-config", "--superoffice-env", "sod"])
            .env_remove("TENANT_STATUS_CONFIG")
            .env_remove("TENANT_STATUS_TENANT")
            .env_remove("TENANT_STATUS_TENANTS");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("the binary runs");
        assert!(out.status.success(), "{vars:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = check(&[("TENANT_STATUS_TENANT", "Cust1,Cust2,Cust3")]);
    assert!(text.contains(", 3 tenants"), "{text}");
    let text = check(&[("TENANT_STATUS_TENANTS", "Cust1,Cust2")]);
    assert!(text.contains(", 2 tenants"), "the older name: {text}");
    let text = check(&[
        ("TENANT_STATUS_TENANT", "Cust1"),
        ("TENANT_STATUS_TENANTS", "Cust1,Cust2"),
    ]);
    assert!(
        text.contains(", 1 tenants"),
        "the current name wins: {text}"
    );
}

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
    let saved = tenant_status::persist::load(&state).unwrap().unwrap();
    let saved: std::collections::HashSet<String> = saved
        .iter()
        .map(|r| r.context_identifier.to_string())
        .collect();
    for ctx in &acknowledged {
        assert!(saved.contains(ctx), "{ctx} was acknowledged but not saved");
    }
}

async fn tls_app(certs: &DevCerts, mtls: bool) -> TestApp {
    let tls = TlsFiles {
        cert_pem: certs.server_pem.clone().into_bytes(),
        key_pem: certs.server_key.clone().into_bytes(),
        client_ca_pem: mtls.then(|| certs.ca_pem.clone().into_bytes()),
    };
    spawn_app_with(move |fake, config| {
        serve_running(fake, "Cust1");
        config.tls = Some(tls);
    })
    .await
}

async fn tls_client(
    app: &TestApp,
    certs: &DevCerts,
    identity: bool,
) -> Result<TenantStatusServiceClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&certs.ca_pem))
        .domain_name("localhost");
    if identity {
        tls = tls.identity(Identity::from_pem(&certs.client_pem, &certs.client_key));
    }
    let channel = Channel::from_shared(format!("https://{}", app.addr))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(TenantStatusServiceClient::new(channel))
}

async fn get_via(
    client: Result<TenantStatusServiceClient<Channel>, tonic::transport::Error>,
) -> Result<pb::Tenant, String> {
    let mut client = client.map_err(|e| format!("{e:?}"))?;
    client
        .get_tenant_state(pb::GetTenantStateRequest {
            context_identifier: "Cust1".into(),
        })
        .await
        .map(|r| r.into_inner().tenant.unwrap())
        .map_err(|s| format!("{s:?}"))
}

#[tokio::test]
async fn tls_serves_grpc_and_mtls_requires_a_client_certificate() {
    let certs = DevCerts::generate().unwrap();
    let app = tls_app(&certs, false).await;
    let t = get_via(tls_client(&app, &certs, false).await)
        .await
        .unwrap();
    assert_eq!(t.context_identifier, "Cust1");
    // Plaintext to a TLS listener fails.
    let plain = Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await;
    let plain = plain.map(TenantStatusServiceClient::new);
    assert!(get_via(plain).await.is_err());

    let app = tls_app(&certs, true).await;
    assert!(get_via(tls_client(&app, &certs, true).await).await.is_ok());
    let refused = get_via(tls_client(&app, &certs, false).await).await;
    assert!(refused.is_err(), "no client certificate: {refused:?}");
    // A client certificate from another CA is refused too.
    let other = DevCerts::generate().unwrap();
    let mixed = DevCerts {
        ca_pem: certs.ca_pem.clone(),
        server_pem: String::new(),
        server_key: String::new(),
        client_pem: other.client_pem.clone(),
        client_key: other.client_key.clone(),
    };
    assert!(get_via(tls_client(&app, &mixed, true).await).await.is_err());
}

#[tokio::test]
async fn bearer_tokens_guard_the_service_but_not_health_or_reflection() {
    let dir = temp_dir("tokens");
    let file = dir.join("tokens");
    std::fs::write(
        &file,
        "# callers\nsecret-token-of-dashboards\nsecret-token-of-billing\n",
    )
    .unwrap();
    let tokens = std::sync::Arc::new(BearerTokens::from_file(&file).unwrap());
    let app = spawn_app_with(move |fake, config| {
        serve_running(fake, "Cust1");
        config.access = Some(tokens);
    })
    .await;
    let call = |token: Option<&'static str>| {
        let mut client = app.client.clone();
        async move {
            let mut req = tonic::Request::new(pb::GetTenantStateRequest {
                context_identifier: "Cust1".into(),
            });
            if let Some(t) = token {
                req.metadata_mut()
                    .insert("authorization", t.parse().unwrap());
            }
            client.get_tenant_state(req).await.map(|_| ())
        }
    };
    let e = call(None).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert!(e.message().contains("Bearer"), "{}", e.message());
    let e = call(Some("Bearer wrong-token-entirely")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert!(call(Some("Bearer secret-token-of-billing")).await.is_ok());
    assert!(
        call(Some("Bearer secret-token-of-dashboards"))
            .await
            .is_ok()
    );

    let mut health = tonic_health::pb::health_client::HealthClient::new(app.channel.clone());
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "tenantstatus.v1.TenantStatusService".into(),
        })
        .await
        .unwrap();
    assert_eq!(r.into_inner().status, 1, "SERVING without a token");
    let (_, text) = app.admin_get("/metrics").await;
    assert!(text.contains(r#"code="UNAUTHENTICATED""#));
}

/// The real binary, serving with `args`; returns the process and its gRPC
/// and webhook addresses, read from its JSON log.
async fn start_binary(args: &[String]) -> (tokio::process::Child, String, String) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tenant-status"))
        .arg("--log-format")
        .arg("json")
        .arg("serve")
        .args([
            "--grpc-addr",
            "127.0.0.1:0",
            "--webhook-addr",
            "127.0.0.1:0",
        ])
        .args(["--admin-addr", "127.0.0.1:0"])
        .args(args)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let (mut grpc, mut webhook) = (None, None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while grpc.is_none() || webhook.is_none() {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .expect("the binary starts within 20 s")
            .unwrap()
            .expect("the binary is running");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        match v["message"].as_str() {
            Some("tenant-status is serving gRPC") => {
                grpc = v["grpc_addr"].as_str().map(String::from)
            }
            Some("serving the state-change webhook") => {
                webhook = v["addr"].as_str().map(String::from)
            }
            _ => {}
        }
    }
    // Keep draining the log so the process never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, grpc.unwrap(), webhook.unwrap())
}

#[tokio::test]
async fn every_acknowledged_notification_survives_a_kill_9() {
    let (fake, _) = tenant_status::sim::superoffice::FakeSuperOffice::start()
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
            tenant_status::sim::superoffice::TenantSpec::new(
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
    // SIGKILL at once: no drain, no save.
    child.kill().await.unwrap();
    assert!(
        tenant_status::persist::load(&state_file).unwrap().is_none(),
        "the state file was never written"
    );

    let (_child, grpc, _) = start_binary(&args).await;
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
