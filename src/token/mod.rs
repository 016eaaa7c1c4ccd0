//! Verification of the RS256 tokens in SuperOffice's state-change
//! notifications (here), the environment's JWKS (`jwks`), and the memory of
//! tokens already used (`replay`).
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

mod jwks;
mod replay;

use std::{
    path::Path,
    time::{Duration, SystemTime},
};

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::Deserialize;
use url::Url;

use jwks::Jwks;
pub use jwks::{JwksStats, parse_jwks};
pub use replay::{Remembered, Seen, SeenTokens, TokenUse, digest64, token_digest};

/// The claim in which SuperOffice's tokens name the tenant.
pub const CONTEXT_CLAIM: &str = "http://schemes.superoffice.net/identity/ctx";

/// Seconds since the Unix epoch, as JWT claims count time.
pub fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Tokens longer than this are refused unread. SuperOffice's are about a
/// kilobyte.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// The default shortest time between two JWKS fetches caused by unknown
/// key ids.
pub const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(60);

/// The default time between two scheduled JWKS fetches.
pub const JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(3600);

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
    /// How often the JWKS is fetched again (sooner if its Cache-Control
    /// max-age says so): a key SuperOffice withdraws is no longer trusted
    /// after the next fetch.
    pub jwks_refresh_interval: Duration,
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
            Some(url) => Some(Jwks::new(
                url,
                settings.jwks_refetch_interval,
                settings.jwks_refresh_interval,
            )?),
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

    /// How long past `exp` a token is still accepted, so how long it must
    /// be remembered to refuse its replay.
    pub fn leeway(&self) -> Duration {
        Duration::from_secs(self.validation.leeway)
    }

    /// Makes JWKS fetches take their permits from the budget toward
    /// SuperOffice, as lookups do (they serve a notification waiting for
    /// its answer). Set once; later calls change nothing.
    pub fn use_budget(&self, budget: std::sync::Arc<crate::superoffice::budget::Budget>) {
        if let Some(jwks) = &self.jwks {
            jwks.use_budget(budget);
        }
    }

    /// Keeps the JWKS fresh: fetches it now (at start-up) and again on
    /// its schedule, until dropped. Failure is logged and counted, not
    /// fatal: certificate keys still work, the known keys are kept, and an
    /// unknown `kid` tries again. Without a JWKS, returns at once.
    pub async fn keep_jwks_fresh(&self) {
        if let Some(jwks) = &self.jwks {
            jwks.keep_fresh().await;
        }
    }

    /// How the JWKS is doing; `None` without one.
    pub fn jwks_stats(&self) -> Option<JwksStats> {
        self.jwks.as_ref().map(|j| j.stats())
    }

    /// How many keys are trusted now (files and JWKS).
    pub fn key_count(&self) -> usize {
        self.keys.len() + self.jwks.as_ref().map_or(0, |j| j.len())
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
                    if jwks.get(kid).is_none() {
                        jwks.refetch_if_due().await;
                    }
                    out.extend(jwks.get(kid));
                }
                None => {
                    if jwks.len() == 0 {
                        jwks.refetch_if_due().await;
                    }
                    out.extend(jwks.all());
                }
            }
        }
        out.extend(self.keys.iter().map(|k| k.key.clone()));
        out
    }
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

#[cfg(test)]
mod tests;
