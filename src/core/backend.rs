//! What the serving layers need of a store of tenant records: look one up
//! (tracking it on first use), watch some or all, list a page. The gRPC
//! service depends on this trait, not on a store's type, so another
//! backend (a replicated one) plugs in without touching it.

use std::{future::Future, sync::Arc, time::Duration};

use futures_util::Stream;

use crate::core::{
    tenant::{ContextId, TenantRecord, TenantState},
    watch::WatchEvent,
};

/// Why a lookup has no record to give.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("SuperOffice does not know tenant {0}")]
    NotFound(ContextId),
    #[error("tenant {0} is not tracked yet and SuperOffice could not be asked: {1}")]
    Unavailable(ContextId, String),
    #[error(
        "{0} tenants SuperOffice does not know are tracked for watchers already, the most --max-unknown-tenants allows; watch tenants that exist, or retry once unwatched unknown ones are forgotten (--forget-unknown-after)"
    )]
    TooManyUnknown(usize),
    #[error("{0}; try another replica, or again shortly")]
    NotSynced(String),
}

/// A page of tenants ordered by identifier.
#[derive(Debug, Clone)]
pub struct Page {
    pub tenants: Vec<Arc<TenantRecord>>,
    /// Whether more tenants follow the last one.
    pub more: bool,
    /// The store revision when the page was read.
    pub revision: u64,
}

/// A store of tenant records as the serving layers see it.
pub trait Tenants: Send + Sync + 'static {
    /// The tenant's record: from memory if tracked, else fetched once and
    /// tracked from then on. A tenant SuperOffice does not know is not
    /// tracked.
    fn lookup(
        &self,
        ctx: &ContextId,
    ) -> impl Future<Output = Result<Arc<TenantRecord>, LookupError>> + Send;

    /// Resolves once a watch after `since` may open here: among replicas,
    /// it waits (briefly) for this replica to have read the shared log to
    /// its end and to `since`; alone, at once.
    fn synced(&self, since: u64) -> impl Future<Output = Result<(), LookupError>> + Send;

    /// A watch of `names` (every tenant when empty) after `since`: see
    /// `core::watch`. It opens at once: names not tracked yet are learned
    /// (one SuperOffice does not know is tracked as UNKNOWN, so the watcher
    /// sees it when it appears; one whose fetch fails, stale with the
    /// failure) and arrive in the snapshot as they are; SYNCED follows
    /// when every name has an answer or a failure.
    fn watch(
        &self,
        names: Vec<ContextId>,
        since: u64,
        heartbeat: Duration,
    ) -> impl Stream<Item = WatchEvent> + Send + 'static;

    /// A page of tenants after `after` (by identifier), in `states` (all
    /// when empty).
    fn list(&self, after: &str, states: &[TenantState], page_size: usize) -> Page;
}
