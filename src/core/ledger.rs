//! Where the product's rules write (`Ledger`), and what a process knows of
//! the fleet it is part of (`Fleet`). Alone, a process writes straight into
//! its own store (`impl Ledger for Store`), through its notification
//! journal first when it keeps a state file (`persist::JournaledLedger`),
//! and its fleet is itself (`Solo`). Among replicas, every write goes to a
//! shared log first, and each replica's store mirrors that log (see
//! `cluster`): the poller, the lookups and the webhook do not know which.
//! `Backing` hands both out, one pair per mode.
//!
//! Writes are futures because a shared log is across a network, and can
//! fail: `WriteError::Unavailable` means nothing was written (or, after an
//! ambiguous answer, that it could not be proved written), so the caller
//! must not acknowledge anything.

use std::time::SystemTime;

use futures_util::{FutureExt, future::BoxFuture};

use crate::core::{
    store::{Applied, PollApplied, PollResult, Store},
    tenant::{ContextId, NotificationInfo, TenantRecord, TenantState},
};

/// A write that may cross the network.
pub(crate) type Write<'a, T> = BoxFuture<'a, Result<T, WriteError>>;

/// Why a write was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("the shared store cannot take writes now: {0}")]
    Unavailable(String),
    /// Alone with a state file: the notification could not be made durable
    /// in the journal, so it was not applied.
    #[error("the notification journal cannot be written now: {0}")]
    NotDurable(String),
}

/// Which records a removal may take, decided against the record the
/// removal would delete (never a copy that may be out of date).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// A DELETED tenant past its retention (a restore in between keeps it).
    Deleted,
    /// A tenant SuperOffice does not know, tracked only for watchers, that
    /// no notification has named.
    UnknownUnnamed,
}

impl Removal {
    pub fn applies_to(self, r: &TenantRecord) -> bool {
        match self {
            Removal::Deleted => r.state == TenantState::Deleted,
            Removal::UnknownUnnamed => {
                r.state == TenantState::Unknown && r.last_notification.is_none()
            }
        }
    }
}

/// A claim on a notification token's use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenClaim {
    /// The token's digest.
    pub digest: u64,
    /// The fingerprint of the notification it carried (0: not known).
    pub note: u64,
    /// Until when the token must be remembered (Unix seconds).
    pub forget_after: u64,
    /// When the notification was received (the first attempt's time, for a
    /// retry).
    pub received_at: SystemTime,
}

/// What a claim on a token came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimed {
    /// This process applies the notification, as received at this time:
    /// the claim's own, or the first attempt's when it takes over one that
    /// did not finish (so applying it again changes nothing).
    Mine(SystemTime),
    /// The same notification was applied already (here or elsewhere):
    /// answer as then, apply nothing.
    Applied,
    /// The token was used for another notification.
    Replay,
}

/// Where the rules write; see the module comment.
pub trait Ledger: Send + Sync + 'static {
    /// Applies a poll's answer for a request sent at `asked_at`.
    fn apply_poll(
        &self,
        ctx: ContextId,
        result: PollResult,
        asked_at: SystemTime,
        now: SystemTime,
    ) -> Write<'_, PollApplied>;

    /// Applies a verified notification, and records that its token's
    /// notification is applied (see `TokenClaim`), so that its retries are
    /// answered without applying it again. The record is what must be
    /// written: a failure to record the token only means a retry applies it
    /// again, which changes nothing, so it is logged and not returned.
    fn apply_notification(
        &self,
        ctx: ContextId,
        note: NotificationInfo,
        claim: TokenClaim,
        now: SystemTime,
    ) -> Write<'_, Applied>;

    /// Tracks `ctx` as UNKNOWN unless it is tracked already; with
    /// `failure`, as not known yet: stale, with why its first fetch failed.
    fn track_unknown(
        &self,
        ctx: ContextId,
        now: SystemTime,
        failure: Option<String>,
    ) -> Write<'_, Option<Applied>>;

    /// Forgets `ctx` if `which` applies to its record. Returns whether it
    /// was forgotten.
    fn remove(&self, ctx: ContextId, which: Removal) -> Write<'_, bool>;

    /// Claims a notification token's use (see `TokenClaim`): among
    /// replicas, in the shared store, so that a token is applied once
    /// fleet-wide and its retry on any replica is recognised. Alone, the
    /// process's own memory of used tokens is the whole truth, so this
    /// claims nothing more. An ambiguous answer (a timeout) is resolved by
    /// reading back whose claim the key holds.
    fn claim_token(&self, claim: TokenClaim) -> Write<'_, Claimed>;
}

/// What a process knows of the fleet it is part of: whether it is behind
/// the shared log, which tenants it polls, what other replicas' clients
/// watch. Alone (`Solo`), the process is the whole fleet.
pub trait Fleet: Send + Sync + 'static {
    /// Resolves once this process's store has read the shared log to its
    /// end, and to `since` (a revision a client may have from another
    /// replica), waiting briefly; `Err` when it cannot catch up now. Alone,
    /// the store is the whole truth: at once.
    fn synced(&self, since: u64) -> Write<'static, ()>;

    /// Whether this process may be behind the truth now (a replica cut off
    /// from the shared log): what it serves is then marked stale.
    fn cut_off(&self) -> bool;

    /// Among replicas: resolves when this one has been cut off from the
    /// shared log for longer than it can vouch for its streams; they end
    /// then, so their clients resume elsewhere. Alone: `None`, never.
    fn detached(&self) -> Option<BoxFuture<'static, ()>>;

    /// Whether a stream of another process watches `ctx` by name: among
    /// replicas, an unknown tenant one replica's client watches is kept
    /// by the replica that polls it. Alone: no other process.
    fn watched_elsewhere(&self, ctx: &ContextId) -> bool;

    /// Whether this process polls `ctx` on its schedule. Alone, always;
    /// among replicas, only while it holds the lease of the tenant's
    /// partition, so each tenant is polled once fleet-wide.
    fn polls(&self, ctx: &ContextId) -> bool;
}

/// A process with no other replica: its store is the whole truth, it polls
/// every tenant, and no other process has clients.
pub(crate) struct Solo;

impl Fleet for Solo {
    fn synced(&self, _since: u64) -> Write<'static, ()> {
        futures_util::future::ready(Ok(())).boxed()
    }

    fn cut_off(&self) -> bool {
        false
    }

    fn detached(&self) -> Option<BoxFuture<'static, ()>> {
        None
    }

    fn watched_elsewhere(&self, _ctx: &ContextId) -> bool {
        false
    }

    fn polls(&self, _ctx: &ContextId) -> bool {
        true
    }
}

impl Ledger for Store {
    fn apply_poll(
        &self,
        ctx: ContextId,
        result: PollResult,
        asked_at: SystemTime,
        now: SystemTime,
    ) -> Write<'_, PollApplied> {
        let applied = self.apply_poll_asked_at(&ctx, result, asked_at, now);
        futures_util::future::ready(Ok(applied)).boxed()
    }

    fn apply_notification(
        &self,
        ctx: ContextId,
        note: NotificationInfo,
        _claim: TokenClaim,
        now: SystemTime,
    ) -> Write<'_, Applied> {
        // Without a state file, the webhook's memory of used tokens is the
        // only record of the token, and the webhook keeps it.
        let applied = Store::apply_notification(self, &ctx, note, now);
        futures_util::future::ready(Ok(applied)).boxed()
    }

    fn track_unknown(
        &self,
        ctx: ContextId,
        now: SystemTime,
        failure: Option<String>,
    ) -> Write<'_, Option<Applied>> {
        let applied = match failure {
            None => Store::track_unknown(self, &ctx, now),
            Some(error) => Store::track_failed(self, &ctx, now, error),
        };
        futures_util::future::ready(Ok(applied)).boxed()
    }

    fn remove(&self, ctx: ContextId, which: Removal) -> Write<'_, bool> {
        let removed = self.remove_if(&ctx, |r| which.applies_to(r)).is_some();
        futures_util::future::ready(Ok(removed)).boxed()
    }

    fn claim_token(&self, claim: TokenClaim) -> Write<'_, Claimed> {
        futures_util::future::ready(Ok(Claimed::Mine(claim.received_at))).boxed()
    }
}
