//! Wiring: `Application::build` binds the gRPC, webhook and admin listeners
//! (so tests can use port 0 and read the ports back) and restores the state
//! file; `run_until` serves until a shutdown future completes, then drains
//! within the configured deadline.
//!
//! The drain, in order: readiness and health turn NOT_SERVING; the gRPC and
//! webhook listeners stop accepting; webhook requests in flight finish (an
//! acknowledged notification is in the store); watch streams end with
//! UNAVAILABLE; the state file is written a last time; the admin listener
//! closes last, so probes see the drain.

mod backing;
mod tasks;

pub use backing::StartRefused;

use std::{future::Future, net::SocketAddr, sync::Arc};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use self::{
    backing::Backing,
    tasks::{Background, Cut, Drain},
};
use crate::{
    admin::{self, Readiness},
    config::Config,
    core::store::Store,
    serve::server::{Health, grpc_server},
    superoffice::poller::Poller,
    superoffice::tracker::Tracker,
    superoffice::{SingleFlight, StateSource, SuperOfficeClient, budget::Budget},
    token::Verifier,
    webhook::Webhook,
};

/// A built service: listeners bound, state restored, not yet serving.
pub struct Application {
    config: Config,
    listeners: Listeners,
    services: Services,
    /// The mode: one process alone, or one replica of several.
    backing: Backing,
}

/// The three listeners, bound (so tests can use port 0 and read the ports
/// back).
struct Listeners {
    grpc: (TcpListener, SocketAddr),
    webhook: (TcpListener, SocketAddr),
    admin: (TcpListener, SocketAddr),
}

/// What the listeners serve, and the poller that keeps it fresh.
struct Services {
    webhook: Arc<Webhook>,
    verifier: Arc<Verifier>,
    tracker: Arc<Tracker>,
    poller: Poller,
}

async fn bind(setting: &str, addr: &str) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("{setting}: cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

impl Application {
    /// Binds the listeners and assembles the store, the SuperOffice client
    /// and the poller.
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
        let listeners = Listeners {
            grpc: bind("--grpc-addr", &config.grpc_addr).await?,
            webhook: bind("--webhook-addr", &config.webhook.addr).await?,
            admin: bind("--admin-addr", &config.admin_addr).await?,
        };
        let backing = Backing::open(&config).await?;
        let (store, metrics) = (backing.store(), backing.metrics());
        // One budget for everything sent to SuperOffice: polls, lookups, a
        // watch's new names, JWKS fetches.
        let budget = Budget::with_metrics(config.budget.clone(), Arc::clone(metrics));
        backing.share_budget(&budget);
        // The poller never has two requests for one tenant in flight, and
        // must know when its own request went out (an answer older than a
        // notification does not undo it), so it does not share flights;
        // lookups of new tenants do.
        let (poller, handle) = Poller::new(
            Arc::clone(store),
            backing.ledger(),
            backing.fleet(),
            Arc::clone(&source),
            config.policy.clone(),
            Arc::clone(&budget),
        );
        let source = Arc::new(SingleFlight::new(source, Arc::clone(&budget)));
        let poller = poller.with_metrics(Arc::clone(metrics));
        let verifier = Arc::new(
            Verifier::new(config.webhook.verifier.clone())
                .context("could not build the notification token verifier")?,
        );
        verifier.use_budget(Arc::clone(&budget));
        let webhook = Webhook::new(
            Arc::clone(&verifier),
            Arc::clone(backing.seen()),
            backing.ledger(),
            backing.fleet(),
            handle.clone(),
            config.webhook.path.clone(),
            Arc::clone(metrics),
        );
        let webhook = webhook
            .with_body_limits(config.webhook.max_body, config.webhook.body_timeout)
            .with_accept_delay(config.webhook.accept_delay);
        let webhook = Arc::new(
            match (config.webhook.rate_limit, config.webhook.rate_limit_total) {
                (None, None) => webhook,
                (per_client, total) => webhook.with_rate_limit(per_client, total),
            },
        );
        let tracker = Arc::new(Tracker::new(
            Arc::clone(store),
            backing.ledger(),
            backing.fleet(),
            source,
            handle,
            poller.unknowns(),
        ));
        Ok(Self {
            config,
            listeners,
            services: Services {
                webhook,
                verifier,
                tracker,
                poller,
            },
            backing,
        })
    }

    /// The address the gRPC listener is bound to.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.listeners.grpc.1
    }

    /// The address the public webhook listener is bound to.
    pub fn webhook_addr(&self) -> SocketAddr {
        self.listeners.webhook.1
    }

    /// The address the admin listener (/metrics, /livez, /readyz) is bound to.
    pub fn admin_addr(&self) -> SocketAddr {
        self.listeners.admin.1
    }

    pub fn store(&self) -> Arc<Store> {
        Arc::clone(self.backing.store())
    }

    /// Serves until `shutdown` completes, then drains (see the module
    /// comment) and stops within `shutdown_timeout` even if a client never
    /// reads.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            config,
            listeners,
            services:
                Services {
                    webhook,
                    verifier,
                    tracker,
                    poller,
                },
            backing,
        } = self;
        let (grpc_listener, grpc_addr) = listeners.grpc;
        let (webhook_listener, webhook_addr) = listeners.webhook;
        let (admin_listener, admin_addr) = listeners.admin;
        let (store, metrics) = (Arc::clone(backing.store()), Arc::clone(backing.metrics()));
        let readiness = Arc::new(Readiness::default());
        let restored = store.len();
        let replicated = backing.replicated();
        let mode_routes = backing.admin_routes();
        // The background tasks, in the order the drain stops them.
        let mut drain = Drain::default();
        backing.start(&config, &tracker, poller, &readiness, &mut drain);
        let jwks = {
            let verifier = Arc::clone(&verifier);
            Background::spawn(|stop| async move {
                tokio::select! {
                    () = verifier.keep_jwks_fresh() => {}
                    () = stop.cancelled() => {}
                }
            })
        };
        drain.then(jwks, Cut::Never);
        let admin = {
            let router = admin::router(
                Arc::clone(&metrics),
                Arc::clone(&store),
                Arc::clone(&verifier),
                Arc::clone(&readiness),
                mode_routes,
            );
            Background::spawn(|stop| async move {
                let _ = axum::serve(admin_listener, router)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
            })
        };
        drain.then(admin, Cut::Never);

        // The drain starts here: not ready, NOT_SERVING, watch streams end,
        // and both public listeners stop accepting.
        let health = Health::default();
        let draining = CancellationToken::new();
        // When the drain began: everything after it, the final save
        // included, ends within --shutdown-timeout of it.
        let drain_began = Arc::new(std::sync::OnceLock::new());
        let signal = {
            let (draining, health, store, readiness, began) = (
                draining.clone(),
                health.clone(),
                Arc::clone(&store),
                Arc::clone(&readiness),
                Arc::clone(&drain_began),
            );
            async move {
                shutdown.await;
                let _ = began.set(tokio::time::Instant::now());
                tracing::info!(
                    "shutting down: not ready, health NOT_SERVING, ending watch streams"
                );
                readiness.draining();
                health.set(false).await;
                store.close();
                draining.cancel();
            }
        };
        let grpc = grpc_server(
            &config.serve_settings(),
            Arc::clone(&tracker),
            &health,
            Arc::clone(&metrics),
            grpc_listener,
            signal,
        )?;
        health.set(true).await;
        tracing::info!(
            %grpc_addr,
            tls = config.tls.is_some(),
            mtls = config.tls.as_ref().is_some_and(|t| t.client_ca_pem.is_some()),
            bearer_tokens = config.access.is_some(),
            %admin_addr,
            state_api = %config.state_api_base_url,
            tenants = config.tenants.len(),
            restored,
            replicas = replicated,
            "tenant-status is serving gRPC"
        );
        // The webhook stops accepting when draining starts and finishes the
        // requests in flight: an acknowledged notification is applied.
        let webhook_server = crate::webhook::accept_loop(
            webhook_listener,
            Arc::clone(&webhook).router(),
            crate::webhook::ConnectionLimits {
                max_connections: config.webhook.max_connections,
                header_timeout: config.webhook.header_timeout,
                max_header_size: config.webhook.max_header_size,
            },
            draining.clone().cancelled_owned(),
        );
        tracing::info!(
            addr = %webhook_addr,
            path = %config.webhook.path,
            issuer = %config.webhook.verifier.issuer,
            jwks = ?config.webhook.verifier.jwks_url.as_ref().map(|u| u.as_str()),
            certificate_keys = config.webhook.verifier.keys.len(),
            "serving the state-change webhook"
        );
        let mut serving = tokio::spawn(async move {
            let (grpc, ()) = tokio::join!(grpc, webhook_server);
            grpc.context("the gRPC server failed")
        });
        let result = tokio::select! {
            r = &mut serving => r.context("the server task failed")?,
            _ = async {
                draining.cancelled().await;
                tokio::time::sleep(config.shutdown_timeout).await;
            } => {
                tracing::warn!(
                    timeout = ?config.shutdown_timeout,
                    "connections still open at the shutdown deadline; closing them"
                );
                serving.abort();
                Ok(())
            }
        };
        // Then, in order, all by the deadline: notifications still being
        // accepted (their clients may be gone, their effects must be in);
        // then the drain's tasks: the poller; the leases, given back, or
        // the state file, so it holds everything acknowledged; the admin
        // listener last, so probes saw the drain. What the deadline cuts
        // short is in the journal already.
        let deadline = drain_began
            .get()
            .copied()
            .unwrap_or_else(tokio::time::Instant::now)
            + config.shutdown_timeout;
        if tokio::time::timeout_at(deadline, webhook.finish_accepting())
            .await
            .is_err()
        {
            tracing::warn!(timeout = ?config.shutdown_timeout, "notifications being accepted had not finished at the shutdown deadline");
        }
        drain.stop(deadline, config.shutdown_timeout).await;
        tracing::info!("tenant-status stopped");
        result
    }
}
