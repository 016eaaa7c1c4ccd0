//! One poll: a permit from the budget, the request, and its answer written
//! through the ledger, all in a future of its own so the poller's loop
//! goes on meanwhile.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use super::Poller;
use crate::{
    core::ledger::WriteError,
    core::store::{PollApplied, PollResult},
    core::tenant::{ContextId, TenantState},
    superoffice::{FetchError, FetchOutcome, FetchResult, budget::Class},
};

/// What a poll came to, once its answer was written.
pub(super) enum Answer {
    Found {
        valid_until: Option<SystemTime>,
        deleted: bool,
    },
    NotFound {
        deleted: bool,
    },
}

/// Why a poll came to nothing.
pub(super) enum PollFailure {
    /// SuperOffice could not be asked, or answered with an error.
    Fetch(FetchError),
    /// The answer could not be written (the replicas' shared store).
    Write(WriteError),
    /// Among replicas: the tenant's partition was lost while the request
    /// waited for its permit, so it was not sent; its new poller has it.
    NotOurs,
}

impl PollFailure {
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Self::Fetch(e) => e.kind(),
            Self::Write(_) => "not_stored",
            Self::NotOurs => "not_ours",
        }
    }
}

pub(super) type Polled = (ContextId, Result<Answer, PollFailure>, Duration);

fn is_deleted(applied: &PollApplied) -> bool {
    applied
        .record()
        .is_some_and(|r| r.state == TenantState::Deleted)
}

impl Poller {
    /// Asks SuperOffice, then writes the answer; the poller task goes on
    /// meanwhile. An answer to a request sent before a notification
    /// arrived does not undo that notification, so the write says when the
    /// request went out.
    pub(super) fn start(&mut self, ctx: ContextId, class: Class) {
        let source = Arc::clone(&self.source);
        let ledger = Arc::clone(&self.ledger);
        let fleet = Arc::clone(&self.fleet);
        let budget = Arc::clone(&self.budget);
        self.inflight.push(Box::pin(async move {
            // Its turn in the budget; without a deadline it is never
            // refused.
            let permit = match budget.acquire(class, None).await {
                Ok(p) => p,
                Err(e) => {
                    let e = FetchError::BudgetFull(e.to_string());
                    return (ctx, Err(PollFailure::Fetch(e)), Duration::ZERO);
                }
            };
            // Among replicas, the wait may have outlasted the lease: a
            // request sent now would be a second poller's.
            if !fleet.polls(&ctx) {
                return (ctx, Err(PollFailure::NotOurs), Duration::ZERO);
            }
            let started = std::time::Instant::now();
            let result: FetchResult = source.fetch(&ctx).await;
            let took = started.elapsed();
            permit.report(&result);
            drop(permit);
            let now = SystemTime::now();
            let asked_at = now.checked_sub(took).unwrap_or(now);
            let answer = match result {
                Ok(FetchOutcome::Found(obs)) => {
                    let valid_until = obs.valid_until;
                    ledger
                        .apply_poll(ctx.clone(), PollResult::Observed(obs), asked_at, now)
                        .await
                        .map(|a| Answer::Found {
                            valid_until,
                            deleted: is_deleted(&a),
                        })
                        .map_err(PollFailure::Write)
                }
                Ok(FetchOutcome::NotFound) => ledger
                    .apply_poll(ctx.clone(), PollResult::NotFound, asked_at, now)
                    .await
                    .map(|a| Answer::NotFound {
                        deleted: is_deleted(&a),
                    })
                    .map_err(PollFailure::Write),
                Err(err) => {
                    let failed = PollResult::Failed(err.to_string());
                    if let Err(e) = ledger.apply_poll(ctx.clone(), failed, asked_at, now).await {
                        tracing::debug!(tenant = %ctx, error = %e, "could not record a failed poll");
                    }
                    Err(PollFailure::Fetch(err))
                }
            };
            (ctx, answer, took)
        }));
    }
}
