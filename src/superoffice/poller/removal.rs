//! Removals the poller writes: a DELETED tenant past its retention, an
//! unknown one nobody watches; each decided against the record it deletes.

use std::sync::Arc;

use super::{Due, Poller};
use crate::{
    core::ledger::{Removal, WriteError},
    core::tenant::ContextId,
};

/// A removal written: the tenant, which removal, and whether it was made.
pub(super) type Removed = (ContextId, Removal, Result<bool, WriteError>);

impl Poller {
    /// Writes a removal, decided against the record it deletes: a
    /// notification applied in between (a restore) keeps the tenant.
    pub(super) fn remove(&mut self, ctx: ContextId, which: Removal) {
        let ledger = Arc::clone(&self.ledger);
        self.removing.push(Box::pin(async move {
            let result = ledger.remove(ctx.clone(), which).await;
            (ctx, which, result)
        }));
    }

    /// What follows a removal's write.
    pub(super) fn removed(
        &mut self,
        ctx: ContextId,
        which: Removal,
        result: Result<bool, WriteError>,
    ) {
        if let Some(e) = self.entries.get_mut(&ctx) {
            e.busy = false;
        }
        match (which, result) {
            (Removal::Deleted, Ok(true)) => {
                self.entries.remove(&ctx);
                self.failures.forget(&ctx);
                tracing::info!(tenant = %ctx, "forgot a deleted tenant after its retention");
            }
            // No longer deleted (restored, say): never drop a tracked
            // tenant from the schedule; poll it instead.
            (Removal::Deleted, Ok(false)) => {
                if let Some(e) = self.entries.get_mut(&ctx) {
                    e.busy = true;
                }
                self.ready.push_back((ctx, None));
            }
            (Removal::UnknownUnnamed, Ok(true)) => {
                self.entries.remove(&ctx);
                self.failures.forget(&ctx);
                self.unknowns.forgot(&ctx);
                tracing::info!(tenant = %ctx, "forgot a tenant SuperOffice does not know and nobody watches");
            }
            (Removal::UnknownUnnamed, Ok(false)) => {
                self.unknowns.remove(&ctx);
                self.schedule(ctx, self.policy.backoff_max, Due::Poll);
            }
            (which, Err(e)) => {
                tracing::warn!(tenant = %ctx, error = %e, "could not write a removal; trying again later");
                let due = match which {
                    Removal::Deleted => Due::Forget,
                    Removal::UnknownUnnamed => Due::Poll,
                };
                self.schedule(ctx, self.policy.backoff_base, due);
            }
        }
        if which == Removal::UnknownUnnamed
            && let Some(m) = &self.metrics
        {
            m.unknown_tenants(self.unknowns.counts());
        }
    }
}
