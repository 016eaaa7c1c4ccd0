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

use std::{future::Future, net::SocketAddr, sync::Arc};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    admin::{self, Readiness},
    cluster::Cluster,
    config::Config,
    core::ledger::Ledger,
    core::store::Store,
    core::tenant::ContextId,
    metrics::Metrics,
    persist,
    persist::{Durability, journal::Journal},
    serve::server::{Health, grpc_server},
    superoffice::poller::Poller,
    superoffice::tracker::Tracker,
    superoffice::{SingleFlight, StateSource, SuperOfficeClient, budget::Budget},
    token::{SeenTokens, Verifier},
    webhook::Webhook,
};

/// A built service: listeners bound, state restored, not yet serving.
pub struct Application {
    config: Config,
    grpc_listener: TcpListener,
    grpc_addr: SocketAddr,
    webhook_listener: TcpListener,
    webhook_addr: SocketAddr,
    admin_listener: TcpListener,
    admin_addr: SocketAddr,
    webhook: Arc<Webhook>,
    verifier: Arc<Verifier>,
    store: Arc<Store>,
    tracker: Arc<Tracker>,
    poller: Poller,
    metrics: Arc<Metrics>,
    journal: Option<Arc<Journal>>,
    /// Whether what the webhook acknowledges can be made durable now.
    durability: Arc<Durability>,
    /// The memory of used tokens, saved with the state file.
    seen: Arc<SeenTokens>,
    /// Among replicas: the connection to the shared store.
    cluster: Option<Cluster>,
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
        let (grpc_listener, grpc_addr) = bind("--grpc-addr", &config.grpc_addr).await?;
        let (webhook_listener, webhook_addr) = bind("--webhook-addr", &config.webhook.addr).await?;
        let (admin_listener, admin_addr) = bind("--admin-addr", &config.admin_addr).await?;
        // Alone, revisions start from the clock (a restart issues larger
        // ones); among replicas, they are the shared log's.
        let store = match &config.cluster {
            None => Store::starting_from_clock(),
            Some(_) => Store::new(),
        };
        let store = Arc::new(store.with_notification_hold(config.webhook.notification_hold));
        // Whatever the store holds now came from the state file and its
        // journal: `run_until` re-polls those tenants over a spread. The
        // tokens they name are remembered again, so a replay after the
        // restart is refused like one before it.
        let seen = Arc::new(SeenTokens::new(config.webhook.seen_tokens_max));
        let metrics = match &config.cluster {
            None => Metrics::new(),
            Some(_) => Metrics::new().with_cluster(),
        };
        let metrics = Arc::new(metrics);
        let durability = Arc::new(Durability::new(Arc::clone(&metrics)));
        let journal = match &config.state_file {
            Some(path) => {
                restore(&store, &seen, path)?;
                Some(replay_journal(&store, &seen, path, &durability)?)
            }
            None => None,
        };
        let cluster = match &config.cluster {
            None => None,
            Some(c) => Some(
                Cluster::connect(
                    c,
                    Arc::clone(&store),
                    metrics.cluster(),
                    config.webhook.notification_hold,
                )
                .await?,
            ),
        };
        // Where every rule writes: this store, or the replicas' shared log.
        let ledger: Arc<dyn Ledger> = match &cluster {
            None => Arc::clone(&store) as Arc<dyn Ledger>,
            Some(c) => c.ledger(),
        };
        // One budget for everything sent to SuperOffice: polls, lookups, a
        // watch's new names, JWKS fetches. Among replicas, each takes its
        // share of the fleet's figure as members come and go.
        let budget = Budget::with_metrics(config.budget.clone(), Arc::clone(&metrics));
        if let Some(c) = &cluster {
            c.share_budget(Arc::clone(&budget));
        }
        // The poller never has two requests for one tenant in flight, and
        // must know when its own request went out (an answer older than a
        // notification does not undo it), so it does not share flights;
        // lookups of new tenants do.
        let (poller, handle) = Poller::new(
            Arc::clone(&store),
            Arc::clone(&source),
            config.policy.clone(),
            Arc::clone(&budget),
        );
        let source = Arc::new(SingleFlight::new(source, Arc::clone(&budget)));
        let poller = poller
            .with_metrics(Arc::clone(&metrics))
            .with_ledger(Arc::clone(&ledger));
        let verifier = Arc::new(
            Verifier::new(config.webhook.verifier.clone())
                .context("could not build the notification token verifier")?,
        );
        verifier.use_budget(Arc::clone(&budget));
        let webhook = Webhook::new(
            Arc::clone(&verifier),
            Arc::clone(&seen),
            Arc::clone(&store),
            handle.clone(),
            config.webhook.verifier.leeway,
            config.webhook.path.clone(),
            Arc::clone(&metrics),
        );
        let webhook = webhook
            .with_body_limits(config.webhook.max_body, config.webhook.body_timeout)
            .with_accept_delay(config.webhook.accept_delay)
            .with_ledger(Arc::clone(&ledger));
        let webhook = match &journal {
            Some(j) => webhook.with_journal(Arc::clone(j)),
            None => webhook,
        };
        let webhook = Arc::new(
            match (config.webhook.rate_limit, config.webhook.rate_limit_total) {
                (None, None) => webhook,
                (per_client, total) => webhook.with_rate_limit(per_client, total),
            },
        );
        let tracker = Arc::new(
            Tracker::new(Arc::clone(&store), source, handle, poller.unknowns()).with_ledger(ledger),
        );
        Ok(Self {
            config,
            grpc_listener,
            grpc_addr,
            webhook_listener,
            webhook_addr,
            admin_listener,
            admin_addr,
            webhook,
            verifier,
            store,
            tracker,
            poller,
            metrics,
            journal,
            durability,
            seen,
            cluster,
        })
    }

    /// The address the gRPC listener is bound to.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The address the public webhook listener is bound to.
    pub fn webhook_addr(&self) -> SocketAddr {
        self.webhook_addr
    }

    /// The address the admin listener (/metrics, /livez, /readyz) is bound to.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn store(&self) -> Arc<Store> {
        Arc::clone(&self.store)
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
            grpc_listener,
            grpc_addr,
            webhook_listener,
            webhook_addr,
            admin_listener,
            admin_addr,
            webhook,
            verifier,
            store,
            tracker,
            poller,
            metrics,
            journal,
            durability,
            seen,
            cluster,
        } = self;
        let jwks = {
            let verifier = Arc::clone(&verifier);
            Background::spawn(|stop| async move {
                tokio::select! {
                    () = verifier.keep_jwks_fresh() => {}
                    () = stop.cancelled() => {}
                }
            })
        };
        let readiness = Arc::new(Readiness::default());
        let restored = store.len();
        let clustered = cluster.is_some();
        let cluster_routes = cluster
            .as_ref()
            .map(|c| (c.admin_router(), crate::cluster::LEASES_PATH));
        let (polling, sharing) = match cluster {
            None => (
                spawn_polling(&config, &store, &tracker, poller, &readiness),
                None,
            ),
            Some(cluster) => {
                readiness.also(cluster.readiness());
                let ledger = cluster.ledger();
                let handle = tracker.poller().clone();
                let polling = Background::spawn(|stop| poller.run(stop));
                let configured = config.tenants.clone();
                let bounds = (config.policy.min_interval, config.policy.max_interval);
                let sharing = Background::spawn(|stop| async move {
                    let _ = cluster.start(handle, &configured, bounds, stop).await;
                });
                // The configured tenants are tracked fleet-wide; their
                // pollers are the holders of their partitions.
                let tenants = config.tenants.clone();
                tokio::spawn(async move {
                    for t in tenants {
                        let now = std::time::SystemTime::now();
                        if let Err(e) = ledger.track_unknown(t.clone(), now, None).await {
                            tracing::warn!(tenant = %t, error = %e, "could not track a configured tenant in the shared store");
                        }
                    }
                });
                readiness.first_round_done();
                (polling, Some(sharing))
            }
        };
        let persisting = config.state_file.clone().map(|path| {
            let d = Arc::clone(&durability);
            readiness.also(Arc::new(move || d.check()));
            Background::spawn(|stop| {
                persist::run(
                    Arc::clone(&store),
                    seen,
                    path,
                    journal,
                    durability,
                    config.state_file_interval,
                    stop,
                )
            })
        });
        let admin = {
            let router = admin::router(
                Arc::clone(&metrics),
                Arc::clone(&store),
                Arc::clone(&verifier),
                Arc::clone(&readiness),
                cluster_routes,
            );
            Background::spawn(|stop| async move {
                let _ = axum::serve(admin_listener, router)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
            })
        };

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
            replicas = clustered,
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
        // the poller; the state file, last, so it holds everything
        // acknowledged; the admin listener, so probes saw the drain. What
        // the deadline cuts short is in the journal already.
        let deadline = drain_began
            .get()
            .copied()
            .unwrap_or_else(tokio::time::Instant::now)
            + config.shutdown_timeout;
        let in_time = |what: &'static str| {
            move |r: Result<(), tokio::time::error::Elapsed>| {
                if r.is_err() {
                    tracing::warn!(timeout = ?config.shutdown_timeout, "{what} had not finished at the shutdown deadline");
                }
            }
        };
        in_time("notifications being accepted")(
            tokio::time::timeout_at(deadline, webhook.finish_accepting()).await,
        );
        in_time("the poller")(tokio::time::timeout_at(deadline, polling.stop()).await);
        if let Some(s) = sharing {
            // Gives the partition leases back, so the others poll at once.
            in_time("giving the partition leases back")(
                tokio::time::timeout_at(deadline, s.stop()).await,
            );
        }
        jwks.stop().await;
        if let Some(p) = persisting
            && tokio::time::timeout_at(deadline, p.stop()).await.is_err()
        {
            tracing::error!(
                timeout = ?config.shutdown_timeout,
                "the shutdown deadline came before the state file was saved; the journal beside it keeps every notification acknowledged since the last save, and the next start replays it"
            );
        }
        admin.stop().await;
        tracing::info!("tenant-status stopped");
        result
    }
}

/// A task that runs until told to stop.
struct Background {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Background {
    fn spawn<F>(f: impl FnOnce(CancellationToken) -> F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let task = tokio::spawn(f(stop.clone()));
        Self { stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Starts the poller: the configured tenants the state file did not give
/// us are polled at once, and readiness waits for that first round (or
/// `--ready-timeout`); restored tenants are re-polled over
/// `--restore-spread`.
fn spawn_polling(
    config: &Config,
    store: &Store,
    tracker: &Tracker,
    mut poller: Poller,
    readiness: &Arc<Readiness>,
) -> Background {
    // Everything in the store now was restored from the state file.
    let restored: Vec<ContextId> = store
        .snapshot()
        .iter()
        .map(|r| r.context_identifier.clone())
        .collect();
    let awaited: Vec<ContextId> = config
        .tenants
        .iter()
        .filter(|t| !store.contains(t))
        .cloned()
        .collect();
    let mut first_round = poller.first_round(awaited.iter().cloned());
    let task = Background::spawn(|stop| poller.run(stop));
    for t in restored {
        tracker.poller().track_within(t, config.restore_spread);
    }
    for t in awaited {
        tracker.poller().track(t);
    }
    let readiness = Arc::clone(readiness);
    let timeout = config.ready_timeout;
    tokio::spawn(async move {
        let done = tokio::time::timeout(timeout, first_round.wait_for(|d| *d)).await;
        if done.is_err() {
            tracing::warn!(?timeout, "first poll round not done in time; ready anyway");
        }
        readiness.first_round_done();
    });
    task
}

/// Puts the state file's records back into `store` and its used tokens
/// into `seen`. A record that cannot be read is skipped and named in the
/// log; a file that cannot be parsed at all is reported and set aside, not
/// fatal; a file of a newer format version stops the start (a rollback
/// must not start blind and overwrite it).
fn restore(store: &Store, seen: &SeenTokens, path: &std::path::Path) -> anyhow::Result<()> {
    let leftovers = persist::remove_leftovers(path);
    if leftovers > 0 {
        tracing::info!(path = %path.display(), leftovers, "removed temporary files of saves cut short");
    }
    match persist::load(path) {
        Ok(None) => {
            tracing::info!(path = %path.display(), "no state file yet; a first start");
            Ok(())
        }
        Ok(Some(saved)) => {
            for why in &saved.skipped {
                tracing::error!(path = %path.display(), record = %why, "skipped a record of the state file that cannot be read");
            }
            let tenants = saved.records.len();
            for r in saved.records {
                store.restore(r);
            }
            let tokens = seen.restore(saved.seen_tokens, std::time::SystemTime::now());
            tracing::info!(path = %path.display(), tenants, tokens, skipped = saved.skipped.len(), "restored the last known states (stale until re-polled) and the tokens already used");
            Ok(())
        }
        Err(e @ persist::LoadError::Corrupt { .. }) => {
            let aside = persist::set_aside(path)
                .with_context(|| format!("--state-file: {e}; and it cannot be set aside"))?;
            tracing::error!(error = %e, set_aside = %aside.display(), "state file unusable; starting without it");
            Ok(())
        }
        Err(e @ persist::LoadError::TooNew { .. }) => {
            Err(StartRefused(format!("--state-file: {e}")).into())
        }
        Err(e) => Err(anyhow::anyhow!("--state-file: {e}")),
    }
}

/// A start refused for a file that cannot be used as it is: the command
/// line exits 2, as for a flag that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartRefused(String);

/// Applies the notifications journaled after the state file was saved
/// (a kill -9 came before the next save), and opens the journal's next
/// generation.
fn replay_journal(
    store: &Store,
    seen: &SeenTokens,
    path: &std::path::Path,
    durability: &Arc<Durability>,
) -> anyhow::Result<Arc<Journal>> {
    let replay =
        crate::persist::journal::replay(path, |ctx| store.get(ctx)).with_context(|| {
            format!(
                "--state-file: cannot read the journal beside {}",
                path.display()
            )
        })?;
    let now = std::time::SystemTime::now();
    let count = replay.notifications.len();
    for e in replay.notifications {
        store.apply_notification(&e.ctx, e.info, now);
    }
    let tokens = seen.restore(replay.tokens, now);
    let torn = replay.unreadable;
    if count > 0 || torn > 0 {
        tracing::info!(
            notifications = count,
            tokens,
            unreadable = torn,
            "replayed the notification journal over the state file"
        );
    }
    let journal = Journal::open(path, Arc::clone(durability)).with_context(|| {
        format!(
            "--state-file: cannot open a journal beside {}",
            path.display()
        )
    })?;
    Ok(Arc::new(journal))
}
