//! tenant-status: knows, at every moment, whether each SuperOffice CRM
//! Online tenant can take API calls and where its API lives, and serves it
//! over gRPC.
//!
//! Layout, one file per concern:
//! - `tenant`: the domain (context identifiers, states, records). No I/O.
//! - `store`: the dashmap of records, the store-wide revision, and the
//!   fan-out to watchers. Knows nothing of tonic, axum or reqwest.
//! - `watch`: watch streams (snapshot, SYNCED, changes, heartbeats) as
//!   protocol-free events.
//! - `superoffice`: the state API client, its response parser, and the
//!   single-flight wrapper.
//! - `poller`: one task and one delay queue that polls every tracked tenant.
//! - `tracker`: lookups that fetch an untracked tenant once and track it.
//! - `token`: RS256 verification of notification tokens (certificate files
//!   and JWKS), and the memory of tokens already used.
//! - `webhook`: the public state-change listener (axum): parse, verify,
//!   apply, answer.
//! - `ratelimit`: token buckets per client and in all for the webhook.
//! - `signer`: an RSA key, certificate, JWKS and tokens standing in for
//!   SuperOffice's, for the demo and the tests.
//! - `grpc`: the tonic service; the only module that knows protobuf types.
//! - `codec`: prost's codec with a small per-stream encode buffer.
//! - `app`: `Application::build` binds, `run_until` serves and drains.
//! - `admin`: the admin listener: /metrics, /livez, /readyz.
//! - `metrics`: the Prometheus registry (prometheus-client), one per app.
//! - `persist`: the state file: atomic saves, restore at start.
//! - `journal`: accepted notifications made durable before the 204, and
//!   replayed over the state file after a crash.
//! - `devcerts`: a throwaway CA and certificates for trying TLS.
//! - `config`: flags, environment variables and their validation.
//! - `cli`: runs a parsed command line; shared by `main` and the benchmark.
//! - `fake_superoffice`: the simulated state API for tests, demo, benches.
//! - `demo`: `tenant-status demo`.
//! - `telemetry`: logging setup.

pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod core;
pub mod persist;
pub mod serve;
pub mod sim;
pub mod superoffice;
pub mod telemetry;
pub mod token;
pub mod webhook;

pub use serve::grpc::pb;

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
