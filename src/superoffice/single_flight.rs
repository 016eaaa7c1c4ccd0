//! Shares one in-flight request among everyone asking for the same tenant.

use std::sync::Arc;

use dashmap::DashMap;
use futures_util::future::BoxFuture;
use tokio::sync::OnceCell;

use crate::{
    core::tenant::ContextId,
    superoffice::{
        FetchError, FetchResult, StateSource,
        budget::{Budget, Class},
    },
};

/// Shares one in-flight request among everyone asking for the same tenant,
/// and takes the request's permit from the budget toward SuperOffice.
///
/// If the asker that drives the request goes away (its client hung up),
/// the next waiter takes the request over (`OnceCell::get_or_init`). The
/// permit is taken by whoever drives the request, so a burst of lookups
/// of one new tenant costs one request and one permit.
pub struct SingleFlight {
    inner: Arc<dyn StateSource>,
    budget: Arc<Budget>,
    inflight: DashMap<ContextId, Arc<OnceCell<FetchResult>>>,
}

impl SingleFlight {
    pub fn new(inner: Arc<dyn StateSource>, budget: Arc<Budget>) -> Self {
        Self {
            inner,
            budget,
            inflight: DashMap::new(),
        }
    }

    /// The tenant's state, asked once for everyone asking now; the request
    /// waits for a permit of `class`, at most `deadline`.
    pub async fn fetch_as(
        &self,
        ctx: &ContextId,
        class: Class,
        deadline: Option<std::time::Duration>,
    ) -> FetchResult {
        let cell = Arc::clone(self.inflight.entry(ctx.clone()).or_default().value());
        let result = cell
            .get_or_init(|| async {
                let permit = self
                    .budget
                    .acquire(class, deadline)
                    .await
                    .map_err(|e| FetchError::BudgetFull(e.to_string()))?;
                let result = self.inner.fetch(ctx).await;
                permit.report(&result);
                result
            })
            .await
            .clone();
        self.inflight.remove_if(ctx, |_, c| Arc::ptr_eq(c, &cell));
        result
    }
}

/// A lookup's fetch: waits at most `--superoffice-max-wait` for its permit.
impl StateSource for SingleFlight {
    fn fetch<'a>(&'a self, ctx: &'a ContextId) -> BoxFuture<'a, FetchResult> {
        let wait = self.budget.limits().max_wait;
        Box::pin(self.fetch_as(ctx, Class::Lookup, Some(wait)))
    }
}
