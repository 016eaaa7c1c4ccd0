//! The webhook's flags validated into a `WebhookConfig`: its listener,
//! its limits, and the verifier's issuer, keys and JWKS.

use super::*;

impl WebhookArgs {
    pub(super) fn validate(
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
        if self.jwks_refresh_interval < Duration::from_secs(10)
            || self.jwks_refresh_interval > Duration::from_secs(24 * 3600)
        {
            return Err(bad(
                "--jwks-refresh-interval",
                "must be from 10s to 24h: often enough that a withdrawn key stops being trusted soon, rarely enough not to load SuperOffice",
            ));
        }
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
        if self.notification_hold > Duration::from_secs(24 * 3600) {
            return Err(bad(
                "--notification-hold",
                "at most 24h: past it, a notification SuperOffice never confirms would outweigh its state API for too long",
            ));
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
                jwks_refresh_interval: self.jwks_refresh_interval,
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
            notification_hold: self.notification_hold,
            accept_delay: Duration::ZERO,
        })
    }
}
