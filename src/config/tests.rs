//! Configuration tests: every flag's bounds, the environment, the file.

use std::ffi::OsString;

use clap::Parser;

use super::{flags::byte_size, *};
// The whole command line, as `serve` and `check-config` are parsed for real.
use crate::cli::{Cli, Command, parse_cli_from};

fn serve(args: &[&str]) -> Result<Config, String> {
    let mut all = vec!["tenant-status", "serve"];
    all.extend_from_slice(args);
    let cli = Cli::try_parse_from(all).map_err(|e| e.to_string())?;
    let Command::Serve(s) = cli.command else {
        unreachable!()
    };
    s.validate().map_err(|e| e.to_string())
}

#[test]
fn environments_and_base_urls() {
    let c = serve(&["--superoffice-env", "stage"]).unwrap();
    assert_eq!(
        c.state_api_base_url.as_str(),
        "https://qaonline.superoffice.com/"
    );
    let c = serve(&["--state-api-base-url", "http://127.0.0.1:9/x"]).unwrap();
    assert_eq!(c.state_api_base_url.as_str(), "http://127.0.0.1:9/x");
    assert!(serve(&[]).unwrap_err().starts_with("--superoffice-env:"));
    assert!(
        serve(&["--state-api-base-url", "ftp://x"])
            .unwrap_err()
            .starts_with("--state-api-base-url:")
    );
    assert!(serve(&["--superoffice-env", "prod"]).is_err());
}

#[test]
fn tenants_are_validated_and_deduplicated() {
    let c = serve(&[
        "--superoffice-env",
        "sod",
        "--tenant",
        "Cust2",
        "--tenant",
        "Cust1,Cust2",
    ])
    .unwrap();
    let names: Vec<_> = c.tenants.iter().map(|t| t.to_string()).collect();
    assert_eq!(names, ["Cust1", "Cust2"]);
    let e = serve(&["--superoffice-env", "sod", "--tenant", "../etc"]).unwrap_err();
    assert!(e.starts_with("--tenant:"), "{e}");
}

#[test]
fn durations_and_bounds() {
    let c = serve(&[
        "--superoffice-env",
        "sod",
        "--poll-min-interval",
        "500ms",
        "--poll-max-interval",
        "15m",
    ])
    .unwrap();
    assert_eq!(c.policy.min_interval, Duration::from_millis(500));
    let e = serve(&["--superoffice-env", "sod", "--poll-min-interval", "20m"]).unwrap_err();
    assert!(e.contains("longer than --poll-max-interval"), "{e}");
    assert!(serve(&["--superoffice-env", "sod", "--poll-min-interval", "soon"]).is_err());
}

#[test]
fn a_tenants_file_is_read_and_must_name_someone() {
    let dir = std::env::temp_dir().join(format!("ts-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.txt");
    std::fs::write(&good, "# ours\nCust1\n\n  Cust3  \n").unwrap();
    let c = serve(&[
        "--superoffice-env",
        "sod",
        "--tenants-file",
        good.to_str().unwrap(),
    ])
    .unwrap();
    assert_eq!(c.tenants.len(), 2);
    // Saved by a Windows tool: a byte order mark before the first line.
    let bom = dir.join("bom.txt");
    std::fs::write(&bom, "\u{feff}Cust7\r\nCust8\r\n").unwrap();
    let c = serve(&[
        "--superoffice-env",
        "sod",
        "--tenants-file",
        bom.to_str().unwrap(),
    ])
    .unwrap();
    assert_eq!(
        c.tenants.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
        ["Cust7", "Cust8"]
    );
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "# nobody\n").unwrap();
    let e = serve(&[
        "--superoffice-env",
        "sod",
        "--tenants-file",
        empty.to_str().unwrap(),
    ])
    .unwrap_err();
    assert!(e.contains("names no tenant"), "{e}");
    let e = serve(&[
        "--superoffice-env",
        "sod",
        "--tenants-file",
        "/nonexistent/x",
    ])
    .unwrap_err();
    assert!(e.contains("cannot read"), "{e}");
}

#[test]
fn webhook_keys_and_issuer_follow_the_environment() {
    let c = serve(&["--superoffice-env", "online"]).unwrap();
    assert_eq!(c.webhook.verifier.issuer, "https://online.superoffice.com");
    assert_eq!(
        c.webhook.verifier.jwks_url.as_ref().unwrap().as_str(),
        "https://online.superoffice.com/login/.well-known/jwks"
    );
    assert_eq!(c.webhook.path, "/NotifyCustomerStateChange");
    let c = serve(&["--state-api-base-url", "http://127.0.0.1:9/x"]).unwrap();
    assert_eq!(c.webhook.verifier.issuer, "http://127.0.0.1:9");
    let e = serve(&[
        "--superoffice-env",
        "sod",
        "--jwt-certificate",
        "/nonexistent/so.crt",
    ])
    .unwrap_err();
    assert!(e.starts_with("--jwt-certificate: cannot read"), "{e}");
    let e = serve(&["--superoffice-env", "sod", "--webhook-path", "notify"]).unwrap_err();
    assert!(e.starts_with("--webhook-path:"), "{e}");
    let e = serve(&["--superoffice-env", "sod", "--jwks-url", "file:///x"]).unwrap_err();
    assert!(e.starts_with("--jwks-url:"), "{e}");
}

fn parse(args: &[&str]) -> Result<Config, String> {
    let mut all = vec!["tenant-status"];
    all.extend_from_slice(args);
    let cli =
        parse_cli_from(all.iter().map(OsString::from).collect()).map_err(|e| e.to_string())?;
    match cli.command {
        Command::Serve(s) | Command::CheckConfig(s) => s.validate().map_err(|e| e.to_string()),
        _ => unreachable!(),
    }
}

#[test]
fn a_config_file_sets_defaults_that_flags_override() {
    let dir = std::env::temp_dir().join(format!("ts-config-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tenant-status.toml");
    std::fs::write(
        &file,
        r#"
superoffice-env = "online"
grpc_addr = "127.0.0.1:7000"
tenant = ["Cust1", "Cust2"]
poll-concurrency = 8
poll-min-interval = "2s"
"#,
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let c = parse(&["serve", "--config", f]).unwrap();
    assert_eq!(c.grpc_addr, "127.0.0.1:7000");
    assert_eq!(c.tenants.len(), 2);
    assert_eq!(c.budget.max_in_flight, 8);
    assert_eq!(c.policy.min_interval, Duration::from_secs(2));
    assert_eq!(c.webhook.verifier.issuer, "https://online.superoffice.com");
    let c = parse(&["serve", "--config", f, "--grpc-addr", "127.0.0.1:7001"]).unwrap();
    assert_eq!(c.grpc_addr, "127.0.0.1:7001");
    let c = parse(&["check-config", &format!("--config={f}")]).unwrap();
    assert_eq!(c.budget.max_in_flight, 8);

    let unknown = dir.join("unknown.toml");
    std::fs::write(&unknown, "grpc-adress = \"x\"\n").unwrap();
    let e = parse(&["serve", "--config", unknown.to_str().unwrap()]).unwrap_err();
    assert!(
        e.starts_with("--config:") && e.contains("grpc-adress"),
        "{e}"
    );
    let broken = dir.join("broken.toml");
    std::fs::write(&broken, "grpc-addr = \n").unwrap();
    let e = parse(&["serve", "--config", broken.to_str().unwrap()]).unwrap_err();
    assert!(e.contains("not valid TOML"), "{e}");
    let e = parse(&["serve", "--config", "/nonexistent.toml"]).unwrap_err();
    assert!(e.contains("cannot read"), "{e}");
}

#[test]
fn tls_and_access_files_are_checked() {
    let dir = std::env::temp_dir().join(format!("ts-config-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "hello").unwrap();
    let j = junk.to_str().unwrap();
    let e = serve(&["--superoffice-env", "sod", "--tls-cert", j, "--tls-key", j]).unwrap_err();
    assert!(e.starts_with("--tls-cert:"), "{e}");
    let e = serve(&["--superoffice-env", "sod", "--tls-cert", j]).unwrap_err();
    assert!(e.contains("--tls-key"), "{e}");
    let short = dir.join("tokens");
    std::fs::write(&short, "# ours\nshort\n").unwrap();
    let e = serve(&[
        "--superoffice-env",
        "sod",
        "--grpc-token-file",
        short.to_str().unwrap(),
    ])
    .unwrap_err();
    assert!(
        e.starts_with("--grpc-token-file:") && e.contains("at least 16"),
        "{e}"
    );
    let e = serve(&[
        "--superoffice-env",
        "sod",
        "--state-file",
        "/nonexistent/dir/state.json",
    ])
    .unwrap_err();
    assert!(e.starts_with("--state-file:"), "{e}");
}

#[test]
fn limits_are_flags_with_safe_defaults_and_bounds() {
    let c = serve(&["--superoffice-env", "sod"]).unwrap();
    assert_eq!(c.grpc_max_request_size, 256 * 1024);
    assert_eq!(c.grpc_max_header_size, 16 * 1024);
    assert_eq!(c.max_watchers, 100_000);
    assert_eq!(c.webhook.max_body, 64 * 1024);
    assert_eq!(c.webhook.body_timeout, Duration::from_secs(10));
    assert_eq!(c.webhook.max_header_size, 64 * 1024);
    assert_eq!(c.webhook.rate_limit, Some((1000.0, 2000.0)));
    assert_eq!(c.webhook.rate_limit_total, Some(5000.0));

    let c = serve(&[
        "--superoffice-env",
        "sod",
        "--webhook-max-body",
        "8KiB",
        "--grpc-max-request-size",
        "1MB",
        "--webhook-max-header-size",
        "32768",
        "--webhook-rate-limit-total",
        "0",
    ])
    .unwrap();
    assert_eq!(c.webhook.max_body, 8 * 1024);
    assert_eq!(c.grpc_max_request_size, 1024 * 1024);
    assert_eq!(c.webhook.max_header_size, 32 * 1024);
    assert_eq!(c.webhook.rate_limit_total, None);

    for (flag, value) in [
        ("--webhook-max-body", "100"),
        ("--webhook-max-body", "1GiB"),
        ("--webhook-max-header-size", "4KiB"),
        ("--grpc-max-header-size", "2MiB"),
        ("--grpc-max-request-size", "12"),
        ("--max-watchers", "0"),
        ("--webhook-body-timeout", "0s"),
        ("--webhook-rate-limit-total", "NaN"),
    ] {
        let e = serve(&["--superoffice-env", "sod", flag, value]).unwrap_err();
        assert!(e.starts_with(&format!("{flag}:")), "{flag} {value}: {e}");
    }
    let e = serve(&["--superoffice-env", "sod", "--webhook-max-body", "lots"]).unwrap_err();
    assert!(e.contains("64KiB"), "{e}");
    assert!(byte_size("99999999999999999999MiB").is_err());
}

#[test]
fn replicas_are_off_without_a_nats_url_and_checked_with_one() {
    let env = ["--superoffice-env", "sod"];
    let c = serve(&env).unwrap();
    assert!(c.cluster.is_none(), "alone unless --nats-url is given");
    let with = |more: &[&str]| {
        let mut a = env.to_vec();
        a.extend_from_slice(more);
        serve(&a)
    };
    let c = with(&[
        "--nats-url",
        "nats://a:4222,nats://b:4222",
        "--replica-id",
        "r-1",
    ])
    .unwrap();
    let cluster = c.cluster.unwrap();
    assert_eq!(cluster.urls, ["nats://a:4222", "nats://b:4222"]);
    assert_eq!(cluster.replica_id, "r-1");
    assert_eq!(cluster.lease_ttl, Duration::from_secs(10));
    assert_eq!(cluster.bucket, "tenant-status");
    // A default replica id: the host name and a random suffix, usable as
    // a key.
    let c = with(&["--nats-url", "nats://a:4222"]).unwrap();
    let id = c.cluster.unwrap().replica_id;
    assert!(
        id.len() > 7 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
        "{id}"
    );
    for (args, setting) in [
        (
            vec!["--nats-url", "nats://a:4222", "--replica-id", "a.b"],
            "--replica-id:",
        ),
        (
            vec!["--nats-url", "nats://a:4222", "--lease-ttl", "100ms"],
            "--lease-ttl:",
        ),
        (
            vec!["--nats-url", "nats://a:4222", "--nats-user", "u"],
            "--nats-user:",
        ),
        (
            vec![
                "--nats-url",
                "nats://a:4222",
                "--nats-password-file",
                "/nonexistent",
            ],
            "--nats-password-file:",
        ),
        (
            vec![
                "--nats-url",
                "nats://a:4222",
                "--nats-ca-file",
                "/nonexistent",
            ],
            "--nats-ca-file:",
        ),
        (
            vec!["--nats-url", "nats://a:4222", "--nats-bucket", "a.b"],
            "--nats-bucket:",
        ),
        (
            vec!["--nats-url", "nats://a:4222", "--nats-bucket-replicas", "0"],
            "--nats-bucket-replicas:",
        ),
        (
            vec!["--nats-url", "nats://a:4222", "--state-file", "/tmp/x.json"],
            "--state-file:",
        ),
    ] {
        let e = with(&args).unwrap_err();
        assert!(e.starts_with(setting), "{args:?}: {e}");
    }
    // The password is read from its file and never shown.
    let dir = std::env::temp_dir().join(format!("ts-nats-pw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pw = dir.join("pw");
    std::fs::write(&pw, "s3cret\n").unwrap();
    let c = with(&[
        "--nats-url",
        "nats://a:4222",
        "--nats-user",
        "u",
        "--nats-password-file",
        pw.to_str().unwrap(),
    ])
    .unwrap();
    let cluster = c.cluster.unwrap();
    assert_eq!(cluster.password.as_deref(), Some("s3cret"));
    assert!(!format!("{cluster:?}").contains("s3cret"));
}

#[test]
fn the_budget_toward_superoffice_has_its_flags_and_keeps_the_old_name() {
    let c = parse(&["serve", "--superoffice-env", "sod"]).unwrap();
    assert_eq!(c.budget.max_in_flight, 32);
    assert_eq!(c.budget.max_rate, None);
    assert_eq!(c.budget.max_wait, Duration::from_secs(5));
    let c = parse(&[
        "serve",
        "--superoffice-env",
        "sod",
        "--superoffice-max-in-flight",
        "12",
        "--superoffice-max-rate",
        "2.5",
        "--superoffice-max-wait",
        "2s",
    ])
    .unwrap();
    assert_eq!(c.budget.max_in_flight, 12);
    assert_eq!(c.budget.max_rate, Some(2.5));
    assert_eq!(c.budget.max_wait, Duration::from_secs(2));
    // The flag's old name still works.
    let c = parse(&[
        "serve",
        "--superoffice-env",
        "sod",
        "--poll-concurrency",
        "7",
    ])
    .unwrap();
    assert_eq!(c.budget.max_in_flight, 7);
    for (flag, value) in [
        ("--superoffice-max-in-flight", "0"),
        ("--superoffice-max-rate", "0"),
        ("--superoffice-max-rate", "-1"),
        ("--superoffice-max-wait", "0s"),
    ] {
        let arg = format!("{flag}={value}");
        let e = parse(&["serve", "--superoffice-env", "sod", &arg]).unwrap_err();
        assert!(e.contains(flag), "{flag} {value}: {e}");
    }
}
