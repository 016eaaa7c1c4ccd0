//! The replicas' figures: partitions held, lease renewals and losses, the
//! shared store's write latency and conflicts, how far behind the log this
//! replica reads, whether it is connected to NATS, and the faults the
//! replicas guard against: poll answers fenced off, stalls of NATS,
//! partitions nobody holds, records marked stale because nobody polled
//! them.

use std::{sync::atomic::AtomicU64, time::Duration};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

/// Why a poll's answer was not written.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FenceLabels {
    reason: &'static str,
}

/// Why a poll's answer was dropped at the write (see `cluster::shared_ledger`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fenced {
    /// This replica's own clock says it no longer holds the partition's
    /// lease, or the answer was asked for before its current tenure.
    Lease,
    /// The answer was asked for before the record's last observation.
    Older,
}

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
    polls_fenced: Family<FenceLabels, Counter>,
    stalls: Counter,
    stalled: Gauge,
    partitions_unheld: Gauge,
    marked_overdue: Counter,
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
            polls_fenced: Family::default(),
            stalls: Counter::default(),
            stalled: Gauge::default(),
            partitions_unheld: Gauge::default(),
            marked_overdue: Counter::default(),
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
        r.register(
            "poll_answers_fenced",
            "Poll answers dropped at the write: the lease was no longer this replica's (reason lease), or the answer was asked for before the record's last observation (reason older)",
            self.polls_fenced.clone(),
        );
        r.register(
            "stalls",
            "Times this replica could neither renew nor read through NATS for longer than the lease TTL",
            self.stalls.clone(),
        );
        r.register(
            "stalled",
            "1 while this replica has had no answer from NATS for longer than the lease TTL (it serves stale and is not ready), else 0",
            self.stalled.clone(),
        );
        r.register(
            "partitions_unheld",
            "Poll partitions this replica has seen held by nobody for two lease TTLs or more: their tenants are not polled",
            self.partitions_unheld.clone(),
        );
        r.register(
            "records_marked_overdue",
            "Records this replica marked stale because their next poll was overdue by more than the schedule allows",
            self.marked_overdue.clone(),
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
    pub fn poll_fenced(&self, why: Fenced) {
        let reason = match why {
            Fenced::Lease => "lease",
            Fenced::Older => "older",
        };
        self.polls_fenced
            .get_or_create(&FenceLabels { reason })
            .inc();
    }
    /// The replica's stall state; a move into a stall is counted.
    pub fn stalled(&self, yes: bool) {
        if yes && self.stalled.get() == 0 {
            self.stalls.inc();
        }
        self.stalled.set(i64::from(yes));
    }
    pub fn partitions_unheld(&self, n: usize) {
        self.partitions_unheld
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    pub fn marked_overdue(&self) {
        self.marked_overdue.inc();
    }
}
