//! Tenures: each time this replica holds a partition, from the moment it
//! could first act on it to the earlier of its `until` and the moment it
//! was lost or given back; the held ones and the last 4,096 ended, served
//! on the admin listener (`/cluster/leases`). Apart from the keeper's
//! rounds so the record of who held what stays one small, plain thing.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::time::Instant;

use super::partition_of;
use crate::core::tenant::ContextId;

#[derive(Debug, Clone, Copy)]
pub(super) struct Held {
    pub(super) revision: u64,
    /// Until when this replica may act on the lease, by its own clock.
    pub(super) until: Instant,
    /// When this tenure began: the moment the lease was taken (or taken
    /// again after lapsing) was known here, so the moment this replica
    /// could first act on it. An answer to a request sent before it
    /// belongs to an earlier tenure, between which another replica may
    /// have polled.
    pub(super) since: SystemTime,
}

/// Why a tenure ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndedBy {
    /// Its time ran out by this replica's clock before a renewal came back.
    Lapsed,
    /// A renewal was refused or not answered.
    Lost,
    /// Given back to balance the load.
    GivenBack,
    /// Given back at shutdown.
    Shutdown,
}

impl EndedBy {
    fn as_str(self) -> &'static str {
        match self {
            Self::Lapsed => "lapsed",
            Self::Lost => "lost",
            Self::GivenBack => "given_back",
            Self::Shutdown => "shutdown",
        }
    }
}

/// A tenure that is over: from `since` to `end`, the earlier of its
/// `until` and the moment it was lost or given back.
#[derive(Debug, Clone, Copy)]
struct Ended {
    partition: u16,
    since: SystemTime,
    end: SystemTime,
    why: EndedBy,
}

/// How many ended tenures are kept for `/cluster/leases`: a sampler every
/// few seconds misses none, even under churn of all 64 partitions.
const ENDED_KEPT: usize = 4096;

#[derive(Default)]
struct Tenures {
    held: BTreeMap<u16, Held>,
    ended: VecDeque<Ended>,
}

impl Tenures {
    /// Ends the tenure of `p`, if held: at the earlier of its `until` and
    /// now, as the poller stops acting on it at whichever comes first.
    pub(super) fn end(&mut self, p: u16, why: EndedBy) -> Option<Held> {
        let h = self.held.remove(&p)?;
        self.record(p, h, why);
        Some(h)
    }

    fn record(&mut self, p: u16, h: Held, why: EndedBy) {
        let now = SystemTime::now();
        let until = wall(h.until);
        let (end, why) = if until < now {
            (until, EndedBy::Lapsed)
        } else {
            (now, why)
        };
        if self.ended.len() >= ENDED_KEPT {
            self.ended.pop_front();
        }
        self.ended.push_back(Ended {
            partition: p,
            since: h.since,
            end: end.max(h.since),
            why,
        });
    }
}

/// A moment of the monotonic clock on the wall clock, as of now.
fn wall(at: Instant) -> SystemTime {
    let (now, wall_now) = (Instant::now(), SystemTime::now());
    if at >= now {
        wall_now + (at - now)
    } else {
        wall_now
            .checked_sub(now - at)
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The leases this replica holds, and the tenures it held lately.
pub(crate) struct Leases {
    pub(super) id: String,
    pub(super) ttl: Duration,
    tenures: Mutex<Tenures>,
}

impl Leases {
    pub(in crate::cluster) fn new(id: String, ttl: Duration) -> Self {
        Self {
            id,
            ttl,
            tenures: Mutex::new(Tenures::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tenures> {
        self.tenures.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this replica may poll `ctx` now.
    pub(crate) fn owns(&self, ctx: &ContextId) -> bool {
        let p = partition_of(ctx);
        self.lock()
            .held
            .get(&p)
            .is_some_and(|h| Instant::now() < h.until)
    }

    /// Whether this replica may write a poll's answer for `ctx` now, for a
    /// request sent at `asked_at`: it holds the lease by its own clock, and
    /// held it, without a lapse, since before the request went out.
    pub(crate) fn owns_since(&self, ctx: &ContextId, asked_at: SystemTime) -> bool {
        let p = partition_of(ctx);
        self.lock()
            .held
            .get(&p)
            .is_some_and(|h| Instant::now() < h.until && asked_at >= h.since)
    }

    pub(super) fn snapshot(&self) -> BTreeMap<u16, Held> {
        self.lock().held.clone()
    }

    /// A lease taken: a new tenure from now.
    pub(super) fn take(&self, p: u16, revision: u64, until: Instant) {
        let mut t = self.lock();
        if let Some(old) = t.held.remove(&p) {
            t.record(p, old, EndedBy::Lost);
        }
        t.held.insert(
            p,
            Held {
                revision,
                until,
                since: SystemTime::now(),
            },
        );
    }

    /// A renewal of the tenure `was` answered: the same tenure goes on
    /// unless it ran out by this replica's clock before the answer came
    /// (the poller stopped acting on it meanwhile); then that one ended at
    /// its `until` and a new one begins now. True when a new one began.
    pub(super) fn renewed(&self, p: u16, was: Held, revision: u64, until: Instant) -> bool {
        let mut t = self.lock();
        let lapsed = Instant::now() >= was.until;
        let since = if lapsed {
            t.held.remove(&p);
            t.record(p, was, EndedBy::Lapsed);
            SystemTime::now()
        } else {
            was.since
        };
        t.held.insert(
            p,
            Held {
                revision,
                until,
                since,
            },
        );
        lapsed
    }

    /// Ends the tenure of `p`; what was held, if anything.
    pub(super) fn end(&self, p: u16, why: EndedBy) -> Option<Held> {
        self.lock().end(p, why)
    }

    pub(super) fn holds(&self, p: u16) -> bool {
        self.lock().held.contains_key(&p)
    }

    pub(super) fn count(&self) -> usize {
        self.lock().held.len()
    }

    /// How long a lease taken or renewed at `sent` may be acted on.
    pub(super) fn until(&self, sent: Instant) -> Instant {
        sent + self.ttl - self.ttl / 5
    }

    /// This replica's tenures, held and lately ended, on the wall clock in
    /// Unix milliseconds: what `/cluster/leases` serves.
    pub(crate) fn tenures_json(&self) -> serde_json::Value {
        let t = self.lock();
        let held: Vec<_> = t
            .held
            .iter()
            .map(|(p, h)| {
                serde_json::json!({
                    "partition": p,
                    "since_ms": unix_ms(h.since),
                    "until_ms": unix_ms(wall(h.until)),
                })
            })
            .collect();
        let ended: Vec<_> = t
            .ended
            .iter()
            .map(|e| {
                serde_json::json!({
                    "partition": e.partition,
                    "since_ms": unix_ms(e.since),
                    "end_ms": unix_ms(e.end),
                    "why": e.why.as_str(),
                })
            })
            .collect();
        serde_json::json!({
            "replica": self.id,
            "now": unix_ms(SystemTime::now()),
            "held": held,
            "ended": ended,
        })
    }
}
