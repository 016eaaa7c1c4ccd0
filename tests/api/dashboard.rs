//! The dashboard on the gRPC listener, without a browser: the page and its
//! headers, --no-dashboard, CORS for gRPC-Web allowed and refused, and the
//! new settings through flags, the environment and the config file. What
//! needs a browser is in tests/browser/ (scripts/browser-test.sh).

use reqwest::{Method, StatusCode, header};
use tenant_status::cli::{Command, parse_cli_from};

use crate::helpers::*;

const ALLOWED: &str = "http://dashboard.example:8000";

/// An empty ListTenants request as gRPC-Web sends it: one uncompressed
/// frame of length 0.
const EMPTY_FRAME: [u8; 5] = [0, 0, 0, 0, 0];

fn url(app: &TestApp, path: &str) -> String {
    format!("http://{}{path}", app.addr)
}

/// A gRPC-Web ListTenants over HTTP/1.1, from `origin` when given.
async fn grpc_web_call(app: &TestApp, origin: Option<&str>) -> reqwest::Response {
    let mut req = app
        .http
        .post(url(app, "/tenantstatus.v1.TenantStatusService/ListTenants"))
        .header(header::CONTENT_TYPE, "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .body(EMPTY_FRAME.to_vec());
    if let Some(o) = origin {
        req = req.header(header::ORIGIN, o);
    }
    req.send().await.expect("the gRPC listener answers")
}

/// A CORS preflight for a gRPC-Web call with a bearer token.
async fn preflight(app: &TestApp, origin: &str) -> reqwest::Response {
    app.http
        .request(
            Method::OPTIONS,
            url(app, "/tenantstatus.v1.TenantStatusService/WatchTenant"),
        )
        .header(header::ORIGIN, origin)
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .header(
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            "authorization,content-type,x-grpc-web,x-user-agent",
        )
        .send()
        .await
        .expect("the gRPC listener answers")
}

fn header_text(r: &reqwest::Response, name: header::HeaderName) -> String {
    r.headers()
        .get(&name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn get_slash_serves_the_page_and_its_files_with_strict_headers() {
    let app = spawn_app().await;
    let page = app.http.get(url(&app, "/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(
        header_text(&page, header::CONTENT_TYPE),
        "text/html; charset=utf-8"
    );
    let csp = header_text(&page, header::CONTENT_SECURITY_POLICY);
    assert!(csp.starts_with("default-src 'self'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(
        header_text(&page, header::X_CONTENT_TYPE_OPTIONS),
        "nosniff"
    );
    assert_eq!(header_text(&page, header::CACHE_CONTROL), "no-cache");
    let etag = header_text(&page, header::ETAG);
    assert!(etag.starts_with('"'), "{etag}");
    // No CORS on the page itself, even from another origin.
    assert!(page.headers().get("access-control-allow-origin").is_none());
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"<script type="module" src="dashboard/app.js">"#));
    assert!(html.contains(r#"data-connection="reconnecting""#));
    // No inline script or style for the CSP to refuse.
    assert!(!html.contains("<script>") && !html.contains("style="));

    for (path, kind, needle) in [
        (
            "/dashboard/app.js",
            "text/javascript",
            "application/grpc-web+proto",
        ),
        ("/dashboard/app.css", "text/css", ".tr"),
        ("/dashboard/icon.svg", "image/svg+xml", "<svg"),
        ("/index.html", "text/html", "tenant-status"),
    ] {
        let r = app.http.get(url(&app, path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert!(
            header_text(&r, header::CONTENT_TYPE).starts_with(kind),
            "{path}"
        );
        assert!(header_text(&r, header::CONTENT_SECURITY_POLICY).contains("default-src 'self'"));
        assert!(r.text().await.unwrap().contains(needle), "{path}");
    }

    // Revalidation: the same ETag is a 304 without a body.
    let again = app
        .http
        .get(url(&app, "/"))
        .header(header::IF_NONE_MATCH, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert!(again.bytes().await.unwrap().is_empty());
    // HEAD: the headers, no body.
    let head = app.http.head(url(&app, "/")).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(
        header_text(&head, header::CONTENT_LENGTH),
        html.len().to_string()
    );
    // Any other GET is a JSON 404, not tonic-web's bare 400.
    let missing = app
        .http
        .get(url(&app, "/favicon.ico"))
        .send()
        .await
        .unwrap();
    let (status, body) = json_response(missing).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["reason"], "not_found");
}

#[tokio::test]
async fn the_page_is_served_over_http2_too_and_grpc_is_untouched() {
    let app = spawn_app_tracking("Cust1", std::time::Duration::from_secs(600)).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let page = h2.get(url(&app, "/")).send().await.unwrap();
    assert_eq!(page.version(), reqwest::Version::HTTP_2);
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("tenant-status"));
    // Native gRPC and gRPC-Web beside it.
    let t = app.get("Cust1").await.expect("GetTenantState");
    assert_eq!(t.context_identifier, "Cust1");
    let web = grpc_web_call(&app, None).await;
    assert_eq!(web.status(), StatusCode::OK);
    let body = web.bytes().await.unwrap();
    assert!(
        String::from_utf8_lossy(&body).contains("grpc-status:0"),
        "{body:?}"
    );
}

#[tokio::test]
async fn no_dashboard_answers_404_with_a_reason() {
    let app = spawn_app_with(|_, config| config.dashboard.enabled = false).await;
    let (status, body) = json_response(app.http.get(url(&app, "/")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["reason"], "dashboard_disabled");
    assert!(body["error"].as_str().unwrap().contains("--no-dashboard"));
    let js = app
        .http
        .get(url(&app, "/dashboard/app.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(js.status(), StatusCode::NOT_FOUND);
    // gRPC-Web still works.
    assert_eq!(grpc_web_call(&app, None).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn without_allowed_origins_a_cross_origin_browser_is_refused_as_before() {
    let app = spawn_app().await;
    let pre = preflight(&app, ALLOWED).await;
    assert!(
        !pre.status().is_success(),
        "a preflight is not answered: {}",
        pre.status()
    );
    assert!(pre.headers().get("access-control-allow-origin").is_none());
    let call = grpc_web_call(&app, Some(ALLOWED)).await;
    assert!(call.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn allowed_origins_get_cors_for_grpc_web_and_no_one_else_does() {
    let token_file = temp_dir("cors").join("tokens.txt");
    std::fs::write(&token_file, "a-token-of-enough-length-1234\n").unwrap();
    let app = spawn_app_with(|_, config| {
        config.dashboard =
            tenant_status::serve::dashboard::DashboardConfig::new(true, &[ALLOWED.into()]).unwrap();
        config.access = Some(std::sync::Arc::new(
            tenant_status::files::BearerTokens::from_file(&token_file).unwrap(),
        ));
    })
    .await;

    let pre = preflight(&app, ALLOWED).await;
    assert!(pre.status().is_success(), "{}", pre.status());
    assert_eq!(
        header_text(&pre, header::ACCESS_CONTROL_ALLOW_ORIGIN),
        ALLOWED
    );
    assert!(header_text(&pre, header::ACCESS_CONTROL_ALLOW_METHODS).contains("POST"));
    let allowed_headers = header_text(&pre, header::ACCESS_CONTROL_ALLOW_HEADERS);
    for h in [
        "authorization",
        "content-type",
        "x-grpc-web",
        "x-user-agent",
    ] {
        assert!(allowed_headers.contains(h), "{h} in {allowed_headers}");
    }
    assert!(!header_text(&pre, header::ACCESS_CONTROL_MAX_AGE).is_empty());
    // No credentials (cookies): the token is a header the page sets.
    assert!(
        pre.headers()
            .get("access-control-allow-credentials")
            .is_none()
    );

    // The call itself: the origin echoed, grpc-status readable by the page
    // (UNAUTHENTICATED here, in the headers of a trailers-only answer).
    let call = grpc_web_call(&app, Some(ALLOWED)).await;
    assert_eq!(
        header_text(&call, header::ACCESS_CONTROL_ALLOW_ORIGIN),
        ALLOWED
    );
    let exposed = header_text(&call, header::ACCESS_CONTROL_EXPOSE_HEADERS);
    assert!(
        exposed.contains("grpc-status") && exposed.contains("grpc-message"),
        "{exposed}"
    );
    assert_eq!(header_text(&call, "grpc-status".parse().unwrap()), "16");

    // Another origin: no allow-origin, so the browser refuses.
    for stranger in ["http://evil.example", "http://dashboard.example:8001"] {
        let pre = preflight(&app, stranger).await;
        assert!(
            pre.headers().get("access-control-allow-origin").is_none(),
            "{stranger}"
        );
        let call = grpc_web_call(&app, Some(stranger)).await;
        assert!(
            call.headers().get("access-control-allow-origin").is_none(),
            "{stranger}"
        );
    }
    // The page itself needs no token: it holds no data.
    let page = app.http.get(url(&app, "/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
}

fn dashboard_of(args: &[&str]) -> Result<tenant_status::serve::dashboard::DashboardConfig, String> {
    let mut all = vec!["tenant-status", "serve", "--superoffice-env", "sod"];
    all.extend_from_slice(args);
    let cli =
        parse_cli_from(all.into_iter().map(Into::into).collect()).map_err(|e| e.to_string())?;
    let Command::Serve(serve) = cli.command else {
        unreachable!("a serve command")
    };
    serve
        .validate()
        .map(|c| c.dashboard)
        .map_err(|e| e.to_string())
}

#[test]
fn the_settings_are_flags_and_config_file_keys_checked_with_a_sentence() {
    let d = dashboard_of(&[]).unwrap();
    assert!(d.enabled && d.allow_origins.is_empty());
    let d = dashboard_of(&[
        "--no-dashboard",
        "--grpc-web-allow-origin",
        "https://Ops.Example.com/",
        "--grpc-web-allow-origin",
        "http://127.0.0.1:8000,http://[::1]:3000",
    ])
    .unwrap();
    assert!(!d.enabled);
    assert_eq!(
        d.allow_origins,
        [
            "https://ops.example.com",
            "http://127.0.0.1:8000",
            "http://[::1]:3000"
        ]
    );
    for bad in ["*", "https://ops.example.com/dashboard", "ops.example.com"] {
        let e = dashboard_of(&["--grpc-web-allow-origin", bad]).unwrap_err();
        assert!(e.starts_with("--grpc-web-allow-origin: "), "{bad}: {e}");
    }

    let file = temp_dir("dashcfg").join("tenant-status.toml");
    std::fs::write(
        &file,
        "no-dashboard = true\ngrpc-web-allow-origin = [\"https://a.example\", \"https://b.example\"]\n",
    )
    .unwrap();
    let d = dashboard_of(&["--config", file.to_str().unwrap()]).unwrap();
    assert!(!d.enabled);
    assert_eq!(d.allow_origins, ["https://a.example", "https://b.example"]);
    // A flag wins over the file.
    let d = dashboard_of(&[
        "--config",
        file.to_str().unwrap(),
        "--grpc-web-allow-origin",
        "https://c.example",
    ])
    .unwrap();
    assert_eq!(d.allow_origins, ["https://c.example"]);
}

#[tokio::test]
async fn the_settings_come_from_the_environment_too() {
    let (code, text) = {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tenant-status"))
            .args(["check-config", "--superoffice-env", "sod"])
            .env_remove("TENANT_STATUS_CONFIG")
            .env("TENANT_STATUS_GRPC_WEB_ALLOW_ORIGIN", "https://a.example,*")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("--grpc-web-allow-origin: \"*\""), "{text}");

    let fake = tenant_status::sim::fake_superoffice::FakeSuperOffice::start()
        .await
        .unwrap()
        .0;
    let args = vec!["--state-api-base-url".to_owned(), fake.url()];
    let (_child, grpc, _) = start_binary_with_env(
        &args,
        &[
            ("TENANT_STATUS_NO_DASHBOARD", "1"),
            (
                "TENANT_STATUS_GRPC_WEB_ALLOW_ORIGIN",
                "https://a.example, https://b.example",
            ),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let page = http.get(format!("http://{grpc}/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::NOT_FOUND);
    let pre = http
        .request(Method::OPTIONS, format!("http://{grpc}/x.Y/Z"))
        .header(header::ORIGIN, "https://b.example")
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(
        header_text(&pre, header::ACCESS_CONTROL_ALLOW_ORIGIN),
        "https://b.example"
    );
}
