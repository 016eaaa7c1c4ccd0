//! Replicas: several tenant-status processes, one truth, through NATS
//! JetStream's key-value store. Off unless `--nats-url` is given.
//!
//! - `records` bucket: one key per tenant, the record as the state file
//!   keeps it. The bucket's revision (its stream sequence) is the record's
//!   revision, so revisions are the same on every replica and a watcher
//!   resumes anywhere with `since_revision`. Removals are delete markers,
//!   with revisions of their own.
//! - `observed` bucket: what a confirming poll moves (observed_at,
//!   valid_until, the error text), kept apart so that it wakes nobody.
//! - `tokens` bucket: the digests of notification tokens accepted, claimed
//!   with create-if-absent, so a token accepted by one replica is refused
//!   by every other.
//! - `leases` bucket (max_age = the lease TTL): the poll partitions' leases
//!   and the replicas' membership, renewed with compare-and-set.
//! - `interest` bucket (max_age = the lease TTL): `<tenant>.<replica>` for
//!   each tenant SuperOffice does not know that a stream of that replica
//!   watches by name, renewed with the leases, so the replica polling it
//!   keeps it tracked while anyone in the fleet watches it.
//!
//! Every write goes to the bucket first (`ledger`), compare-and-set on the
//! revision, merged and retried on conflict; each replica's store follows
//! the bucket (`mirror`), and its gRPC streams fan out from there as
//! alone. Each tenant is polled by the holder of its partition (`lease`).

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, kv};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    core::{store::Store, tenant::ContextId},
    metrics::ClusterMetrics,
    superoffice::poller::PollerHandle,
};

mod connect;
mod health;
mod lease;
mod mirror;
mod overdue;
mod shared_ledger;

pub use lease::{PARTITIONS, partition_of};

/// Where the admin listener serves a replica's lease tenures.
pub const LEASES_PATH: &str = "/cluster/leases";
pub(crate) use shared_ledger::SharedLedger;

/// How to reach NATS and take part in the fleet.
#[derive(Clone)]
pub struct ClusterConfig {
    /// Seed servers (`nats://host:4222`).
    pub urls: Vec<String>,
    /// This replica's name in leases and logs.
    pub replica_id: String,
    /// How long a partition lease lasts without renewal.
    pub lease_ttl: Duration,
    pub creds_file: Option<PathBuf>,
    pub user: Option<String>,
    /// Read from `--nats-password-file`; never logged.
    pub password: Option<String>,
    pub ca_file: Option<PathBuf>,
    /// The prefix of the buckets' names.
    pub bucket: String,
    /// Copies of each bucket in a NATS cluster (1 for a single server).
    pub bucket_replicas: usize,
}

impl ClusterConfig {
    /// Settings for `urls` with every default: a 10 s lease, the
    /// `tenant-status` buckets, one copy of each.
    pub fn new(urls: Vec<String>, replica_id: &str) -> Self {
        Self {
            urls,
            replica_id: replica_id.to_owned(),
            lease_ttl: Duration::from_secs(10),
            creds_file: None,
            user: None,
            password: None,
            ca_file: None,
            bucket: "tenant-status".into(),
            bucket_replicas: 1,
        }
    }
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("urls", &self.urls)
            .field("replica_id", &self.replica_id)
            .field("lease_ttl", &self.lease_ttl)
            .field("creds_file", &self.creds_file)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ca_file", &self.ca_file)
            .field("bucket", &self.bucket)
            .field("bucket_replicas", &self.bucket_replicas)
            .finish()
    }
}

/// A replica's connection to the fleet: its ledger, and the tasks that
/// follow the shared log and hold leases.
pub struct Cluster {
    ledger: Arc<SharedLedger>,
    client: async_nats::Client,
    caught_up: watch::Receiver<bool>,
    detached: watch::Sender<bool>,
    lease_ttl: Duration,
    contact: Arc<health::Contact>,
    metrics: Arc<ClusterMetrics>,
    mirror: mirror::Mirror,
    observed_mirror: mirror::ObservedMirror,
    leases: lease::LeaseKeeper,
}

impl Cluster {
    /// Connects to NATS, opens (or creates) the buckets, and makes the
    /// ledger; nothing is read or leased until `start`.
    pub async fn connect(
        config: &ClusterConfig,
        store: Arc<Store>,
        metrics: Arc<ClusterMetrics>,
        notification_hold: Duration,
    ) -> anyhow::Result<Self> {
        let client = connect::connect(config, Arc::clone(&metrics)).await?;
        let server = client.server_info().version;
        health::check_server_version(&server, config.bucket_replicas)
            .map_err(|why| anyhow::anyhow!(why))?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(health::request_timeout(config.lease_ttl));
        let prefix = &config.bucket;
        let file = |name: &str, max_age: Duration| kv::Config {
            bucket: format!("{prefix}-{name}"),
            history: 1,
            max_age,
            storage: jetstream::stream::StorageType::File,
            num_replicas: config.bucket_replicas,
            ..Default::default()
        };
        let [records, observed, tokens, leases_kv, interest_kv] = connect::open_buckets(
            &js,
            [
                file("records", Duration::ZERO),
                file("observed", Duration::from_secs(24 * 3600)),
                file("tokens", Duration::from_secs(48 * 3600)),
                file("leases", config.lease_ttl),
                file("interest", config.lease_ttl),
            ],
            connect::OPEN_PATIENCE,
        )
        .await?;
        let interest = Arc::new(std::sync::RwLock::new(std::collections::HashSet::new()));
        // The bucket's expiry is what ends a dead replica's leases: every
        // replica must time its renewals by it, whatever its own flag says.
        let lease_ttl = match js.get_stream(format!("KV_{prefix}-leases")).await {
            Ok(s) => {
                let ttl = s.cached_info().config.max_age;
                if ttl != config.lease_ttl && !ttl.is_zero() {
                    tracing::warn!(
                        bucket_ttl = ?ttl,
                        flag = ?config.lease_ttl,
                        "the leases bucket was made with another --lease-ttl; using the bucket's"
                    );
                    ttl
                } else {
                    config.lease_ttl
                }
            }
            Err(_) => config.lease_ttl,
        };
        let records_stream = format!("KV_{prefix}-records");
        let (applied_tx, applied_rx) = watch::channel(0u64);
        let (caught_tx, caught_rx) = watch::channel(false);
        let leases = Arc::new(lease::Leases::new(config.replica_id.clone(), lease_ttl));
        let contact = Arc::new(health::Contact::new(lease_ttl));
        contact.touch();
        let (detached_tx, detached_rx) = watch::channel(false);
        let ledger = Arc::new(SharedLedger {
            replica: config.replica_id.clone(),
            records: records.clone(),
            observed: observed.clone(),
            tokens,
            store: Arc::clone(&store),
            leases: Arc::clone(&leases),
            applied: applied_rx,
            caught_up: caught_rx.clone(),
            client: client.clone(),
            metrics: Arc::clone(&metrics),
            notification_hold,
            detached: detached_rx,
            interest: Arc::clone(&interest),
            contact: Arc::clone(&contact),
            js: js.clone(),
            stream: records_stream.clone(),
        });
        Ok(Self {
            ledger,
            client: client.clone(),
            caught_up: caught_rx.clone(),
            detached: detached_tx,
            lease_ttl,
            contact: Arc::clone(&contact),
            metrics: Arc::clone(&metrics),
            mirror: mirror::Mirror {
                client: client.clone(),
                js: js.clone(),
                stream: records_stream,
                records,
                store: Arc::clone(&store),
                leases: Arc::clone(&leases),
                applied: applied_tx,
                caught_up: caught_tx,
                metrics: Arc::clone(&metrics),
                spread: lease_ttl,
                contact: Arc::clone(&contact),
            },
            observed_mirror: mirror::ObservedMirror {
                observed,
                store: Arc::clone(&store),
                contact: Arc::clone(&contact),
            },
            leases: lease::LeaseKeeper {
                kv: leases_kv,
                interest_kv,
                interest,
                configured: Default::default(),
                leases,
                store,
                caught_up: caught_rx,
                metrics,
                contact,
                seen_held: Default::default(),
                budget: Default::default(),
            },
        })
    }

    /// Makes the budget toward SuperOffice this replica's share of the
    /// fleet's: the figure divided by the members the leases count.
    pub(crate) fn share_budget(&self, budget: Arc<crate::superoffice::budget::Budget>) {
        let _ = self.leases.budget.set(budget);
    }

    /// The admin listener's routes of a replica: `GET /cluster/leases`,
    /// the partitions this replica holds and the tenures it held lately,
    /// each from when it could first act on it to when it stopped (wall
    /// clock, Unix milliseconds), so that an outside check can tell whether
    /// two replicas ever held one partition at once.
    pub fn admin_router(&self) -> axum::Router {
        let leases = Arc::clone(&self.leases.leases);
        axum::Router::new().route(
            LEASES_PATH,
            axum::routing::get(move || {
                let leases = Arc::clone(&leases);
                async move { axum::Json(leases.tenures_json()) }
            }),
        )
    }

    /// The ledger every writer uses among replicas.
    pub(crate) fn ledger(&self) -> Arc<SharedLedger> {
        Arc::clone(&self.ledger)
    }

    /// Why this replica is not ready, if it is not: it lost NATS, NATS has
    /// not answered it for longer than a lease TTL, or it has not read the
    /// shared log to its end (or, after a re-read, to a consistent point).
    pub fn readiness(&self) -> Arc<dyn Fn() -> Result<(), &'static str> + Send + Sync> {
        let client = self.client.clone();
        let caught_up = self.caught_up.clone();
        let contact = Arc::clone(&self.contact);
        Arc::new(move || {
            if !is_connected(&client) {
                Err("not connected to NATS: the webhook answers 503 and reads may be out of date")
            } else if contact.stalled() {
                Err("NATS has not answered for longer than the lease TTL: records are served stale")
            } else if !*caught_up.borrow() {
                Err("has not yet read the shared store to its end")
            } else {
                Ok(())
            }
        })
    }

    /// Starts following the shared log and taking part in the leases;
    /// everything stops when `stop` fires, and the leases held are given
    /// back so that the other replicas take them at once.
    pub fn start(
        self,
        poller: PollerHandle,
        configured: &[ContextId],
        poll_bounds: (Duration, Duration),
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let Self {
            mirror,
            observed_mirror,
            mut leases,
            client,
            detached,
            lease_ttl,
            contact,
            metrics,
            ledger,
            caught_up,
            ..
        } = self;
        leases.configured = configured.iter().cloned().collect();
        let sweep = overdue::Sweep {
            ledger,
            caught_up,
            lease_ttl,
            max_interval: poll_bounds.1,
            min_interval: poll_bounds.0,
        };
        tokio::spawn(async move {
            let _ = tokio::join!(
                mirror.run(poller.clone(), stop.clone()),
                observed_mirror.run(stop.clone()),
                leases.run(poller, stop.clone()),
                watch_connection(client, contact, metrics, detached, lease_ttl, stop.clone()),
                sweep.run(stop),
            );
        })
    }
}

/// Whether the client is connected to a NATS server now.
fn is_connected(client: &async_nats::Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}

/// Marks the replica detached once it has been cut off from NATS for
/// longer than a lease TTL (by then its partitions are another's, and what
/// it holds may be behind); back to attached when the connection returns.
/// A stalled server (connected, but silent for longer than a lease TTL)
/// counts as cut off.
async fn watch_connection(
    client: async_nats::Client,
    contact: Arc<health::Contact>,
    metrics: Arc<ClusterMetrics>,
    detached: watch::Sender<bool>,
    grace: Duration,
    stop: CancellationToken,
) {
    let mut lost_at: Option<Instant> = None;
    let mut was_stalled = false;
    loop {
        let stalled = contact.stalled();
        if stalled != was_stalled {
            if stalled {
                tracing::warn!(
                    silent_for = ?contact.silent_for(),
                    "NATS has not answered for longer than the lease TTL: serving records stale, not ready"
                );
            } else {
                tracing::info!("NATS answers again");
            }
            metrics.stalled(stalled);
            was_stalled = stalled;
        }
        let connected = is_connected(&client) && !stalled;
        lost_at = if connected {
            None
        } else {
            lost_at.or(Some(Instant::now()))
        };
        let is = lost_at.is_some_and(|t| t.elapsed() >= grace);
        if *detached.borrow() != is {
            if is {
                tracing::warn!(
                    ?grace,
                    "cut off from NATS for too long: ending watch streams so their clients resume on another replica"
                );
            }
            detached.send_replace(is);
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}
