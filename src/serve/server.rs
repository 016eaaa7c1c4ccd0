//! The gRPC listener's server: TLS (and mTLS), HTTP/1.1 for gRPC-Web,
//! keepalive and limits, and its services: grpc.health.v1, reflection v1
//! and v1alpha, and ours.

use std::{future::Future, sync::Arc, time::Duration};

use axum::http;

use anyhow::Context;
use tokio::net::TcpListener;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig, server::TcpIncoming};
use tonic_health::{
    ServingStatus,
    pb::health_server::HealthServer,
    server::{HealthReporter, HealthService},
};

use crate::{
    core::backend::Tenants,
    files::BearerTokens,
    metrics::Metrics,
    pb,
    serve::{
        dashboard::{DashboardConfig, DashboardLayer},
        grpc::GrpcService,
    },
};

/// The gRPC service name health reports on (besides "" for the server).
pub(crate) const SERVICE_NAME: &str = "tenantstatus.v1.TenantStatusService";

/// Health as grpc.health.v1 reports it, for the server ("") and our
/// service (unknown until first set).
#[derive(Clone, Default)]
pub(crate) struct Health(HealthReporter);

impl Health {
    fn service(&self) -> HealthServer<HealthService> {
        HealthServer::new(HealthService::from_health_reporter(self.0.clone()))
    }

    pub(crate) async fn set(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.0.set_service_status("", status).await;
        self.0.set_service_status(SERVICE_NAME, status).await;
    }
}

/// The gRPC listener's TLS material, read and checked.
#[derive(Clone)]
pub struct TlsFiles {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("TlsFiles")
            .field("mtls", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

/// What the gRPC server is configured with: its own settings, made by
/// `config` (which knows flags), so that serving knows nothing of them.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    pub tls: Option<TlsFiles>,
    /// Callers must present one of these (`--grpc-token-file`).
    pub access: Option<Arc<BearerTokens>>,
    pub heartbeat_interval: Duration,
    pub max_watchers: usize,
    pub max_request_size: usize,
    pub max_header_size: u32,
    pub max_concurrent_streams: u32,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    pub dashboard: DashboardConfig,
}

/// Builds the server on `listener`, serving `tenants` and `health` until
/// `shutdown` completes; returns the future that serves.
pub(crate) fn grpc_server<T: Tenants, S: Future<Output = ()> + Send + 'static>(
    config: &ServeSettings,
    tenants: Arc<T>,
    health: &Health,
    metrics: Arc<Metrics>,
    listener: TcpListener,
    shutdown: S,
) -> anyhow::Result<impl Future<Output = Result<(), tonic::transport::Error>> + use<T, S>> {
    // v1 for current tools, v1alpha for grpcurl 1.8.6 and its age.
    let reflection_v1 = reflection().build_v1().context("building reflection v1")?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .context("building reflection v1alpha")?;
    let mut builder = Server::builder();
    if let Some(tls) = &config.tls {
        let mut tls_config =
            ServerTlsConfig::new().identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem));
        if let Some(ca) = &tls.client_ca_pem {
            tls_config = tls_config.client_ca_root(Certificate::from_pem(ca));
        }
        builder = builder
            .tls_config(tls_config)
            .context("--tls-cert: the certificate and key cannot serve TLS")?;
    }
    let service = GrpcService::new(
        tenants,
        config.heartbeat_interval,
        metrics,
        config.access.clone(),
    )
    .with_limits(config.max_watchers, config.max_request_size)
    .into_server();
    if config.dashboard.enabled
        && let Ok(addr) = listener.local_addr()
    {
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        tracing::info!(url = %format!("{scheme}://{addr}/"), "serving the dashboard");
    }
    if !config.dashboard.allow_origins.is_empty() {
        tracing::info!(origins = ?config.dashboard.allow_origins, "gRPC-Web allows these origins (CORS)");
    }
    let server = builder
        .accept_http1(true)
        // Outermost: the page and CORS, before tonic-web refuses what is
        // not gRPC-Web (see serve/dashboard.rs).
        .layer(DashboardLayer::new(&config.dashboard))
        .layer(tonic_web::GrpcWebLayer::new())
        .layer(tower::util::MapResponseLayer::new(
            oversize_is_resource_exhausted as fn(_) -> _,
        ))
        .http2_keepalive_interval(Some(config.keepalive_interval))
        .http2_keepalive_timeout(Some(config.keepalive_timeout))
        .max_concurrent_streams(Some(config.max_concurrent_streams))
        .http2_max_header_list_size(Some(config.max_header_size))
        .tcp_nodelay(true)
        .add_service(health.service())
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(service)
        // Our own listener (bound in build), so the builder's tcp_nodelay
        // does not reach it: set it here, or small stream messages wait on
        // Nagle and delayed ACKs (40 ms tails).
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        );
    Ok(server)
}

/// Reflection over our proto and grpc.health.v1.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// A request larger than `--grpc-max-request-size` is RESOURCE_EXHAUSTED,
/// as the gRPC spec says of a message over the receiver's limit, with a
/// sentence naming the flag; tonic answers OUT_OF_RANGE. Its answer comes
/// before any handler runs, as a trailers-only response that carries the
/// `Status` in its extensions, so it is mended here, on the headers; other
/// responses pass untouched.
fn oversize_is_resource_exhausted(
    mut response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    const TONIC: &str = "Error, decoded message length too large: found ";
    let Some(status) = response.extensions().get::<tonic::Status>() else {
        return response;
    };
    if status.code() != tonic::Code::OutOfRange {
        return response;
    }
    let Some(rest) = status.message().strip_prefix(TONIC) else {
        return response;
    };
    let mut numbers = rest
        .split(|c: char| !c.is_ascii_digit())
        .filter(|n| !n.is_empty());
    let (found, limit) = (numbers.next().unwrap_or("?"), numbers.next().unwrap_or("?"));
    let mended = tonic::Status::resource_exhausted(format!(
        "the request message is {found} bytes, more than the {limit} bytes this server accepts (--grpc-max-request-size)"
    ));
    if mended.add_header(response.headers_mut()).is_ok() {
        response.extensions_mut().insert(mended);
    }
    response
}
