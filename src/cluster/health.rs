//! How a replica knows NATS is answering it, and which servers it trusts
//! with which setup.
//!
//! A paused NATS server keeps its sockets open: nothing fails, requests
//! just go unanswered. So the connection state alone does not tell a
//! stall; the replica also keeps the time of the last answer it had
//! (`Contact`), and one that has heard nothing for longer than a lease
//! TTL is stalled: by then its leases are gone, and what it holds may be
//! behind. It serves its records stale and is not ready until NATS answers
//! again.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// The last time NATS answered this replica: a renewal, a write, a record
/// or freshness read from the log, the log's end.
pub(crate) struct Contact {
    base: Instant,
    /// Milliseconds after `base`.
    last: AtomicU64,
    ttl: Duration,
}

impl Contact {
    pub(super) fn new(ttl: Duration) -> Self {
        Self {
            base: Instant::now(),
            last: AtomicU64::new(0),
            ttl,
        }
    }

    /// NATS answered just now.
    pub(super) fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.fetch_max(ms, Ordering::Relaxed);
    }

    /// How long since NATS last answered.
    pub(super) fn silent_for(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.base.elapsed().saturating_sub(last)
    }

    /// Whether NATS has not answered for longer than a lease TTL.
    pub(super) fn stalled(&self) -> bool {
        self.silent_for() > self.ttl
    }
}

/// How often the client pings the server: three pings unanswered and
/// async-nats drops the connection and reconnects (its default, every
/// 60 s, let a paused server go unnoticed for minutes). A third of the
/// lease TTL, so a stalled server is dropped about a TTL after it stopped.
pub(super) fn ping_interval(ttl: Duration) -> Duration {
    (ttl / 3).clamp(Duration::from_secs(1), Duration::from_secs(20))
}

/// How long one JetStream request may go unanswered: half a lease TTL,
/// so that a renewal sent in time is known lost before the lease runs
/// out; at least a second (a busy machine), at most five.
pub(super) fn request_timeout(ttl: Duration) -> Duration {
    (ttl / 2).clamp(Duration::from_secs(1), Duration::from_secs(5))
}

/// Whether a nats-server of `version` may carry buckets with
/// `bucket_replicas` copies. Err: the one sentence saying why not.
///
/// A single copy works on 2.9 (Debian's), whose key-value features the
/// replicas use all exist there. Several copies need 2.10: under a paused
/// stream leader, 2.9.10's copies of an R3 stream were measured to diverge
/// (one ended 42 sequences apart), so one revision named two records on
/// different replicas.
pub(super) fn check_server_version(version: &str, bucket_replicas: usize) -> Result<(), String> {
    if bucket_replicas <= 1 {
        return Ok(());
    }
    match parse_version(version) {
        Some((major, minor)) if (major, minor) < (2, 10) => Err(format!(
            "--nats-bucket-replicas {bucket_replicas} needs nats-server 2.10 or later, and this one is {version}: \
             under a paused stream leader the copies of a replicated stream on 2.9 diverge, so one revision \
             would name two records on different replicas (use one copy, or upgrade the servers)"
        )),
        // Unreadable: a build of its own; nothing to go by.
        _ => Ok(()),
    }
}

/// `"2.10.3"`, `"v2.11.0-RC.1"` → (2, 10), (2, 11).
fn parse_version(version: &str) -> Option<(u32, u32)> {
    let v = version.trim().trim_start_matches('v');
    let mut parts = v.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor: String = parts
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some((major, minor.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_copies_need_nats_2_10_one_copy_does_not() {
        let refused = check_server_version("2.9.10", 3).unwrap_err();
        assert!(refused.contains("--nats-bucket-replicas 3"), "{refused}");
        assert!(refused.contains("2.9.10"), "{refused}");
        assert!(refused.contains("diverge"), "{refused}");
        assert!(check_server_version("2.9.10", 1).is_ok());
        for newer in ["2.10.0", "2.11.11", "v2.12.1-RC.2", "3.0.0"] {
            assert!(check_server_version(newer, 3).is_ok(), "{newer}");
        }
        assert!(check_server_version("2.2.6", 2).is_err());
        // A version nobody can read says nothing either way.
        assert!(check_server_version("dev", 3).is_ok());
        assert_eq!(parse_version("2.10.3"), Some((2, 10)));
        assert_eq!(parse_version("x.y"), None);
    }

    #[test]
    fn timings_follow_the_lease_ttl() {
        let ttl = Duration::from_secs(10);
        assert_eq!(request_timeout(ttl), Duration::from_secs(5));
        assert_eq!(ping_interval(ttl), ttl / 3);
        // A short TTL (the tests' 2 s) still leaves a busy machine a second.
        assert_eq!(
            request_timeout(Duration::from_secs(2)),
            Duration::from_secs(1)
        );
        assert_eq!(
            ping_interval(Duration::from_secs(2)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn silence_longer_than_the_ttl_is_a_stall() {
        let c = Contact::new(Duration::from_millis(50));
        c.touch();
        assert!(!c.stalled());
        std::thread::sleep(Duration::from_millis(80));
        assert!(c.stalled(), "silent for {:?}", c.silent_for());
        c.touch();
        assert!(!c.stalled());
    }
}
