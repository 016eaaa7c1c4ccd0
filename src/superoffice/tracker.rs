//! Lookups: answer from the store, or fetch an untracked tenant once and
//! track it from then on.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures_util::{Stream, StreamExt};

use crate::{
    core::backend::{LookupError, Page, Tenants},
    core::ledger::Ledger,
    core::store::{PollResult, Store},
    core::tenant::{ContextId, TenantRecord, TenantState},
    core::watch::{WatchEvent, watch},
    superoffice::poller::PollerHandle,
    superoffice::unknowns::Unknowns,
    superoffice::{FetchOutcome, StateSource},
};

/// The store, the (single-flight) state source and the poller, together.
pub struct Tracker {
    store: Arc<Store>,
    /// Where answers are written: `store` itself, or the replicas' log.
    ledger: Arc<dyn Ledger>,
    source: Arc<dyn StateSource>,
    poller: PollerHandle,
    /// Tenants SuperOffice does not know, tracked for watchers (bounded).
    unknowns: Arc<Unknowns>,
}

impl Tracker {
    /// `source` must share concurrent requests (see `SingleFlight`): that is
    /// what makes a burst of lookups for one new tenant cost one request.
    pub(crate) fn new(
        store: Arc<Store>,
        source: Arc<dyn StateSource>,
        poller: PollerHandle,
        unknowns: Arc<Unknowns>,
    ) -> Self {
        Self {
            ledger: Arc::clone(&store) as Arc<dyn Ledger>,
            store,
            source,
            poller,
            unknowns,
        }
    }

    /// Writes answers to `ledger` (the replicas' shared log).
    pub(crate) fn with_ledger(mut self, ledger: Arc<dyn Ledger>) -> Self {
        self.ledger = ledger;
        self
    }

    /// A replica cut off from the shared log cannot vouch for what it
    /// holds: its answers say so (stale).
    fn vouched(&self, r: Arc<TenantRecord>) -> Arc<TenantRecord> {
        if !r.stale && self.ledger.cut_off() {
            Arc::new(TenantRecord {
                stale: true,
                ..TenantRecord::clone(&r)
            })
        } else {
            r
        }
    }

    pub fn poller(&self) -> &PollerHandle {
        &self.poller
    }

    /// The tenant's record: from memory if tracked, else fetched once and
    /// tracked from then on. A tenant SuperOffice does not know is not
    /// tracked.
    pub async fn get_or_fetch(&self, ctx: &ContextId) -> Result<Arc<TenantRecord>, LookupError> {
        if let Some(r) = self.store.get(ctx) {
            return Ok(self.vouched(r));
        }
        let asked_at = SystemTime::now();
        match self.source.fetch(ctx).await {
            Ok(FetchOutcome::Found(obs)) => {
                let valid_until = obs.valid_until;
                let applied = self
                    .ledger
                    .apply_poll(
                        ctx.clone(),
                        PollResult::Observed(obs),
                        asked_at,
                        SystemTime::now(),
                    )
                    .await
                    .map_err(|e| LookupError::Unavailable(ctx.clone(), e.to_string()))?;
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
    pub async fn track_one_for_watch(&self, ctx: &ContextId) -> Result<(), LookupError> {
        match self.get_or_fetch(ctx).await {
            Ok(_) => Ok(()),
            Err(LookupError::NotFound(_)) => {
                // Bounded: a caller naming made-up identifiers must not grow
                // memory and SuperOffice traffic without end.
                if !self.unknowns.admit(ctx) {
                    return Err(LookupError::TooManyUnknown(self.unknowns.max()));
                }
                // Only if nothing tracked it meanwhile: a lookup that raced
                // ahead may already hold a newer answer.
                let tracked = self
                    .ledger
                    .track_unknown(ctx.clone(), SystemTime::now())
                    .await
                    .map_err(|e| LookupError::Unavailable(ctx.clone(), e.to_string()))?;
                if tracked.is_some() {
                    self.poller.not_found(ctx.clone());
                } else {
                    self.unknowns.remove(ctx);
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// The in-memory backend: the store, fed by the poller and the tracker.
impl Tenants for Tracker {
    async fn lookup(&self, ctx: &ContextId) -> Result<Arc<TenantRecord>, LookupError> {
        self.get_or_fetch(ctx).await
    }

    async fn track_for_watch(&self, names: &[ContextId], since: u64) -> Result<(), LookupError> {
        self.ledger
            .synced(since)
            .await
            .map_err(|e| LookupError::NotSynced(e.to_string()))?;
        let untracked = names.iter().filter(|n| !self.store.contains(n));
        let fetched =
            futures_util::future::join_all(untracked.map(|n| self.track_one_for_watch(n))).await;
        fetched.into_iter().collect()
    }

    fn watch(
        &self,
        names: Vec<ContextId>,
        since: u64,
        heartbeat: Duration,
    ) -> impl Stream<Item = WatchEvent> + Send + 'static {
        let events = watch(Arc::clone(&self.store), names, since, heartbeat);
        match self.ledger.detached() {
            None => events.left_stream(),
            Some(detached) => {
                // Ends with Detached when the replica is cut off, and only
                // then (a shutdown ends it with Closing).
                let fired = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let flag = Arc::clone(&fired);
                let until = async move {
                    detached.await;
                    flag.store(true, std::sync::atomic::Ordering::Release);
                };
                let last = futures_util::stream::once(async move {
                    fired
                        .load(std::sync::atomic::Ordering::Acquire)
                        .then_some(WatchEvent::Detached)
                })
                .filter_map(futures_util::future::ready);
                events.take_until(until).chain(last).right_stream()
            }
        }
    }

    fn list(&self, after: &str, states: &[TenantState], page_size: usize) -> Page {
        let revision = self.store.revision();
        let (mut tenants, more) = self.store.list(after, states, page_size);
        if self.ledger.cut_off() {
            tenants = tenants.into_iter().map(|r| self.vouched(r)).collect();
        }
        Page {
            tenants,
            more,
            revision,
        }
    }
}
