//! tenant-status: knows, at every moment, whether each SuperOffice CRM
//! Online tenant can take API calls and where its API lives, and serves it
//! over gRPC.
//!
//! Layout, a folder per concern (ARCHITECTURE.md has the invariants):
//! - `core`: tenants and their records, the store (the ordered section
//!   where every change takes its revision), the fan-out to watchers, watch
//!   streams, the `Tenants` trait the serving layers use, the `Ledger`
//!   trait every writer writes through and the `Fleet` trait (a process's
//!   view of its replicas). No I/O, no protocol.
//! - `superoffice`: the state API client and parser, the one budget every
//!   request to SuperOffice takes a permit from, the single flight, the
//!   poller, and the tracker (the in-memory `Tenants`).
//! - `webhook`: the public state-change listener: the notification parser
//!   and its rejections, the handler, the accept loop, the rate limiter.
//! - `token`: RS256 verification of notification tokens, the JWKS, the
//!   memory of used tokens.
//! - `pb`: the public contract's generated code (types, client, server).
//! - `files`: the operator's text files and token files, read one way by
//!   the server and the client.
//! - `serve`: the gRPC service (with `pb` and `client`, the only modules
//!   that know protobuf types) and the server builder (TLS, health,
//!   reflection, gRPC-Web).
//! - `metrics` (private): the Prometheus registry and every figure: a
//!   ground floor that every layer may use (poller, webhook, serve,
//!   cluster, persist).
//! - `admin` (private): the admin listener (`/metrics`, `/livez`,
//!   `/readyz`) and readiness.
//! - `codec`: the record's wire format (version 1), the same in the state
//!   file and in the replicas' buckets.
//! - `persist`: the state file, the notification journal, and the ledger
//!   of one process with a state file (journal first, then the store).
//! - `cluster`: replicas through NATS JetStream KV (with `--nats-url`): the
//!   shared ledger (compare-and-set writes), the mirror that feeds each
//!   replica's store from the shared log, and the poll-partition leases.
//! - `config`: flags, loading (flag > environment > file) and validation.
//! - `sim`: the simulated SuperOffice, its signer, dev certificates and the
//!   demo. Shipped for the demo and the tests; the product's modules never
//!   import it (only `cli`, which runs its commands).
//! - `app`: wiring: `Application::build` binds, `run_until` serves and
//!   drains; `Backing`, the mode as one value (alone or among replicas),
//!   hands out the store, the ledger and the fleet. `cli`: runs a command
//!   line, for `main` and the bench.
//! - `runtime`: the tokio runtime the service runs on, configured on
//!   purpose (for `main` and the bench's child processes).
//! - `client`: the client commands (`get`, `list`, `watch`,
//!   `completions`): a client of the public contract, like any other.
//!
//! What is public is what the tests, the bench, the fuzz targets and a Rust
//! user of the crate need: the application and its configuration, the
//! identifier, states and change types (at the root), the generated
//! protobuf types and client (`pb`), the parsers of network input, the
//! verifier, the persistence format and the simulator. `core` is the
//! crate's own: the tests and the bench set a store up through `testing`.
//! `unreachable_pub` keeps it so: an item no other crate can reach is
//! `pub(crate)`, not `pub`.

#![warn(unreachable_pub)]
pub mod app;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod codec;
pub mod config;
pub(crate) mod core;
pub mod files;
pub mod pb;
pub mod persist;
// cargo-fuzz replaces the build's rustflags (and so drops `--cfg
// tokio_unstable`) and sets `--cfg fuzzing`; the fuzz targets never run the
// service, so its builds leave the runtime out rather than fail.
#[cfg(not(fuzzing))]
pub mod runtime;
pub mod serve;
pub mod sim;
pub mod superoffice;
pub mod token;
pub mod webhook;

mod admin;
mod metrics;
mod telemetry;

/// The types a user of the crate names: a tenant's identifier, its states
/// and the kinds of change SuperOffice notifies, and the generated client
/// of the public contract.
pub use crate::core::tenant::{ChangeType, ContextId, TenantState};
pub use crate::pb::tenant_status_service_client::TenantStatusServiceClient;

/// For the project's tests and bench, which set up a store directly (a
/// state file to start from, changes applied without a SuperOffice): the
/// store, what it applies and what it holds. Not a stable interface.
pub mod testing {
    pub use crate::core::store::{PollResult, Store};
    pub use crate::core::tenant::{Observation, TenantRecord};
}

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
