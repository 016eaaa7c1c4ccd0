//! A notification's body: parsed and checked, everything but the token's
//! validity, by `parse_notification`, which never panics whatever the bytes
//! (it is the fuzzed part); and `Rejection`, every reason a request is
//! refused, with its status and label.

use std::time::Duration;

use axum::http::StatusCode;
use serde::Deserialize;

use crate::{
    core::tenant::{ChangeType, ContextId},
    token::TokenError,
    webhook::ratelimit::Limited,
};

/// The longest VersionName or FileVersion kept.
pub const MAX_VERSION_LEN: usize = 256;

/// A notification as SuperOffice sends it. Unknown fields are ignored; the
/// camelCase spellings are accepted too, as .NET serialisers may use them.
#[derive(Deserialize)]
struct RawNotification {
    #[serde(rename = "ChangeType", alias = "changeType")]
    change_type: i64,
    #[serde(rename = "ContextIdentifier", alias = "contextIdentifier")]
    context_identifier: String,
    #[serde(rename = "VersionName", alias = "versionName", default)]
    version_name: Option<String>,
    #[serde(rename = "FileVersion", alias = "fileVersion", default)]
    file_version: Option<String>,
    #[serde(rename = "PublicEndpoint", alias = "publicEndpoint", default)]
    public_endpoint: Option<String>,
    #[serde(rename = "Token", alias = "token")]
    token: String,
}

/// A well-formed notification, its token not yet verified.
#[derive(Clone, PartialEq, Eq)]
pub struct Notification {
    pub change_type: ChangeType,
    pub context_identifier: ContextId,
    pub version_name: String,
    pub file_version: String,
    /// A bare host name, lower case; empty when not given.
    pub public_endpoint: String,
    pub token: String,
}

impl Notification {
    /// What the notification says, as a 64-bit digest (never the token):
    /// the same notification sent again with its token is a retry; the
    /// token with anything else is a replay.
    pub fn fingerprint(&self) -> u64 {
        crate::token::digest64(&[
            self.context_identifier.as_str().as_bytes(),
            &(self.change_type as i64).to_be_bytes(),
            self.version_name.as_bytes(),
            self.file_version.as_bytes(),
            self.public_endpoint.as_bytes(),
        ])
    }
}

impl std::fmt::Debug for Notification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("Notification")
            .field("change_type", &self.change_type)
            .field("context_identifier", &self.context_identifier)
            .field("version_name", &self.version_name)
            .field("file_version", &self.file_version)
            .field("public_endpoint", &self.public_endpoint)
            .finish_non_exhaustive()
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("{message}")]
    BadRequest {
        reason: &'static str,
        message: String,
    },
    #[error("{0}")]
    Token(#[from] TokenError),
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the content type must be application/json")]
    UnsupportedMediaType,
    #[error("only POST is accepted here")]
    MethodNotAllowed,
    #[error("not found")]
    NotFound,
    #[error("the body did not arrive within {}", humantime::format_duration(*.0))]
    BodyTimeout(Duration),
    /// The replay memory is full of tokens still usable: refusing is
    /// safer than forgetting one. SuperOffice retries later.
    #[error("too many notifications to remember right now; try again shortly")]
    Busy,
    /// The journal could not make the notification durable (a full or
    /// failing disk): nothing was applied; SuperOffice retries later.
    #[error("the notification could not be stored durably right now; try again shortly")]
    NotStored,
    /// This client sent more than its share, or all clients together more
    /// than the total; Retry-After says when to try again.
    #[error("{}", match .0 {
        Limited::Client(_) => "too many requests from this address; slow down",
        Limited::Total(_) => "too many requests from all clients together; try again shortly",
    })]
    RateLimited(Limited),
}

impl Rejection {
    pub(super) fn bad(reason: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            reason,
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Token(_) => StatusCode::UNAUTHORIZED,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Busy | Self::NotStored => StatusCode::SERVICE_UNAVAILABLE,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// A short, stable label for metrics, logs and the response body.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadRequest { reason, .. } => reason,
            Self::Token(t) => t.reason(),
            Self::TooLarge(_) => "body_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::NotFound => "not_found",
            Self::BodyTimeout(_) => "body_timeout",
            Self::Busy => "busy",
            Self::NotStored => "not_stored",
            Self::RateLimited(Limited::Client(_)) => "rate_limited",
            Self::RateLimited(Limited::Total(_)) => "rate_limited_total",
        }
    }
}

/// Parses and checks a notification body (everything but the token's
/// validity). Never panics, whatever the bytes.
pub fn parse_notification(body: &[u8]) -> Result<Notification, Rejection> {
    let raw: RawNotification = serde_json::from_slice(body).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                "the body is not valid JSON"
            }
            _ => "the body is not a notification",
        };
        Rejection::bad("malformed_body", format!("{what}: {}", scrub(&e)))
    })?;
    let change_type = ChangeType::from_number(raw.change_type).ok_or_else(|| {
        Rejection::bad(
            "unknown_change_type",
            format!(
                "ChangeType {} is not one of 0 (Upgrade), 1 (BackupRestored), 2 (Suspend), 3 (Resume), 4 (Delete), 5 (Move)",
                raw.change_type
            ),
        )
    })?;
    let context_identifier = ContextId::parse(&raw.context_identifier)
        .map_err(|e| Rejection::bad("bad_context_identifier", format!("ContextIdentifier: {e}")))?;
    let version_name = bounded("VersionName", raw.version_name)?;
    let file_version = bounded("FileVersion", raw.file_version)?;
    let public_endpoint = match raw.public_endpoint.as_deref().map(str::trim) {
        None | Some("") => String::new(),
        Some(e) => public_host(e).ok_or_else(|| {
            Rejection::bad(
                "bad_public_endpoint",
                "PublicEndpoint must be a host name such as sod3.superoffice.com",
            )
        })?,
    };
    if change_type == ChangeType::Move && public_endpoint.is_empty() {
        return Err(Rejection::bad(
            "missing_public_endpoint",
            "PublicEndpoint is required with ChangeType 5 (Move)",
        ));
    }
    if raw.token.is_empty() {
        return Err(Rejection::bad("missing_token", "Token is empty"));
    }
    Ok(Notification {
        change_type,
        context_identifier,
        version_name,
        file_version,
        public_endpoint,
        token: raw.token,
    })
}

/// serde_json's message without the input it quotes, so that a token sent
/// in the wrong field is not echoed: `invalid type: string "eyJ...",
/// expected i64 at line 1 column 16` becomes `invalid type: string …,
/// expected i64 at line 1 column 16`. Messages that quote only our own
/// field names (missing or duplicate field) are kept whole.
fn scrub(e: &serde_json::Error) -> String {
    let text = e.to_string();
    if text.starts_with("missing field") || text.starts_with("duplicate field") {
        return text;
    }
    match (text.find(['"', '`']), text.rfind(['"', '`'])) {
        (Some(open), Some(close)) if close > open => {
            format!("{}…{}", &text[..open], &text[close + 1..])
        }
        _ => text,
    }
}

fn bounded(field: &str, value: Option<String>) -> Result<String, Rejection> {
    let value = value.unwrap_or_default();
    if value.chars().count() > MAX_VERSION_LEN {
        return Err(Rejection::bad(
            "field_too_long",
            format!("{field} is longer than {MAX_VERSION_LEN} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(Rejection::bad(
            "bad_field",
            format!("{field} holds control characters"),
        ));
    }
    Ok(value)
}

/// The host of a PublicEndpoint: a bare host (`sod3.superoffice.com`) as
/// SuperOffice sends it, or the host of an http(s) URL.
fn public_host(s: &str) -> Option<String> {
    let host = if s.contains("://") {
        let url = url::Url::parse(s).ok()?;
        if !matches!(url.scheme(), "http" | "https") {
            return None;
        }
        url.host_str()?.to_owned()
    } else {
        s.trim_end_matches('/').to_owned()
    };
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    valid.then(|| host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: serde_json::Value) -> Vec<u8> {
        v.to_string().into_bytes()
    }

    #[test]
    fn a_notification_as_superoffice_sends_it_parses() {
        let n = parse_notification(&body(serde_json::json!({
            "ChangeType": 5,
            "ContextIdentifier": "Cust12345",
            "VersionName": "Release 8.4 R08",
            "FileVersion": "8.4.12.1234",
            "PublicEndpoint": "SOD3.superoffice.com",
            "Token": "t",
            "SomethingNew": [1, 2]
        })))
        .unwrap();
        assert_eq!(n.change_type, ChangeType::Move);
        assert_eq!(n.context_identifier.as_str(), "Cust12345");
        assert_eq!(n.public_endpoint, "sod3.superoffice.com");
        assert_eq!(n.version_name, "Release 8.4 R08");
        let n = parse_notification(&body(serde_json::json!({
            "changeType": 0, "contextIdentifier": "Cust1", "token": "t",
            "VersionName": null
        })))
        .unwrap();
        assert_eq!(n.change_type, ChangeType::Upgrade);
        assert_eq!(n.version_name, "");
        let n = parse_notification(&body(serde_json::json!({
            "ChangeType": 5, "ContextIdentifier": "Cust1", "Token": "t",
            "PublicEndpoint": "https://sod3.superoffice.com/"
        })))
        .unwrap();
        assert_eq!(n.public_endpoint, "sod3.superoffice.com");
    }

    #[test]
    fn malformed_bodies_are_refused_with_their_reason() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"not json".to_vec(), "malformed_body"),
            (b"{\"ChangeType\":0,".to_vec(), "malformed_body"),
            (b"[]".to_vec(), "malformed_body"),
            (
                body(
                    serde_json::json!({"ChangeType": "0", "ContextIdentifier": "C", "Token": "t"}),
                ),
                "malformed_body",
            ),
            (
                body(serde_json::json!({"ContextIdentifier": "C", "Token": "t"})),
                "malformed_body",
            ),
            (
                body(serde_json::json!({"ChangeType": 9, "ContextIdentifier": "C", "Token": "t"})),
                "unknown_change_type",
            ),
            (
                body(
                    serde_json::json!({"ChangeType": 1e300, "ContextIdentifier": "C", "Token": "t"}),
                ),
                "malformed_body",
            ),
            (
                body(
                    serde_json::json!({"ChangeType": 0, "ContextIdentifier": "../x", "Token": "t"}),
                ),
                "bad_context_identifier",
            ),
            (
                body(serde_json::json!({"ChangeType": 5, "ContextIdentifier": "C", "Token": "t"})),
                "missing_public_endpoint",
            ),
            (
                body(
                    serde_json::json!({"ChangeType": 5, "ContextIdentifier": "C", "Token": "t", "PublicEndpoint": "evil/../x"}),
                ),
                "bad_public_endpoint",
            ),
            (
                body(serde_json::json!({"ChangeType": 0, "ContextIdentifier": "C", "Token": ""})),
                "missing_token",
            ),
            (
                body(
                    serde_json::json!({"ChangeType": 0, "ContextIdentifier": "C", "Token": "t", "VersionName": "v".repeat(300)}),
                ),
                "field_too_long",
            ),
            (
                br#"{"ChangeType":0,"ChangeType":1,"ContextIdentifier":"C","Token":"t"}"#.to_vec(),
                "malformed_body",
            ),
            (
                format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
                "malformed_body",
            ),
        ];
        for (b, reason) in cases {
            let e = parse_notification(&b).unwrap_err();
            assert_eq!(
                e.reason(),
                reason,
                "{:.60}: {e}",
                String::from_utf8_lossy(&b)
            );
            assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn error_messages_do_not_echo_the_input() {
        let secret = "eyJhbGciOiJSUzI1NiJ9.secret-payload.signature";
        let e = parse_notification(
            serde_json::json!({"ChangeType": secret, "ContextIdentifier": "C", "Token": "t"})
                .to_string()
                .as_bytes(),
        )
        .unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        assert!(e.to_string().contains("expected i64"), "{e}");
        let e = parse_notification(b"{\"ChangeType\": 1}").unwrap_err();
        assert!(
            e.to_string().contains("missing field `ContextIdentifier`"),
            "{e}"
        );
        let n = parse_notification(
            serde_json::json!({"ChangeType": 0, "ContextIdentifier": "C", "Token": secret})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        assert!(!format!("{n:?}").contains("secret"));
    }

    #[test]
    fn public_hosts_are_host_names() {
        assert_eq!(
            public_host("sod3.superoffice.com").as_deref(),
            Some("sod3.superoffice.com")
        );
        for bad in [
            "", "a b", "x/y", "ftp://x", "-a.com", "a..b", "é.com", "a:443",
        ] {
            assert_eq!(public_host(bad), None, "{bad}");
        }
    }
}
