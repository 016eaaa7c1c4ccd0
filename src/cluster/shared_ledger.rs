//! The shared ledger: every write goes to the `records` bucket with
//! compare-and-set on the revision the writer read. On a conflict the
//! current record is read from the bucket and the same rule is applied to
//! it again (the product's rules are functions of the old record, so the
//! merge is the rule itself). A refresh that changes nothing meaningful
//! goes to the `observed` bucket instead, so it takes no revision and
//! wakes no watcher anywhere.
//!
//! A write returns once JetStream acknowledged it and this replica's store
//! has read it back from the log (briefly awaited), so a caller that reads
//! its own write sees it, in revision order with every other change.
//!
//! A poll's answer over a tracked tenant is fenced: it is written only if,
//! at the moment of the write, this replica's own clock says it holds the
//! partition's lease and held it when the request went out, and only if
//! the request went out after the record's last observation. A replica
//! that wakes from a pause with answers fetched before it finds its lease
//! gone, and a record its successor observed since: the answers are
//! dropped (and counted), never written over newer ones.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::FutureExt;
use tokio::sync::watch;

use super::{health::Contact, lease::Leases};
use crate::{
    codec,
    core::{
        ledger::{Claimed, Fleet, Ledger, Removal, TokenClaim, Write, WriteError},
        store::{
            Applied, Freshness, PollApplied, PollResult, Store,
            apply::{notification_rule, poll_rule, settle},
        },
        tenant::{ContextId, NotificationInfo, TenantRecord},
    },
    metrics::{ClusterMetrics, Fenced},
};

mod tokens;

/// Conflicting writes retried before one is given up (each retry means
/// another replica wrote the same tenant in between).
const MAX_ATTEMPTS: usize = 16;

/// How long a write waits for this replica's store to read it back.
const READ_BACK: Duration = Duration::from_secs(2);

pub(crate) struct SharedLedger {
    /// This replica's name, in the token claims it writes.
    pub(super) replica: String,
    pub(super) records: kv::Store,
    pub(super) observed: kv::Store,
    pub(super) tokens: kv::Store,
    pub(super) store: Arc<Store>,
    pub(super) leases: Arc<Leases>,
    /// The log revision this replica's store has read to.
    pub(super) applied: watch::Receiver<u64>,
    pub(super) caught_up: watch::Receiver<bool>,
    pub(super) client: async_nats::Client,
    pub(super) metrics: Arc<ClusterMetrics>,
    pub(super) notification_hold: Duration,
    /// True once this replica has been cut off from NATS for longer than
    /// a lease TTL (see `Cluster::start`'s monitor).
    pub(super) detached: watch::Receiver<bool>,
    /// Unknown tenants some replica's stream watches by name, as the lease
    /// keeper last read them from the `interest` bucket.
    pub(super) interest: Arc<std::sync::RwLock<std::collections::HashSet<ContextId>>>,
    /// When NATS last answered (see `health`).
    pub(super) contact: Arc<Contact>,
    /// The records bucket's stream, for the log's end.
    pub(super) js: async_nats::jetstream::Context,
    pub(super) stream: String,
}

/// What one attempt of a compare-and-set came to.
enum Attempt {
    Written(u64),
    /// Another replica wrote first (or the record is not what we read).
    Conflict,
    Failed(String),
}

impl SharedLedger {
    fn unavailable(&self, why: impl std::fmt::Display) -> WriteError {
        self.metrics.write_failed();
        WriteError::Unavailable(why.to_string())
    }

    fn connected(&self) -> Result<(), WriteError> {
        if super::is_connected(&self.client) && !self.contact.stalled() {
            Ok(())
        } else {
            Err(self.unavailable("this replica is not connected to NATS"))
        }
    }

    /// The tenant's record as the bucket holds it now (`None`: never
    /// written, or removed), with its revision.
    async fn read(&self, ctx: &ContextId) -> Result<Option<(TenantRecord, Bytes)>, WriteError> {
        let entry = self.records.entry(ctx.as_str()).await.map_err(|e| {
            self.unavailable(format!("cannot read {ctx} from the shared store: {e}"))
        })?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                let mut r = codec::decode_record(&e.value).map_err(|problem| {
                    self.unavailable(format!(
                        "the shared store's record of {ctx} is unreadable: {problem}"
                    ))
                })?;
                r.revision = e.revision;
                self.contact.touch();
                // A confirming poll moves only the observed bucket, which
                // this replica's store follows: the freshest of the two.
                if let Some(mine) = self.store.get(ctx)
                    && mine.observed_at > r.observed_at
                {
                    r.observed_at = mine.observed_at;
                    r.valid_until = mine.valid_until;
                    r.last_error = mine.last_error.clone();
                }
                Ok(Some((r, e.value)))
            }
            _ => Ok(None),
        }
    }

    async fn attempt(&self, ctx: &ContextId, value: Bytes, expected: Option<u64>) -> Attempt {
        let started = Instant::now();
        let result = match expected {
            Some(rev) => self
                .records
                .update(ctx.as_str(), value, rev)
                .await
                .map_err(|e| {
                    (
                        e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                        e.to_string(),
                    )
                }),
            None => self.records.create(ctx.as_str(), value).await.map_err(|e| {
                (
                    e.kind() == kv::CreateErrorKind::AlreadyExists,
                    e.to_string(),
                )
            }),
        };
        self.metrics.write(started.elapsed());
        match result {
            Ok(rev) => {
                self.contact.touch();
                Attempt::Written(rev)
            }
            Err((true, _)) => Attempt::Conflict,
            Err((false, e)) => Attempt::Failed(e),
        }
    }

    /// Waits (briefly) for this replica's store to have read the log to
    /// `revision`.
    async fn read_back(&self, revision: u64) {
        let mut applied = self.applied.clone();
        let _ = tokio::time::timeout(READ_BACK, applied.wait_for(|r| *r >= revision)).await;
    }

    /// Why a poll's answer asked for at `asked_at` may not be written over
    /// `current` now, if it may not (see the module comment). A tenant not
    /// tracked yet is anyone's to add (a lookup on any replica).
    fn fenced(
        &self,
        ctx: &ContextId,
        current: Option<&TenantRecord>,
        asked_at: SystemTime,
    ) -> Option<Fenced> {
        let current = current?;
        if !self.leases.owns_since(ctx, asked_at) {
            Some(Fenced::Lease)
        } else if asked_at < current.observed_at {
            Some(Fenced::Older)
        } else {
            None
        }
    }

    /// The one write path: `rule` makes the new record from the current
    /// one (or declines with `None`); a meaningful change is written with
    /// compare-and-set, a refresh to the `observed` bucket. `Ok(Err(r))`:
    /// declined, `r` stands. `asked_at`: a poll's answer, fenced (see the
    /// module comment) right before each write, after every wait.
    pub(super) async fn write(
        &self,
        ctx: &ContextId,
        now: SystemTime,
        asked_at: Option<SystemTime>,
        rule: impl Fn(Option<&TenantRecord>) -> Option<TenantRecord>,
    ) -> Result<Result<Applied, Option<Arc<TenantRecord>>>, WriteError> {
        self.write_then(ctx, now, asked_at, rule, async {}).await
    }

    /// As `write`, and `then` once the outcome is known to leave a record:
    /// written to the bucket (`then` runs while this replica reads its
    /// write back, so the two waits overlap), refreshed, or declined over a
    /// record that stands. Not on an error.
    async fn write_then(
        &self,
        ctx: &ContextId,
        now: SystemTime,
        asked_at: Option<SystemTime>,
        rule: impl Fn(Option<&TenantRecord>) -> Option<TenantRecord>,
        then: impl Future<Output = ()>,
    ) -> Result<Result<Applied, Option<Arc<TenantRecord>>>, WriteError> {
        self.connected()?;
        // First from memory (right nearly always); on a conflict, from the
        // bucket.
        let mut current = self.store.get(ctx);
        for _ in 0..MAX_ATTEMPTS {
            let Some(new) = rule(current.as_deref()) else {
                // Declined over a record that stands; with none, nothing
                // was written, which the caller reports as a failure.
                if current.is_some() {
                    then.await;
                }
                return Ok(Err(current));
            };
            let (mut new, changed) = settle(current.as_deref(), new, Some(now));
            if let Some(why) = asked_at.and_then(|at| self.fenced(ctx, current.as_deref(), at)) {
                self.metrics.poll_fenced(why);
                tracing::debug!(tenant = %ctx, reason = ?why, "a poll's answer fenced off: not written");
                then.await;
                return Ok(Err(current));
            }
            if !changed {
                let seen = Freshness {
                    observed_at: new.observed_at,
                    valid_until: new.valid_until,
                    last_error: new.last_error.clone(),
                };
                self.observed
                    .put(ctx.as_str(), Bytes::from(codec::encode_freshness(&seen)))
                    .await
                    .map_err(|e| {
                        self.unavailable(format!("cannot write to the shared store: {e}"))
                    })?;
                self.store.refresh(ctx, &seen);
                then.await;
                return Ok(Ok(Applied {
                    record: Arc::new(new),
                    changed,
                }));
            }
            let value = Bytes::from(codec::encode_record(&new));
            match self
                .attempt(ctx, value.clone(), current.as_ref().map(|c| c.revision))
                .await
            {
                Attempt::Written(revision) => {
                    new.revision = revision;
                    tokio::join!(self.read_back(revision), then);
                    return Ok(Ok(Applied {
                        record: Arc::new(new),
                        changed,
                    }));
                }
                Attempt::Conflict => {
                    self.metrics.conflict();
                    current = self.read(ctx).await?.map(|(r, _)| Arc::new(r));
                }
                Attempt::Failed(e) => {
                    // The outcome may be unknown (a timed-out acknowledgment):
                    // the write happened if the bucket now holds exactly it.
                    if let Ok(Some((r, held))) = self.read(ctx).await
                        && held == value
                    {
                        new.revision = r.revision;
                        tokio::join!(self.read_back(r.revision), then);
                        return Ok(Ok(Applied {
                            record: Arc::new(new),
                            changed,
                        }));
                    }
                    return Err(self.unavailable(format!("cannot write to the shared store: {e}")));
                }
            }
        }
        Err(self.unavailable(format!(
            "{MAX_ATTEMPTS} writes of {ctx} in a row lost to other replicas' writes"
        )))
    }
}

/// Whether a watch may resume from `since` on a replica that has read
/// the log to `read`, the log ending at `end`: a revision the log never
/// issued goes on (the watch starts with RESET); one issued but not read
/// here yet is refused, so that the client resumes on a replica further
/// along. Err: the sentence for UNAVAILABLE.
fn resume_from(read: u64, since: u64, end: Result<u64, String>) -> Result<(), String> {
    match end {
        _ if since <= read => Ok(()),
        Ok(end) if end < since => Ok(()),
        Ok(_) => Err(format!(
            "this replica has read the shared store to revision {read}, not yet to since_revision {since}"
        )),
        Err(e) => Err(format!(
            "this replica has read the shared store to revision {read}, and cannot tell whether since_revision {since} was issued: {e}"
        )),
    }
}

impl Ledger for SharedLedger {
    fn apply_poll(
        &self,
        ctx: ContextId,
        result: PollResult,
        asked_at: SystemTime,
        now: SystemTime,
    ) -> Write<'_, PollApplied> {
        async move {
            let outcome = self
                .write(&ctx, now, Some(asked_at), |old| {
                    poll_rule(old, &ctx, &result, asked_at, now)
                })
                .await?;
            Ok(match outcome {
                Ok(applied) => PollApplied::Taken(applied),
                Err(Some(record)) => PollApplied::Superseded(record),
                Err(None) => PollApplied::Untracked,
            })
        }
        .boxed()
    }

    fn apply_notification(
        &self,
        ctx: ContextId,
        note: NotificationInfo,
        claim: TokenClaim,
        now: SystemTime,
    ) -> Write<'_, Applied> {
        async move {
            let hold = self.notification_hold;
            // The token is marked applied once the record is written (never
            // before: a retry would then be answered without it), while
            // this replica reads its write back. The record is what must
            // be written: a failure to mark the token only means a retry
            // applies it again, which changes nothing.
            let mark = async {
                if let Err(e) = self.token_applied(claim).await {
                    tracing::warn!(error = %e, tenant = %ctx, "could not record the token as applied in the shared store; a retry of it will be applied again, changing nothing");
                }
            };
            let outcome = self
                .write_then(
                    &ctx,
                    now,
                    None,
                    |old| notification_rule(old, &ctx, &note, now, hold),
                    mark,
                )
                .await?;
            let applied = match outcome {
                Ok(applied) => applied,
                // Older news than the record holds, or this very notification
                // again (a retry taken over): the record stands.
                Err(Some(record)) => Applied {
                    record,
                    changed: false,
                },
                Err(None) => {
                    return Err(self.unavailable("the notification made no record"));
                }
            };
            Ok(applied)
        }
        .boxed()
    }

    fn track_unknown(
        &self,
        ctx: ContextId,
        now: SystemTime,
        failure: Option<String>,
    ) -> Write<'_, Option<Applied>> {
        async move {
            let outcome = self
                .write(&ctx, now, None, |old| {
                    old.is_none().then(|| {
                        let r = TenantRecord::unknown(&ctx, now);
                        match &failure {
                            Some(error) => r.failed(error.clone()),
                            None => r,
                        }
                    })
                })
                .await?;
            Ok(outcome.ok())
        }
        .boxed()
    }

    fn remove(&self, ctx: ContextId, which: Removal) -> Write<'_, bool> {
        async move {
            self.connected()?;
            for _ in 0..MAX_ATTEMPTS {
                // Decided against the bucket's record, not a copy.
                let Some((record, _)) = self.read(&ctx).await? else {
                    return Ok(false);
                };
                if !which.applies_to(&record) {
                    return Ok(false);
                }
                match self
                    .records
                    .delete_expect_revision(ctx.as_str(), Some(record.revision))
                    .await
                {
                    Ok(()) => {
                        if let Err(e) = self.observed.purge(ctx.as_str()).await {
                            tracing::debug!(tenant = %ctx, error = %e, "could not purge a removed tenant's freshness");
                        }
                        return Ok(true);
                    }
                    Err(e) => {
                        tracing::debug!(tenant = %ctx, error = %e, "a removal lost to another write; reading again");
                        self.metrics.conflict();
                    }
                }
            }
            Err(self.unavailable(format!("could not remove {ctx}: it kept changing")))
        }
        .boxed()
    }

    fn claim_token(&self, claim: TokenClaim) -> Write<'_, Claimed> {
        async move {
            self.connected()?;
            self.claim(claim).await
        }
        .boxed()
    }
}

impl Fleet for SharedLedger {
    /// A resume from a revision this replica has not read yet waits for
    /// it (up to `READ_BACK`), then, if the log holds that revision, is
    /// refused UNAVAILABLE so that the client resumes on a replica further
    /// along (or here, moments later); a revision the log never issued
    /// goes on, and the watch starts with RESET.
    fn synced(&self, since: u64) -> Write<'static, ()> {
        let client = self.client.clone();
        let mut caught_up = self.caught_up.clone();
        let mut applied = self.applied.clone();
        let js = self.js.clone();
        let stream = self.stream.clone();
        async move {
            if !super::is_connected(&client) {
                return Err(WriteError::Unavailable(
                    "this replica has lost its connection to NATS".into(),
                ));
            }
            let caught = tokio::time::timeout(Duration::from_secs(5), caught_up.wait_for(|c| *c));
            if !matches!(caught.await, Ok(Ok(_))) {
                return Err(WriteError::Unavailable(
                    "this replica has not yet read the shared store to its end".into(),
                ));
            }
            if tokio::time::timeout(READ_BACK, applied.wait_for(|r| *r >= since))
                .await
                .is_ok_and(|r| r.is_ok())
                && *caught_up.borrow()
            {
                return Ok(());
            }
            let read = *applied.borrow();
            let end = js
                .get_stream(&stream)
                .await
                .map(|s| s.cached_info().state.last_sequence)
                .map_err(|e| e.to_string());
            resume_from(read, since, end).map_err(WriteError::Unavailable)
        }
        .boxed()
    }

    /// Whether this replica may be behind the truth: not connected, or
    /// NATS silent for longer than a lease TTL (a stalled server). What it
    /// serves is then marked stale.
    fn cut_off(&self) -> bool {
        !super::is_connected(&self.client) || self.contact.stalled()
    }

    fn detached(&self) -> Option<futures_util::future::BoxFuture<'static, ()>> {
        let mut detached = self.detached.clone();
        Some(
            async move {
                // A closed channel (the replica stopping): never.
                if detached.wait_for(|d| *d).await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            .boxed(),
        )
    }

    fn polls(&self, ctx: &ContextId) -> bool {
        self.leases.owns(ctx)
    }

    fn watched_elsewhere(&self, ctx: &ContextId) -> bool {
        self.interest
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::resume_from;

    #[test]
    fn a_resume_ahead_of_this_replica_is_refused_unless_never_issued() {
        // Read that far: served here.
        assert!(resume_from(120, 120, Ok(150)).is_ok());
        // Issued (the log ends at 150) but read only to 100: UNAVAILABLE,
        // naming both revisions, so the client tries another replica.
        let refused = resume_from(100, 120, Ok(150)).unwrap_err();
        assert!(
            refused.contains("100") && refused.contains("120"),
            "{refused}"
        );
        // Never issued anywhere: the watch goes on and starts with RESET.
        assert!(resume_from(100, 9_999, Ok(150)).is_ok());
        // The log's end unknown (NATS not answering): refused, not guessed.
        assert!(resume_from(100, 120, Err("timed out".into())).is_err());
    }
}
