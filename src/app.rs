//! Wiring: `Application::build` binds the gRPC and webhook listeners (so
//! tests can use port 0 and read the ports back), `run_until` serves until a shutdown future
//! completes, then drains within the configured deadline.

use std::{future::Future, net::SocketAddr, sync::Arc};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use crate::{
    config::Config,
    grpc::{GrpcService, pb},
    poller::Poller,
    store::Store,
    superoffice::{SingleFlight, StateSource, SuperOfficeClient},
    token::{SeenTokens, Verifier},
    tracker::Tracker,
    webhook::Webhook,
};

/// The gRPC service name health reports on (besides "" for the server).
pub const SERVICE_NAME: &str = "tenantstatus.v1.TenantStatusService";

/// A built service: listeners bound, not yet serving.
pub struct Application {
    config: Config,
    listener: TcpListener,
    addr: SocketAddr,
    webhook_listener: TcpListener,
    webhook_addr: SocketAddr,
    webhook: Arc<Webhook>,
    verifier: Arc<Verifier>,
    store: Arc<Store>,
    tracker: Arc<Tracker>,
    poller: Poller,
}

impl Application {
    /// Binds the gRPC listener and assembles the store, the SuperOffice
    /// client and the poller.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let client = SuperOfficeClient::new(&config.state_api_base_url, config.http_timeout)
            .context("could not build the HTTP client for SuperOffice's state API")?;
        Self::build_with_source(config, Arc::new(client)).await
    }

    /// As `build`, with another source of tenant state.
    pub async fn build_with_source(
        config: Config,
        source: Arc<dyn StateSource>,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(&config.grpc_addr)
            .await
            .with_context(|| format!("--grpc-addr: cannot listen on {}", config.grpc_addr))?;
        let addr = listener.local_addr()?;
        let webhook_listener = TcpListener::bind(&config.webhook.addr)
            .await
            .with_context(|| format!("--webhook-addr: cannot listen on {}", config.webhook.addr))?;
        let webhook_addr = webhook_listener.local_addr()?;
        let store = Arc::new(Store::starting_from_clock());
        let source: Arc<dyn StateSource> = Arc::new(SingleFlight::new(source));
        let (poller, handle) = Poller::new(
            Arc::clone(&store),
            Arc::clone(&source),
            config.policy.clone(),
        );
        let verifier = Arc::new(
            Verifier::new(config.webhook.verifier.clone())
                .context("could not build the notification token verifier")?,
        );
        let webhook = Arc::new(Webhook::new(
            Arc::clone(&verifier),
            SeenTokens::new(config.webhook.seen_tokens_max),
            Arc::clone(&store),
            handle.clone(),
            config.webhook.verifier.leeway,
            config.webhook.path.clone(),
        ));
        let tracker = Arc::new(Tracker::new(Arc::clone(&store), source, handle));
        Ok(Self {
            config,
            listener,
            addr,
            webhook_listener,
            webhook_addr,
            webhook,
            verifier,
            store,
            tracker,
            poller,
        })
    }

    /// The address the gRPC listener is bound to.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address the public webhook listener is bound to.
    pub fn webhook_addr(&self) -> SocketAddr {
        self.webhook_addr
    }

    pub fn store(&self) -> Arc<Store> {
        Arc::clone(&self.store)
    }

    /// Serves until `shutdown` completes, then drains: health turns
    /// NOT_SERVING, watch streams end with UNAVAILABLE, and the server
    /// stops within `shutdown_timeout` even if a client never reads.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            config,
            listener,
            addr,
            webhook_listener,
            webhook_addr,
            webhook,
            verifier,
            store,
            tracker,
            poller,
        } = self;
        tokio::spawn(async move { verifier.prefetch().await });

        let stop_poller = CancellationToken::new();
        let poller_task = tokio::spawn(poller.run(stop_poller.clone()));
        for t in &config.tenants {
            tracker.poller().track(t.clone());
        }

        let (health, health_service) = tonic_health::server::health_reporter();
        // v1 for current tools, v1alpha for grpcurl 1.8.6 and its age.
        let reflection_v1 = reflection().build_v1().context("building reflection v1")?;
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .context("building reflection v1alpha")?;

        let draining = CancellationToken::new();
        let signal = {
            let draining = draining.clone();
            let health = health.clone();
            let store = Arc::clone(&store);
            async move {
                shutdown.await;
                tracing::info!("shutting down: health NOT_SERVING, ending watch streams");
                health
                    .set_service_status("", ServingStatus::NotServing)
                    .await;
                health
                    .set_service_status(SERVICE_NAME, ServingStatus::NotServing)
                    .await;
                store.close();
                draining.cancel();
            }
        };

        let server = Server::builder()
            .accept_http1(true)
            .layer(tonic_web::GrpcWebLayer::new())
            .http2_keepalive_interval(Some(config.http2_keepalive_interval))
            .http2_keepalive_timeout(Some(config.http2_keepalive_timeout))
            .max_concurrent_streams(Some(config.max_concurrent_streams))
            .tcp_nodelay(true)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(
                GrpcService::new(Arc::clone(&tracker), config.heartbeat_interval).into_server(),
            )
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal);

        health.set_service_status("", ServingStatus::Serving).await;
        health
            .set_service_status(SERVICE_NAME, ServingStatus::Serving)
            .await;
        tracing::info!(
            %addr,
            state_api = %config.state_api_base_url,
            tenants = config.tenants.len(),
            "tenant-status is serving gRPC"
        );

        // The webhook stops accepting when draining starts and finishes the
        // requests in flight: an acknowledged notification is applied.
        let webhook_server = axum::serve(
            webhook_listener,
            webhook
                .router()
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(draining.clone().cancelled_owned());
        tracing::info!(
            addr = %webhook_addr,
            path = %config.webhook.path,
            issuer = %config.webhook.verifier.issuer,
            jwks = ?config.webhook.verifier.jwks_url.as_ref().map(|u| u.as_str()),
            certificate_keys = config.webhook.verifier.keys.len(),
            "serving the state-change webhook"
        );
        let both = async move {
            let (grpc, hook) = tokio::join!(server, webhook_server.into_future());
            grpc.context("the gRPC server failed")?;
            hook.context("the webhook server failed")?;
            anyhow::Ok(())
        };

        let mut server = tokio::spawn(both);
        let result = tokio::select! {
            r = &mut server => r.context("the server task failed")?,
            _ = async {
                draining.cancelled().await;
                tokio::time::sleep(config.shutdown_timeout).await;
            } => {
                tracing::warn!(
                    timeout = ?config.shutdown_timeout,
                    "connections still open at the shutdown deadline; closing them"
                );
                server.abort();
                Ok(())
            }
        };
        stop_poller.cancel();
        let _ = poller_task.await;
        tracing::info!("tenant-status stopped");
        result
    }
}

/// Reflection over our proto and grpc.health.v1.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}
