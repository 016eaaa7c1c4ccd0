//! Each replica's store follows the shared log: every record, removal and
//! freshness written by any replica is read back in the log's order and
//! handed to the store, whose watch streams fan it out as alone.
//!
//! A watch of the bucket can end (NATS restarted, this replica cut off):
//! it is opened again from the last revision read, so nothing is missed
//! and nothing is read twice. The replica has caught up once it has read
//! to the log's last revision as of its start (`caught_up`); readiness and
//! SYNCED wait for that.
//!
//! A consistent prefix: the bucket keeps one version per key, so a read
//! that falls behind the log (a re-read after a reconnect, or async-nats
//! re-creating its consumer after a lost message) skips the versions
//! overwritten meanwhile: revisions arrive with a gap. Until the read has
//! reached the log's end, the store may then hold a tenant older than the
//! revision it is at (one was measured holding a tenant at 3828, sending SYNCED at
//! 4398, while the log held that tenant at 4294).
//! From a gap until a record arrives with nothing after it in the log, the
//! store is marked not consistent: no heartbeat, no SYNCED, not ready.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{health::Contact, lease::Leases};
use crate::{
    codec,
    core::{
        store::Store,
        tenant::{ChangeSource, ContextId},
    },
    metrics::ClusterMetrics,
    superoffice::poller::PollerHandle,
};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How often the mirror looks at the connection: a replica that lost NATS
/// is no longer caught up, and is again only once it has read to the log's
/// end as of its reconnection.
const CONNECTION_CHECK: Duration = Duration::from_millis(250);

pub(super) struct Mirror {
    pub(super) client: async_nats::Client,
    pub(super) js: jetstream::Context,
    pub(super) stream: String,
    pub(super) records: kv::Store,
    pub(super) store: Arc<Store>,
    pub(super) leases: Arc<Leases>,
    pub(super) applied: watch::Sender<u64>,
    pub(super) caught_up: watch::Sender<bool>,
    pub(super) metrics: Arc<ClusterMetrics>,
    /// Over how long a new tenant's first poll may be spread.
    pub(super) spread: Duration,
    pub(super) contact: Arc<Contact>,
}

/// Where the read of the log stands, for a consistent prefix (see the
/// module comment).
#[derive(Debug, Default)]
struct Prefix {
    /// The last revision read.
    last: u64,
    /// Revisions were skipped since the store last held a consistent
    /// prefix of the log.
    gap: bool,
}

impl Prefix {
    /// Takes in an entry at `revision` with `pending` more after it in the
    /// log when it was sent. `false`: an old one again (a consumer
    /// re-created a step back), to be skipped.
    fn read(&mut self, revision: u64, pending: u64) -> bool {
        if revision <= self.last {
            return false;
        }
        if revision != self.last + 1 {
            self.gap = true;
        }
        self.last = revision;
        // Nothing after it: every version skipped was overwritten by one
        // at or below this revision, which has been read.
        if pending == 0 {
            self.gap = false;
        }
        true
    }

    /// The log ends at `end`: read to it, the store holds all of it.
    fn at_end(&mut self, end: u64) -> bool {
        if self.last >= end {
            self.gap = false;
            true
        } else {
            false
        }
    }

    /// The store holds the log's prefix up to `last`, whole.
    fn consistent(&self) -> bool {
        !self.gap
    }
}

impl Mirror {
    /// The log's last revision now.
    async fn end(&self) -> Result<u64, String> {
        let stream = self
            .js
            .get_stream(&self.stream)
            .await
            .map_err(|e| e.to_string())?;
        Ok(stream.cached_info().state.last_sequence)
    }

    /// Says whether the store holds a consistent prefix, and whether this
    /// replica has caught up (read to `end`, consistently, connected).
    fn settle(&self, prefix: &Prefix, reached_end: bool, lost: bool) {
        self.store.set_consistent(prefix.consistent());
        let caught = reached_end && prefix.consistent() && !lost;
        if caught && !*self.caught_up.borrow() {
            tracing::info!(
                revision = prefix.last,
                tenants = self.store.len(),
                "read the shared store to its end"
            );
        }
        self.caught_up
            .send_if_modified(|c| std::mem::replace(c, caught) != caught);
    }

    pub(super) async fn run(self, poller: PollerHandle, stop: CancellationToken) {
        let mut prefix = Prefix::default();
        let mut backoff = BACKOFF_MIN;
        loop {
            let end = tokio::select! {
                () = stop.cancelled() => return,
                end = self.end() => end,
            };
            let opened = match end {
                Ok(end) => {
                    self.contact.touch();
                    let reached = prefix.at_end(end);
                    self.settle(&prefix, reached, false);
                    self.records
                        .watch_all_from_revision(prefix.last + 1)
                        .await
                        .map(|w| (w, end))
                        .map_err(|e| e.to_string())
                }
                Err(e) => Err(e),
            };
            match opened {
                Ok((mut watch, mut end)) => {
                    let mut lost = false;
                    let mut reached = prefix.last >= end;
                    let mut check = tokio::time::interval(CONNECTION_CHECK);
                    loop {
                        let next = tokio::select! {
                            () = stop.cancelled() => return,
                            next = watch.next() => next,
                            _ = check.tick() => {
                                let connected = super::is_connected(&self.client);
                                if !connected {
                                    lost = true;
                                    self.settle(&prefix, reached, lost);
                                } else if lost {
                                    // Back: caught up again once read to the
                                    // log's end as of now.
                                    match self.end().await {
                                        Ok(e) => {
                                            self.contact.touch();
                                            lost = false;
                                            end = e;
                                            reached = prefix.at_end(end);
                                            self.settle(&prefix, reached, lost);
                                        }
                                        Err(e) => tracing::debug!(error = %e, "cannot read the log's end yet"),
                                    }
                                }
                                continue;
                            }
                        };
                        match next {
                            Some(Ok(entry)) => {
                                backoff = BACKOFF_MIN;
                                self.contact.touch();
                                let (revision, pending) = (entry.revision, entry.delta);
                                if !prefix.read(revision, pending) {
                                    continue;
                                }
                                if prefix.gap && !*self.caught_up.borrow() {
                                    tracing::debug!(
                                        revision,
                                        "revisions skipped: withholding SYNCED and heartbeats until the log's end"
                                    );
                                }
                                // Marked before the store moves: a heartbeat
                                // never names a revision of a gapped read.
                                self.store.set_consistent(prefix.consistent());
                                self.apply(entry, &poller);
                                self.applied.send_replace(revision);
                                reached = reached || revision >= end || pending == 0;
                                // A gapped read at the end it knew of: the
                                // log's end again (nats-server 2.9 does not
                                // always say nothing is pending); read to
                                // it, the store holds all of it.
                                if prefix.gap && revision >= end {
                                    match self.end().await {
                                        Ok(e) => {
                                            if !prefix.at_end(e) {
                                                end = e;
                                            }
                                        }
                                        Err(e) => {
                                            tracing::debug!(error = %e, "cannot read the log's end yet")
                                        }
                                    }
                                }
                                self.settle(&prefix, reached, lost);
                            }
                            Some(Err(e)) => {
                                tracing::warn!(error = %e, last = prefix.last, "the shared store's watch failed; opening it again");
                                self.caught_up.send_replace(false);
                                break;
                            }
                            None => {
                                tracing::warn!(
                                    last = prefix.last,
                                    "the shared store's watch ended; opening it again"
                                );
                                self.caught_up.send_replace(false);
                                break;
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, ?backoff, "cannot follow the shared store; trying again");
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    fn apply(&self, entry: kv::Entry, poller: &PollerHandle) {
        let revision = entry.revision;
        let lag = (time::OffsetDateTime::now_utc() - entry.created).unsigned_abs();
        self.metrics.applied(revision, lag);
        let Ok(ctx) = ContextId::parse(&entry.key) else {
            tracing::warn!(key = %entry.key, revision, "a key in the shared store is not a context identifier; skipped");
            self.store.skip_to(revision);
            return;
        };
        if entry.operation != kv::Operation::Put {
            self.store.remove_replicated(&ctx, revision);
            return;
        }
        let mut record = match codec::decode_record(&entry.value) {
            Ok(r) if r.context_identifier == ctx => r,
            Ok(_) => {
                tracing::warn!(tenant = %ctx, revision, "a record in the shared store names another tenant; skipped");
                self.store.skip_to(revision);
                return;
            }
            Err(problem) => {
                tracing::warn!(tenant = %ctx, revision, %problem, "a record in the shared store is unreadable; skipped");
                self.store.skip_to(revision);
                return;
            }
        };
        record.revision = revision;
        let old = self.store.get(&ctx);
        let news = record.source == ChangeSource::Notification
            && old.as_ref().map(|o| &o.last_notification) != Some(&record.last_notification);
        let valid_until = record.valid_until;
        if !self.store.apply_replicated(record) {
            return;
        }
        // The poller of this tenant's partition schedules a tenant it has
        // not seen, and confirms a notification another replica received.
        // While catching up, the lease keeper schedules what it takes.
        if *self.caught_up.borrow() && self.leases.owns(&ctx) {
            if old.is_none() {
                poller.take_over(ctx.clone(), valid_until, self.spread);
            }
            if news {
                poller.confirm(ctx);
            }
        }
    }
}

/// Follows the `observed` bucket: other replicas' confirming polls move
/// this replica's records' freshness, with no revision.
pub(super) struct ObservedMirror {
    pub(super) observed: kv::Store,
    pub(super) store: Arc<Store>,
    pub(super) contact: Arc<Contact>,
}

impl ObservedMirror {
    pub(super) async fn run(self, stop: CancellationToken) {
        let mut last = 0u64;
        let mut backoff = BACKOFF_MIN;
        loop {
            match self.observed.watch_all_from_revision(last + 1).await {
                Ok(mut watch) => loop {
                    let next = tokio::select! {
                        () = stop.cancelled() => return,
                        next = watch.next() => next,
                    };
                    match next {
                        Some(Ok(entry)) => {
                            backoff = BACKOFF_MIN;
                            self.contact.touch();
                            last = entry.revision;
                            if entry.operation != kv::Operation::Put {
                                continue;
                            }
                            if let (Ok(ctx), Some(seen)) = (
                                ContextId::parse(&entry.key),
                                codec::decode_freshness(&entry.value),
                            ) {
                                self.store.refresh(&ctx, &seen);
                            }
                        }
                        Some(Err(_)) | None => break,
                    }
                },
                Err(e) => {
                    tracing::debug!(error = %e, "cannot follow the observed bucket; trying again");
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Prefix;

    #[test]
    fn a_gapped_read_is_consistent_again_only_at_the_logs_end() {
        let mut p = Prefix::default();
        // 1, 2, 3 in order, more to come: consistent all along.
        assert!(p.read(1, 2) && p.consistent());
        assert!(p.read(2, 1) && p.consistent());
        assert!(p.read(3, 0) && p.consistent());
        // 4 and 5 overwritten before they were read: a gap.
        assert!(p.read(6, 3));
        assert!(!p.consistent(), "a tenant written at 4 may be held older");
        assert!(p.read(7, 1));
        assert!(!p.consistent());
        // Read again a step back: skipped, nothing moves.
        assert!(!p.read(7, 0));
        assert!(!p.consistent());
        // Nothing after 8: whatever was skipped was overwritten at or
        // below it, and has been read.
        assert!(p.read(8, 0));
        assert!(p.consistent());
        // A re-opened read that finds the log ended where it stood.
        assert!(p.read(12, 5));
        assert!(!p.at_end(20));
        assert!(!p.consistent());
        assert!(p.at_end(12));
        assert!(p.consistent());
    }
}
