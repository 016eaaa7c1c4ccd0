//! One process with a state file: the ledger that makes each notification
//! durable in the journal before it is applied. Polls, unknown tenants and
//! removals are not journaled (the next poll learns them again after a
//! restart), so they go straight to the store.

use std::{sync::Arc, time::SystemTime};

use futures_util::FutureExt;

use crate::{
    core::ledger::{Claimed, Ledger, Removal, TokenClaim, Write, WriteError},
    core::store::{Applied, PollApplied, PollResult, Store},
    core::tenant::{ContextId, NotificationInfo},
    persist::journal::Journal,
    token::{Remembered, SeenTokens},
};

/// The store behind the notification journal (see the module comment).
pub struct JournaledLedger {
    store: Arc<Store>,
    journal: Arc<Journal>,
    /// The memory of used tokens that the state file saves with the store.
    seen: Arc<SeenTokens>,
}

impl JournaledLedger {
    pub fn new(store: Arc<Store>, journal: Arc<Journal>, seen: Arc<SeenTokens>) -> Self {
        Self {
            store,
            journal,
            seen,
        }
    }
}

impl Ledger for JournaledLedger {
    fn apply_poll(
        &self,
        ctx: ContextId,
        result: PollResult,
        asked_at: SystemTime,
        now: SystemTime,
    ) -> Write<'_, PollApplied> {
        Ledger::apply_poll(&*self.store, ctx, result, asked_at, now)
    }

    fn apply_notification(
        &self,
        ctx: ContextId,
        note: NotificationInfo,
        claim: TokenClaim,
        now: SystemTime,
    ) -> Write<'_, Applied> {
        async move {
            let remembered = Remembered {
                digest: claim.digest,
                forget_after: claim.forget_after,
                note: claim.note,
            };
            // Applied, and its token marked applied, before a rotation of
            // the journal can pass it: a saved state file holds both.
            let apply = || {
                let applied = self.store.apply_notification(&ctx, note.clone(), now);
                self.seen.applied(claim.digest);
                applied
            };
            self.journal
                .record(&ctx, &note, remembered, apply)
                .await
                .map_err(|e| WriteError::NotDurable(e.to_string()))
        }
        .boxed()
    }

    fn track_unknown(
        &self,
        ctx: ContextId,
        now: SystemTime,
        failure: Option<String>,
    ) -> Write<'_, Option<Applied>> {
        Ledger::track_unknown(&*self.store, ctx, now, failure)
    }

    fn remove(&self, ctx: ContextId, which: Removal) -> Write<'_, bool> {
        Ledger::remove(&*self.store, ctx, which)
    }

    fn claim_token(&self, claim: TokenClaim) -> Write<'_, Claimed> {
        Ledger::claim_token(&*self.store, claim)
    }
}
