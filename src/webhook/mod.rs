//! The public state-change webhook: SuperOffice POSTs a notification when
//! it upgrades, suspends, resumes, deletes, restores or moves a tenant.
//!
//! The listener faces the internet, so it serves the one path and nothing
//! else, reads at most `--webhook-max-body` bytes, verifies the token before anything
//! is applied, applies a token once, and answers 204 only once the change
//! is in the store. Every refusal is a JSON body naming the reason, is
//! logged once and counted, and never contains the token.

mod listener;
mod notification;
pub mod ratelimit;

pub use listener::{ConnectionLimits, accept_loop};
pub use notification::{MAX_VERSION_LEN, Notification, Rejection, parse_notification};

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

use crate::{
    core::ledger::{Claimed, Fleet, Ledger, TokenClaim},
    core::tenant::NotificationInfo,
    metrics::Metrics,
    superoffice::poller::PollerHandle,
    token::{Seen, SeenTokens, TokenError, TokenUse, Verifier, token_digest, unix_seconds},
    webhook::ratelimit::RateLimiter,
};

/// The largest notification body read unless `--webhook-max-body` says
/// otherwise. SuperOffice's are well under 2 KiB.
pub const DEFAULT_MAX_BODY: usize = 64 * 1024;

/// The longest a client may take to send the body once its headers came,
/// unless `--webhook-body-timeout` says otherwise.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// The webhook's shared state.
pub struct Webhook {
    verifier: Arc<Verifier>,
    seen: Arc<SeenTokens>,
    /// Where notifications are written: the store (through the journal
    /// with a state file), or the replicas' shared log.
    ledger: Arc<dyn Ledger>,
    /// Whether this process polls a tenant, to confirm a notification.
    fleet: Arc<dyn Fleet>,
    poller: PollerHandle,
    /// Seconds a token stays usable past `exp`; it is remembered that long.
    leeway: u64,
    path: String,
    metrics: Arc<Metrics>,
    limiter: Option<RateLimiter>,
    max_body: usize,
    body_timeout: Duration,
    /// The accept tasks under way, which the drain waits for.
    tasks: tokio_util::task::TaskTracker,
    /// See `WebhookConfig::accept_delay`.
    accept_delay: Duration,
}

impl Webhook {
    pub fn new(
        verifier: Arc<Verifier>,
        seen: Arc<SeenTokens>,
        ledger: Arc<dyn Ledger>,
        fleet: Arc<dyn Fleet>,
        poller: PollerHandle,
        path: String,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            leeway: verifier.leeway().as_secs(),
            verifier,
            seen,
            ledger,
            fleet,
            poller,
            path,
            metrics,
            limiter: None,
            max_body: DEFAULT_MAX_BODY,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            tasks: tokio_util::task::TaskTracker::new(),
            accept_delay: Duration::ZERO,
        }
    }

    /// Pauses each accept before its claim (see `WebhookConfig::accept_delay`).
    pub fn with_accept_delay(mut self, delay: Duration) -> Self {
        self.accept_delay = delay;
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

    /// Verifies and applies a notification. Returns what came of it.
    ///
    /// Once the token has verified, the rest (claim, journal, apply) runs in
    /// a task of its own, to its end whatever the client does: hyper drops
    /// a request's future when its client hangs up, and a claim made but
    /// not applied would turn SuperOffice's retry into a "replay". A retry
    /// of the same notification with the same token is applied once and
    /// answered as the first attempt was (`Accepted::Retry`).
    pub async fn accept(self: &Arc<Self>, body: &[u8]) -> Result<Accepted, Rejection> {
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
        let token = TokenUse {
            digest: token_digest(&n.token),
            note: n.fingerprint(),
            forget_after,
        };
        let hook = Arc::clone(self);
        let task = self
            .tasks
            .spawn(async move { hook.commit(n, token, now).await });
        task.await.unwrap_or_else(|e| {
            tracing::error!(error = %e, "the notification's accept task failed");
            Err(Rejection::NotStored)
        })
    }

    /// Claims the token and applies its notification (see `accept`).
    async fn commit(
        &self,
        n: Notification,
        token: TokenUse,
        now: SystemTime,
    ) -> Result<Accepted, Rejection> {
        if !self.accept_delay.is_zero() {
            tokio::time::sleep(self.accept_delay).await;
        }
        let received_at = match self.seen.first_use(token, now) {
            Seen::First(at) | Seen::Retry(at) => at,
            Seen::Applied => return Ok(Accepted::Retry(n)),
            Seen::Replay => return Err(TokenError::Replayed.into()),
            Seen::Full => return Err(Rejection::Busy),
        };
        let claim = TokenClaim {
            digest: token.digest,
            note: token.note,
            forget_after: token.forget_after,
            received_at,
        };
        // A claim that fails leaves the token pending here: SuperOffice's
        // retry of it is applied, as received the first time.
        let received_at = match self.ledger.claim_token(claim).await {
            Ok(Claimed::Mine(at)) => at,
            Ok(Claimed::Applied) => {
                // Applied by another replica: this one remembers it too.
                self.seen.applied(token.digest);
                return Ok(Accepted::Retry(n));
            }
            Ok(Claimed::Replay) => return Err(TokenError::Replayed.into()),
            Err(e) => {
                tracing::error!(error = %e, tenant = %n.context_identifier, "could not claim the token's use in the shared store");
                return Err(Rejection::NotStored);
            }
        };
        let info = NotificationInfo {
            change_type: n.change_type,
            version_name: n.version_name.clone(),
            file_version: n.file_version.clone(),
            public_endpoint: n.public_endpoint.clone(),
            received_at,
        };
        // One write path in every mode: the ledger makes it durable (the
        // journal, or the shared log) and applies it, or refuses it whole.
        let applied = match self
            .ledger
            .apply_notification(n.context_identifier.clone(), info, claim, now)
            .await
        {
            Ok(applied) => applied,
            Err(e) => {
                tracing::error!(error = %e, tenant = %n.context_identifier, "could not store the notification");
                return Err(Rejection::NotStored);
            }
        };
        self.seen.applied(token.digest);
        // Its poller confirms it: this process, or, among replicas, the one
        // holding the tenant's partition (told by the shared log).
        if self.fleet.polls(&n.context_identifier) {
            self.poller.confirm(n.context_identifier.clone());
        }
        Ok(Accepted::Applied(n, applied.record.revision))
    }

    /// Waits for every notification being accepted to finish (the drain:
    /// their answers may never be read, but their effects must be in).
    pub async fn finish_accepting(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// What came of a notification that was not refused.
#[derive(Debug)]
pub enum Accepted {
    /// Applied, at this revision (unchanged if it was older news).
    Applied(Notification, u64),
    /// The same notification with the same token again, applied already:
    /// answered as then, nothing applied.
    Retry(Notification),
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
        Ok(Accepted::Applied(n, revision)) => {
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
        Ok(Accepted::Retry(n)) => {
            hook.metrics.notification(true, "retry");
            tracing::info!(
                tenant = %n.context_identifier,
                change = n.change_type.name(),
                %peer,
                "a retry of a notification applied already; answered as then"
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
