//! Command-line flags (each also read from a `TENANT_STATUS_*` environment
//! variable) and their validation into a `Config`.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use url::Url;

use crate::{
    core::tenant::ContextId,
    serve::grpc::BearerTokens,
    superoffice::environment_base_url,
    superoffice::poller::PollPolicy,
    token::{JWKS_REFETCH_INTERVAL, VerifierSettings, load_keys},
};

#[derive(Debug, Parser)]
#[command(
    name = "tenant-status",
    version,
    about = "Knows, at every moment, whether each SuperOffice tenant can take API calls and where its API lives; serves it over gRPC."
)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "TENANT_STATUS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Track tenants at SuperOffice and serve their state over gRPC.
    Serve(Box<ServeArgs>),
    /// Check a configuration (flags, environment, --config file) and exit:
    /// 0 when `serve` would start with it, 2 with the reason when not.
    CheckConfig(Box<ServeArgs>),
    /// Write a throwaway CA, server and client certificate for trying TLS
    /// and mTLS (`--tls-cert`, `--tls-client-ca`) with grpcurl.
    DevCerts(DevCertsArgs),
    /// Run against a built-in simulated SuperOffice with a dozen tenants
    /// changing state; works offline.
    Demo(DemoArgs),
    /// Run only the simulated SuperOffice state API (for tests, smoke
    /// checks and benchmarks).
    FakeSuperoffice(FakeArgs),
}

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
fn byte_size(s: &str) -> Result<usize, String> {
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
    /// SuperOffice environment whose state API to poll.
    #[arg(long, env = "TENANT_STATUS_SUPEROFFICE_ENV", value_enum)]
    pub superoffice_env: Option<SuperOfficeEnv>,
    /// Base URL of the state API instead of the environment's (for a proxy,
    /// a test or the demo); `{base}/api/state/{ctx}` is requested.
    #[arg(long, env = "TENANT_STATUS_STATE_API_BASE_URL")]
    pub state_api_base_url: Option<String>,
    /// A tenant to track from the start (repeatable; comma-separated in the
    /// environment variable).
    #[arg(long = "tenant", env = "TENANT_STATUS_TENANTS", value_delimiter = ',')]
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
    /// Most state API requests in flight at once.
    #[arg(long, env = "TENANT_STATUS_POLL_CONCURRENCY", default_value_t = 32)]
    pub poll_concurrency: usize,
    /// Timeout of one state API request.
    #[arg(long, env = "TENANT_STATUS_HTTP_TIMEOUT", value_parser = duration, default_value = "10s")]
    pub http_timeout: Duration,
    /// How long a DELETED tenant is kept before it is forgotten (REMOVED).
    #[arg(long, env = "TENANT_STATUS_DELETED_RETENTION", value_parser = duration, default_value = "24h")]
    pub deleted_retention: Duration,
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
}

/// A validated configuration of the service.
#[derive(Debug, Clone)]
pub struct Config {
    pub grpc_addr: String,
    pub admin_addr: String,
    pub ready_timeout: Duration,
    pub state_file: Option<PathBuf>,
    pub state_file_interval: Duration,
    pub restore_spread: Duration,
    pub tls: Option<TlsFiles>,
    pub access: Option<Arc<BearerTokens>>,
    pub state_api_base_url: Url,
    pub tenants: Vec<ContextId>,
    pub policy: PollPolicy,
    pub http_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub max_concurrent_streams: u32,
    pub grpc_max_request_size: usize,
    pub grpc_max_header_size: u32,
    pub max_watchers: usize,
    pub http2_keepalive_interval: Duration,
    pub http2_keepalive_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub webhook: WebhookConfig,
}

/// The gRPC listener's TLS material, read and checked.
#[derive(Clone)]
pub struct TlsFiles {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("TlsFiles")
            .field("mtls", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

/// Reads a PEM file and checks it holds a block with one of `tags`.
fn pem_file(setting: &'static str, path: &Path, tags: &[&str]) -> Result<Vec<u8>, ConfigError> {
    let bytes = std::fs::read(path)
        .map_err(|e| bad(setting, format!("cannot read {}: {e}", path.display())))?;
    let blocks = pem::parse_many(&bytes)
        .map_err(|e| bad(setting, format!("{} is not PEM: {e}", path.display())))?;
    if !blocks.iter().any(|b| tags.contains(&b.tag())) {
        return Err(bad(
            setting,
            format!("{} holds no {}", path.display(), tags.join(" or ")),
        ));
    }
    Ok(bytes)
}

/// A validated webhook configuration.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub addr: String,
    pub path: String,
    pub verifier: VerifierSettings,
    pub seen_tokens_max: usize,
    /// Per client address: requests a second and burst; `None`: no limit.
    pub rate_limit: Option<(f64, f64)>,
    /// All clients together: requests a second; `None`: no limit.
    pub rate_limit_total: Option<f64>,
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub max_body: usize,
    pub body_timeout: Duration,
    pub max_header_size: usize,
}

/// A setting that cannot be used, named with what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {problem}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub problem: String,
}

fn bad(setting: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        problem: problem.into(),
    }
}

impl ServeArgs {
    /// Checks every setting and resolves the state API base URL and the
    /// tenant list.
    pub fn validate(&self) -> Result<Config, ConfigError> {
        let state_api_base_url = match (&self.state_api_base_url, self.superoffice_env) {
            (Some(u), _) => {
                let url = Url::parse(u)
                    .map_err(|e| bad("--state-api-base-url", format!("{u:?} is not a URL: {e}")))?;
                if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                    return Err(bad(
                        "--state-api-base-url",
                        format!("{u:?} must be an http or https URL with a host"),
                    ));
                }
                url
            }
            (None, Some(env)) => {
                environment_base_url(env.name()).expect("every SuperOfficeEnv has a URL")
            }
            (None, None) => {
                return Err(bad(
                    "--superoffice-env",
                    "say which SuperOffice environment to poll (sod, qaonline or online), or give --state-api-base-url",
                ));
            }
        };
        let mut tenants = Vec::new();
        for t in &self.tenants {
            let t = t.trim();
            if t.is_empty() {
                continue;
            }
            tenants.push(ContextId::parse(t).map_err(|e| bad("--tenant", format!("{t:?}: {e}")))?);
        }
        if let Some(path) = &self.tenants_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                bad(
                    "--tenants-file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let before = tenants.len();
            for (i, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                tenants.push(ContextId::parse(line).map_err(|e| {
                    bad(
                        "--tenants-file",
                        format!("{} line {}: {e}", path.display(), i + 1),
                    )
                })?);
            }
            if tenants.len() == before {
                return Err(bad(
                    "--tenants-file",
                    format!("{} names no tenant", path.display()),
                ));
            }
        }
        tenants.sort();
        tenants.dedup();
        if self.poll_min_interval.is_zero() {
            return Err(bad("--poll-min-interval", "must be more than zero"));
        }
        if self.poll_min_interval > self.poll_max_interval {
            return Err(bad(
                "--poll-min-interval",
                format!(
                    "{} is longer than --poll-max-interval {}",
                    humantime::format_duration(self.poll_min_interval),
                    humantime::format_duration(self.poll_max_interval)
                ),
            ));
        }
        if self.poll_concurrency == 0 {
            return Err(bad("--poll-concurrency", "must be at least 1"));
        }
        if self.http_timeout.is_zero() {
            return Err(bad("--http-timeout", "must be more than zero"));
        }
        if self.heartbeat_interval.is_zero() {
            return Err(bad("--heartbeat-interval", "must be more than zero"));
        }
        if self.max_concurrent_streams == 0 {
            return Err(bad("--max-concurrent-streams", "must be at least 1"));
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.grpc_max_request_size) {
            return Err(bad("--grpc-max-request-size", "must be from 1KiB to 64MiB"));
        }
        let grpc_max_header_size = u32::try_from(self.grpc_max_header_size)
            .ok()
            .filter(|n| (1024..=1024 * 1024).contains(n))
            .ok_or_else(|| bad("--grpc-max-header-size", "must be from 1KiB to 1MiB"))?;
        if self.max_watchers == 0 {
            return Err(bad("--max-watchers", "must be at least 1"));
        }
        let webhook = self
            .webhook
            .validate(self.superoffice_env, &state_api_base_url)?;
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert_pem: pem_file("--tls-cert", cert, &["CERTIFICATE"])?,
                key_pem: pem_file(
                    "--tls-key",
                    key,
                    &["PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"],
                )?,
                client_ca_pem: match &self.tls_client_ca {
                    Some(ca) => Some(pem_file("--tls-client-ca", ca, &["CERTIFICATE"])?),
                    None => None,
                },
            }),
            (None, None) if self.tls_client_ca.is_some() => {
                return Err(bad("--tls-client-ca", "needs --tls-cert and --tls-key"));
            }
            (None, None) => None,
            _ => return Err(bad("--tls-cert", "--tls-cert and --tls-key go together")),
        };
        let access = match &self.grpc_token_file {
            Some(path) => Some(Arc::new(
                BearerTokens::from_file(path).map_err(|e| bad("--grpc-token-file", e))?,
            )),
            None => None,
        };
        if let Some(path) = &self.state_file {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            if let Some(dir) = dir {
                if !dir.is_dir() {
                    return Err(bad(
                        "--state-file",
                        format!("the directory {} does not exist", dir.display()),
                    ));
                }
            }
            if path.is_dir() {
                return Err(bad(
                    "--state-file",
                    format!("{} is a directory", path.display()),
                ));
            }
        }
        if self.state_file_interval.is_zero() {
            return Err(bad("--state-file-interval", "must be more than zero"));
        }
        Ok(Config {
            grpc_addr: self.grpc_addr.clone(),
            admin_addr: self.admin_addr.clone(),
            ready_timeout: self.ready_timeout,
            state_file: self.state_file.clone(),
            state_file_interval: self.state_file_interval,
            restore_spread: self.restore_spread,
            tls,
            access,
            state_api_base_url,
            tenants,
            policy: PollPolicy {
                min_interval: self.poll_min_interval,
                max_interval: self.poll_max_interval,
                backoff_max: self.poll_backoff_max,
                concurrency: self.poll_concurrency,
                deleted_retention: self.deleted_retention,
                ..PollPolicy::default()
            },
            http_timeout: self.http_timeout,
            heartbeat_interval: self.heartbeat_interval,
            max_concurrent_streams: self.max_concurrent_streams,
            grpc_max_request_size: self.grpc_max_request_size,
            grpc_max_header_size,
            max_watchers: self.max_watchers,
            http2_keepalive_interval: self.http2_keepalive_interval,
            http2_keepalive_timeout: self.http2_keepalive_timeout,
            shutdown_timeout: self.shutdown_timeout,
            webhook,
        })
    }
}

impl WebhookArgs {
    fn validate(
        &self,
        env: Option<SuperOfficeEnv>,
        state_api: &Url,
    ) -> Result<WebhookConfig, ConfigError> {
        if !self.webhook_path.starts_with('/') || self.webhook_path.len() < 2 {
            return Err(bad(
                "--webhook-path",
                format!(
                    "{:?} must be a path such as /NotifyCustomerStateChange",
                    self.webhook_path
                ),
            ));
        }
        if self.webhook_path.contains(['{', '}', '*', '?', '#']) {
            return Err(bad(
                "--webhook-path",
                format!("{:?} may not hold {{, }}, *, ? or #", self.webhook_path),
            ));
        }
        // The environment's origin: https://{env}.superoffice.com, or that of
        // the state API's base URL (a proxy, a test, the demo).
        let origin = match env {
            Some(env) => format!("https://{}.superoffice.com", env.name()),
            None => state_api.origin().ascii_serialization(),
        };
        let issuer = self.jwt_issuer.clone().unwrap_or_else(|| origin.clone());
        if issuer.trim().is_empty() {
            return Err(bad("--jwt-issuer", "must not be empty"));
        }
        let mut keys = Vec::new();
        for path in &self.jwt_certificates {
            keys.extend(load_keys(path).map_err(|e| bad("--jwt-certificate", e))?);
        }
        let jwks_url = match (&self.jwks_url, keys.is_empty()) {
            (Some(u), _) => {
                let url = Url::parse(u)
                    .map_err(|e| bad("--jwks-url", format!("{u:?} is not a URL: {e}")))?;
                if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                    return Err(bad(
                        "--jwks-url",
                        format!("{u:?} must be an http or https URL with a host"),
                    ));
                }
                Some(url)
            }
            (None, true) => Some(
                Url::parse(&format!("{origin}/login/.well-known/jwks")).map_err(|e| {
                    bad("--jwks-url", format!("cannot derive it from {origin}: {e}"))
                })?,
            ),
            (None, false) => None,
        };
        if self.jwt_leeway > Duration::from_secs(300) {
            return Err(bad(
                "--jwt-leeway",
                "at most 5m: a wider leeway keeps expired tokens usable (and remembered) longer",
            ));
        }
        if !self.webhook_rate_limit.is_finite() || self.webhook_rate_limit < 0.0 {
            return Err(bad("--webhook-rate-limit", "must be 0 (no limit) or more"));
        }
        if !self.webhook_rate_burst.is_finite() || self.webhook_rate_burst < 1.0 {
            return Err(bad("--webhook-rate-burst", "must be at least 1"));
        }
        if self.webhook_header_timeout.is_zero() {
            return Err(bad("--webhook-header-timeout", "must be more than zero"));
        }
        if self.webhook_max_connections == 0 {
            return Err(bad("--webhook-max-connections", "must be at least 1"));
        }
        if !self.webhook_rate_limit_total.is_finite() || self.webhook_rate_limit_total < 0.0 {
            return Err(bad(
                "--webhook-rate-limit-total",
                "must be 0 (no limit) or more",
            ));
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.webhook_max_body) {
            return Err(bad("--webhook-max-body", "must be from 1KiB to 16MiB"));
        }
        if self.webhook_body_timeout.is_zero() {
            return Err(bad("--webhook-body-timeout", "must be more than zero"));
        }
        // hyper will not read HTTP/1.1 heads into a buffer under 8 KiB.
        if !(8 * 1024..=1024 * 1024).contains(&self.webhook_max_header_size) {
            return Err(bad(
                "--webhook-max-header-size",
                "must be from 8KiB to 1MiB",
            ));
        }
        if self.seen_tokens_max == 0 {
            return Err(bad("--seen-tokens-max", "must be at least 1"));
        }
        Ok(WebhookConfig {
            addr: self.webhook_addr.clone(),
            path: self.webhook_path.clone(),
            verifier: VerifierSettings {
                issuer: issuer.trim_end_matches('/').to_owned(),
                audience: self.jwt_audience.clone().filter(|a| !a.is_empty()),
                leeway: self.jwt_leeway,
                keys,
                jwks_url,
                jwks_refetch_interval: JWKS_REFETCH_INTERVAL,
            },
            seen_tokens_max: self.seen_tokens_max,
            max_connections: self.webhook_max_connections,
            header_timeout: self.webhook_header_timeout,
            rate_limit: (self.webhook_rate_limit > 0.0)
                .then_some((self.webhook_rate_limit, self.webhook_rate_burst)),
            rate_limit_total: (self.webhook_rate_limit_total > 0.0)
                .then_some(self.webhook_rate_limit_total),
            max_body: self.webhook_max_body,
            body_timeout: self.webhook_body_timeout,
            max_header_size: self.webhook_max_header_size,
        })
    }
}

/// Why the command line could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A flag clap refuses (or --help, --version).
    #[error(transparent)]
    Clap(#[from] clap::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Parses the command line. With `--config FILE` (or TENANT_STATUS_CONFIG),
/// the file's settings become the defaults of `serve` and `check-config`,
/// so a flag wins over the environment, which wins over the file.
pub fn parse_cli_from(args: Vec<OsString>) -> Result<Cli, CliError> {
    let file =
        config_flag(&args).or_else(|| std::env::var_os("TENANT_STATUS_CONFIG").map(PathBuf::from));
    let mut cmd = Cli::command();
    if let Some(path) = file {
        let settings = read_config_file(&path)?;
        for sub in ["serve", "check-config"] {
            cmd = cmd.mut_subcommand(sub, |mut c| {
                for (id, values) in &settings {
                    c = c.mut_arg(id, |a| a.default_values(values.clone()));
                }
                c
            });
        }
    }
    let matches = cmd.try_get_matches_from(args)?;
    Ok(Cli::from_arg_matches(&matches)?)
}

/// The value of `--config` on the command line, if any.
fn config_flag(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let a = a.to_string_lossy();
        if a == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    None
}

/// Reads a TOML configuration file into (argument id, values) pairs,
/// refusing settings `serve` does not have.
fn read_config_file(path: &Path) -> Result<Vec<(String, Vec<String>)>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| bad("--config", format!("cannot read {}: {e}", path.display())))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        bad(
            "--config",
            format!("{} is not valid TOML: {e}", path.display()),
        )
    })?;
    let serve = Cli::command();
    let serve = serve
        .find_subcommand("serve")
        .expect("serve is a subcommand");
    let mut out = Vec::new();
    for (key, value) in table {
        let long = key.replace('_', "-");
        let arg = serve
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && long != "config" && long != "help")
            .ok_or_else(|| {
                bad(
                    "--config",
                    format!(
                        "{}: {key:?} is not a setting of tenant-status serve (see serve --help)",
                        path.display()
                    ),
                )
            })?;
        let scalar = |v: &toml::Value| -> Result<String, ConfigError> {
            match v {
                toml::Value::String(s) => Ok(s.clone()),
                toml::Value::Integer(i) => Ok(i.to_string()),
                toml::Value::Float(f) => Ok(f.to_string()),
                toml::Value::Boolean(b) => Ok(b.to_string()),
                other => Err(bad(
                    "--config",
                    format!(
                        "{}: {key} must be a string, number or list of them, not {}",
                        path.display(),
                        other.type_str()
                    ),
                )),
            }
        };
        let values = match &value {
            toml::Value::Array(items) => items.iter().map(scalar).collect::<Result<Vec<_>, _>>()?,
            v => vec![scalar(v)?],
        };
        out.push((arg.get_id().to_string(), values));
    }
    Ok(out)
}

impl Config {
    /// A configuration for a state API at `base_url` with the defaults of
    /// `serve`; the gRPC listener on a free loopback port.
    pub fn for_base_url(base_url: &str) -> Result<Self, ConfigError> {
        let args = Cli::try_parse_from([
            "tenant-status",
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--webhook-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
            "--state-api-base-url",
            base_url,
        ])
        .map_err(|e| bad("--state-api-base-url", e.to_string()))?;
        match args.command {
            Command::Serve(s) => s.validate(),
            _ => unreachable!("parsed a serve command"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(c.policy.concurrency, 8);
        assert_eq!(c.policy.min_interval, Duration::from_secs(2));
        assert_eq!(c.webhook.verifier.issuer, "https://online.superoffice.com");
        let c = parse(&["serve", "--config", f, "--grpc-addr", "127.0.0.1:7001"]).unwrap();
        assert_eq!(c.grpc_addr, "127.0.0.1:7001");
        let c = parse(&["check-config", &format!("--config={f}")]).unwrap();
        assert_eq!(c.policy.concurrency, 8);

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
}
