//! Prometheus metrics: one registry per application (so tests that run
//! several in one process do not mix), rendered in the OpenMetrics text
//! format by prometheus-client.
//!
//! Counters and histograms are updated where things happen (poller,
//! webhook, gRPC handlers); figures the store already knows (tenants by
//! state, the revision, coalesced events) are read at scrape time.
//!
//! One room although it is long: one registry, every figure in one place,
//! so `/metrics` has one owner and no figure is registered twice; the
//! replicas' figures (`cluster.rs`) and the process's (`process.rs`) are
//! the parts that stand alone.

use std::{
    sync::{Arc, Mutex, atomic::AtomicI64},
    time::Duration,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
        info::Info,
    },
    registry::{Registry, Unit},
};

mod cluster;
mod process;

use crate::{core::store::Store, token::JwksStats};
pub(crate) use cluster::{ClusterMetrics, Fenced};
use process::ProcessCollector;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NotificationLabels {
    outcome: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SaveLabels {
    outcome: &'static str,
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabels {
    state: &'static str,
    stale: &'static str,
}

/// The service's metrics.
pub struct Metrics {
    registry: Registry,
    polls: Family<OutcomeLabels, Counter>,
    poll_duration: Histogram,
    poll_lateness: Histogram,
    notifications: Family<NotificationLabels, Counter>,
    rpcs: Family<RpcLabels, Counter>,
    rpc_duration: Family<MethodLabels, Histogram>,
    watch_streams: Gauge,
    events_sent: Counter,
    events_coalesced: Counter,
    tenants: Family<TenantLabels, Gauge>,
    revision: Gauge<i64, AtomicI64>,
    unknown_tenants: Gauge,
    unknown_forgotten: Counter,
    jwks_keys: Gauge,
    jwks_last_refresh: Gauge,
    jwks_refresh_failures: Counter,
    journal_failures: Family<CauseLabels, Counter>,
    saves: Family<SaveLabels, Counter>,
    save_duration: Histogram,
    last_save_ok: Gauge,
    durable: Gauge,
    budget_in_force: Gauge,
    budget_in_flight: Gauge,
    budget_wait: Histogram,
    budget_refused: Counter,
    budget_rate_limited: Counter,
    budget_paused: Counter<f64, std::sync::atomic::AtomicU64>,
    /// The replicas' figures: registered only by `with_cluster`.
    cluster: Arc<ClusterMetrics>,
    /// Scrape-time figures are cleared and set under this lock.
    render: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn latency_buckets() -> Histogram {
    // 0.5 ms to about 16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Metrics {
    pub fn new() -> Self {
        let mut root = Registry::default();
        root.register(
            "tenant_status_build",
            "The version and commit of this build",
            Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION")),
                ("commit", env!("TENANT_STATUS_COMMIT")),
            ]),
        );
        // The figures every Prometheus client library exports, by their
        // usual names (no prefix), so stock dashboards find them.
        root.register_collector(Box::new(ProcessCollector));
        let registry = root.sub_registry_with_prefix("tenant_status");
        let polls = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "polls",
            "Polls of SuperOffice's state API, by outcome",
            polls.clone(),
        );
        let poll_duration = latency_buckets();
        registry.register_with_unit(
            "poll_duration",
            "Time of one state API request",
            Unit::Seconds,
            poll_duration.clone(),
        );
        let poll_lateness = latency_buckets();
        registry.register_with_unit(
            "poll_lateness",
            "How long after its due time (ValidUntil, backoff) a scheduled poll was sent",
            Unit::Seconds,
            poll_lateness.clone(),
        );
        let notifications = Family::<NotificationLabels, Counter>::default();
        registry.register(
            "notifications",
            "State-change notifications received, by outcome and rejection reason",
            notifications.clone(),
        );
        let rpcs = Family::<RpcLabels, Counter>::default();
        registry.register(
            "rpcs",
            "gRPC calls of TenantStatusService, by method and status code",
            rpcs.clone(),
        );
        let rpc_duration =
            Family::<MethodLabels, Histogram>::new_with_constructor(latency_buckets as fn() -> _);
        registry.register_with_unit(
            "rpc_duration",
            "Time to answer a call (for WatchTenant: to open the stream)",
            Unit::Seconds,
            rpc_duration.clone(),
        );
        let watch_streams = Gauge::default();
        registry.register(
            "watch_streams",
            "WatchTenant streams open",
            watch_streams.clone(),
        );
        let events_sent = Counter::default();
        registry.register(
            "watch_events_sent",
            "Events sent on WatchTenant streams",
            events_sent.clone(),
        );
        let events_coalesced = Counter::default();
        registry.register(
            "watch_events_coalesced",
            "Changes folded into a later one for a slow watcher (each watcher counts)",
            events_coalesced.clone(),
        );
        let tenants = Family::<TenantLabels, Gauge>::default();
        registry.register(
            "tenants",
            "Tracked tenants, by state and staleness",
            tenants.clone(),
        );
        let revision = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "store_revision",
            "The store's latest revision",
            revision.clone(),
        );
        let unknown_tenants = Gauge::default();
        registry.register(
            "unknown_tenants",
            "Tenants SuperOffice does not know, tracked only because a watcher named them (at most --max-unknown-tenants)",
            unknown_tenants.clone(),
        );
        let unknown_forgotten = Counter::default();
        registry.register(
            "unknown_tenants_forgotten",
            "Unknown tenants forgotten once no stream had watched them for --forget-unknown-after",
            unknown_forgotten.clone(),
        );
        let jwks_keys = Gauge::default();
        registry.register(
            "jwks_keys",
            "Signing keys trusted from SuperOffice's JWKS now",
            jwks_keys.clone(),
        );
        let jwks_last_refresh = Gauge::default();
        registry.register_with_unit(
            "jwks_last_refresh_timestamp",
            "When SuperOffice's JWKS was last fetched and parsed (Unix time; 0: never)",
            Unit::Seconds,
            jwks_last_refresh.clone(),
        );
        let jwks_refresh_failures = Counter::default();
        registry.register(
            "jwks_refresh_failures",
            "Fetches of SuperOffice's JWKS that failed (the known keys were kept)",
            jwks_refresh_failures.clone(),
        );
        let journal_failures = Family::<CauseLabels, Counter>::default();
        registry.register(
            "journal_write_failures",
            "Notification journal writes or syncs that failed, by cause (no_space, gone, io); each such notification was answered 503",
            journal_failures.clone(),
        );
        let saves = Family::<SaveLabels, Counter>::default();
        registry.register(
            "state_file_saves",
            "Saves of the state file, by outcome and cause of failure (no_space, gone, io)",
            saves.clone(),
        );
        let save_duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register_with_unit(
            "state_file_save_duration",
            "Time of one save of the state file (saves are spaced so they take at most 5 % of a core)",
            Unit::Seconds,
            save_duration.clone(),
        );
        let last_save_ok = Gauge::default();
        registry.register(
            "state_file_last_save_ok",
            "1 when the last save of the state file succeeded, 0 when it failed (no save yet: 1)",
            last_save_ok.clone(),
        );
        last_save_ok.set(1);
        let durable = Gauge::default();
        registry.register(
            "notifications_durable",
            "1 while accepted notifications can be made durable (or no --state-file), 0 while the webhook answers 503 for want of it",
            durable.clone(),
        );
        durable.set(1);
        let budget_in_force = Gauge::default();
        registry.register(
            "superoffice_budget_in_force",
            "Requests to SuperOffice this process may have in flight now: its share of --superoffice-max-in-flight, less after 429s",
            budget_in_force.clone(),
        );
        let budget_in_flight = Gauge::default();
        registry.register(
            "superoffice_requests_in_flight",
            "Requests to SuperOffice in flight now (polls, lookups, JWKS)",
            budget_in_flight.clone(),
        );
        let budget_wait = latency_buckets();
        registry.register_with_unit(
            "superoffice_budget_wait",
            "How long a request to SuperOffice waited for the budget before it went out (those that did not wait are not counted)",
            Unit::Seconds,
            budget_wait.clone(),
        );
        let budget_refused = Counter::default();
        registry.register(
            "superoffice_budget_refused",
            "Lookups answered UNAVAILABLE because the budget stayed full for --superoffice-max-wait",
            budget_refused.clone(),
        );
        let budget_rate_limited = Counter::default();
        registry.register(
            "superoffice_rate_limited",
            "Times SuperOffice answered 429 and every request was paused",
            budget_rate_limited.clone(),
        );
        let budget_paused = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register_with_unit(
            "superoffice_paused",
            "Time every request to SuperOffice was paused for its 429s",
            Unit::Seconds,
            budget_paused.clone(),
        );
        Self {
            budget_in_force,
            budget_in_flight,
            budget_wait,
            budget_refused,
            budget_rate_limited,
            budget_paused,
            registry: root,
            journal_failures,
            saves,
            save_duration,
            last_save_ok,
            durable,
            unknown_tenants,
            unknown_forgotten,
            jwks_keys,
            jwks_last_refresh,
            jwks_refresh_failures,
            polls,
            poll_duration,
            poll_lateness,
            notifications,
            rpcs,
            rpc_duration,
            watch_streams,
            events_sent,
            events_coalesced,
            tenants,
            revision,
            cluster: Arc::new(ClusterMetrics::default()),
            render: Mutex::new(()),
        }
    }

    /// One poll finished with `outcome` after `took`.
    /// Registers the replicas' figures (`tenant_status_cluster_*`); a
    /// process alone does not show them.
    pub fn with_cluster(mut self) -> Self {
        let registry = self
            .registry
            .sub_registry_with_prefix("tenant_status_cluster");
        self.cluster.register(registry);
        self
    }

    /// The replicas' figures, updated by the cluster module.
    pub fn cluster(&self) -> Arc<ClusterMetrics> {
        Arc::clone(&self.cluster)
    }

    pub fn poll(&self, outcome: &'static str, took: Duration) {
        self.polls.get_or_create(&OutcomeLabels { outcome }).inc();
        self.poll_duration.observe(took.as_secs_f64());
    }

    /// A scheduled poll was sent `late` after its due time.
    pub fn poll_lateness(&self, late: Duration) {
        self.poll_lateness.observe(late.as_secs_f64());
    }

    /// A journal write or sync failed for `cause`.
    pub fn journal_failed(&self, cause: &'static str) {
        self.journal_failures
            .get_or_create(&CauseLabels { cause })
            .inc();
    }

    /// A save of the state file finished after `took`: `Ok`, or failed for
    /// the cause named.
    pub fn state_file_saved(&self, outcome: Result<(), &'static str>, took: Duration) {
        let (label, cause) = match outcome {
            Ok(()) => ("ok", "none"),
            Err(cause) => ("failed", cause),
        };
        self.saves
            .get_or_create(&SaveLabels {
                outcome: label,
                cause,
            })
            .inc();
        self.save_duration.observe(took.as_secs_f64());
        self.last_save_ok.set(i64::from(outcome.is_ok()));
    }

    /// Whether accepted notifications can be made durable now.
    pub fn set_durable(&self, durable: bool) {
        self.durable.set(i64::from(durable));
    }

    /// One notification accepted (`reason` "none") or rejected.
    pub fn notification(&self, accepted: bool, reason: &'static str) {
        let outcome = if accepted { "accepted" } else { "rejected" };
        self.notifications
            .get_or_create(&NotificationLabels { outcome, reason })
            .inc();
    }

    /// One call of `method` answered with `code` after `took`.
    pub fn rpc(&self, method: &'static str, code: &'static str, took: Duration) {
        self.rpcs.get_or_create(&RpcLabels { method, code }).inc();
        self.rpc_duration
            .get_or_create(&MethodLabels { method })
            .observe(took.as_secs_f64());
    }

    /// `method`'s OK counter and duration histogram, resolved once: a call
    /// counted through them takes no label lookup (a hash of the labels
    /// and a lock on the family each, per call).
    pub fn rpc_handles(&self, method: &'static str) -> RpcHandles {
        RpcHandles {
            method,
            ok: self
                .rpcs
                .get_or_create(&RpcLabels { method, code: "OK" })
                .clone(),
            duration: self
                .rpc_duration
                .get_or_create(&MethodLabels { method })
                .clone(),
        }
    }

    /// As `rpc`, through handles from `rpc_handles`.
    pub fn rpc_with(&self, h: &RpcHandles, code: &'static str, took: Duration) {
        if code == "OK" {
            h.ok.inc();
        } else {
            self.rpcs
                .get_or_create(&RpcLabels {
                    method: h.method,
                    code,
                })
                .inc();
        }
        h.duration.observe(took.as_secs_f64());
    }

    /// A watch stream opened; the guard closes it when dropped.
    pub fn stream_opened(self: &Arc<Self>) -> StreamGuard {
        self.watch_streams.inc();
        StreamGuard(Arc::clone(self))
    }

    /// The unknown tenants tracked now, and forgotten so far.
    pub fn unknown_tenants(&self, (tracked, forgotten): (usize, u64)) {
        self.unknown_tenants.set(tracked as i64);
        let counted = self.unknown_forgotten.get();
        if forgotten > counted {
            self.unknown_forgotten.inc_by(forgotten - counted);
        }
    }

    /// The SuperOffice budget's bound in force and its requests in flight.
    pub fn budget_state(&self, in_force: usize, in_flight: usize) {
        self.budget_in_force.set(in_force as i64);
        self.budget_in_flight.set(in_flight as i64);
    }

    /// A request waited `waited` for the SuperOffice budget.
    pub fn budget_waited(&self, waited: Duration) {
        self.budget_wait.observe(waited.as_secs_f64());
    }

    /// A lookup gave up waiting for the SuperOffice budget.
    pub fn budget_refused(&self) {
        self.budget_refused.inc();
    }

    /// SuperOffice answered 429: every request pauses for `pause`.
    pub fn budget_rate_limited(&self, pause: Duration) {
        self.budget_rate_limited.inc();
        self.budget_paused.inc_by(pause.as_secs_f64());
    }

    pub fn event_sent(&self) {
        self.events_sent.inc();
    }

    /// The OpenMetrics text of every metric, with the store's figures as
    /// they are now.
    pub fn render(&self, store: &Store, jwks: Option<JwksStats>) -> String {
        let _guard = self.render.lock().unwrap_or_else(|e| e.into_inner());
        self.tenants.clear();
        for (state, stale, n) in store.count_by_state() {
            self.tenants
                .get_or_create(&TenantLabels {
                    state: state.name(),
                    stale: if stale { "true" } else { "false" },
                })
                .set(n as i64);
        }
        self.revision
            .set(i64::try_from(store.revision()).unwrap_or(i64::MAX));
        if let Some(j) = jwks {
            self.jwks_keys.set(j.keys as i64);
            self.jwks_last_refresh.set(
                j.last_refresh
                    .map_or(0, |t| crate::token::unix_seconds(t) as i64),
            );
            let counted = self.jwks_refresh_failures.get();
            if j.failures > counted {
                self.jwks_refresh_failures.inc_by(j.failures - counted);
            }
        }
        let coalesced = store.coalesced();
        let counted = self.events_coalesced.get();
        if coalesced > counted {
            self.events_coalesced.inc_by(coalesced - counted);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String does not fail");
        out
    }
}

/// Counts an open watch stream until dropped.
pub struct StreamGuard(Arc<Metrics>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.watch_streams.dec();
    }
}

/// The content type of `Metrics::render`'s output.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One method's pre-resolved series (`Metrics::rpc_handles`).
#[derive(Clone)]
pub struct RpcHandles {
    method: &'static str,
    ok: Counter,
    duration: Histogram,
}
