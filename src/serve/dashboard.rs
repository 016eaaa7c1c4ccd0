//! The dashboard on the gRPC listener: `GET /` serves a page built into the
//! binary (`dashboard/dist/`, committed; `scripts/dashboard-build.sh` makes
//! it), which watches every tenant over gRPC-Web from the same origin. And
//! CORS for gRPC-Web, only for the origins `--grpc-web-allow-origin` names,
//! so a dashboard hosted elsewhere can call the API.
//!
//! A layer outside tonic-web: tonic-web answers every HTTP/1.1 request that
//! is not gRPC-Web with 400, and gRPC never uses GET, so a GET or HEAD that
//! is not gRPC is ours to answer, page or JSON 404, before it gets there.

use std::{
    sync::LazyLock,
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::Bytes,
    http::{self, HeaderValue, Method, Request, Response, StatusCode, header},
};
use futures_util::future::{Either, Ready, ready};
use http_body_util::Full;
use tonic::body::Body;
use tower::{Layer, Service};
use tower_http::cors::CorsLayer;

/// The dashboard's settings: `--no-dashboard`, `--grpc-web-allow-origin`.
#[derive(Debug, Clone)]
pub struct DashboardConfig {
    /// Serve the page at `GET /`.
    pub enabled: bool,
    /// Origins (`scheme://host[:port]`, as browsers send them) whose pages
    /// may call gRPC-Web; empty: no CORS, cross-origin browsers are refused.
    pub allow_origins: Vec<HeaderValue>,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            allow_origins: Vec::new(),
        }
    }
}

impl DashboardConfig {
    /// Checks each origin; the error is one sentence about the first bad one.
    pub fn new(enabled: bool, origins: &[String]) -> Result<Self, String> {
        let mut allow_origins = Vec::new();
        for o in origins.iter().map(|o| o.trim()).filter(|o| !o.is_empty()) {
            let origin = parse_origin(o)?;
            if !allow_origins.contains(&origin) {
                allow_origins.push(origin);
            }
        }
        Ok(Self {
            enabled,
            allow_origins,
        })
    }
}

/// An origin as a browser sends it in `Origin`: `https://ops.example.com`,
/// `http://127.0.0.1:8000` (lower-case host, no default port, no path).
/// Written with a trailing slash or an upper-case host it is normalised; a
/// path, a query, credentials or `*` are refused: CORS here is for named
/// dashboards, never for any site.
pub fn parse_origin(s: &str) -> Result<HeaderValue, String> {
    if s == "*" || s == "null" {
        return Err(format!(
            "{s:?} is not allowed; name each origin, such as https://dashboard.example.com"
        ));
    }
    let url = url::Url::parse(s).map_err(|e| {
        format!("{s:?} is not an origin ({e}); use scheme://host[:port], such as https://dashboard.example.com")
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(format!(
            "{s:?} is not an http or https origin; use scheme://host[:port]"
        ));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "{s:?} has a path, query or fragment; an origin is only scheme://host[:port]"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{s:?} holds credentials; an origin has none"));
    }
    HeaderValue::from_str(&url.origin().ascii_serialization())
        .map_err(|_| format!("{s:?} cannot be sent in a header"))
}

/// The request headers a gRPC-Web client (Connect-ES, grpc-web) sends, and
/// `authorization` for `--grpc-token-file`.
const ALLOW_HEADERS: [&str; 7] = [
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "grpc-encoding",
    "grpc-accept-encoding",
    "authorization",
];

/// The response headers a browser script may read: the status of a
/// trailers-only answer (UNAUTHENTICATED, say) is in the headers.
const EXPOSE_HEADERS: [&str; 4] = [
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "grpc-encoding",
];

fn cors(origins: &[HeaderValue]) -> CorsLayer {
    CorsLayer::new()
        .allow_origin(origins.to_vec())
        .allow_methods([Method::POST])
        .allow_headers(ALLOW_HEADERS.map(http::HeaderName::from_static))
        .expose_headers(EXPOSE_HEADERS.map(http::HeaderName::from_static))
        // Chromium's cap; fewer preflights for a long-lived page.
        .max_age(Duration::from_secs(7200))
}

/// The layer that serves the page and, with allowed origins, CORS.
#[derive(Clone)]
pub struct DashboardLayer {
    page: bool,
    cors: Option<CorsLayer>,
}

impl DashboardLayer {
    pub fn new(config: &DashboardConfig) -> Self {
        Self {
            page: config.enabled,
            cors: (!config.allow_origins.is_empty()).then(|| cors(&config.allow_origins)),
        }
    }
}

impl<S> Layer<S> for DashboardLayer {
    type Service = Dashboard<S>;

    fn layer(&self, inner: S) -> Dashboard<S> {
        Dashboard {
            inner,
            page: self.page,
            cors: self.cors.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Dashboard<S> {
    inner: S,
    page: bool,
    cors: Option<CorsLayer>,
}

type CorsFuture<F> = tower_http::cors::ResponseFuture<F>;

impl<S, B> Service<Request<B>> for Dashboard<S>
where
    S: Service<Request<B>, Response = Response<Body>> + Clone,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future =
        Either<Ready<Result<Response<Body>, S::Error>>, Either<CorsFuture<S::Future>, S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if is_page_request(&req) {
            return Either::Left(ready(Ok(page(self.page, &req))));
        }
        match &self.cors {
            // Only a browser sends Origin: other gRPC clients never meet
            // the CORS layer.
            Some(cors) if req.headers().contains_key(header::ORIGIN) => {
                // The ready service goes into the CORS wrapper; a clone
                // stays for the next call (tower's usual swap).
                let clone = self.inner.clone();
                let ready_inner = std::mem::replace(&mut self.inner, clone);
                Either::Right(Either::Left(cors.layer(ready_inner).call(req)))
            }
            _ => Either::Right(Either::Right(self.inner.call(req))),
        }
    }
}

/// A GET or HEAD that is not gRPC: gRPC and gRPC-Web calls are POSTs.
fn is_page_request<B>(req: &Request<B>) -> bool {
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"));
    (req.method() == Method::GET || req.method() == Method::HEAD) && !grpc
}

/// One file of the page.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
    etag: HeaderValue,
}

fn asset(path: &'static str, content_type: &'static str, bytes: &'static [u8]) -> Asset {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let hex: String = digest.as_ref()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Asset {
        path,
        content_type,
        bytes,
        etag: HeaderValue::from_str(&format!("\"{hex}\"")).expect("hex is a header value"),
    }
}

/// The page, as `scripts/dashboard-build.sh` left it in dashboard/dist/.
static ASSETS: LazyLock<[Asset; 4]> = LazyLock::new(|| {
    [
        asset(
            "/",
            "text/html; charset=utf-8",
            include_bytes!("../../dashboard/dist/index.html"),
        ),
        asset(
            "/dashboard/app.js",
            "text/javascript; charset=utf-8",
            include_bytes!("../../dashboard/dist/dashboard/app.js"),
        ),
        asset(
            "/dashboard/app.css",
            "text/css; charset=utf-8",
            include_bytes!("../../dashboard/dist/dashboard/app.css"),
        ),
        asset(
            "/dashboard/icon.svg",
            "image/svg+xml",
            include_bytes!("../../dashboard/dist/dashboard/icon.svg"),
        ),
    ]
});

/// Scripts, styles, images and calls only from this origin; no inline
/// script or style, no framing, no form posts, no plugins.
const CSP: &str = "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; object-src 'none'";

fn page<B>(enabled: bool, req: &Request<B>) -> Response<Body> {
    let path = match req.uri().path() {
        "/index.html" => "/",
        p => p,
    };
    let found = enabled
        .then(|| ASSETS.iter().find(|a| a.path == path))
        .flatten();
    let Some(asset) = found else {
        return not_found(enabled, path);
    };
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .is_some_and(|tags| etag_matches(tags, &asset.etag));
    let mut response = Response::builder()
        .header(header::CONTENT_TYPE, asset.content_type)
        // Revalidated each time (a 304 is cheap), so a new binary's page
        // is seen at once.
        .header(header::CACHE_CONTROL, "no-cache")
        .header(header::ETAG, asset.etag.clone())
        .header(header::CONTENT_SECURITY_POLICY, CSP)
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::X_FRAME_OPTIONS, "DENY")
        .header(header::REFERRER_POLICY, "no-referrer");
    let body = if fresh {
        response = response.status(StatusCode::NOT_MODIFIED);
        Body::empty()
    } else {
        response = response.header(header::CONTENT_LENGTH, asset.bytes.len());
        if req.method() == Method::HEAD {
            Body::empty()
        } else {
            full(Bytes::from_static(asset.bytes))
        }
    };
    response.body(body).unwrap_or_else(|_| internal())
}

/// Whether an If-None-Match value names `etag` (or is `*`).
fn etag_matches(tags: &HeaderValue, etag: &HeaderValue) -> bool {
    let Ok(tags) = tags.to_str() else {
        return false;
    };
    let ours = etag.to_str().unwrap_or_default();
    tags.split(',').map(str::trim).any(|t| {
        let t = t.strip_prefix("W/").unwrap_or(t);
        t == "*" || t == ours
    })
}

/// A JSON 404, like the webhook's.
fn not_found(enabled: bool, path: &str) -> Response<Body> {
    let body = if !enabled && path == "/" {
        serde_json::json!({
            "error": "the dashboard is turned off on this server (--no-dashboard)",
            "reason": "dashboard_disabled",
        })
    } else {
        serde_json::json!({"error": "no such page", "reason": "not_found"})
    };
    Response::builder()
        .status(StatusCode::NOT_FOUND)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .body(full(Bytes::from(body.to_string())))
        .unwrap_or_else(|_| internal())
}

fn full(bytes: Bytes) -> Body {
    Body::new(Full::new(bytes))
}

fn internal() -> Response<Body> {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_normalised_as_browsers_send_them() {
        let ok = |s: &str| parse_origin(s).unwrap().to_str().unwrap().to_owned();
        assert_eq!(ok("https://Ops.Example.com/"), "https://ops.example.com");
        assert_eq!(ok("https://ops.example.com:443"), "https://ops.example.com");
        assert_eq!(ok("http://127.0.0.1:8000"), "http://127.0.0.1:8000");
        assert_eq!(ok("http://[::1]:3000"), "http://[::1]:3000");
    }

    #[test]
    fn anything_but_a_named_origin_is_refused_with_a_sentence() {
        for bad in [
            "*",
            "null",
            "ops.example.com",
            "ftp://ops.example.com",
            "https://ops.example.com/dashboard",
            "https://ops.example.com/?x=1",
            "https://user:pw@ops.example.com",
            "file:///tmp/x.html",
        ] {
            let e = parse_origin(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
    }

    #[test]
    fn the_config_keeps_each_origin_once_and_skips_blanks() {
        let c = DashboardConfig::new(
            true,
            &[
                "https://a.example".into(),
                " ".into(),
                "https://A.example/".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.allow_origins, ["https://a.example"]);
    }

    #[test]
    fn if_none_match_lists_and_weak_tags() {
        let ours = HeaderValue::from_static("\"abc\"");
        let m = |v: &'static str| etag_matches(&HeaderValue::from_static(v), &ours);
        assert!(m("\"abc\""));
        assert!(m("W/\"abc\""));
        assert!(m("\"x\", \"abc\""));
        assert!(m("*"));
        assert!(!m("\"abd\""));
    }
}
