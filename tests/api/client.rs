//! The client commands (`get`, `list`, `completions`; `watch` in
//! `client_watch`): the real binary as a client of a real server, as an
//! operator or a script runs it.

use std::{sync::Arc, time::Duration};

use serde_json::Value;
use tenant_status::{
    config::TlsFiles, files::BearerTokens, sim::devcerts::DevCerts, sim::fake_superoffice::Failure,
};
use tokio::net::TcpListener;

use crate::helpers::*;

/// The binary with `args`, none of the caller's TENANT_STATUS_* settings.
pub fn command(args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tenant-status"));
    cmd.args(args).kill_on_drop(true);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("TENANT_STATUS_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// Runs the client to its end: exit code, stdout, stderr.
pub async fn run_client(args: &[&str]) -> (i32, String, String) {
    let out = tokio::time::timeout(Duration::from_secs(30), command(args).output())
        .await
        .expect("the client ends within 30 s")
        .expect("the binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn addr_of(app: &TestApp) -> String {
    format!("http://{}", app.addr)
}

fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[tokio::test]
async fn get_prints_a_readable_table_and_json_for_scripts() {
    let app = spawn_app_tracking("Cust1", Duration::from_secs(600)).await;
    serve_running(&app.fake, "Cust2");
    let addr = addr_of(&app);
    let (code, out, err) = run_client(&["get", "--addr", &addr, "Cust1", "Cust2"]).await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("TENANT") && lines[0].contains("OBSERVED"));
    for (line, ctx) in lines[1..].iter().zip(["Cust1", "Cust2"]) {
        assert!(line.starts_with(ctx), "{line}");
        assert!(line.contains("running") && line.contains("sod2.superoffice.com"));
        assert!(line.contains("s ago"), "the observation's age: {line}");
    }

    let (code, out, _) = run_client(&["get", "--addr", &addr, "-o", "json", "Cust1"]).await;
    assert_eq!(code, 0);
    let records = json_lines(&out);
    assert_eq!(records.len(), 1);
    let t = &records[0];
    assert_eq!(t["contextIdentifier"], "Cust1");
    assert_eq!(t["state"], "TENANT_STATE_RUNNING");
    assert_eq!(t["isRunning"], true);
    assert_eq!(t["stale"], false);
    assert_eq!(t["heldUntil"], Value::Null);
    let revision: u64 = t["revision"].as_str().unwrap().parse().unwrap();
    assert_eq!(revision, app.get("Cust1").await.unwrap().revision);
}

#[tokio::test]
async fn get_exit_codes_tell_not_found_from_unavailable() {
    let app = spawn_app_tracking("Cust1", Duration::from_secs(600)).await;
    let addr = addr_of(&app);
    let (code, out, err) = run_client(&["get", "--addr", &addr, "Cust1", "Cust404"]).await;
    assert_eq!(code, 3, "NOT_FOUND: {err}");
    assert!(out.contains("Cust1"), "what was found is printed: {out}");
    assert!(
        err.contains("Cust404") && err.contains("NOT_FOUND"),
        "{err}"
    );

    app.fake.fail(Some("Cust5"), Failure::Status(503), 100);
    let (code, _, err) = run_client(&["get", "--addr", &addr, "Cust5"]).await;
    assert_eq!(code, 4, "SuperOffice unavailable for a new tenant: {err}");
    assert!(err.contains("UNAVAILABLE"), "{err}");

    let (code, _, err) = run_client(&["get", "--addr", &addr, "../etc"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("INVALID_ARGUMENT"), "{err}");

    // Nothing listens on a port just freed.
    let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed = format!("http://{}", free.local_addr().unwrap());
    drop(free);
    let (code, _, err) = run_client(&["get", "--addr", &closed, "Cust1"]).await;
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("cannot reach tenant-status"), "{err}");

    let (code, _, err) = run_client(&["get", "--addr", "ftp://x", "Cust1"]).await;
    assert_eq!(code, 2, "a flag that cannot be used: {err}");
    assert!(err.contains("--addr"), "{err}");
    let (code, _, err) = run_client(&["get", "--token-file", "/nonexistent", "Cust1"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--token-file: cannot read /nonexistent"),
        "{err}"
    );
}

#[tokio::test]
async fn list_filters_by_state_and_reads_every_page() {
    let app = spawn_app_with(|fake, config| {
        for ctx in ["Cust1", "Cust2", "Cust3"] {
            serve_running(fake, ctx);
        }
        fake.set(
            "Cust4",
            tenant_status::sim::fake_superoffice::TenantSpec::new(
                "Suspended",
                "Cust4",
                "sod2.superoffice.com",
            ),
        );
        config.tenants = ["Cust1", "Cust2", "Cust3", "Cust4"]
            .iter()
            .map(|c| tenant_status::ContextId::parse(c).unwrap())
            .collect();
    })
    .await;
    eventually("every tenant polled", || {
        app.store.get("Cust4").is_some_and(|r| r.revision > 0)
    })
    .await;
    let addr = addr_of(&app);
    let (code, out, err) =
        run_client(&["list", "--addr", &addr, "--page-size", "1", "-o", "json"]).await;
    assert_eq!(code, 0, "{err}");
    let names: Vec<Value> = json_lines(&out)
        .iter()
        .map(|t| t["contextIdentifier"].clone())
        .collect();
    assert_eq!(names, ["Cust1", "Cust2", "Cust3", "Cust4"]);

    let (code, out, _) = run_client(&["list", "--addr", &addr, "--state", "suspended"]).await;
    assert_eq!(code, 0);
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{out}");
    assert!(
        rows[0].starts_with("Cust4") && rows[0].contains("suspended") && rows[0].contains("down")
    );
}

#[tokio::test]
async fn the_client_presents_a_bearer_token_and_a_client_certificate() {
    let dir = temp_dir("client-auth");
    let tokens = dir.join("tokens");
    std::fs::write(
        &tokens,
        "# the server's own file\nsecret-token-of-the-cli\n",
    )
    .unwrap();
    let access = Arc::new(BearerTokens::from_file(&tokens).unwrap());
    let certs = DevCerts::generate().unwrap();
    certs.write(&dir).unwrap();
    let tls = TlsFiles {
        cert_pem: certs.server_pem.clone().into_bytes(),
        key_pem: certs.server_key.clone().into_bytes(),
        client_ca_pem: Some(certs.ca_pem.clone().into_bytes()),
    };
    let app = spawn_app_with(move |fake, config| {
        serve_running(fake, "Cust1");
        config.access = Some(access);
        config.tls = Some(tls);
    })
    .await;
    let addr = format!("https://localhost:{}", app.addr.port());
    let path = |f: &str| dir.join(f).display().to_string();
    let (ca, cert, key, token) = (
        path("ca.pem"),
        path("client.pem"),
        path("client.key"),
        tokens.display().to_string(),
    );
    let tls_args = [
        "--addr",
        &addr,
        "--ca-file",
        &ca,
        "--tls-client-cert",
        &cert,
        "--tls-client-key",
        &key,
    ];
    let mut with_all = vec!["get"];
    with_all.extend(tls_args);
    with_all.extend(["--token-file", &token, "Cust1"]);
    let (code, out, err) = run_client(&with_all).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Cust1") && out.contains("running"), "{out}");

    let mut no_token = vec!["get"];
    no_token.extend(tls_args);
    no_token.push("Cust1");
    let (code, _, err) = run_client(&no_token).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("UNAUTHENTICATED"), "{err}");

    let (code, _, err) = run_client(&[
        "get",
        "--addr",
        &addr,
        "--ca-file",
        &ca,
        "--token-file",
        &token,
        "Cust1",
    ])
    .await;
    assert_ne!(
        code, 0,
        "mTLS refuses a client without a certificate: {err}"
    );

    let (code, _, err) =
        run_client(&["get", "--addr", &addr, "--tls-client-cert", &cert, "Cust1"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--tls-client-key"), "{err}");
}

#[tokio::test]
async fn completions_for_bash_zsh_and_fish_know_the_commands() {
    for shell in ["bash", "zsh", "fish"] {
        let (code, out, err) = run_client(&["completions", shell]).await;
        assert_eq!(code, 0, "{err}");
        for word in ["watch", "list", "since-revision", "offline-maintenance"] {
            assert!(out.contains(word), "{shell}: {word}");
        }
    }
}
