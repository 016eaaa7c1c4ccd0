//! The environment's JWKS: fetched from `/login/.well-known/jwks`, cached
//! by `kid`, refetched at most once a refetch interval.

use std::{
    collections::HashMap,
    sync::RwLock,
    time::{Duration, Instant},
};

use jsonwebtoken::DecodingKey;
use serde::Deserialize;
use url::Url;

/// The cached keys of one JWKS URL.
pub(super) struct Jwks {
    url: Url,
    client: reqwest::Client,
    keys: RwLock<HashMap<String, DecodingKey>>,
    /// When the last fetch started; held across the fetch so concurrent
    /// unknown key ids share one.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    refetch_interval: Duration,
}

impl Jwks {
    pub(super) fn new(url: Url, refetch_interval: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            url,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            keys: RwLock::new(HashMap::new()),
            last_fetch: tokio::sync::Mutex::new(None),
            refetch_interval,
        })
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

    /// Fetches now (at start-up), whenever the last fetch was. Failure is
    /// logged, not fatal.
    pub(super) async fn prefetch(&self) {
        let mut last = self.last_fetch.lock().await;
        *last = Some(Instant::now());
        if let Err(e) = self.fetch().await {
            tracing::warn!(url = %self.url, error = format!("{e:#}"), "could not fetch SuperOffice's JWKS; will try again on the next notification");
        }
    }

    /// Fetches again unless the last fetch was within the refetch interval
    /// or is under way.
    pub(super) async fn refetch_if_due(&self) {
        // A fetch already under way: go on with the keys we have rather
        // than queue behind it.
        let Ok(mut last) = self.last_fetch.try_lock() else {
            return;
        };
        if last.is_some_and(|t| t.elapsed() < self.refetch_interval) {
            return;
        }
        *last = Some(Instant::now());
        if let Err(e) = self.fetch().await {
            tracing::warn!(url = %self.url, error = format!("{e:#}"), "could not fetch SuperOffice's JWKS");
        }
    }

    async fn fetch(&self) -> anyhow::Result<()> {
        use anyhow::Context;
        let response = self
            .client
            .get(self.url.clone())
            .send()
            .await
            .context("request failed")?;
        if !response.status().is_success() {
            anyhow::bail!("answered {}", response.status());
        }
        let body = response.bytes().await.context("reading the body")?;
        if body.len() > 1024 * 1024 {
            anyhow::bail!("the JWKS is larger than 1 MiB");
        }
        let keys = parse_jwks(&body)?;
        if keys.is_empty() {
            // Never trade known keys for none: a broken publication should
            // not stop every notification.
            anyhow::bail!("the JWKS holds no usable RS256 signing key; keeping the keys we had");
        }
        tracing::info!(url = %self.url, keys = keys.len(), "fetched SuperOffice's JWKS");
        *self.keys.write().expect("jwks lock") = keys;
        Ok(())
    }
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
