//! Lookups: answer from the store, or fetch an untracked tenant once and
//! track it from then on.

use std::{sync::Arc, time::SystemTime};

use crate::{
    core::store::{PollResult, Store},
    core::tenant::{ContextId, TenantRecord},
    superoffice::poller::PollerHandle,
    superoffice::{FetchOutcome, StateSource},
};

/// Why a lookup has no record to give.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("SuperOffice does not know tenant {0}")]
    NotFound(ContextId),
    #[error("tenant {0} is not tracked yet and SuperOffice could not be asked: {1}")]
    Unavailable(ContextId, String),
}

/// The store, the (single-flight) state source and the poller, together.
pub struct Tracker {
    store: Arc<Store>,
    source: Arc<dyn StateSource>,
    poller: PollerHandle,
}

impl Tracker {
    /// `source` must share concurrent requests (see `SingleFlight`): that is
    /// what makes a burst of lookups for one new tenant cost one request.
    pub fn new(store: Arc<Store>, source: Arc<dyn StateSource>, poller: PollerHandle) -> Self {
        Self {
            store,
            source,
            poller,
        }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn poller(&self) -> &PollerHandle {
        &self.poller
    }

    /// The tenant's record: from memory if tracked, else fetched once and
    /// tracked from then on. A tenant SuperOffice does not know is not
    /// tracked.
    pub async fn get_or_fetch(&self, ctx: &ContextId) -> Result<Arc<TenantRecord>, LookupError> {
        if let Some(r) = self.store.get(ctx) {
            return Ok(r);
        }
        let asked_at = SystemTime::now();
        match self.source.fetch(ctx).await {
            Ok(FetchOutcome::Found(obs)) => {
                let valid_until = obs.valid_until;
                let applied = self.store.apply_poll_asked_at(
                    ctx,
                    PollResult::Observed(obs),
                    asked_at,
                    SystemTime::now(),
                );
                self.poller.observed(ctx.clone(), valid_until);
                // Taken, or a notification that arrived while we asked and
                // stands: either way, the record the store now holds.
                applied
                    .record()
                    .cloned()
                    .ok_or_else(|| LookupError::NotFound(ctx.clone()))
            }
            Ok(FetchOutcome::NotFound) => Err(LookupError::NotFound(ctx.clone())),
            Err(e) => Err(LookupError::Unavailable(ctx.clone(), e.to_string())),
        }
    }

    /// For a watcher: like `get_or_fetch`, but a tenant SuperOffice does not
    /// know is tracked as UNKNOWN so the watcher sees it when it appears.
    pub async fn track_for_watch(&self, ctx: &ContextId) -> Result<(), LookupError> {
        match self.get_or_fetch(ctx).await {
            Ok(_) => Ok(()),
            Err(LookupError::NotFound(_)) => {
                // Only if nothing tracked it meanwhile: a lookup that raced
                // ahead may already hold a newer answer.
                if self.store.track_unknown(ctx, SystemTime::now()).is_some() {
                    self.poller.not_found(ctx.clone());
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}
