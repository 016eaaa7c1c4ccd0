//! `fake-superoffice --control-addr`: a small HTTP API, on a listener of
//! its own, with which a test in another process (the browser test, a
//! script) steers the simulated SuperOffice as the Rust tests do through
//! `FakeSuperOffice`: set a tenant's state, and get a notification signed
//! by the fake's key to POST to a webhook, as SuperOffice would.
//!
//! - `PUT /tenants/{ctx}` with `{"State": "Suspended", "Host":
//!   "sod3.superoffice.com", "Version": "..."}` (Host and Version
//!   optional): the state API answers that from now on. 204.
//! - `POST /notifications` with `{"ChangeType": 2, "ContextIdentifier":
//!   "Cust1", "PublicEndpoint": "sod3.superoffice.com"}` (SuperOffice's
//!   numbers; PublicEndpoint with Move only): 200 with the notification's
//!   body, its token signed for five minutes.
//! - `GET /stats`: 200 with `{"requests": n, "in_flight": n,
//!   "peak_in_flight": n}`, counting state and JWKS requests.
//!
//! Errors are 400 with a JSON `{"error": "..."}`. Only for tests: it is off
//! unless `--control-addr` is given, and the fake is never a real
//! SuperOffice.

use std::{future::Future, time::Duration};

use axum::{
    Json, Router,
    extract::{Path, State, rejection::JsonRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;

use crate::{
    core::tenant::ChangeType,
    sim::fake_superoffice::{FakeSuperOffice, TenantSpec},
};

#[derive(Clone)]
struct Control {
    fake: FakeSuperOffice,
    valid_for: Duration,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SetTenant {
    state: String,
    host: Option<String>,
    version: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Notify {
    change_type: i64,
    context_identifier: String,
    public_endpoint: Option<String>,
}

/// Serves the control API for `fake` on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    fake: FakeSuperOffice,
    valid_for: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/tenants/{ctx}", put(set_tenant))
        .route("/notifications", post(notification))
        .route(
            "/stats",
            get(|State(c): State<Control>| async move {
                Json(json!({
                    "requests": c.fake.total_requests() + c.fake.jwks_requests(),
                    "in_flight": c.fake.in_flight(),
                    "peak_in_flight": c.fake.peak_in_flight(),
                }))
            }),
        )
        .with_state(Control { fake, valid_for });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

fn bad(error: impl Into<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": error.into()})),
    )
        .into_response()
}

async fn set_tenant(
    State(c): State<Control>,
    Path(ctx): Path<String>,
    body: Result<Json<SetTenant>, JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => return bad(e.body_text()),
    };
    let host = body.host.as_deref().unwrap_or("sod2.superoffice.com");
    let mut spec = TenantSpec::new(&body.state, &ctx, host).valid_for(c.valid_for);
    if let Some(v) = &body.version {
        spec = spec.version(v);
    }
    c.fake.set(&ctx, spec);
    StatusCode::NO_CONTENT.into_response()
}

async fn notification(
    State(c): State<Control>,
    body: Result<Json<Notify>, JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => return bad(e.body_text()),
    };
    let Some(change) = ChangeType::from_number(body.change_type) else {
        return bad(format!(
            "ChangeType {} is not one of SuperOffice's (0 to 5)",
            body.change_type
        ));
    };
    Json(c.fake.notification(
        change,
        &body.context_identifier,
        body.public_endpoint.as_deref(),
    ))
    .into_response()
}
