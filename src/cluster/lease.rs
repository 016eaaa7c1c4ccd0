//! Each tenant polled once, fleet-wide: tenants fall into `PARTITIONS`
//! partitions by a stable hash of their identifier, and a replica polls
//! only the partitions whose lease it holds.
//!
//! A lease is a key in the `leases` bucket, whose `max_age` is the lease
//! TTL: taken with create-if-absent, renewed every third of the TTL with
//! compare-and-set on its revision. A replica that dies stops renewing and
//! its keys expire after the TTL; the others, trying every third of the
//! TTL, take them within 2 × TTL. A renewal refused or not answered is a
//! lease lost at once, and a replica stops polling a partition when its
//! own monotonic clock says the lease may have run out (last renewal sent
//! + TTL − a fifth), whatever the server says later.
//!
//! Balance: each replica keeps a membership key (`m.<id>`) alive the same
//! way, and holds at most ⌈PARTITIONS / members⌉ partitions, giving back
//! the rest, so the load spreads as replicas come and go. Members are
//! counted by distinct key: nats-server 2.9 lists a key of a busy bucket
//! more than once, and a miscount moved leases when nothing had failed.
//!
//! Tenures: each time this replica holds a partition, from the moment it
//! could first act on it to the earlier of its `until` and the moment it
//! was lost or given back, is kept (the held ones and the last 4,096
//! ended) and served on the admin listener (`/cluster/leases`), so that
//! "one poller per tenant at a time" can be checked from evidence
//! (`lease/tenures.rs`).
//!
//! Watching for loss: every replica notes when it last saw each partition
//! held (its own, or a key in the bucket); one nobody has held for two
//! TTLs is counted (`partitions_unheld`), and alerted on.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex},
};

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::{TryStreamExt, future::join_all};
use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;

mod tenures;

pub(crate) use tenures::{EndedBy, Leases};

use super::health::Contact;
use crate::{
    core::{ledger::Removal, store::Store, tenant::ContextId},
    metrics::ClusterMetrics,
    superoffice::{budget::Budget, poller::PollerHandle},
};

/// How many partitions the tenants are split into: enough to spread over
/// a few dozen replicas, few enough that renewing them all is cheap.
pub const PARTITIONS: u16 = 64;

/// The partition of a tenant: FNV-1a of its identifier (stable across
/// processes and versions, unlike Rust's randomised hasher).
pub fn partition_of(ctx: &str) -> u16 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in ctx.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % u64::from(PARTITIONS)) as u16
}

fn lease_key(p: u16) -> String {
    format!("p.{p:02}")
}

pub(super) struct LeaseKeeper {
    pub(super) kv: kv::Store,
    pub(super) interest_kv: kv::Store,
    pub(super) interest: Arc<std::sync::RwLock<std::collections::HashSet<ContextId>>>,
    /// The configured tenants (`--tenant`, `--tenants-file`): tracked for
    /// good, whoever watches them.
    pub(super) configured: std::collections::HashSet<ContextId>,
    pub(super) leases: Arc<Leases>,
    pub(super) store: Arc<Store>,
    pub(super) caught_up: watch::Receiver<bool>,
    pub(super) metrics: Arc<ClusterMetrics>,
    pub(super) contact: Arc<Contact>,
    /// When this replica last saw each partition held, by anyone.
    pub(super) seen_held: Mutex<BTreeMap<u16, Instant>>,
    /// The budget toward SuperOffice: its share follows the members
    /// counted here.
    pub(super) budget: std::sync::OnceLock<Arc<Budget>>,
}

/// How many replicas the leases bucket names: distinct membership keys,
/// however many times a listing repeats one.
fn count_members(keys: &[String]) -> usize {
    keys.iter()
        .filter(|k| k.starts_with("m."))
        .collect::<HashSet<_>>()
        .len()
        .max(1)
}

impl LeaseKeeper {
    pub(super) async fn run(mut self, poller: PollerHandle, stop: CancellationToken) {
        // Nothing is taken before this replica has read the shared store:
        // a partition's tenants are scheduled from the records it holds.
        tokio::select! {
            () = stop.cancelled() => return,
            _ = self.caught_up.wait_for(|c| *c) => {}
        }
        let tick = self.leases.ttl / 3;
        loop {
            self.round(&poller).await;
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(tick) => {}
            }
        }
        self.give_back().await;
    }

    fn member_key(&self) -> String {
        format!("m.{}", self.leases.id)
    }

    async fn round(&self, poller: &PollerHandle) {
        let id = Bytes::from(self.leases.id.clone());
        match self.kv.put(self.member_key(), id.clone()).await {
            Ok(_) => self.contact.touch(),
            Err(e) => tracing::warn!(error = %e, "could not renew this replica's membership"),
        }
        self.share_interest().await;
        // Renew what is held; a refusal or no answer is a loss. A lease
        // this replica's clock had given up on (a round late: a busy
        // machine) but that is still its own is taken again: its poller
        // dropped those tenants meanwhile and must schedule them anew.
        let mut taken = Vec::new();
        // All at once: one at a time, a stalled server made a round last a
        // request timeout per lease, far past the TTL.
        let renewals = self.leases.snapshot().into_iter().map(|(p, h)| {
            let id = id.clone();
            async move {
                let sent = Instant::now();
                (
                    p,
                    h,
                    sent,
                    self.kv.update(lease_key(p), id, h.revision).await,
                )
            }
        });
        for (p, h, sent, result) in join_all(renewals).await {
            match result {
                Ok(revision) => {
                    self.contact.touch();
                    self.metrics.lease_renewed();
                    if self.leases.renewed(p, h, revision, self.leases.until(sent)) {
                        taken.push(p);
                    }
                }
                Err(e) => {
                    self.metrics.lease_lost();
                    self.leases.end(p, EndedBy::Lost);
                    tracing::warn!(partition = p, error = %e, "lost a partition lease; its tenants are no longer polled here");
                }
            }
        }
        // How many replicas there are now, and so how many partitions are
        // this one's share.
        let listed = tokio::time::timeout(self.leases.ttl, async {
            self.kv
                .keys()
                .await
                .ok()?
                .try_collect::<Vec<String>>()
                .await
                .ok()
        });
        let Ok(Some(keys)) = listed.await else {
            return self.finish(&taken, poller);
        };
        self.contact.touch();
        self.note_held(&keys);
        let members = count_members(&keys);
        if let Some(b) = self.budget.get() {
            b.set_members(members);
        }
        let share = usize::from(PARTITIONS).div_ceil(members);
        // Give back more than the share, so that a new replica finds some.
        let held = self.leases.snapshot();
        for (p, h) in held.iter().rev().take(held.len().saturating_sub(share)) {
            self.leases.end(*p, EndedBy::GivenBack);
            if let Err(e) = self
                .kv
                .delete_expect_revision(lease_key(*p), Some(h.revision))
                .await
            {
                tracing::debug!(partition = p, error = %e, "could not give a lease back; it will expire");
            }
            tracing::info!(
                partition = p,
                members,
                "gave a partition lease back to balance the load"
            );
        }
        // Take free ones up to the share, starting at a place of this
        // replica's own so that replicas starting together do not race for
        // the same keys.
        let start = partition_of(&self.leases.id);
        for i in 0..PARTITIONS {
            if self.leases.count() >= share {
                break;
            }
            let p = (start + i) % PARTITIONS;
            if self.leases.holds(p) {
                continue;
            }
            let sent = Instant::now();
            match self.kv.create(lease_key(p), id.clone()).await {
                Ok(revision) => {
                    self.metrics.lease_taken();
                    self.leases.take(p, revision, self.leases.until(sent));
                    taken.push(p);
                }
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => {
                    tracing::debug!(partition = p, error = %e, "could not take a lease");
                    break;
                }
            }
        }
        if !taken.is_empty() {
            tracing::info!(partitions = ?taken, members, held = self.leases.count(), "took partition leases");
        }
        self.finish(&taken, poller);
    }

    /// Says which unknown tenants this replica's streams watch by name, and
    /// reads which ones any replica's do: the poller of such a tenant keeps
    /// it tracked while anyone in the fleet watches it.
    async fn share_interest(&self) {
        let shared = self
            .store
            .unknown_watched_by_name()
            .into_iter()
            .filter(|c| {
                !self.configured.contains(c)
                    && self
                        .store
                        .get(c)
                        .is_some_and(|r| Removal::UnknownUnnamed.applies_to(&r))
            });
        for ctx in shared {
            let key = format!("{ctx}.{}", self.leases.id);
            if let Err(e) = self.interest_kv.put(key, Bytes::new()).await {
                tracing::debug!(tenant = %ctx, error = %e, "could not share a watch's interest");
            }
        }
        let keys = match self.interest_kv.keys().await {
            Ok(keys) => keys.try_collect::<Vec<String>>().await,
            Err(e) => {
                tracing::debug!(error = %e, "could not read the fleet's watched unknown tenants");
                return;
            }
        };
        if let Ok(keys) = keys {
            let watched = keys
                .iter()
                .filter_map(|k| k.split('.').next())
                .filter_map(|c| ContextId::parse(c).ok())
                .collect();
            *self.interest.write().unwrap_or_else(|e| e.into_inner()) = watched;
        }
    }

    /// Notes which partitions the bucket's keys say are held now.
    fn note_held(&self, keys: &[String]) {
        let now = Instant::now();
        let mut seen = self.seen_held.lock().unwrap_or_else(|e| e.into_inner());
        for p in keys
            .iter()
            .filter_map(|k| k.strip_prefix("p."))
            .filter_map(|p| p.parse::<u16>().ok())
        {
            seen.insert(p, now);
        }
    }

    /// The partitions nobody has been seen holding for two TTLs (this
    /// replica's own held ones excepted; a listing that fails, as on a
    /// stuck NATS, sees none held).
    fn unheld(&self) -> usize {
        let now = Instant::now();
        let mut seen = self.seen_held.lock().unwrap_or_else(|e| e.into_inner());
        for (p, h) in self.leases.snapshot() {
            if now < h.until {
                seen.insert(p, now);
            }
        }
        (0..PARTITIONS)
            .filter(|p| {
                let since = *seen.entry(*p).or_insert(now);
                now.duration_since(since) >= self.leases.ttl * 2
            })
            .count()
    }

    /// The end of a round: the tenants of partitions taken are scheduled.
    fn finish(&self, taken: &[u16], poller: &PollerHandle) {
        if !taken.is_empty() {
            self.schedule(taken, poller);
        }
        self.metrics.partitions_held(self.leases.count());
        self.metrics.partitions_unheld(self.unheld());
    }

    /// Schedules the tenants of partitions just taken from the records
    /// this replica holds: each at its ValidUntil, or, when that passed
    /// while the partition had no poller, spread over one lease TTL.
    fn schedule(&self, taken: &[u16], poller: &PollerHandle) {
        for r in self.store.snapshot() {
            if taken.contains(&partition_of(&r.context_identifier)) {
                poller.take_over(r.context_identifier.clone(), r.valid_until, self.leases.ttl);
            }
        }
    }

    /// At shutdown: give every lease and the membership back, so that the
    /// other replicas take the partitions at once, not after the TTL.
    async fn give_back(&self) {
        for (p, h) in self.leases.snapshot() {
            self.leases.end(p, EndedBy::Shutdown);
            let _ = self
                .kv
                .delete_expect_revision(lease_key(p), Some(h.revision))
                .await;
        }
        let _ = self.kv.delete(self.member_key()).await;
        self.metrics.partitions_held(0);
        tracing::info!("gave the partition leases back");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_stable_and_spread() {
        // Stable: the same on every replica and in every version.
        assert_eq!(partition_of("Cust10001"), partition_of("Cust10001"));
        let mut counts = [0usize; PARTITIONS as usize];
        for i in 0..64_000 {
            counts[usize::from(partition_of(&format!("Cust{i}")))] += 1;
        }
        // Within a third of the mean (1,000) for every partition.
        assert!(
            counts.iter().all(|&c| (667..=1333).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn members_listed_twice_are_counted_once() {
        // What nats-server 2.9 listed for a busy leases bucket of three
        // replicas: membership keys repeated among the partitions'.
        let keys: Vec<String> = [
            "m.r1", "p.00", "m.r2", "m.r1", "p.01", "m.r3", "m.r2", "m.r1", "p.02",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(count_members(&keys), 3);
        assert_eq!(count_members(&[]), 1, "this replica, at least");
    }
}
