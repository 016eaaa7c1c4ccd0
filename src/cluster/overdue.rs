//! No silent loss of freshness: a record whose next poll is overdue by
//! more than its schedule allows is marked stale in the shared store, by
//! whichever replica sees it first.
//!
//! The holder of a partition polls its tenants; when nobody holds it (every
//! replica stalled, leases stuck on a troubled NATS), nobody polls, and a
//! failed poll, which would mark a record stale, never happens. So every
//! replica looks at every record once a lease TTL: one not observed within
//! its schedule plus what a takeover may take is written back `stale`
//! (compare-and-set, so one write wins and the others find it stale
//! already), and every replica's watchers are told. The next poll's answer
//! clears it. A replica that cannot write (NATS stalled or gone) serves
//! everything stale anyway (`health`).

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::shared_ledger::SharedLedger;
use crate::core::{
    ledger::Fleet,
    tenant::{TenantRecord, TenantState},
};

/// Records marked in one round at most: after a long outage the rest wait
/// for the next round rather than flood the shared store.
const PER_ROUND: usize = 1000;

pub(super) struct Sweep {
    pub(super) ledger: Arc<SharedLedger>,
    pub(super) caught_up: watch::Receiver<bool>,
    pub(super) lease_ttl: Duration,
    /// The poller's bounds between two polls of a tenant.
    pub(super) min_interval: Duration,
    pub(super) max_interval: Duration,
}

impl Sweep {
    pub(super) async fn run(self, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(self.lease_ttl) => {}
            }
            // A replica behind the log, or cut off, would judge old copies.
            if !*self.caught_up.borrow() || self.ledger.cut_off() {
                continue;
            }
            self.round().await;
        }
    }

    async fn round(&self) {
        let now = SystemTime::now();
        let overdue = self
            .ledger
            .store
            .snapshot()
            .into_iter()
            .filter(|r| self.overdue(r, now))
            .take(PER_ROUND);
        for r in overdue {
            let ctx = r.context_identifier.clone();
            let marked = self
                .ledger
                .write(&ctx, now, None, |old| {
                    old.filter(|o| self.overdue(o, now)).map(|o| TenantRecord {
                        stale: true,
                        ..o.clone()
                    })
                })
                .await;
            match marked {
                Ok(Ok(applied)) if applied.changed => {
                    self.ledger.metrics.marked_overdue();
                    tracing::warn!(tenant = %ctx, observed_at = ?r.observed_at, "nobody polled this tenant within its schedule: marked stale");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(tenant = %ctx, error = %e, "could not mark an overdue record stale");
                    return;
                }
            }
        }
    }

    fn overdue(&self, r: &TenantRecord, now: SystemTime) -> bool {
        overdue(
            r,
            now,
            (self.min_interval, self.max_interval),
            self.lease_ttl,
        )
    }
}

/// Whether `r` should have been polled again long ago: its next poll (at
/// ValidUntil, within the poller's `bounds`) plus a takeover (two TTLs)
/// and the spread of a new holder's overdue polls (one TTL), twice over.
/// DELETED tenants wait to be forgotten and unknown ones take a small
/// share of the polls: neither is judged.
fn overdue(
    r: &TenantRecord,
    now: SystemTime,
    (min, max): (Duration, Duration),
    ttl: Duration,
) -> bool {
    if r.stale || matches!(r.state, TenantState::Deleted | TenantState::Unknown) {
        return false;
    }
    let interval = r
        .valid_until
        .and_then(|v| v.duration_since(r.observed_at).ok())
        .unwrap_or(min)
        .clamp(min, max.max(min));
    now.duration_since(r.observed_at)
        .is_ok_and(|since| since > interval + ttl * 6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::tenant::ContextId;

    #[test]
    fn a_record_is_overdue_past_its_next_poll_and_six_ttls() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ttl = Duration::from_secs(10);
        let bounds = (Duration::from_secs(5), Duration::from_secs(900));
        let ctx = ContextId::parse("Cust1").unwrap();
        let r = TenantRecord {
            state: TenantState::Running,
            valid_until: Some(t0 + Duration::from_secs(60)),
            ..TenantRecord::unknown(&ctx, t0)
        };
        let at = |s: u64| t0 + Duration::from_secs(s);
        // Next poll at 60 s; a takeover and its spread allowed, twice.
        assert!(!overdue(&r, at(60 + 60), bounds, ttl));
        assert!(overdue(&r, at(60 + 61), bounds, ttl));
        // A ValidUntil a day away: polled within the poller's bound anyway.
        let far = TenantRecord {
            valid_until: Some(at(86_400)),
            ..r.clone()
        };
        assert!(overdue(&far, at(900 + 61), bounds, ttl));
        // Stale already, DELETED, or unknown to SuperOffice: not judged.
        for quiet in [
            TenantRecord {
                stale: true,
                ..r.clone()
            },
            TenantRecord {
                state: TenantState::Deleted,
                ..r.clone()
            },
            TenantRecord::unknown(&ctx, t0),
        ] {
            assert!(!overdue(&quiet, at(100_000), bounds, ttl));
        }
    }
}
