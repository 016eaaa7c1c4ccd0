//! Tenants SuperOffice does not know, as the poller treats them: polled
//! only while a stream watches them, at most a small share of the requests
//! in flight, and forgotten by a timer once nobody has watched them for a
//! while, never by asking SuperOffice again.

use std::time::Duration;

use super::{Due, Poller};
use crate::{core::ledger::Removal, core::tenant::ContextId, superoffice::unknowns::Verdict};

impl Poller {
    /// Whether an unknown tenant due now may be asked for: tenants nobody
    /// knows get at most an eighth of the requests in flight; the rest of
    /// theirs wait a moment. One that may go counts as polling from here.
    pub(super) fn unknown_may_go(&mut self, ctx: &ContextId, in_force: usize) -> bool {
        // Asked for only while a stream watches it: one that nobody
        // watches is parked until the sweep forgets it (or finds it
        // watched again).
        if !self.store.watched_by_name(ctx) && !self.fleet.watched_elsewhere(ctx) {
            if let Some(e) = self.entries.get_mut(ctx) {
                e.busy = false;
            }
            return false;
        }
        if self.unknown_polling.len() >= self.unknown_share(in_force) {
            if let Some(e) = self.entries.get_mut(ctx) {
                e.busy = false;
            }
            self.schedule(ctx.clone(), self.policy.backoff_base, Due::Poll);
            return false;
        }
        self.unknown_polling.insert(ctx.clone());
        true
    }

    /// How many requests for unknown tenants may be in flight at once: an
    /// eighth of the budget in force, at least one.
    fn unknown_share(&self, in_force: usize) -> usize {
        (in_force / 8).max(1)
    }

    /// The timer that keeps unknown tenants free: one no stream watches is
    /// not polled any more, and is forgotten once the grace has passed; one
    /// watched again is polled again.
    pub(super) fn sweep_unknowns(&mut self) {
        let now = std::time::Instant::now();
        for ctx in self.unknowns.list() {
            let watched = self.store.watched_by_name(&ctx) || self.fleet.watched_elsewhere(&ctx);
            let Some(e) = self.entries.get_mut(&ctx) else {
                // Not polled here (another replica's, or just dropped):
                // only the books to keep.
                if self.unknowns.verdict(&ctx, watched, now) == Verdict::Forget {
                    self.unknowns.remove(&ctx);
                }
                continue;
            };
            if e.busy {
                // In flight or being forgotten: decided when it is back.
                continue;
            }
            let parked = e.key.is_none();
            match self.unknowns.verdict(&ctx, watched, now) {
                Verdict::NotJunk => {}
                Verdict::Keep(_) if watched => {
                    if parked {
                        self.schedule(ctx, Duration::ZERO, Due::Poll);
                    }
                }
                Verdict::Keep(_) => {
                    if let Some(k) = e.key.take() {
                        self.queue.remove(&k);
                    }
                }
                Verdict::Forget => self.forget_unknown(&ctx),
            }
        }
        if let Some(m) = &self.metrics {
            m.unknown_tenants(self.unknowns.counts());
        }
    }

    /// Forgets an unknown tenant nobody watches any more (a REMOVED to
    /// watchers of every tenant), unless something named it meanwhile: a
    /// notification, or an answer that it exists.
    pub(super) fn forget_unknown(&mut self, ctx: &ContextId) {
        if let Some(e) = self.entries.get_mut(ctx) {
            e.busy = true;
            // Its scheduled polls are cancelled now, not answered later.
            if let Some(k) = e.key.take() {
                self.queue.remove(&k);
            }
        }
        self.remove(ctx.clone(), Removal::UnknownUnnamed);
    }
}
