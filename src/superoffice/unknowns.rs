//! Tenants SuperOffice does not know that are tracked only because a
//! watcher named them. Anyone who may call WatchTenant can name made-up
//! identifiers; each would be polled for ever. So there are at most
//! `--max-unknown-tenants` of them, and one no stream watches by name any
//! more is forgotten after `--forget-unknown-after`.

use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::core::tenant::ContextId;

pub(crate) struct Unknowns {
    /// Each with when it was first seen with no watcher by name (`None`
    /// while one watches it).
    names: Mutex<HashMap<ContextId, Option<Instant>>>,
    max: usize,
    grace: Duration,
    forgotten: AtomicU64,
}

/// What to do with an unknown tenant after a poll that still found nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Not one of ours (configured, notified, or known before).
    NotJunk,
    /// Keep it; decide again within this long.
    Keep(Duration),
    /// Nobody has watched it for the grace: forget it.
    Forget,
}

impl Unknowns {
    pub(crate) fn new(max: usize, grace: Duration) -> Self {
        Self {
            names: Mutex::new(HashMap::new()),
            max,
            grace,
            forgotten: AtomicU64::new(0),
        }
    }

    fn names(&self) -> std::sync::MutexGuard<'_, HashMap<ContextId, Option<Instant>>> {
        self.names.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Admits `ctx` as an unknown tenant tracked for a watcher: false when
    /// there are as many as allowed already.
    pub(crate) fn admit(&self, ctx: &ContextId) -> bool {
        let mut names = self.names();
        if names.contains_key(ctx) {
            return true;
        }
        if names.len() >= self.max {
            return false;
        }
        names.insert(ctx.clone(), None);
        true
    }

    /// Every unknown tenant tracked now.
    pub(crate) fn list(&self) -> Vec<ContextId> {
        self.names().keys().cloned().collect()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.names().is_empty()
    }

    pub(crate) fn contains(&self, ctx: &ContextId) -> bool {
        self.names().contains_key(ctx)
    }

    /// `ctx` turned out to be a real tenant, or was forgotten.
    pub(crate) fn remove(&self, ctx: &ContextId) {
        self.names().remove(ctx);
    }

    /// After a poll that found nothing: keep `ctx` while a stream watches
    /// it by name, then for the grace, then forget it.
    pub(crate) fn verdict(&self, ctx: &ContextId, watched: bool, now: Instant) -> Verdict {
        let mut names = self.names();
        let Some(since) = names.get_mut(ctx) else {
            return Verdict::NotJunk;
        };
        if watched {
            *since = None;
            return Verdict::Keep(self.grace);
        }
        let since = *since.get_or_insert(now);
        let left = self.grace.saturating_sub(now.duration_since(since));
        if left.is_zero() {
            Verdict::Forget
        } else {
            Verdict::Keep(left)
        }
    }

    pub(crate) fn forgot(&self, ctx: &ContextId) {
        self.remove(ctx);
        self.forgotten.fetch_add(1, Ordering::Relaxed);
    }

    /// How many are tracked, and how many were forgotten so far.
    pub(crate) fn counts(&self) -> (usize, u64) {
        (self.names().len(), self.forgotten.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(s: &str) -> ContextId {
        ContextId::parse(s).unwrap()
    }

    #[test]
    fn bounded_kept_while_watched_then_forgotten_after_the_grace() {
        let u = Unknowns::new(2, Duration::from_secs(60));
        assert!(u.admit(&ctx("A")) && u.admit(&ctx("B")));
        assert!(u.admit(&ctx("A")), "one already in counts once");
        assert!(!u.admit(&ctx("C")), "past the bound");
        let t0 = Instant::now();
        assert_eq!(u.verdict(&ctx("Z"), false, t0), Verdict::NotJunk);
        assert_eq!(
            u.verdict(&ctx("A"), true, t0),
            Verdict::Keep(Duration::from_secs(60))
        );
        assert_eq!(
            u.verdict(&ctx("A"), false, t0),
            Verdict::Keep(Duration::from_secs(60))
        );
        let t1 = t0 + Duration::from_secs(45);
        assert_eq!(
            u.verdict(&ctx("A"), false, t1),
            Verdict::Keep(Duration::from_secs(15))
        );
        // Watched again: the grace starts over when it is left again.
        assert_eq!(
            u.verdict(&ctx("A"), true, t1),
            Verdict::Keep(Duration::from_secs(60))
        );
        let t2 = t1 + Duration::from_secs(1);
        assert_eq!(
            u.verdict(&ctx("A"), false, t2),
            Verdict::Keep(Duration::from_secs(60))
        );
        assert_eq!(
            u.verdict(&ctx("A"), false, t2 + Duration::from_secs(60)),
            Verdict::Forget
        );
        u.forgot(&ctx("A"));
        assert_eq!(u.counts(), (1, 1));
        assert!(u.admit(&ctx("C")), "room again");
    }
}
