//! Configuration: the flags (`flags`), how they are loaded (`load`: flag >
//! environment > file), and their validation into a `Config` here, each
//! error naming its flag.
//! The webhook's flags are validated in `webhook.rs`.

mod cluster;
mod flags;
mod load;
mod webhook;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use url::Url;

use crate::{
    cluster::ClusterConfig,
    core::tenant::ContextId,
    files::{BearerTokens, read_text},
    serve::{dashboard::DashboardConfig, server::ServeSettings},
    superoffice::environment_base_url,
    superoffice::{budget::Limits, poller::PollPolicy},
    token::{JWKS_REFETCH_INTERVAL, VerifierSettings, load_keys},
};

/// Where it lived before serving took its own settings.
pub use crate::serve::server::TlsFiles;
pub use flags::{DemoArgs, DevCertsArgs, FakeArgs, ServeArgs, SuperOfficeEnv, WebhookArgs};
pub use load::with_file_defaults;

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
    /// The budget of requests toward SuperOffice.
    pub budget: Limits,
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
    /// Replicas through NATS JetStream; `None`: this process is alone.
    pub cluster: Option<ClusterConfig>,
    pub dashboard: DashboardConfig,
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
    /// How long a notification's implied change holds at most.
    pub notification_hold: Duration,
    /// A pause before each notification is claimed and applied, as a slow
    /// disk or a stalled NATS would make: tests use it to hang up on a
    /// request mid-accept. Zero, and no flag, outside tests.
    #[doc(hidden)]
    pub accept_delay: Duration,
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
    /// tenant list: one section at a time, in the order `--help` lists
    /// them, each error naming its flag.
    pub fn validate(&self) -> Result<Config, ConfigError> {
        let state_api_base_url = self.state_api()?;
        let tenants = self.tenants()?;
        let (policy, budget) = self.polling()?;
        let grpc_max_header_size = self.grpc_limits()?;
        let webhook = self
            .webhook
            .validate(self.superoffice_env, &state_api_base_url)?;
        let cluster = self.cluster.validate()?;
        if cluster.is_some() && self.state_file.is_some() {
            return Err(bad(
                "--state-file",
                "is for a process alone; with --nats-url the replicas keep their state in JetStream",
            ));
        }
        let (tls, dashboard, access) = self.grpc_files()?;
        self.state_file()?;
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
            policy,
            budget,
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
            cluster,
            dashboard,
        })
    }

    /// The state API's base URL: given, or the environment's.
    fn state_api(&self) -> Result<Url, ConfigError> {
        Ok(match (&self.state_api_base_url, self.superoffice_env) {
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
        })
    }

    /// The tenants to track from the start: `--tenant` and `--tenants-file`,
    /// sorted, each once.
    fn tenants(&self) -> Result<Vec<ContextId>, ConfigError> {
        let mut tenants = Vec::new();
        for t in &self.tenants {
            let t = t.trim();
            if t.is_empty() {
                continue;
            }
            tenants.push(ContextId::parse(t).map_err(|e| bad("--tenant", format!("{t:?}: {e}")))?);
        }
        if let Some(path) = &self.tenants_file {
            let text = read_text(path).map_err(|e| {
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
        Ok(tenants)
    }

    /// The poll schedule and the budget toward SuperOffice.
    fn polling(&self) -> Result<(PollPolicy, Limits), ConfigError> {
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
        if self.superoffice_max_in_flight == 0 {
            return Err(bad("--superoffice-max-in-flight", "must be at least 1"));
        }
        if let Some(rate) = self.superoffice_max_rate
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err(bad(
                "--superoffice-max-rate",
                "must be a number of requests a second above zero",
            ));
        }
        if self.superoffice_max_wait.is_zero() {
            return Err(bad("--superoffice-max-wait", "must be more than zero"));
        }
        if self.http_timeout.is_zero() {
            return Err(bad("--http-timeout", "must be more than zero"));
        }
        Ok((
            PollPolicy {
                min_interval: self.poll_min_interval,
                max_interval: self.poll_max_interval,
                backoff_max: self.poll_backoff_max,
                deleted_retention: self.deleted_retention,
                max_unknown: self.max_unknown_tenants,
                forget_unknown_after: self.forget_unknown_after,
                ..PollPolicy::default()
            },
            Limits {
                max_in_flight: self.superoffice_max_in_flight,
                max_rate: self.superoffice_max_rate,
                max_wait: self.superoffice_max_wait,
            },
        ))
    }

    /// The gRPC server's limits; returns the header limit as HTTP/2 takes it.
    fn grpc_limits(&self) -> Result<u32, ConfigError> {
        if self.heartbeat_interval.is_zero() {
            return Err(bad("--heartbeat-interval", "must be more than zero"));
        }
        if self.max_concurrent_streams == 0 {
            return Err(bad("--max-concurrent-streams", "must be at least 1"));
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.grpc_max_request_size) {
            return Err(bad("--grpc-max-request-size", "must be from 1KiB to 64MiB"));
        }
        let max_header_size = u32::try_from(self.grpc_max_header_size)
            .ok()
            .filter(|n| (1024..=1024 * 1024).contains(n))
            .ok_or_else(|| bad("--grpc-max-header-size", "must be from 1KiB to 1MiB"))?;
        if self.max_watchers == 0 {
            return Err(bad("--max-watchers", "must be at least 1"));
        }
        Ok(max_header_size)
    }

    /// The gRPC server's files: TLS, the bearer tokens; and the dashboard's
    /// origins.
    #[allow(clippy::type_complexity)]
    fn grpc_files(
        &self,
    ) -> Result<(Option<TlsFiles>, DashboardConfig, Option<Arc<BearerTokens>>), ConfigError> {
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
        let dashboard = DashboardConfig::new(!self.no_dashboard, &self.grpc_web_allow_origins)
            .map_err(|e| bad("--grpc-web-allow-origin", e))?;
        let access = match &self.grpc_token_file {
            Some(path) => Some(Arc::new(
                BearerTokens::from_file(path).map_err(|e| bad("--grpc-token-file", e))?,
            )),
            None => None,
        };
        Ok((tls, dashboard, access))
    }

    /// `--state-file`'s directory exists and the path is not one.
    fn state_file(&self) -> Result<(), ConfigError> {
        if let Some(path) = &self.state_file {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            if let Some(dir) = dir
                && !dir.is_dir()
            {
                return Err(bad(
                    "--state-file",
                    format!("the directory {} does not exist", dir.display()),
                ));
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
        Ok(())
    }
}

impl Config {
    /// The gRPC server's own settings.
    pub fn serve_settings(&self) -> ServeSettings {
        ServeSettings {
            tls: self.tls.clone(),
            access: self.access.clone(),
            heartbeat_interval: self.heartbeat_interval,
            max_watchers: self.max_watchers,
            max_request_size: self.grpc_max_request_size,
            max_header_size: self.grpc_max_header_size,
            max_concurrent_streams: self.max_concurrent_streams,
            keepalive_interval: self.http2_keepalive_interval,
            keepalive_timeout: self.http2_keepalive_timeout,
            dashboard: self.dashboard.clone(),
        }
    }

    /// A configuration for a state API at `base_url` with the defaults of
    /// `serve`; the gRPC listener on a free loopback port.
    pub fn for_base_url(base_url: &str) -> Result<Self, ConfigError> {
        /// `serve`'s flags alone: the whole command line is `cli`'s.
        #[derive(clap::Parser)]
        struct Serve {
            #[command(flatten)]
            args: ServeArgs,
        }
        let parsed = <Serve as clap::Parser>::try_parse_from([
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
        parsed.args.validate()
    }
}

#[cfg(test)]
mod tests;
