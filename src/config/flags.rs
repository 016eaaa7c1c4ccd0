//! The flags of the service's subcommands (`serve`, `check-config`,
//! `demo`, `fake-superoffice`, `dev-certs`), each also read from a
//! `TENANT_STATUS_*` environment variable (and, for `serve`, from the
//! `--config` file: see `load`). The top-level parser is `crate::cli`'s.

use std::{path::PathBuf, time::Duration};

use clap::{Args, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SuperOfficeEnv {
    /// Development (sod.superoffice.com).
    Sod,
    /// Stage (qaonline.superoffice.com).
    #[value(alias = "stage")]
    Qaonline,
    /// Production (online.superoffice.com).
    Online,
}

impl SuperOfficeEnv {
    pub fn name(self) -> &'static str {
        match self {
            Self::Sod => "sod",
            Self::Qaonline => "qaonline",
            Self::Online => "online",
        }
    }
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{e} (use a duration such as 500ms, 30s or 15m)"))
}

/// A size in bytes: `65536`, `64KiB`, `1MiB` (KB, MB and GB are read as
/// KiB, MiB and GiB; no one means 1000 bytes for a buffer limit).
pub(super) fn byte_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let unit_bytes: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        "g" | "gb" | "gib" => 1024 * 1024 * 1024,
        _ => return Err(format!("{s:?}: use a size such as 65536, 64KiB or 1MiB")),
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(unit_bytes))
        .ok_or_else(|| format!("{s:?}: use a size such as 65536, 64KiB or 1MiB"))
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// A TOML file of settings, named as the flags without the leading
    /// dashes (`grpc-addr = "0.0.0.0:50051"`, `tenant = ["Cust1"]`). Flags
    /// win over the environment, which wins over the file.
    #[arg(long, env = "TENANT_STATUS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address of the gRPC listener.
    #[arg(long, env = "TENANT_STATUS_GRPC_ADDR", default_value = "0.0.0.0:50051")]
    pub grpc_addr: String,
    /// Address of the admin listener: /metrics, /livez, /readyz. Keep it
    /// off the internet.
    #[arg(
        long,
        env = "TENANT_STATUS_ADMIN_ADDR",
        default_value = "127.0.0.1:9090"
    )]
    pub admin_addr: String,
    /// /readyz turns ready when the first poll round of the configured
    /// tenants is done, or after this long.
    #[arg(long, env = "TENANT_STATUS_READY_TIMEOUT", value_parser = duration, default_value = "30s")]
    pub ready_timeout: Duration,
    /// File holding every tracked tenant's last known record, written soon
    /// after changes and at shutdown, and served at once on the next start.
    /// Accepted notifications are also journaled beside it
    /// (FILE.journal-N) and synced before they are acknowledged, so a crash
    /// between two writes loses none.
    #[arg(long, env = "TENANT_STATUS_STATE_FILE")]
    pub state_file: Option<PathBuf>,
    /// Shortest time between two writes of the state file.
    #[arg(long, env = "TENANT_STATUS_STATE_FILE_INTERVAL", value_parser = duration, default_value = "1s")]
    pub state_file_interval: Duration,
    /// Restored tenants are first re-polled at random within this window,
    /// so a restart does not stampede SuperOffice.
    #[arg(long, env = "TENANT_STATUS_RESTORE_SPREAD", value_parser = duration, default_value = "60s")]
    pub restore_spread: Duration,
    /// PEM certificate chain of the gRPC listener (TLS; with --tls-key).
    #[arg(long, env = "TENANT_STATUS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the gRPC listener.
    #[arg(long, env = "TENANT_STATUS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s): gRPC clients must present a certificate it
    /// signed (mTLS). Needs --tls-cert.
    #[arg(long, env = "TENANT_STATUS_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// File of bearer tokens (one a line) that TenantStatusService callers
    /// must present as `authorization: Bearer <token>`; health and
    /// reflection stay open.
    #[arg(long, env = "TENANT_STATUS_GRPC_TOKEN_FILE")]
    pub grpc_token_file: Option<PathBuf>,
    /// Do not serve the dashboard page at GET / on the gRPC listener (it
    /// holds no data: the page calls WatchTenant like any client, with the
    /// bearer token when --grpc-token-file is set).
    #[arg(long, env = "TENANT_STATUS_NO_DASHBOARD", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_dashboard: bool,
    /// An origin (scheme://host[:port]) whose pages may call gRPC-Web from
    /// the browser, for a dashboard hosted elsewhere (repeatable;
    /// comma-separated in the environment variable). Without it,
    /// cross-origin browser calls are refused.
    #[arg(
        long = "grpc-web-allow-origin",
        env = "TENANT_STATUS_GRPC_WEB_ALLOW_ORIGIN",
        value_delimiter = ','
    )]
    pub grpc_web_allow_origins: Vec<String>,
    /// SuperOffice environment whose state API to poll.
    #[arg(long, env = "TENANT_STATUS_SUPEROFFICE_ENV", value_enum)]
    pub superoffice_env: Option<SuperOfficeEnv>,
    /// Base URL of the state API instead of the environment's (for a proxy,
    /// a test or the demo); `{base}/api/state/{ctx}` is requested.
    #[arg(long, env = "TENANT_STATUS_STATE_API_BASE_URL")]
    pub state_api_base_url: Option<String>,
    /// A tenant to track from the start (repeatable; comma-separated in the
    /// environment variable; TENANT_STATUS_TENANTS, its older name, is read
    /// too when TENANT_STATUS_TENANT is not set).
    #[arg(long = "tenant", env = "TENANT_STATUS_TENANT", value_delimiter = ',')]
    pub tenants: Vec<String>,
    /// A file of tenants to track from the start, one context identifier a
    /// line; blank lines and lines starting with '#' are skipped.
    #[arg(long, env = "TENANT_STATUS_TENANTS_FILE")]
    pub tenants_file: Option<PathBuf>,
    /// Shortest time between two polls of one tenant, whatever ValidUntil says.
    #[arg(long, env = "TENANT_STATUS_POLL_MIN_INTERVAL", value_parser = duration, default_value = "5s")]
    pub poll_min_interval: Duration,
    /// Longest time between two polls of one tenant, whatever ValidUntil says.
    #[arg(long, env = "TENANT_STATUS_POLL_MAX_INTERVAL", value_parser = duration, default_value = "15m")]
    pub poll_max_interval: Duration,
    /// Longest wait between retries while SuperOffice fails (backoff cap).
    #[arg(long, env = "TENANT_STATUS_POLL_BACKOFF_MAX", value_parser = duration, default_value = "5m")]
    pub poll_backoff_max: Duration,
    /// The most requests to SuperOffice in flight at once: polls, first
    /// lookups, a watch's new names and JWKS fetches all share it. Among
    /// replicas it is the fleet's figure, each taking its share (the
    /// figure divided by the live members). Halved after a 429, grown back
    /// as answers come. `--poll-concurrency` is its old name.
    #[arg(
        long,
        alias = "poll-concurrency",
        env = "TENANT_STATUS_SUPEROFFICE_MAX_IN_FLIGHT",
        default_value_t = 32
    )]
    pub superoffice_max_in_flight: usize,
    /// The most requests to SuperOffice a second (fleet-wide among
    /// replicas, as --superoffice-max-in-flight); unset: no rate, only the
    /// bound in flight.
    #[arg(long, env = "TENANT_STATUS_SUPEROFFICE_MAX_RATE")]
    pub superoffice_max_rate: Option<f64>,
    /// How long a lookup of an untracked tenant waits for the budget
    /// toward SuperOffice before it is answered UNAVAILABLE.
    #[arg(long, env = "TENANT_STATUS_SUPEROFFICE_MAX_WAIT", value_parser = duration, default_value = "5s")]
    pub superoffice_max_wait: Duration,
    /// Timeout of one state API request.
    #[arg(long, env = "TENANT_STATUS_HTTP_TIMEOUT", value_parser = duration, default_value = "10s")]
    pub http_timeout: Duration,
    /// How long a DELETED tenant is kept before it is forgotten (REMOVED).
    #[arg(long, env = "TENANT_STATUS_DELETED_RETENTION", value_parser = duration, default_value = "24h")]
    pub deleted_retention: Duration,
    /// How long a tenant SuperOffice does not know, tracked only because a
    /// WatchTenant named it, is kept once no stream watches it by name;
    /// then it is forgotten (REMOVED) and no longer polled.
    #[arg(long, env = "TENANT_STATUS_FORGET_UNKNOWN_AFTER", value_parser = duration, default_value = "10m")]
    pub forget_unknown_after: Duration,
    /// The most tenants SuperOffice does not know tracked for watchers at
    /// once; past it, a WatchTenant naming new ones is RESOURCE_EXHAUSTED.
    #[arg(
        long,
        env = "TENANT_STATUS_MAX_UNKNOWN_TENANTS",
        default_value_t = 1000
    )]
    pub max_unknown_tenants: usize,
    /// Interval of WatchTenant heartbeats.
    #[arg(long, env = "TENANT_STATUS_HEARTBEAT_INTERVAL", value_parser = duration, default_value = "15s")]
    pub heartbeat_interval: Duration,
    /// Most concurrent gRPC streams on one HTTP/2 connection.
    #[arg(
        long,
        env = "TENANT_STATUS_MAX_CONCURRENT_STREAMS",
        default_value_t = 1024
    )]
    pub max_concurrent_streams: u32,
    /// Largest gRPC request message; larger ones get OUT_OF_RANGE. The
    /// largest real request (1,000 names to watch) is under 100 KiB.
    #[arg(long, env = "TENANT_STATUS_GRPC_MAX_REQUEST_SIZE", value_parser = byte_size, default_value = "256KiB")]
    pub grpc_max_request_size: usize,
    /// Largest header block a gRPC client may send on a call (HTTP/2
    /// SETTINGS_MAX_HEADER_LIST_SIZE); a larger one resets the call.
    #[arg(long, env = "TENANT_STATUS_GRPC_MAX_HEADER_SIZE", value_parser = byte_size, default_value = "16KiB")]
    pub grpc_max_header_size: usize,
    /// Most WatchTenant streams open at once, over all connections (each
    /// costs about 6 KiB); past it, RESOURCE_EXHAUSTED.
    #[arg(long, env = "TENANT_STATUS_MAX_WATCHERS", default_value_t = 100_000)]
    pub max_watchers: usize,
    /// Interval of HTTP/2 keepalive pings, so idle watch streams survive
    /// proxies and dead peers are noticed.
    #[arg(long, env = "TENANT_STATUS_HTTP2_KEEPALIVE_INTERVAL", value_parser = duration, default_value = "30s")]
    pub http2_keepalive_interval: Duration,
    /// How long to wait for a keepalive ping's answer before closing.
    #[arg(long, env = "TENANT_STATUS_HTTP2_KEEPALIVE_TIMEOUT", value_parser = duration, default_value = "10s")]
    pub http2_keepalive_timeout: Duration,
    /// Longest wait for open calls and streams to finish at shutdown.
    #[arg(long, env = "TENANT_STATUS_SHUTDOWN_TIMEOUT", value_parser = duration, default_value = "10s")]
    pub shutdown_timeout: Duration,
    #[command(flatten)]
    pub webhook: WebhookArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Replicas sharing one truth through NATS JetStream (off without
/// `--nats-url`).
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// NATS server(s) to share state with other replicas through JetStream
    /// (`nats://host:4222`; repeat or separate with commas for a cluster's
    /// seed servers). Without it, this process is alone.
    #[arg(
        long = "nats-url",
        env = "TENANT_STATUS_NATS_URL",
        value_delimiter = ','
    )]
    pub nats_urls: Vec<String>,
    /// This replica's name in leases and logs (letters, digits, - and _).
    /// Default: the host name and a random suffix.
    #[arg(long, env = "TENANT_STATUS_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// How long a poll partition's lease lasts without renewal; a replica
    /// that dies has its partitions taken over within twice this.
    #[arg(long, env = "TENANT_STATUS_LEASE_TTL", value_parser = duration, default_value = "10s")]
    pub lease_ttl: Duration,
    /// NATS credentials file (a user JWT and its NKey seed).
    #[arg(long, env = "TENANT_STATUS_NATS_CREDS_FILE")]
    pub nats_creds_file: Option<PathBuf>,
    /// NATS user name (with --nats-password-file).
    #[arg(long, env = "TENANT_STATUS_NATS_USER")]
    pub nats_user: Option<String>,
    /// File holding the NATS user's password.
    #[arg(long, env = "TENANT_STATUS_NATS_PASSWORD_FILE")]
    pub nats_password_file: Option<PathBuf>,
    /// PEM CA certificate(s) to verify the NATS servers with; TLS is then
    /// required.
    #[arg(long, env = "TENANT_STATUS_NATS_CA_FILE")]
    pub nats_ca_file: Option<PathBuf>,
    /// Prefix of the JetStream buckets' names (one fleet per prefix).
    #[arg(
        long,
        env = "TENANT_STATUS_NATS_BUCKET",
        default_value = "tenant-status"
    )]
    pub nats_bucket: String,
    /// Copies of each bucket in a NATS cluster: 3 in a three-node cluster,
    /// so a node's loss loses nothing; 1 for a single server.
    #[arg(long, env = "TENANT_STATUS_NATS_BUCKET_REPLICAS", default_value_t = 1)]
    pub nats_bucket_replicas: usize,
}

/// The public state-change webhook.
#[derive(Debug, Clone, Args)]
pub struct WebhookArgs {
    /// Address of the public webhook listener (SuperOffice's State Change
    /// URL points here). It serves the webhook path and nothing else.
    #[arg(
        long,
        env = "TENANT_STATUS_WEBHOOK_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    pub webhook_addr: String,
    /// Path of the webhook.
    #[arg(
        long,
        env = "TENANT_STATUS_WEBHOOK_PATH",
        default_value = "/NotifyCustomerStateChange"
    )]
    pub webhook_path: String,
    /// A PEM certificate (as SuperOffice distributes its
    /// SOD_SuperOfficeFederatedLogin.crt), PEM public key or DER certificate
    /// whose key signs notification tokens (repeatable, for rotation).
    #[arg(
        long = "jwt-certificate",
        env = "TENANT_STATUS_JWT_CERTIFICATES",
        value_delimiter = ','
    )]
    pub jwt_certificates: Vec<PathBuf>,
    /// JWKS URL of the signing keys [default: the environment's
    /// /login/.well-known/jwks, unless --jwt-certificate is given].
    #[arg(long, env = "TENANT_STATUS_JWKS_URL")]
    pub jwks_url: Option<String>,
    /// How often the JWKS is fetched again (sooner when its Cache-Control
    /// max-age says so); a key SuperOffice withdraws is no longer trusted
    /// after the next fetch.
    #[arg(long, env = "TENANT_STATUS_JWKS_REFRESH_INTERVAL", value_parser = duration, default_value = "1h")]
    pub jwks_refresh_interval: Duration,
    /// How long, at most, the state or endpoint a notification implies
    /// holds while the state API still answers what it said before (it
    /// lags: SuperOffice notifies when a tenant is about to change). Ends
    /// sooner when the state API confirms it or answers anything else. 0:
    /// the first poll has the last word.
    #[arg(long, env = "TENANT_STATUS_NOTIFICATION_HOLD", value_parser = duration, default_value = "10m")]
    pub notification_hold: Duration,
    /// Issuer that notification tokens must name [default:
    /// https://{env}.superoffice.com, or the origin of
    /// --state-api-base-url].
    #[arg(long, env = "TENANT_STATUS_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Audience that notification tokens must name (not checked when unset).
    #[arg(long, env = "TENANT_STATUS_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Clock leeway for a token's exp and nbf.
    #[arg(long, env = "TENANT_STATUS_JWT_LEEWAY", value_parser = duration, default_value = "60s")]
    pub jwt_leeway: Duration,
    /// Most notification tokens remembered to refuse replays (about 50
    /// bytes each); when full of usable tokens, new ones get 503.
    #[arg(long, env = "TENANT_STATUS_SEEN_TOKENS_MAX", default_value_t = 100_000)]
    pub seen_tokens_max: usize,
    /// Webhook requests a second from one client address (0: no limit);
    /// past it and the burst, 429 with Retry-After.
    #[arg(
        long,
        env = "TENANT_STATUS_WEBHOOK_RATE_LIMIT",
        default_value_t = 1000.0
    )]
    pub webhook_rate_limit: f64,
    /// The most a webhook client may take to send a request's headers.
    #[arg(long, env = "TENANT_STATUS_WEBHOOK_HEADER_TIMEOUT", value_parser = duration, default_value = "10s")]
    pub webhook_header_timeout: Duration,
    /// Most webhook connections open at once; more wait in the backlog.
    #[arg(
        long,
        env = "TENANT_STATUS_WEBHOOK_MAX_CONNECTIONS",
        default_value_t = 1024
    )]
    pub webhook_max_connections: usize,
    /// Webhook requests one client address may send at once.
    #[arg(
        long,
        env = "TENANT_STATUS_WEBHOOK_RATE_BURST",
        default_value_t = 2000.0
    )]
    pub webhook_rate_burst: f64,
    /// Webhook requests a second from all clients together (0: no limit),
    /// so a flood from many addresses is refused before it costs a
    /// signature check each; past it, 429 with Retry-After.
    #[arg(
        long,
        env = "TENANT_STATUS_WEBHOOK_RATE_LIMIT_TOTAL",
        default_value_t = 5000.0
    )]
    pub webhook_rate_limit_total: f64,
    /// Largest notification body; a larger one gets 413 (SuperOffice's are
    /// about 1.5 KiB).
    #[arg(long, env = "TENANT_STATUS_WEBHOOK_MAX_BODY", value_parser = byte_size, default_value = "64KiB")]
    pub webhook_max_body: usize,
    /// The most a webhook client may take to send a request's body; then 408.
    #[arg(long, env = "TENANT_STATUS_WEBHOOK_BODY_TIMEOUT", value_parser = duration, default_value = "10s")]
    pub webhook_body_timeout: Duration,
    /// Largest request head (request line and headers) on the webhook, for
    /// HTTP/1.1 and HTTP/2 alike; a larger one gets 431 or a reset stream.
    #[arg(long, env = "TENANT_STATUS_WEBHOOK_MAX_HEADER_SIZE", value_parser = byte_size, default_value = "64KiB")]
    pub webhook_max_header_size: usize,
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Address of the gRPC listener.
    #[arg(
        long,
        env = "TENANT_STATUS_GRPC_ADDR",
        default_value = "127.0.0.1:50051"
    )]
    pub grpc_addr: String,
    /// Address of the state-change webhook listener.
    #[arg(
        long,
        env = "TENANT_STATUS_WEBHOOK_ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub webhook_addr: String,
    /// Address of the admin listener (/metrics, /livez, /readyz).
    #[arg(
        long,
        env = "TENANT_STATUS_ADMIN_ADDR",
        default_value = "127.0.0.1:9090"
    )]
    pub admin_addr: String,
    /// Interval of WatchTenant heartbeats.
    #[arg(long, env = "TENANT_STATUS_HEARTBEAT_INTERVAL", value_parser = duration, default_value = "15s")]
    pub heartbeat_interval: Duration,
    /// NATS server(s) (nats-server -js): run the demo's replicas sharing
    /// their state through JetStream, in the `tenant-status-demo` buckets.
    #[arg(
        long = "nats-url",
        env = "TENANT_STATUS_NATS_URL",
        value_delimiter = ','
    )]
    pub nats_urls: Vec<String>,
    /// How many replicas to run (with --nats-url), each on the next ports
    /// after the previous one's.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=9))]
    pub replicas: u16,
}

#[derive(Debug, Clone, Args)]
pub struct DevCertsArgs {
    /// Directory to write ca.pem, server.pem, server.key, client.pem and
    /// client.key into.
    #[arg(long, default_value = "dev-certs")]
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct FakeArgs {
    /// Address to serve the simulated state API on.
    #[arg(long, default_value = "127.0.0.1:8099")]
    pub addr: String,
    /// Serve the demo's scripted dozen tenants.
    #[arg(long)]
    pub demo_script: bool,
    /// Also serve this many steady Running tenants, Cust1 to CustN.
    #[arg(long, default_value_t = 0)]
    pub tenants: usize,
    /// ValidUntil is this far after each request.
    #[arg(long, value_parser = duration, default_value = "60s")]
    pub valid_for: Duration,
    /// Answer this fraction of requests, at random, with 503.
    #[arg(long, default_value_t = 0.0)]
    pub fail_ratio: f64,
    /// Answer every request (state and JWKS) only after this long, as a
    /// busy SuperOffice would.
    #[arg(long, value_parser = duration)]
    pub latency: Option<Duration>,
    /// Also serve, on this address, a control API for tests in other
    /// processes: PUT /tenants/{ctx} sets a tenant's state, POST
    /// /notifications returns a signed notification, GET /stats counts
    /// requests (see src/sim/control.rs).
    #[arg(long)]
    pub control_addr: Option<String>,
}
