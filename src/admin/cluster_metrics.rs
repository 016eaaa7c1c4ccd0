//! The replicas' figures: partitions held, lease renewals and losses, the
//! shared store's write latency and conflicts, how far behind the log this
//! replica reads, and whether it is connected to NATS.

use std::{sync::atomic::AtomicU64, time::Duration};

use prometheus_client::{
    metrics::{
        counter::Counter,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

/// Updated by the cluster module; read at scrape time.
#[derive(Debug, Clone)]
pub struct ClusterMetrics {
    partitions_held: Gauge,
    lease_renewals: Counter,
    lease_losses: Counter,
    lease_takes: Counter,
    write_duration: Histogram,
    write_conflicts: Counter,
    write_failures: Counter,
    watch_lag: Gauge<f64, AtomicU64>,
    applied_revision: Gauge,
    connected: Gauge,
}

impl Default for ClusterMetrics {
    fn default() -> Self {
        Self {
            partitions_held: Gauge::default(),
            lease_renewals: Counter::default(),
            lease_losses: Counter::default(),
            lease_takes: Counter::default(),
            // 0.1 ms to about 3 s.
            write_duration: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            write_conflicts: Counter::default(),
            write_failures: Counter::default(),
            watch_lag: Gauge::default(),
            applied_revision: Gauge::default(),
            connected: Gauge::default(),
        }
    }
}

impl ClusterMetrics {
    pub(crate) fn register(&self, r: &mut Registry) {
        r.register(
            "partitions_held",
            "Poll partitions whose lease this replica holds",
            self.partitions_held.clone(),
        );
        r.register(
            "lease_renewals",
            "Partition leases renewed",
            self.lease_renewals.clone(),
        );
        r.register(
            "lease_losses",
            "Partition leases lost (a renewal refused or not answered)",
            self.lease_losses.clone(),
        );
        r.register(
            "lease_takes",
            "Partition leases taken (at start, after another replica left, to balance)",
            self.lease_takes.clone(),
        );
        r.register_with_unit(
            "kv_write_duration",
            "Time of one write to the shared store (compare-and-set of a record)",
            Unit::Seconds,
            self.write_duration.clone(),
        );
        r.register(
            "kv_write_conflicts",
            "Writes that lost a compare-and-set to another replica's and were merged",
            self.write_conflicts.clone(),
        );
        r.register(
            "kv_write_failures",
            "Writes the shared store did not take (NATS unreachable, timed out)",
            self.write_failures.clone(),
        );
        r.register_with_unit(
            "watch_lag",
            "From a record's write to this replica's reading it, for the latest record read",
            Unit::Seconds,
            self.watch_lag.clone(),
        );
        r.register(
            "applied_revision",
            "The shared log's revision this replica has read to",
            self.applied_revision.clone(),
        );
        r.register(
            "connected",
            "1 while this replica is connected to NATS, else 0",
            self.connected.clone(),
        );
    }

    pub fn partitions_held(&self, n: usize) {
        self.partitions_held
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    pub fn lease_renewed(&self) {
        self.lease_renewals.inc();
    }
    pub fn lease_lost(&self) {
        self.lease_losses.inc();
    }
    pub fn lease_taken(&self) {
        self.lease_takes.inc();
    }
    pub fn write(&self, took: Duration) {
        self.write_duration.observe(took.as_secs_f64());
    }
    pub fn conflict(&self) {
        self.write_conflicts.inc();
    }
    pub fn write_failed(&self) {
        self.write_failures.inc();
    }
    pub fn applied(&self, revision: u64, lag: Duration) {
        self.applied_revision
            .set(i64::try_from(revision).unwrap_or(i64::MAX));
        self.watch_lag.set(lag.as_secs_f64());
    }
    pub fn connected(&self, yes: bool) {
        self.connected.set(i64::from(yes));
    }
}
