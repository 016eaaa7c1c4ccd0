//! The public state-change webhook: SuperOffice POSTs a notification when
//! it upgrades, suspends, resumes, deletes, restores or moves a tenant.
//!
//! The listener faces the internet, so it serves the one path and nothing
//! else, reads at most `--webhook-max-body` bytes, verifies the token before anything
//! is applied, applies a token once, and answers 204 only once the change
//! is in the store. Every refusal is a JSON body naming the reason, is
//! logged once and counted, and never contains the token.

pub mod ratelimit;

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use axum::{
    Router,
    body::Body,
    extract::{ConnectInfo, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
    routing::any,
};
use serde::Deserialize;

use crate::{
    admin::metrics::Metrics,
    core::store::Store,
    core::tenant::{ChangeType, ContextId, NotificationInfo},
    persist::journal::Journal,
    sim::signer::unix_seconds,
    superoffice::poller::PollerHandle,
    token::{Seen, SeenTokens, TokenError, Verifier},
    webhook::ratelimit::{Limited, RateLimiter},
};

/// The largest notification body read unless `--webhook-max-body` says
/// otherwise. SuperOffice's are well under 2 KiB.
pub const DEFAULT_MAX_BODY: usize = 64 * 1024;

/// The longest a client may take to send the body once its headers came,
/// unless `--webhook-body-timeout` says otherwise.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(10);

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
    fn bad(reason: &'static str, message: impl Into<String>) -> Self {
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

/// The webhook's shared state.
pub struct Webhook {
    verifier: Arc<Verifier>,
    seen: SeenTokens,
    store: Arc<Store>,
    poller: PollerHandle,
    /// Seconds a token stays usable past `exp`; it is remembered that long.
    leeway: u64,
    path: String,
    metrics: Arc<Metrics>,
    limiter: Option<RateLimiter>,
    max_body: usize,
    body_timeout: Duration,
    journal: Option<Arc<Journal>>,
}

impl Webhook {
    pub fn new(
        verifier: Arc<Verifier>,
        seen: SeenTokens,
        store: Arc<Store>,
        poller: PollerHandle,
        leeway: std::time::Duration,
        path: String,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            verifier,
            seen,
            store,
            poller,
            leeway: leeway.as_secs(),
            path,
            metrics,
            limiter: None,
            max_body: DEFAULT_MAX_BODY,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            journal: None,
        }
    }

    /// Makes each notification durable in `journal` before it is applied
    /// and acknowledged.
    pub fn with_journal(mut self, journal: Arc<Journal>) -> Self {
        self.journal = Some(journal);
        self
    }

    /// Limits each client address to `per_second` notifications a second,
    /// `burst` at once (`per_client`), and all clients together to `total`
    /// a second; past either, 429 with Retry-After.
    pub fn with_rate_limit(mut self, per_client: Option<(f64, f64)>, total: Option<f64>) -> Self {
        self.limiter = Some(RateLimiter::new(per_client, total));
        self
    }

    /// Bodies over `max_body` bytes get 413; a body not complete within
    /// `timeout` of the headers, 408.
    pub fn with_body_limits(mut self, max_body: usize, timeout: Duration) -> Self {
        self.max_body = max_body;
        self.body_timeout = timeout;
        self
    }

    /// The router: the webhook path, and a JSON 404 for anything else.
    pub fn router(self: Arc<Self>) -> Router {
        let path = self.path.clone();
        Router::new()
            .route(&path, any(notify))
            .fallback(not_found)
            .with_state(self)
    }

    /// Verifies and applies a notification. Returns the applied revision.
    pub async fn accept(&self, body: &[u8]) -> Result<(Notification, u64), Rejection> {
        let n = parse_notification(body)?;
        let verified = self
            .verifier
            .verify(&n.token, &n.context_identifier)
            .await?;
        let now = SystemTime::now();
        let forget_after = verified.expires_at.saturating_add(self.leeway);
        if forget_after < unix_seconds(now) {
            return Err(TokenError::Expired.into());
        }
        match self.seen.first_use(&n.token, forget_after, now) {
            Seen::First => {}
            Seen::Replay => return Err(TokenError::Replayed.into()),
            Seen::Full => return Err(Rejection::Busy),
        }
        let info = NotificationInfo {
            change_type: n.change_type,
            version_name: n.version_name.clone(),
            file_version: n.file_version.clone(),
            public_endpoint: n.public_endpoint.clone(),
            received_at: now,
        };
        let apply = || {
            self.store
                .apply_notification(&n.context_identifier, info.clone(), now)
        };
        let applied = match &self.journal {
            None => apply(),
            Some(journal) => match journal.record(&n.context_identifier, &info, apply).await {
                Ok(applied) => applied,
                Err(e) => {
                    tracing::error!(error = %e, tenant = %n.context_identifier, "could not write the notification journal");
                    // Not kept: SuperOffice's retry of this token is
                    // welcome.
                    self.seen.forget(&n.token);
                    return Err(Rejection::NotStored);
                }
            },
        };
        self.poller.confirm(n.context_identifier.clone());
        Ok((n, applied.record.revision))
    }
}

async fn notify(
    State(hook): State<Arc<Webhook>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        // First, before the body is read or a signature checked: a flood
        // costs us as little as possible.
        if let Some(limiter) = &hook.limiter {
            limiter
                .check(peer.ip(), std::time::Instant::now())
                .map_err(Rejection::RateLimited)?;
        }
        if method != Method::POST {
            return Err(Rejection::MethodNotAllowed);
        }
        if !is_json(&headers) {
            return Err(Rejection::UnsupportedMediaType);
        }
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let (max_body, body_timeout) = (hook.max_body, hook.body_timeout);
        if declared.is_some_and(|n| n > max_body as u64) {
            return Err(Rejection::TooLarge(max_body));
        }
        let read = tokio::time::timeout(body_timeout, axum::body::to_bytes(body, max_body));
        let bytes = read
            .await
            .map_err(|_| Rejection::BodyTimeout(body_timeout))?
            .map_err(|e| {
                let too_large = std::error::Error::source(&e)
                    .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
                if too_large {
                    Rejection::TooLarge(max_body)
                } else {
                    Rejection::bad("body_unreadable", "the body could not be read to its end")
                }
            })?;
        hook.accept(&bytes).await
    }
    .await;
    match result {
        Ok((n, revision)) => {
            hook.metrics.notification(true, "none");
            tracing::info!(
                tenant = %n.context_identifier,
                change = n.change_type.name(),
                revision,
                %peer,
                "applied a state-change notification"
            );
            StatusCode::NO_CONTENT.into_response()
        }
        Err(rejection) => refuse(&hook.metrics, rejection, Some(peer)),
    }
}

async fn not_found(State(hook): State<Arc<Webhook>>) -> Response {
    // Says nothing of where the webhook is: the path may be a secret too.
    refuse(&hook.metrics, Rejection::NotFound, None)
}

fn refuse(metrics: &Metrics, rejection: Rejection, peer: Option<SocketAddr>) -> Response {
    let reason = rejection.reason();
    metrics.notification(false, reason);
    // Strays and a flood's refusals would flood the log: counted, not
    // logged one by one.
    if !matches!(rejection, Rejection::NotFound | Rejection::RateLimited(_)) {
        let peer = peer.map(|p| p.to_string()).unwrap_or_default();
        tracing::warn!(reason, %peer, "refused a notification: {rejection}");
    }
    let retry_after = match &rejection {
        // Rounded up: a client that waits what it is told gets through.
        Rejection::RateLimited(limited) => {
            Some(limited.wait().as_secs_f64().ceil().max(1.0) as u64)
        }
        Rejection::Busy | Rejection::NotStored => Some(5),
        _ => None,
    };
    let status = rejection.status();
    let mut response = (
        status,
        axum::Json(serde_json::json!({
            "error": rejection.to_string(),
            "reason": reason,
        })),
    )
        .into_response();
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(secs) = retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if status == StatusCode::METHOD_NOT_ALLOWED {
        h.insert(header::ALLOW, HeaderValue::from_static("POST"));
    }
    if status == StatusCode::UNAUTHORIZED {
        h.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"invalid_token\""),
        );
    }
    response
}

/// `application/json`, with or without parameters (`; charset=utf-8`).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

/// What one webhook connection may hold.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections open at once; past it, new ones wait in the kernel's
    /// backlog.
    pub max_connections: usize,
    /// The most a client may take to send a request's headers (HTTP/1.1).
    pub header_timeout: Duration,
    /// The largest request head: HTTP/1.1's read buffer (431 past it) and
    /// HTTP/2's SETTINGS_MAX_HEADER_LIST_SIZE (the stream is reset).
    pub max_header_size: usize,
}

/// Serves `router` on `listener` until `shutdown` completes, then lets the
/// requests in flight finish: HTTP/1.1 and HTTP/2, within `limits`, at
/// most 64 streams on one HTTP/2 connection.
///
/// Our own accept loop rather than axum::serve: hyper's header timeout
/// needs a timer, which axum::serve does not give it, so there a client
/// dripping headers a byte at a time held a connection forever.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use hyper_util::{
        rt::{TokioExecutor, TokioIo, TokioTimer},
        server::{conn::auto::Builder, graceful::GracefulShutdown},
        service::TowerToHyperService,
    };
    use tower::ServiceExt;

    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_size.max(8 * 1024));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(64)
        .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX));
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(error = %e, "webhook accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let service = router.clone().map_request(
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            },
        );
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(tcp), TowerToHyperService::new(service))
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
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
