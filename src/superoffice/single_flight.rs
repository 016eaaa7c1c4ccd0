//! Shares one in-flight request among everyone asking for the same tenant.

use std::sync::Arc;

use dashmap::DashMap;
use futures_util::future::BoxFuture;
use tokio::sync::OnceCell;

use crate::{
    core::tenant::ContextId,
    superoffice::{FetchResult, StateSource},
};

/// Shares one in-flight request among everyone asking for the same tenant.
///
/// If the asker that drives the request goes away (its client hung up),
/// the next waiter takes the request over (`OnceCell::get_or_init`).
pub struct SingleFlight {
    inner: Arc<dyn StateSource>,
    inflight: DashMap<ContextId, Arc<OnceCell<FetchResult>>>,
}

impl SingleFlight {
    pub fn new(inner: Arc<dyn StateSource>) -> Self {
        Self {
            inner,
            inflight: DashMap::new(),
        }
    }
}

impl StateSource for SingleFlight {
    fn fetch<'a>(&'a self, ctx: &'a ContextId) -> BoxFuture<'a, FetchResult> {
        Box::pin(async move {
            let cell = Arc::clone(self.inflight.entry(ctx.clone()).or_default().value());
            let result = cell.get_or_init(|| self.inner.fetch(ctx)).await.clone();
            self.inflight.remove_if(ctx, |_, c| Arc::ptr_eq(c, &cell));
            result
        })
    }
}
