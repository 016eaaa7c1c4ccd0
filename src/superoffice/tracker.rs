//! Lookups: answer from the store, or fetch an untracked tenant once and
//! track it from then on; and a watch's untracked names, learned while its
//! stream is already open.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures_util::{FutureExt, Stream, StreamExt};

use crate::{
    core::backend::{LookupError, Page, Tenants},
    core::ledger::{Fleet, Ledger},
    core::store::{PollResult, Store},
    core::tenant::{ContextId, TenantRecord, TenantState},
    core::watch::{Learning, WatchEvent, watch_learning},
    superoffice::poller::PollerHandle,
    superoffice::unknowns::Unknowns,
    superoffice::{FetchOutcome, SingleFlight, StateSource, budget::Class},
};

/// The store, the (single-flight, budgeted) state source and the poller,
/// together. Cheap to clone: a watch's learning takes a clone along.
#[derive(Clone)]
pub(crate) struct Tracker {
    store: Arc<Store>,
    /// Where answers are written: `store` itself, or the replicas' log.
    ledger: Arc<dyn Ledger>,
    /// Whether this process is behind the fleet (what it serves is stale).
    fleet: Arc<dyn Fleet>,
    source: Arc<SingleFlight>,
    poller: PollerHandle,
    /// Tenants SuperOffice does not know, tracked for watchers (bounded).
    unknowns: Arc<Unknowns>,
}

impl Tracker {
    /// `source` shares concurrent requests (see `SingleFlight`): that is
    /// what makes a burst of lookups for one new tenant cost one request.
    /// `ledger` and `fleet` are the mode's (see `Backing`).
    pub(crate) fn new(
        store: Arc<Store>,
        ledger: Arc<dyn Ledger>,
        fleet: Arc<dyn Fleet>,
        source: Arc<SingleFlight>,
        poller: PollerHandle,
        unknowns: Arc<Unknowns>,
    ) -> Self {
        Self {
            ledger,
            fleet,
            store,
            source,
            poller,
            unknowns,
        }
    }

    /// A replica cut off from the shared log cannot vouch for what it
    /// holds: its answers say so (stale).
    fn vouched(&self, r: Arc<TenantRecord>) -> Arc<TenantRecord> {
        if !r.stale && self.fleet.cut_off() {
            Arc::new(TenantRecord {
                stale: true,
                ..TenantRecord::clone(&r)
            })
        } else {
            r
        }
    }

    pub(crate) fn poller(&self) -> &PollerHandle {
        &self.poller
    }

    /// The tenant's record: from memory if tracked, else fetched once and
    /// tracked from then on. A tenant SuperOffice does not know is not
    /// tracked.
    pub(crate) async fn get_or_fetch(
        &self,
        ctx: &ContextId,
    ) -> Result<Arc<TenantRecord>, LookupError> {
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

    /// For a watcher: fetches an untracked name (behind lookups, with no
    /// deadline: its stream is open and learns it when it comes) and tracks
    /// it. One SuperOffice does not know is tracked as UNKNOWN, so the
    /// watcher sees it when it appears; one whose fetch fails is tracked
    /// too, stale with the failure, and polled on as any tenant whose poll
    /// failed. Either way the watcher holds an answer or a failure for it.
    pub(crate) async fn track_one_for_watch(&self, ctx: &ContextId) -> Result<(), LookupError> {
        if self.store.contains(ctx) {
            return Ok(());
        }
        let asked_at = SystemTime::now();
        let failure = match self.source.fetch_as(ctx, Class::Learn, None).await {
            Ok(FetchOutcome::Found(obs)) => {
                let valid_until = obs.valid_until;
                self.ledger
                    .apply_poll(
                        ctx.clone(),
                        PollResult::Observed(obs),
                        asked_at,
                        SystemTime::now(),
                    )
                    .await
                    .map_err(|e| LookupError::Unavailable(ctx.clone(), e.to_string()))?;
                self.poller.observed(ctx.clone(), valid_until);
                return Ok(());
            }
            Ok(FetchOutcome::NotFound) => None,
            Err(e) => Some(e.to_string()),
        };
        // Bounded: a caller naming made-up identifiers must not grow memory
        // and SuperOffice traffic without end.
        if !self.unknowns.admit(ctx) {
            return Err(LookupError::TooManyUnknown(self.unknowns.max()));
        }
        // Only if nothing tracked it meanwhile: a lookup that raced ahead
        // may already hold a newer answer.
        let unavailable = |e: crate::core::ledger::WriteError| {
            LookupError::Unavailable(ctx.clone(), e.to_string())
        };
        let now = SystemTime::now();
        let tracked = self
            .ledger
            .track_unknown(ctx.clone(), now, failure)
            .await
            .map_err(unavailable)?;
        if tracked.is_none() {
            self.unknowns.remove(ctx);
            return Ok(());
        }
        self.poller.not_found(ctx.clone());
        Ok(())
    }

    /// Learns every untracked name of `names` for a watch, in a task of its
    /// own (the budget paces it), resolving when each has an answer or a
    /// recorded failure; `None` when every name is tracked already.
    fn learn(&self, names: &[ContextId]) -> Option<Learning> {
        let untracked: Vec<ContextId> = names
            .iter()
            .filter(|n| !self.store.contains(n))
            .cloned()
            .collect();
        if untracked.is_empty() {
            return None;
        }
        let tracker = self.clone();
        // A task, not a part of the stream: it goes on while the client is
        // slow to read, and what it learns is tracked whoever still waits.
        let task = tokio::spawn(async move {
            let learned = futures_util::future::join_all(
                untracked.iter().map(|n| tracker.track_one_for_watch(n)),
            )
            .await;
            learned.into_iter().collect::<Result<(), LookupError>>()
        });
        Some(
            task.map(|joined| {
                joined.unwrap_or_else(|e| {
                    Err(LookupError::NotSynced(format!(
                        "learning the watched tenants failed: {e}"
                    )))
                })
            })
            .boxed(),
        )
    }
}

/// The in-memory backend: the store, fed by the poller and the tracker.
impl Tenants for Tracker {
    async fn lookup(&self, ctx: &ContextId) -> Result<Arc<TenantRecord>, LookupError> {
        self.get_or_fetch(ctx).await
    }

    async fn synced(&self, since: u64) -> Result<(), LookupError> {
        self.fleet
            .synced(since)
            .await
            .map_err(|e| LookupError::NotSynced(e.to_string()))
    }

    fn watch(
        &self,
        names: Vec<ContextId>,
        since: u64,
        heartbeat: Duration,
    ) -> impl Stream<Item = WatchEvent> + Send + 'static {
        // Registered before the names are learned: what is learned reaches
        // the stream through its inbox, before SYNCED.
        let learning = self.learn(&names);
        let events = watch_learning(Arc::clone(&self.store), names, since, heartbeat, learning);
        match self.fleet.detached() {
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
        if self.fleet.cut_off() {
            tenants = tenants.into_iter().map(|r| self.vouched(r)).collect();
        }
        Page {
            tenants,
            more,
            revision,
        }
    }
}
