//! SuperOffice's state API: the client and the response parser.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures_util::future::BoxFuture;
use serde::Deserialize;
use url::Url;

use crate::core::tenant::{ContextId, Observation, TenantState};

/// The largest state API response read; SuperOffice's are a few hundred
/// bytes, so anything near this is not a state response.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// What the state API said about a tenant.
#[derive(Debug, Clone, PartialEq)]
pub enum FetchOutcome {
    Found(Observation),
    /// 404, or 200 with state "Unknown": SuperOffice does not know it.
    NotFound,
}

/// Why the state API gave no answer. Cloneable so that one failed request
/// can be shared by everyone who waited on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("SuperOffice's state API did not answer within {0:?}")]
    Timeout(Duration),
    #[error("could not resolve the state API's host name: {0}")]
    Dns(String),
    #[error("could not connect to SuperOffice's state API: {0}")]
    Connect(String),
    #[error("SuperOffice's state API answered HTTP {0}")]
    Status(u16),
    #[error("SuperOffice's state API is rate limiting (HTTP 429){}", .0.map(|d| format!(", retry after {}s", d.as_secs())).unwrap_or_default())]
    RateLimited(Option<Duration>),
    #[error("SuperOffice's state API sent an unusable response: {0}")]
    BadResponse(String),
    /// Not sent: the budget toward SuperOffice stayed full too long.
    #[error("{0}")]
    BudgetFull(String),
}

impl FetchError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Dns(_) => "dns",
            Self::Connect(_) => "connect",
            Self::Status(_) => "http_status",
            Self::RateLimited(_) => "rate_limited",
            Self::BadResponse(_) => "bad_response",
            Self::BudgetFull(_) => "budget_full",
        }
    }
}

pub type FetchResult = Result<FetchOutcome, FetchError>;

/// A source of tenant state. The poller and the lookups use this trait so
/// that scheduling logic can be tested without I/O.
pub trait StateSource: Send + Sync + 'static {
    fn fetch<'a>(&'a self, ctx: &'a ContextId) -> BoxFuture<'a, FetchResult>;
}

/// Where SuperOffice's state API lives.
pub fn environment_base_url(env: &str) -> Option<Url> {
    let host = match env {
        "sod" => "sod",
        "qaonline" | "stage" => "qaonline",
        "online" => "online",
        _ => return None,
    };
    Url::parse(&format!("https://{host}.superoffice.com")).ok()
}

/// The reqwest-backed client of SuperOffice's state API.
pub struct SuperOfficeClient {
    http: reqwest::Client,
    base: String,
    timeout: Duration,
}

impl SuperOfficeClient {
    pub fn new(base: &Url, timeout: Duration) -> anyhow::Result<Self> {
        Self::build(base, timeout, None)
    }

    /// As `new`, resolving host names with `resolver` instead of the
    /// system's (tests use it to make DNS fail and heal).
    pub fn with_resolver(
        base: &Url,
        timeout: Duration,
        resolver: Arc<dyn reqwest::dns::Resolve>,
    ) -> anyhow::Result<Self> {
        Self::build(base, timeout, Some(resolver))
    }

    fn build(
        base: &Url,
        timeout: Duration,
        resolver: Option<Arc<dyn reqwest::dns::Resolve>>,
    ) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("tenant-status/", env!("CARGO_PKG_VERSION")))
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .pool_idle_timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(resolver) = resolver {
            builder = builder.dns_resolver(resolver);
        }
        let http = builder.build()?;
        Ok(Self {
            http,
            base: base.as_str().trim_end_matches('/').to_owned(),
            timeout,
        })
    }

    /// The state URL of a tenant. `ctx` is validated, so it is safe in a
    /// path as it is.
    pub fn state_url(&self, ctx: &ContextId) -> String {
        format!("{}/api/state/{}", self.base, ctx)
    }

    async fn fetch_inner(&self, ctx: &ContextId) -> FetchResult {
        let mut resp = self
            .http
            .get(self.state_url(ctx))
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| self.map_error(e))?;
        let status = resp.status().as_u16();
        match status {
            200 => {}
            404 => return Ok(FetchOutcome::NotFound),
            429 => {
                let retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_retry_after);
                return Err(FetchError::RateLimited(retry_after));
            }
            s => return Err(FetchError::Status(s)),
        }
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
        {
            return Err(FetchError::BadResponse(format!(
                "the body is larger than {MAX_RESPONSE_BYTES} bytes"
            )));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.map_error(e))? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(FetchError::BadResponse(format!(
                    "the body is larger than {MAX_RESPONSE_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        parse_state_response(&body, ctx)
    }

    fn map_error(&self, e: reqwest::Error) -> FetchError {
        if e.is_timeout() {
            FetchError::Timeout(self.timeout)
        } else if e.is_connect() {
            let chain = error_chain(&e);
            // hyper-util names a failed lookup "dns error", whichever
            // resolver failed.
            if chain.contains("dns error") {
                FetchError::Dns(chain)
            } else {
                FetchError::Connect(chain)
            }
        } else {
            FetchError::BadResponse(error_chain(&e))
        }
    }
}

impl StateSource for SuperOfficeClient {
    fn fetch<'a>(&'a self, ctx: &'a ContextId) -> BoxFuture<'a, FetchResult> {
        Box::pin(self.fetch_inner(ctx))
    }
}

/// The error and its causes in one line: reqwest's own Display hides the
/// useful part ("connection refused") in the source chain.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The longest Retry-After honoured.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Retry-After in seconds or as an HTTP date.
pub(crate) fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    // A date is capped like a number of seconds: a server's far-future date
    // must not stop polling for years.
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or_default()
            .min(MAX_RETRY_AFTER),
    )
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StateResponse {
    #[serde(default)]
    context_identifier: Option<String>,
    #[serde(default)]
    endpoint: Option<String>,
    state: serde_json::Value,
    #[serde(default)]
    valid_until: Option<String>,
    #[serde(default)]
    api: Option<serde_json::Value>,
    #[serde(default)]
    version: Option<String>,
}

/// Parses a state API response as SuperOffice sends it: State by name
/// (numbers accepted too), ValidUntil with 7 fractional digits, Endpoint
/// possibly missing, extra fields ignored.
pub fn parse_state_response(body: &[u8], ctx: &ContextId) -> FetchResult {
    let r: StateResponse = serde_json::from_slice(body)
        .map_err(|e| FetchError::BadResponse(format!("invalid JSON: {e}")))?;
    let state = match &r.state {
        serde_json::Value::String(name) => match TenantState::from_name(name) {
            Some(TenantState::Unknown) => return Ok(FetchOutcome::NotFound),
            Some(s) => s,
            None => {
                tracing::warn!(
                    tenant = %ctx,
                    raw_state = %truncate(name, 64),
                    "SuperOffice sent a state name this version does not know; keeping it as Unknown"
                );
                TenantState::Unknown
            }
        },
        serde_json::Value::Number(n) => match n.as_i64().and_then(TenantState::from_number) {
            Some(TenantState::Unknown) => return Ok(FetchOutcome::NotFound),
            Some(s) => s,
            None => {
                tracing::warn!(tenant = %ctx, raw_state = %n, "SuperOffice sent a state number this version does not know; keeping it as Unknown");
                TenantState::Unknown
            }
        },
        other => {
            return Err(FetchError::BadResponse(format!(
                "State is neither a name nor a number: {}",
                truncate(&other.to_string(), 64)
            )));
        }
    };
    if let Some(got) = &r.context_identifier
        && !got.eq_ignore_ascii_case(ctx.as_str())
    {
        return Err(FetchError::BadResponse(format!(
            "the response is about {:?}, not {ctx}",
            truncate(got, 64)
        )));
    }
    let valid_until = match r.valid_until.as_deref() {
        None | Some("") => None,
        Some(v) => Some(parse_timestamp(v).ok_or_else(|| {
            FetchError::BadResponse(format!(
                "ValidUntil {:?} is not a timestamp",
                truncate(v, 64)
            ))
        })?),
    };
    let api = match r.api {
        Some(serde_json::Value::String(s)) => s,
        // Older pages show Api as an object of version details.
        Some(serde_json::Value::Object(o)) => o
            .get("v1")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned(),
        _ => String::new(),
    };
    Ok(FetchOutcome::Found(Observation {
        state,
        endpoint: r.endpoint.unwrap_or_default(),
        api,
        version: r.version.unwrap_or_default(),
        valid_until,
    }))
}

/// RFC 3339 with any number of fractional digits, `Z` or a zero offset,
/// and the zone-less form .NET writes for an unspecified DateTime (read as
/// UTC).
/// An RFC 3339 timestamp, its offset honoured (`Z`, `+01:00`, `-05:00`),
/// with any number of fractional digits (.NET writes seven). One with no
/// offset at all is taken as UTC, the zone SuperOffice writes.
fn parse_timestamp(v: &str) -> Option<SystemTime> {
    use time::{
        OffsetDateTime, PrimitiveDateTime,
        format_description::well_known::{Iso8601, Rfc3339},
    };
    let v = v.trim();
    if let Ok(t) = OffsetDateTime::parse(v, &Rfc3339) {
        return Some(t.into());
    }
    // Only a date and time with no offset: anything else ISO 8601 allows
    // (week dates, a bare date) is not a ValidUntil.
    let b = v.as_bytes();
    let calendar_date = b.len() >= 19
        && b[..10]
            .iter()
            .enumerate()
            .all(|(i, c)| if i == 4 || i == 7 { *c == b'-' } else { c.is_ascii_digit() })
        && b[10] == b'T'
        // No offset at all: one RFC 3339 refused (+25:00) is not UTC.
        && !b[10..].iter().any(|c| matches!(c, b'+' | b'-' | b'Z' | b'z'));
    if !calendar_date {
        return None;
    }
    PrimitiveDateTime::parse(v, &Iso8601::DEFAULT)
        .ok()
        .map(|t| t.assume_utc().into())
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> ContextId {
        ContextId::parse("Cust12345").unwrap()
    }

    #[test]
    fn parses_the_response_as_superoffice_sends_it() {
        let body = br#"{"ContextIdentifier":"Cust12345","Endpoint":"https://sod2.superoffice.com/Cust12345","State":"Running","IsRunning":true,"ValidUntil":"2026-02-23T09:52:01.9342965Z","Api":"https://sod2.superoffice.com/Cust12345/api","Version":"Release_11.10_2026.02.24-02","SomethingNew":[1,2]}"#;
        let FetchOutcome::Found(o) = parse_state_response(body, &ctx()).unwrap() else {
            panic!("expected a state")
        };
        assert_eq!(o.state, TenantState::Running);
        assert_eq!(o.endpoint, "https://sod2.superoffice.com/Cust12345");
        assert_eq!(o.api, "https://sod2.superoffice.com/Cust12345/api");
        assert_eq!(o.version, "Release_11.10_2026.02.24-02");
        let vu = o.valid_until.unwrap();
        assert_eq!(
            humantime::format_rfc3339_nanos(vu).to_string(),
            "2026-02-23T09:52:01.934296500Z"
        );
    }

    #[test]
    fn endpoint_may_be_missing_and_state_may_be_a_number() {
        let body = br#"{"ContextIdentifier":"Cust12345","State":6,"IsRunning":false}"#;
        let FetchOutcome::Found(o) = parse_state_response(body, &ctx()).unwrap() else {
            panic!("expected a state")
        };
        assert_eq!(o.state, TenantState::OfflineMaintenance);
        assert_eq!(o.endpoint, "");
        assert_eq!(o.valid_until, None);
    }

    #[test]
    fn unknown_means_not_found_and_unrecognised_names_are_kept_as_unknown() {
        let body = br#"{"ContextIdentifier":"Cust12345","State":"Unknown"}"#;
        assert_eq!(
            parse_state_response(body, &ctx()).unwrap(),
            FetchOutcome::NotFound
        );
        let body = br#"{"ContextIdentifier":"Cust12345","State":"Hibernating"}"#;
        let FetchOutcome::Found(o) = parse_state_response(body, &ctx()).unwrap() else {
            panic!("expected a state")
        };
        assert_eq!(o.state, TenantState::Unknown);
    }

    #[test]
    fn bad_bodies_are_errors_not_states() {
        for body in [
            &b"not json"[..],
            br#"{"State":true}"#,
            br#"{"ValidUntil":"2026"}"#,
            br#"{"State":"Running","ValidUntil":"tomorrow"}"#,
            br#"{"ContextIdentifier":"Cust99","State":"Running"}"#,
        ] {
            assert!(
                matches!(
                    parse_state_response(body, &ctx()),
                    Err(FetchError::BadResponse(_))
                ),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn timestamps_land_on_the_right_instant_whatever_their_offset() {
        // 2026-11-23T14:53:42.0748100Z, in every form.
        let utc = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_795_445_622_074_810_000);
        for v in [
            "2026-11-23T14:53:42.0748100Z",
            "2026-11-23T14:53:42.0748100+00:00",
            "2026-11-23T15:53:42.0748100+01:00",
            "2026-11-23T09:53:42.0748100-05:00",
            "2026-11-23T14:53:42.07481Z",
            "2026-11-23t14:53:42.0748100z",
            // No offset: UTC.
            "2026-11-23T14:53:42.0748100",
        ] {
            assert_eq!(parse_timestamp(v), Some(utc), "{v}");
        }
        let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_445_622);
        for v in [
            "2026-11-23T14:53:42Z",
            "2026-11-23T14:53:42",
            "2026-11-23T16:53:42+02:00",
        ] {
            assert_eq!(parse_timestamp(v), Some(whole), "{v}");
        }
        for v in [
            "",
            "2026-11-23",
            "2026-W47-1T14:53:42",
            "tomorrow",
            "2026-11-23T25:00:00Z",
            "2026-11-23T14:53:42+25:00",
        ] {
            assert_eq!(parse_timestamp(v), None, "{v}");
        }
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(
            parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT"),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(parse_retry_after("99999999999"), Some(MAX_RETRY_AFTER));
    }

    #[test]
    fn environments_map_to_hosts() {
        assert_eq!(
            environment_base_url("qaonline").unwrap().as_str(),
            "https://qaonline.superoffice.com/"
        );
        assert_eq!(
            environment_base_url("stage").unwrap().as_str(),
            "https://qaonline.superoffice.com/"
        );
        assert!(environment_base_url("prod").is_none());
    }
}
