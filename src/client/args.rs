//! The client commands' flags. They live here rather than in `config`
//! because they configure a client of the service, not the service (the
//! command line that holds both is `crate::cli`'s): each is a flag and a `TENANT_STATUS_*` environment variable
//! (a client has no `--config` file; that file is the server's).

use std::{path::PathBuf, time::Duration};

use clap::{Args, ValueEnum};

/// How to reach the server and how to print what it says.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The server's gRPC address: http://HOST:PORT, or https://HOST:PORT
    /// for a server with --tls-cert (HOST is then the name its certificate
    /// carries, such as localhost for `tenant-status dev-certs`).
    #[arg(
        long,
        env = "TENANT_STATUS_ADDR",
        default_value = "http://127.0.0.1:50051"
    )]
    pub addr: String,
    /// PEM CA certificate(s) to trust for an https --addr instead of the
    /// system's CA store.
    #[arg(long, env = "TENANT_STATUS_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate to present to a server with --tls-client-ca
    /// (mTLS); with --tls-client-key.
    #[arg(long, env = "TENANT_STATUS_TLS_CLIENT_CERT")]
    pub tls_client_cert: Option<PathBuf>,
    /// PEM private key of --tls-client-cert.
    #[arg(long, env = "TENANT_STATUS_TLS_CLIENT_KEY")]
    pub tls_client_key: Option<PathBuf>,
    /// File holding the bearer token to send, for a server with
    /// --grpc-token-file: its first line that is neither blank nor a '#'
    /// comment (so the server's own token file works as it is).
    #[arg(long, env = "TENANT_STATUS_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// A table for people, or JSON for scripts: one object a line, in the
    /// proto3 JSON mapping (as grpcurl prints it), every field present.
    #[arg(long, short = 'o', env = "TENANT_STATUS_OUTPUT", value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Longest wait for the connection and, for get and list, for each
    /// answer (a tenant tenant-status does not track yet is asked of
    /// SuperOffice first).
    #[arg(long, env = "TENANT_STATUS_TIMEOUT", value_parser = duration, default_value = "30s")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// `tenant-status get CTX...`
#[derive(Debug, Clone, Args)]
pub struct GetArgs {
    /// Context identifiers, such as Cust12345.
    #[arg(required = true, value_name = "CTX")]
    pub tenants: Vec<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `tenant-status list [--state S]`
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Only tenants in this state (repeatable, or comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub state: Vec<StateArg>,
    /// Tenants asked for per request (1 to 1000); every page is listed.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub page_size: u32,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `tenant-status watch [CTX...]`
#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// Context identifiers to watch; none: every tenant, including those
    /// tracked later.
    #[arg(value_name = "CTX")]
    pub tenants: Vec<String>,
    /// Resume from this revision (the largest one a previous watch
    /// printed) instead of starting with a full snapshot.
    #[arg(long, default_value_t = 0)]
    pub since_revision: u64,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// A tenant state as typed on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StateArg {
    Unknown,
    Provisioning,
    Running,
    Deleted,
    Suspended,
    OnlineMaintenance,
    OfflineMaintenance,
    ProvisioningFailed,
    Deleting,
    DeleteFailed,
    MigrationPending,
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{e} (use a duration such as 500ms, 30s or 15m)"))
}
