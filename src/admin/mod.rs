//! The admin listener (loopback by default, apart from the public webhook):
//! `/metrics` for Prometheus, `/livez` and `/readyz` for probes; a replica
//! also serves `/cluster/leases` (see `Cluster::admin_router`).

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;

use crate::{core::store::Store, metrics::Metrics, token::Verifier};

/// Whether the service should receive traffic: once listening and the
/// first poll round of the configured tenants is done (or timed out), and
/// not while draining.
#[derive(Default)]
pub(crate) struct Readiness {
    first_round_done: AtomicBool,
    draining: AtomicBool,
    /// Other conditions: among replicas, why this one cannot take writes
    /// or is behind the shared log; with a state file, why notifications
    /// cannot be made durable.
    checks: std::sync::Mutex<Vec<Check>>,
}

/// A condition readiness also depends on: `Err` says why not ready.
pub(crate) type Check = Arc<dyn Fn() -> Result<(), &'static str> + Send + Sync>;

impl Readiness {
    pub(crate) fn first_round_done(&self) {
        self.first_round_done.store(true, Ordering::Release);
    }

    pub(crate) fn draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Makes readiness also depend on `check` (the replicas' connection to
    /// NATS and their reading of the shared log; the durability of what the
    /// webhook acknowledges).
    pub(crate) fn also(&self, check: Check) {
        self.checks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(check);
    }

    /// `Ok` when ready, or why not.
    pub(crate) fn check(&self) -> Result<(), &'static str> {
        if self.draining.load(Ordering::Acquire) {
            Err("shutting down")
        } else if let Some(why) = self
            .checks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find_map(|c| c().err())
        {
            Err(why)
        } else if !self.first_round_done.load(Ordering::Acquire) {
            Err("the first poll round of the configured tenants is not done yet")
        } else {
            Ok(())
        }
    }
}

#[derive(Clone)]
struct AdminState {
    metrics: Arc<Metrics>,
    store: Arc<Store>,
    verifier: Arc<Verifier>,
    readiness: Arc<Readiness>,
}

/// The admin listener's routes; `extra` adds more (a replica's
/// `/cluster/leases`), each path named in the 404's text.
pub(crate) fn router(
    metrics: Arc<Metrics>,
    store: Arc<Store>,
    verifier: Arc<Verifier>,
    readiness: Arc<Readiness>,
    extra: Option<(Router, &'static str)>,
) -> Router {
    let serves = match &extra {
        Some((_, path)) => format!("/metrics, /livez, /readyz and {path}"),
        None => "/metrics, /livez and /readyz".to_owned(),
    };
    let not_found = format!("not found; the admin listener serves {serves}");
    let router = Router::new()
        .route("/metrics", get(scrape))
        .route("/livez", get(|| async { Json(json!({"status": "alive"})) }))
        .route("/readyz", get(ready))
        .with_state(AdminState {
            metrics,
            store,
            verifier,
            readiness,
        });
    let router = match extra {
        Some((extra, _)) => router.merge(extra),
        None => router,
    };
    router.fallback(move || async move {
        (
            StatusCode::NOT_FOUND,
            Json(json!({
                "error": not_found,
                "reason": "not_found",
            })),
        )
    })
}

async fn scrape(State(s): State<AdminState>) -> Response {
    let body = s.metrics.render(&s.store, s.verifier.jwks_stats());
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body).into_response()
}

async fn ready(State(s): State<AdminState>) -> Response {
    match s.readiness.check() {
        Ok(()) => Json(json!({"status": "ready"})).into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "reason": why})),
        )
            .into_response(),
    }
}
