//! Verification of the RS256 tokens in SuperOffice's state-change
//! notifications, and the memory of tokens already used.
//!
//! Rules, in the order they are checked:
//! - The header's `alg` is RS256. Nothing else is tried: not `none`, not
//!   HS256 (whose "secret" an attacker would pick to be our public key).
//! - The signature verifies with a trusted RSA key: one loaded from a
//!   certificate or public key file, or one published in the environment's
//!   JWKS (cached by `kid`; an unknown `kid` refetches at most once a
//!   minute, so forged key ids cannot make us hammer SuperOffice).
//! - `iss` is the pinned issuer, `exp` has not passed and `nbf` has come
//!   (both with a leeway), `aud` matches when an audience is configured.
//! - A context claim, where present, names the notification's tenant.
//!
//! Error texts never contain the token or its claims.

use std::{
    collections::{BTreeSet, HashMap},
    hash::{BuildHasher, RandomState},
    path::Path,
    sync::{Mutex, RwLock},
    time::{Duration, Instant, SystemTime},
};

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::Deserialize;
use url::Url;

use crate::sim::signer::unix_seconds;

/// Tokens longer than this are refused unread. SuperOffice's are about a
/// kilobyte.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// The default shortest time between two JWKS fetches caused by unknown
/// key ids.
pub const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(60);

/// Why a token was refused. The messages are safe to return and to log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a well-formed JWT ({0})")]
    Malformed(&'static str),
    #[error("the token is signed with {0}; only RS256 is accepted")]
    Algorithm(String),
    #[error("the token's signature does not match any trusted SuperOffice key")]
    Signature,
    #[error("no SuperOffice signing key is available yet (the JWKS could not be fetched)")]
    NoKeys,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf is in the future)")]
    NotYetValid,
    #[error("the token was not issued by {0}")]
    Issuer(String),
    #[error("the token is not for audience {0}")]
    Audience(String),
    #[error("the token lacks the {0} claim")]
    MissingClaim(String),
    #[error("the token's claims are malformed")]
    BadClaims,
    #[error("the token names another tenant than ContextIdentifier")]
    ContextMismatch,
    #[error("the token was already used; a notification is applied once")]
    Replayed,
}

impl TokenError {
    /// A short, stable label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "token_malformed",
            Self::Algorithm(_) => "token_algorithm",
            Self::Signature => "token_signature",
            Self::NoKeys => "token_no_keys",
            Self::Expired => "token_expired",
            Self::NotYetValid => "token_not_yet_valid",
            Self::Issuer(_) => "token_issuer",
            Self::Audience(_) => "token_audience",
            Self::MissingClaim(_) => "token_missing_claim",
            Self::BadClaims => "token_claims",
            Self::ContextMismatch => "token_context_mismatch",
            Self::Replayed => "token_replayed",
        }
    }
}

/// A trusted key loaded from a file, named for logs.
#[derive(Clone, Debug)]
pub struct TrustedKey {
    pub label: String,
    pub key: DecodingKey,
}

/// Loads the RSA keys in a file: PEM certificates (as SuperOffice
/// distributes `SOD_SuperOfficeFederatedLogin.crt`), PEM public keys, or one
/// DER certificate. Every RSA key in the file is trusted.
pub fn load_keys(path: &Path) -> Result<Vec<TrustedKey>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    // PEM may follow a byte-order mark or OpenSSL's "Bag Attributes" and
    // "subject=" lines; anything without a PEM block is taken as DER.
    let is_pem = bytes.windows(11).any(|w| w == b"-----BEGIN ");
    let blocks = if is_pem {
        pem::parse_many(&bytes).map_err(|e| format!("{} is not valid PEM: {e}", path.display()))?
    } else {
        // A .crt in binary DER form.
        vec![pem::Pem::new("CERTIFICATE", bytes)]
    };
    let mut keys = Vec::new();
    for (i, block) in blocks.iter().enumerate() {
        if !matches!(block.tag(), "CERTIFICATE" | "PUBLIC KEY" | "RSA PUBLIC KEY") {
            continue;
        }
        let text = pem::encode(block);
        let key = DecodingKey::from_rsa_pem(text.as_bytes()).map_err(|e| {
            format!(
                "{} block {} ({}) holds no RSA public key: {e}",
                path.display(),
                i + 1,
                block.tag()
            )
        })?;
        keys.push(TrustedKey {
            label: format!("{}#{}", path.display(), i + 1),
            key,
        });
    }
    if keys.is_empty() {
        return Err(format!(
            "{} holds no certificate or public key",
            path.display()
        ));
    }
    Ok(keys)
}

/// What the verifier needs to know.
#[derive(Clone, Debug)]
pub struct VerifierSettings {
    pub issuer: String,
    pub audience: Option<String>,
    pub leeway: Duration,
    pub keys: Vec<TrustedKey>,
    pub jwks_url: Option<Url>,
    /// The shortest time between two JWKS fetches caused by unknown key ids.
    pub jwks_refetch_interval: Duration,
}

/// What a verified token tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// `exp`, Unix seconds.
    pub expires_at: u64,
}

#[derive(Deserialize)]
struct RawHeader {
    alg: Option<serde_json::Value>,
    kid: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    /// Required, but optional here so that its absence is reported as such
    /// by the validation rather than as a malformed claim set.
    exp: Option<u64>,
    #[serde(rename = "http://schemes.superoffice.net/identity/ctx", default)]
    ctx: Option<serde_json::Value>,
}

/// Verifies notification tokens.
pub struct Verifier {
    validation: Validation,
    issuer: String,
    audience: Option<String>,
    keys: Vec<TrustedKey>,
    jwks: Option<Jwks>,
}

struct Jwks {
    url: Url,
    client: reqwest::Client,
    keys: RwLock<HashMap<String, DecodingKey>>,
    /// When the last fetch started; held across the fetch so concurrent
    /// unknown key ids share one.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    refetch_interval: Duration,
}

impl Verifier {
    pub fn new(settings: VerifierSettings) -> anyhow::Result<Self> {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.algorithms = vec![Algorithm::RS256];
        validation.leeway = settings.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[&settings.issuer]);
        validation.set_required_spec_claims(&["exp", "iss"]);
        match &settings.audience {
            Some(a) => validation.set_audience(&[a]),
            None => validation.validate_aud = false,
        }
        let jwks = match settings.jwks_url {
            Some(url) => Some(Jwks {
                url,
                client: reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .redirect(reqwest::redirect::Policy::none())
                    .build()?,
                keys: RwLock::new(HashMap::new()),
                last_fetch: tokio::sync::Mutex::new(None),
                refetch_interval: settings.jwks_refetch_interval,
            }),
            None => None,
        };
        Ok(Self {
            validation,
            issuer: settings.issuer,
            audience: settings.audience,
            keys: settings.keys,
            jwks,
        })
    }

    /// Fetches the JWKS now (at start-up). Failure is logged, not fatal:
    /// certificate keys still work, and an unknown `kid` tries again.
    pub async fn prefetch(&self) {
        if let Some(jwks) = &self.jwks {
            let mut last = jwks.last_fetch.lock().await;
            *last = Some(Instant::now());
            if let Err(e) = jwks.fetch().await {
                tracing::warn!(url = %jwks.url, error = format!("{e:#}"), "could not fetch SuperOffice's JWKS; will try again on the next notification");
            }
        }
    }

    /// How many keys are trusted now (files and JWKS).
    pub fn key_count(&self) -> usize {
        self.keys.len()
            + self
                .jwks
                .as_ref()
                .map_or(0, |j| j.keys.read().expect("jwks lock").len())
    }

    /// Verifies `token` for a notification about `ctx`.
    pub async fn verify(&self, token: &str, ctx: &str) -> Result<Verified, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed("too long"));
        }
        let header = read_header(token)?;
        match header.alg.as_ref().and_then(|a| a.as_str()) {
            Some("RS256") => {}
            Some(other) => return Err(TokenError::Algorithm(printable(other))),
            None => return Err(TokenError::Malformed("no alg in the header")),
        }
        let candidates = self.candidates(header.kid.as_deref()).await;
        if candidates.is_empty() {
            // A key id we do not know is a key we do not trust, unless we
            // know no keys at all yet.
            return Err(if self.key_count() == 0 {
                TokenError::NoKeys
            } else {
                TokenError::Signature
            });
        }
        let mut claims = None;
        for key in &candidates {
            match jsonwebtoken::decode::<Claims>(token, key, &self.validation) {
                Ok(data) => {
                    claims = Some(data.claims);
                    break;
                }
                Err(e) => match e.kind() {
                    // Another key may be the one.
                    ErrorKind::InvalidSignature
                    | ErrorKind::InvalidRsaKey(_)
                    | ErrorKind::InvalidKeyFormat => continue,
                    _ => return Err(self.map_error(e.kind())),
                },
            }
        }
        let claims = claims.ok_or(TokenError::Signature)?;
        if let Some(named) = &claims.ctx {
            let matches = match named {
                serde_json::Value::String(s) => s == ctx,
                serde_json::Value::Array(all) => all.iter().any(|v| v.as_str() == Some(ctx)),
                _ => false,
            };
            if !matches {
                return Err(TokenError::ContextMismatch);
            }
        }
        Ok(Verified {
            expires_at: claims
                .exp
                .ok_or(TokenError::MissingClaim("exp".to_owned()))?,
        })
    }

    fn map_error(&self, kind: &ErrorKind) -> TokenError {
        match kind {
            ErrorKind::ExpiredSignature => TokenError::Expired,
            ErrorKind::ImmatureSignature => TokenError::NotYetValid,
            ErrorKind::InvalidIssuer => TokenError::Issuer(self.issuer.clone()),
            ErrorKind::InvalidAudience => {
                TokenError::Audience(self.audience.clone().unwrap_or_default())
            }
            ErrorKind::MissingRequiredClaim(c) => TokenError::MissingClaim(printable(c)),
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                TokenError::Algorithm("another algorithm".to_owned())
            }
            ErrorKind::Json(_) | ErrorKind::InvalidClaimFormat(_) => TokenError::BadClaims,
            ErrorKind::Base64(_) | ErrorKind::Utf8(_) | ErrorKind::InvalidToken => {
                TokenError::Malformed("not three base64url parts")
            }
            _ => TokenError::Signature,
        }
    }

    /// The keys to try: the JWKS key named by `kid` (refetching the JWKS
    /// once a minute at most when it is unknown), or every JWKS key when
    /// the token names none; then the keys from files.
    async fn candidates(&self, kid: Option<&str>) -> Vec<DecodingKey> {
        let mut out = Vec::new();
        if let Some(jwks) = &self.jwks {
            match kid {
                Some(kid) => {
                    let known = jwks.keys.read().expect("jwks lock").get(kid).cloned();
                    match known {
                        Some(k) => out.push(k),
                        None => {
                            jwks.refetch_if_due().await;
                            if let Some(k) = jwks.keys.read().expect("jwks lock").get(kid) {
                                out.push(k.clone());
                            }
                        }
                    }
                }
                None => {
                    if jwks.keys.read().expect("jwks lock").is_empty() {
                        jwks.refetch_if_due().await;
                    }
                    out.extend(jwks.keys.read().expect("jwks lock").values().cloned());
                }
            }
        }
        out.extend(self.keys.iter().map(|k| k.key.clone()));
        out
    }
}

impl Jwks {
    async fn refetch_if_due(&self) {
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

fn read_header(token: &str) -> Result<RawHeader, TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed("not three base64url parts"));
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| TokenError::Malformed("the header is not base64url"))?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed("the header is not JSON"))
}

/// A short, printable rendering of an attacker-chosen string for an error.
fn printable(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(32)
        .collect()
}

/// Whether a token was seen before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    First,
    Replay,
    /// The memory is full of tokens still usable.
    Full,
}

/// Tokens already accepted, remembered until they expire, at most
/// `capacity` of them. Each is kept as a 64-bit keyed hash, so the memory
/// is about 50 bytes a token whatever its size.
pub struct SeenTokens {
    capacity: usize,
    hasher: RandomState,
    inner: Mutex<SeenInner>,
}

#[derive(Default)]
struct SeenInner {
    expiry: HashMap<u64, u64>,
    by_expiry: BTreeSet<(u64, u64)>,
}

impl SeenTokens {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            hasher: RandomState::new(),
            inner: Mutex::new(SeenInner::default()),
        }
    }

    /// Records `token`, usable until `forget_after` (Unix seconds), and
    /// says whether this is its first use. When the memory is full of
    /// tokens still usable, nothing is forgotten (that would open a replay
    /// window): the answer is `Full` and the caller refuses for now.
    pub fn first_use(&self, token: &str, forget_after: u64, now: SystemTime) -> Seen {
        let hash = self.hasher.hash_one(token);
        let now = unix_seconds(now);
        let mut inner = self.inner.lock().expect("seen tokens lock");
        while let Some(&(exp, h)) = inner.by_expiry.first() {
            if exp >= now {
                break;
            }
            inner.by_expiry.pop_first();
            inner.expiry.remove(&h);
        }
        if inner.expiry.contains_key(&hash) {
            return Seen::Replay;
        }
        if inner.expiry.len() >= self.capacity {
            return Seen::Full;
        }
        inner.expiry.insert(hash, forget_after);
        inner.by_expiry.insert((forget_after, hash));
        Seen::First
    }

    /// Forgets `token`: it was recorded but its notification could not be
    /// kept, so SuperOffice's retry must not be refused as a replay.
    pub fn forget(&self, token: &str) {
        let hash = self.hasher.hash_one(token);
        let mut inner = self.inner.lock().expect("seen tokens lock");
        if let Some(exp) = inner.expiry.remove(&hash) {
            inner.by_expiry.remove(&(exp, hash));
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().expect("seen tokens lock").expiry.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::signer::{CONTEXT_CLAIM, Signer};
    use serde_json::json;

    const ISSUER: &str = "https://sod.superoffice.com";

    fn verifier_for(signer: &Signer) -> Verifier {
        Verifier::new(settings_for(signer)).unwrap()
    }

    fn settings_for(signer: &Signer) -> VerifierSettings {
        let dir = std::env::temp_dir().join(format!(
            "ts-token-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = dir.join("so.crt");
        std::fs::write(&cert, signer.certificate_pem()).unwrap();
        VerifierSettings {
            issuer: ISSUER.to_owned(),
            audience: None,
            leeway: Duration::from_secs(60),
            keys: load_keys(&cert).unwrap(),
            jwks_url: None,
            jwks_refetch_interval: JWKS_REFETCH_INTERVAL,
        }
    }

    fn b64(v: &serde_json::Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    #[tokio::test]
    async fn a_certificate_file_verifies_good_tokens_and_refuses_forgeries() {
        let signer = Signer::shared(ISSUER).unwrap();
        let v = verifier_for(&signer);
        let good = signer.notification_token("Cust1", Duration::from_secs(300));
        let verified = v.verify(&good, "Cust1").await.unwrap();
        assert!(verified.expires_at > unix_seconds(SystemTime::now()));

        assert_eq!(
            v.verify(&good, "Cust2").await,
            Err(TokenError::ContextMismatch)
        );

        let claims = signer.notification_claims("Cust1", Duration::from_secs(300));
        let none = format!("{}.{}.", b64(&json!({"alg": "none"})), b64(&claims));
        assert_eq!(
            v.verify(&none, "Cust1").await,
            Err(TokenError::Algorithm("none".into()))
        );

        // HS256 with our own public key as the shared secret.
        let hs = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(signer.certificate_pem().as_bytes()),
        )
        .unwrap();
        assert_eq!(
            v.verify(&hs, "Cust1").await,
            Err(TokenError::Algorithm("HS256".into()))
        );

        // The payload swapped for another tenant's, signature kept.
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        parts[1] = b64(&signer.notification_claims("Cust9", Duration::from_secs(300)));
        assert_eq!(
            v.verify(&parts.join("."), "Cust9").await,
            Err(TokenError::Signature)
        );

        for garbage in ["", "abc", "a.b.c", "....", &"x".repeat(MAX_TOKEN_LEN + 1)] {
            assert!(
                matches!(
                    v.verify(garbage, "Cust1").await,
                    Err(TokenError::Malformed(_))
                ),
                "{garbage:.20}"
            );
        }
    }

    #[tokio::test]
    async fn time_and_issuer_are_checked_with_leeway() {
        let signer = Signer::shared(ISSUER).unwrap();
        let v = verifier_for(&signer);
        let now = unix_seconds(SystemTime::now());
        let token = |iss: &str, nbf: u64, exp: u64| {
            signer.sign(&json!({"iss": iss, "nbf": nbf, "exp": exp, CONTEXT_CLAIM: "Cust1"}))
        };
        assert_eq!(
            v.verify(&token(ISSUER, now - 600, now - 120), "Cust1")
                .await,
            Err(TokenError::Expired)
        );
        // Within the 60 s leeway.
        assert!(
            v.verify(&token(ISSUER, now - 600, now - 30), "Cust1")
                .await
                .is_ok()
        );
        assert_eq!(
            v.verify(&token(ISSUER, now + 600, now + 900), "Cust1")
                .await,
            Err(TokenError::NotYetValid)
        );
        assert_eq!(
            v.verify(
                &token("https://online.superoffice.com", now, now + 60),
                "Cust1"
            )
            .await,
            Err(TokenError::Issuer(ISSUER.into()))
        );
        let no_exp = signer.sign(&json!({"iss": ISSUER}));
        assert_eq!(
            v.verify(&no_exp, "Cust1").await,
            Err(TokenError::MissingClaim("exp".into()))
        );
        // Without a context claim the token is not bound to a tenant.
        let unbound = signer.sign(&json!({"iss": ISSUER, "exp": now + 60}));
        assert!(v.verify(&unbound, "Cust7").await.is_ok());
    }

    #[tokio::test]
    async fn another_key_is_refused_and_several_files_rotate() {
        let ours = Signer::shared(ISSUER).unwrap();
        let foreign = Signer::generate(ISSUER).unwrap();
        let v = verifier_for(&ours);
        let forged = foreign.notification_token("Cust1", Duration::from_secs(60));
        assert_eq!(v.verify(&forged, "Cust1").await, Err(TokenError::Signature));

        // Both keys trusted: the old certificate and its successor, the
        // second as a bare public key.
        let dir = std::env::temp_dir().join(format!("ts-rotate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let both = dir.join("both.pem");
        std::fs::write(
            &both,
            format!("{}\n{}", ours.certificate_pem(), foreign.public_key_pem()),
        )
        .unwrap();
        let keys = load_keys(&both).unwrap();
        assert_eq!(keys.len(), 2);
        let v = Verifier::new(VerifierSettings {
            issuer: ISSUER.into(),
            audience: None,
            leeway: Duration::from_secs(60),
            keys,
            jwks_url: None,
            jwks_refetch_interval: JWKS_REFETCH_INTERVAL,
        })
        .unwrap();
        assert!(v.verify(&forged, "Cust1").await.is_ok());
        let good = ours.notification_token("Cust1", Duration::from_secs(60));
        assert!(v.verify(&good, "Cust1").await.is_ok());
    }

    #[tokio::test]
    async fn an_audience_is_checked_when_configured() {
        let signer = Signer::shared(ISSUER).unwrap();
        let v = Verifier::new(VerifierSettings {
            audience: Some("our-app".into()),
            ..settings_for(&signer)
        })
        .unwrap();
        let now = unix_seconds(SystemTime::now());
        let ours = signer.sign(&json!({"iss": ISSUER, "exp": now + 60, "aud": "our-app"}));
        assert!(v.verify(&ours, "Cust1").await.is_ok());
        let theirs = signer.sign(&json!({"iss": ISSUER, "exp": now + 60, "aud": "other"}));
        assert_eq!(
            v.verify(&theirs, "Cust1").await,
            Err(TokenError::Audience("our-app".into()))
        );
    }

    #[test]
    fn key_files_that_hold_no_key_are_refused_with_the_reason() {
        let dir = std::env::temp_dir().join(format!("ts-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(
            &junk,
            "-----BEGIN NOTHING-----\nAAAA\n-----END NOTHING-----\n",
        )
        .unwrap();
        assert!(
            load_keys(&junk)
                .unwrap_err()
                .contains("holds no certificate")
        );
        let garbage = dir.join("garbage.crt");
        std::fs::write(&garbage, b"\x30\x03\x02\x01\x01").unwrap();
        assert!(
            load_keys(&garbage)
                .unwrap_err()
                .contains("no RSA public key")
        );
        let signer = Signer::shared(ISSUER).unwrap();
        let bag = dir.join("bag.pem");
        std::fs::write(
            &bag,
            format!(
                "\u{feff}Bag Attributes\nsubject=CN = x\n{}",
                signer.certificate_pem()
            ),
        )
        .unwrap();
        assert_eq!(load_keys(&bag).unwrap().len(), 1);
        let der = dir.join("so.der.crt");
        std::fs::write(
            &der,
            pem::parse(signer.certificate_pem()).unwrap().contents(),
        )
        .unwrap();
        assert_eq!(load_keys(&der).unwrap().len(), 1);
        assert!(
            load_keys(&dir.join("missing.crt"))
                .unwrap_err()
                .contains("cannot read")
        );
    }

    #[test]
    fn a_jwks_yields_its_rs256_signing_keys_and_skips_the_rest() {
        let signer = Signer::shared(ISSUER).unwrap();
        let mut good = serde_json::to_value(signer.jwks()).unwrap()["keys"][0].clone();
        good["alg"] = json!("RS256");
        let mut enc = good.clone();
        enc["use"] = json!("enc");
        enc["kid"] = json!("enc");
        let mut ps = good.clone();
        ps["alg"] = json!("PS256");
        ps["kid"] = json!("ps");
        let doc = json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA", "kid": "ec"},
            {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
            {"kty": "OKP", "crv": "X448", "x": "AAAA"},
            enc, ps, good
        ]});
        let keys = parse_jwks(doc.to_string().as_bytes()).unwrap();
        assert_eq!(keys.len(), 1, "{:?}", keys.keys().collect::<Vec<_>>());
        assert!(keys.contains_key(signer.kid()));
        assert!(parse_jwks(b"[]").is_err());
    }

    #[test]
    fn seen_tokens_are_remembered_until_expiry_within_a_bound() {
        let seen = SeenTokens::new(3);
        let now = SystemTime::now();
        let t = unix_seconds(now);
        assert_eq!(seen.first_use("a", t + 100, now), Seen::First);
        assert_eq!(seen.first_use("a", t + 100, now), Seen::Replay);
        assert_eq!(seen.first_use("b", t + 50, now), Seen::First);
        assert_eq!(seen.first_use("c", t + 200, now), Seen::First);
        // Full of usable tokens: nothing is forgotten early.
        assert_eq!(seen.first_use("d", t + 300, now), Seen::Full);
        assert_eq!(seen.len(), 3);
        assert_eq!(seen.first_use("a", t + 100, now), Seen::Replay);
        // Once "b" and "a" expire there is room again, and they are
        // forgotten (the verifier refuses them as expired by then).
        let later = now + Duration::from_secs(150);
        assert_eq!(seen.first_use("d", t + 400, later), Seen::First);
        assert_eq!(seen.first_use("a", t + 500, later), Seen::First);
    }
}
