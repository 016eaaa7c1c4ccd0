//! The environment's JWKS: fetched from `/login/.well-known/jwks`, cached
//! by `kid`, refreshed on a schedule (a key SuperOffice withdraws stops
//! being trusted at the next refresh), and refetched early, at most once a
//! refetch interval, for a token naming an unknown `kid`.

use std::{
    collections::HashMap,
    sync::{
        Arc, OnceLock, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use jsonwebtoken::DecodingKey;
use serde::Deserialize;
use url::Url;

use crate::superoffice::budget::{Budget, Class};

/// The cached keys of one JWKS URL.
pub(super) struct Jwks {
    url: Url,
    client: reqwest::Client,
    keys: RwLock<HashMap<String, DecodingKey>>,
    /// When the last fetch started; held across the fetch so concurrent
    /// unknown key ids share one.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    refetch_interval: Duration,
    refresh_interval: Duration,
    failures: AtomicU64,
    /// Unix seconds of the last successful fetch; 0 before the first.
    last_success: AtomicU64,
    /// The budget toward SuperOffice, once the application has one.
    budget: OnceLock<Arc<Budget>>,
}

/// The first wait before fetching again while no key is known; it doubles
/// up to the refetch interval.
const NO_KEYS_FIRST_RETRY: Duration = Duration::from_secs(1);

/// The largest JWKS read; the body is cut off as it streams past it.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// How the JWKS is doing, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JwksStats {
    /// Keys trusted from the JWKS now.
    pub keys: usize,
    /// When the JWKS was last fetched and parsed, if ever.
    pub last_refresh: Option<SystemTime>,
    /// Fetches that failed (the known keys were kept).
    pub failures: u64,
}

impl Jwks {
    pub(super) fn new(
        url: Url,
        refetch_interval: Duration,
        refresh_interval: Duration,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            url,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            keys: RwLock::new(HashMap::new()),
            last_fetch: tokio::sync::Mutex::new(None),
            refetch_interval,
            refresh_interval,
            failures: AtomicU64::new(0),
            last_success: AtomicU64::new(0),
            budget: OnceLock::new(),
        })
    }

    pub(super) fn use_budget(&self, budget: Arc<Budget>) {
        let _ = self.budget.set(budget);
    }

    pub(super) fn stats(&self) -> JwksStats {
        let last = self.last_success.load(Ordering::Relaxed);
        JwksStats {
            keys: self.len(),
            last_refresh: (last > 0).then(|| SystemTime::UNIX_EPOCH + Duration::from_secs(last)),
            failures: self.failures.load(Ordering::Relaxed),
        }
    }

    /// The key published under `kid`, if known.
    pub(super) fn get(&self, kid: &str) -> Option<DecodingKey> {
        self.keys.read().expect("jwks lock").get(kid).cloned()
    }

    /// Every key known.
    pub(super) fn all(&self) -> Vec<DecodingKey> {
        self.keys
            .read()
            .expect("jwks lock")
            .values()
            .cloned()
            .collect()
    }

    pub(super) fn len(&self) -> usize {
        self.keys.read().expect("jwks lock").len()
    }

    /// Fetches now (at start-up), then again every refresh interval, or
    /// sooner when the JWKS's Cache-Control max-age says so (but never more
    /// often than the refetch interval). Each successful fetch replaces the
    /// keys whole, so a withdrawn key is no longer trusted. A failed one
    /// keeps the known keys, and is tried again after the refetch interval.
    /// Runs until dropped.
    ///
    /// With no key at all (the first fetch failed), every notification is
    /// refused until one arrives, so it is tried again sooner: after 1 s,
    /// doubling up to the refetch interval. One request at a time, each
    /// through the budget, so a SuperOffice that is down sees no more than
    /// that.
    pub(super) async fn keep_fresh(&self) {
        let mut keyless_retry = NO_KEYS_FIRST_RETRY;
        loop {
            let next = {
                let mut last = self.last_fetch.lock().await;
                *last = Some(Instant::now());
                match self.fetch().await {
                    Ok(max_age) => {
                        keyless_retry = NO_KEYS_FIRST_RETRY;
                        self.refresh_interval
                            .min(max_age.map_or(Duration::MAX, |m| m.max(self.refetch_interval)))
                    }
                    Err(e) if self.len() == 0 => {
                        let retry = keyless_retry.min(self.refetch_interval);
                        keyless_retry = keyless_retry.saturating_mul(2);
                        tracing::warn!(url = %self.url, error = format!("{e:#}"), retry_in = ?retry, "could not fetch SuperOffice's JWKS, and no key is known: notifications are refused until it is fetched");
                        retry
                    }
                    Err(e) => {
                        tracing::warn!(url = %self.url, error = format!("{e:#}"), "could not fetch SuperOffice's JWKS; keeping the keys we had");
                        self.refetch_interval.min(self.refresh_interval)
                    }
                }
            };
            // Never a busy loop, whatever the settings.
            tokio::time::sleep(next.max(Duration::from_millis(100))).await;
        }
    }

    /// Fetches again unless the last fetch was within the refetch interval
    /// or is under way.
    pub(super) async fn refetch_if_due(&self) {
        // A fetch already under way: go on with the keys we have rather
        // than queue behind it; with no key at all (the first fetch, at
        // start), wait for it instead of refusing a good token.
        let mut last = match self.last_fetch.try_lock() {
            Ok(last) => last,
            Err(_) if self.len() == 0 => {
                let _ = self.last_fetch.lock().await;
                return;
            }
            Err(_) => return,
        };
        if last.is_some_and(|t| t.elapsed() < self.refetch_interval) {
            return;
        }
        *last = Some(Instant::now());
        if let Err(e) = self.fetch().await {
            tracing::warn!(url = %self.url, error = format!("{e:#}"), "could not fetch SuperOffice's JWKS");
        }
    }

    /// Fetches and, if it holds a usable key, replaces the keys; returns
    /// the response's Cache-Control max-age. A failure is counted.
    async fn fetch(&self) -> anyhow::Result<Option<Duration>> {
        let result = self.fetch_once().await;
        match &result {
            Ok(_) => {
                let now = crate::token::unix_seconds(SystemTime::now());
                self.last_success.store(now.max(1), Ordering::Relaxed);
            }
            Err(_) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    async fn fetch_once(&self) -> anyhow::Result<Option<Duration>> {
        use anyhow::Context;
        // Behind nothing but other lookups: a notification may be waiting.
        let permit = match self.budget.get() {
            Some(b) => Some(b.acquire(Class::Lookup, Some(b.limits().max_wait)).await?),
            None => None,
        };
        let mut response = self
            .client
            .get(self.url.clone())
            .send()
            .await
            .context("request failed")?;
        if let Some(p) = &permit {
            if response.status() == reqwest::StatusCode::TOO_MANY_REQUESTS {
                let retry_after = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(crate::superoffice::parse_retry_after);
                p.rate_limited(retry_after);
            } else {
                p.answered();
            }
        }
        if !response.status().is_success() {
            anyhow::bail!("answered {}", response.status());
        }
        let max_age = response
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age);
        if response
            .content_length()
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            anyhow::bail!("the JWKS is larger than 1 MiB");
        }
        // Read as it streams, so an endless body costs at most the cap.
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.context("reading the body")? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                anyhow::bail!("the JWKS is larger than 1 MiB");
            }
            body.extend_from_slice(&chunk);
        }
        let keys = parse_jwks(&body)?;
        if keys.is_empty() {
            // Never trade known keys for none: a broken publication should
            // not stop every notification.
            anyhow::bail!("the JWKS holds no usable RS256 signing key; keeping the keys we had");
        }
        let mut known = self.keys.write().expect("jwks lock");
        let withdrawn: Vec<&String> = known.keys().filter(|k| !keys.contains_key(*k)).collect();
        if !withdrawn.is_empty() {
            tracing::warn!(url = %self.url, ?withdrawn, "keys withdrawn from SuperOffice's JWKS are no longer trusted");
        }
        tracing::info!(url = %self.url, keys = keys.len(), "fetched SuperOffice's JWKS");
        *known = keys;
        Ok(max_age)
    }
}

/// `max-age` of a Cache-Control value; none for `no-store` or `no-cache`.
fn max_age(cache_control: &str) -> Option<Duration> {
    let mut age = None;
    for directive in cache_control.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return None;
        }
        if let Some(v) = lower.strip_prefix("max-age=") {
            age = v
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    age
}

/// The RS256 signing keys of a JWKS document, by `kid`. Keys of other
/// types, for encryption (`use: enc`) or for other algorithms are skipped
/// one by one, so one odd key does not hide the rest.
pub fn parse_jwks(body: &[u8]) -> anyhow::Result<HashMap<String, DecodingKey>> {
    use anyhow::Context;
    #[derive(Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(body).context("not a JWKS document")?;
    let mut keys = HashMap::new();
    for (i, value) in set.keys.into_iter().enumerate() {
        let usable = value.get("kty").and_then(|v| v.as_str()) == Some("RSA")
            && value
                .get("use")
                .and_then(|v| v.as_str())
                .is_none_or(|u| u == "sig")
            && value
                .get("alg")
                .and_then(|v| v.as_str())
                .is_none_or(|a| a == "RS256");
        if !usable {
            continue;
        }
        let Ok(jwk) = serde_json::from_value::<jsonwebtoken::jwk::Jwk>(value) else {
            continue;
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        // Trusted all the same without a kid: tokens without one try every key.
        let kid = jwk
            .common
            .key_id
            .clone()
            .unwrap_or_else(|| format!("(no kid #{i})"));
        keys.insert(kid, key);
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read_from_cache_control() {
        assert_eq!(
            max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            max_age("Max-Age=\"60\", must-revalidate"),
            Some(Duration::from_secs(60))
        );
        assert_eq!(max_age("no-store"), None);
        assert_eq!(max_age("max-age=60, no-cache"), None);
        assert_eq!(max_age("max-age=soon"), None);
        assert_eq!(max_age(""), None);
    }
}
