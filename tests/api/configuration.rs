//! Configuration through the real binary: bad settings stop start-up with one
//! sentence naming the setting; check-config; the environment.

use crate::helpers::*;
use std::process::Command;

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

/// A runtime setting that cannot be used stops the start like a flag that
/// cannot be used: exit 2, with a sentence naming the variable.
#[test]
fn a_runtime_variable_that_cannot_be_used_exits_2_naming_it() {
    for (var, value) in [
        ("TENANT_STATUS_RUNTIME_LIFO_SLOT", "sometimes"),
        ("TENANT_STATUS_RUNTIME_EVENT_INTERVAL", "0"),
        ("TENANT_STATUS_RUNTIME_GLOBAL_QUEUE_INTERVAL", "many"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_tenant-status"))
            .args(["check-config", "--superoffice-env", "sod"])
            .env_remove("TENANT_STATUS_CONFIG")
            .env(var, value)
            .output()
            .expect("the binary runs");
        let text = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}={value}: {text}");
        assert!(text.contains(var), "{var}={value}: {text}");
    }
    // And a usable one is taken.
    let out = Command::new(env!("CARGO_BIN_EXE_tenant-status"))
        .args(["check-config", "--superoffice-env", "sod"])
        .env_remove("TENANT_STATUS_CONFIG")
        .env("TENANT_STATUS_RUNTIME_LIFO_SLOT", "on")
        .output()
        .expect("the binary runs");
    assert!(out.status.success(), "{out:?}");
}
