//! How a poll's answer and a notification change a tenant's record: the
//! product's rules (older news is dropped, a failure never replaces a
//! state, a notification's implied change holds against a lagging state
//! API), each a closure handed to the store's one update path.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use super::{Applied, PollApplied, PollResult, Store};
use crate::core::tenant::{
    ChangeSource, ChangeType, ContextId, Hold, NotificationInfo, TenantRecord, TenantState,
    moved_url,
};

impl Store {
    /// Applies what a poll of SuperOffice produced. A failure for a tenant
    /// that is not in the store changes nothing and returns `None`: the
    /// network failing never creates or replaces a state.
    pub fn apply_poll(
        &self,
        ctx: &ContextId,
        result: PollResult,
        now: SystemTime,
    ) -> Option<Applied> {
        self.apply_poll_asked_at(ctx, result, now, now).taken()
    }

    /// As `apply_poll`, for a request sent at `asked_at`, and saying what
    /// became of the answer. An answer to a request sent before the
    /// tenant's latest notification arrived is older news than that
    /// notification and is dropped (`Superseded`): the notification's
    /// confirming poll, sent after it, has the last word.
    pub fn apply_poll_asked_at(
        &self,
        ctx: &ContextId,
        result: PollResult,
        asked_at: SystemTime,
        now: SystemTime,
    ) -> PollApplied {
        let outcome = self.update_stamped(ctx, Some(now), |old| {
            poll_rule(old, ctx, &result, asked_at, now)
        });
        match outcome {
            Ok(applied) => PollApplied::Taken(applied),
            Err(Some(record)) => PollApplied::Superseded(record),
            Err(None) => PollApplied::Untracked,
        }
    }

    /// Applies a verified state-change notification: records it, and sets
    /// the state it implies at once (Upgrade: OfflineMaintenance is coming;
    /// Suspend; Delete; Move: the new endpoint host). The implied change
    /// holds (`Hold`) until the state API confirms it or moves on, or
    /// `notification_hold` passes: a poll that still answers what it said
    /// before is lagging and does not undo it. Resume and BackupRestored
    /// imply nothing and leave the state to the confirming poll. A tenant
    /// not yet tracked is added.
    pub fn apply_notification(
        &self,
        ctx: &ContextId,
        note: NotificationInfo,
        now: SystemTime,
    ) -> Applied {
        let hold = self.notification_hold;
        match self.update_stamped(ctx, Some(now), |old| {
            notification_rule(old, ctx, &note, now, hold)
        }) {
            Ok(applied) => applied,
            // Older news than the record holds, or this very notification
            // again (a retry): the record stands. (The rule declines only
            // against a record, so it is always there.)
            Err(record) => Applied {
                record: record.unwrap_or_else(|| Arc::new(TenantRecord::unknown(ctx, now))),
                changed: false,
            },
        }
    }
}

/// The record a poll's answer leaves, from the record before it (`None`:
/// the answer is dropped and `old` stays). One process's store and the
/// replicas' shared log apply the same rule.
pub(crate) fn poll_rule(
    old: Option<&TenantRecord>,
    ctx: &ContextId,
    result: &PollResult,
    asked_at: SystemTime,
    now: SystemTime,
) -> Option<TenantRecord> {
    if old
        .and_then(|o| o.last_notification.as_ref())
        .is_some_and(|n| n.received_at > asked_at)
    {
        return None;
    }
    // A change made here is the poll's doing; when nothing meaningful
    // changes, the old source is kept (`settle`). Of `old`, only the
    // notification is carried over, and, when SuperOffice does not know
    // the tenant, its last known addresses.
    let fresh = TenantRecord {
        last_notification: old.and_then(|o| o.last_notification.clone()),
        ..TenantRecord::unknown(ctx, now)
    };
    match result {
        // Lagging news: the notification holds; only the record's
        // freshness moves.
        PollResult::Observed(o)
            if old.is_some_and(|r| r.hold.as_ref().is_some_and(|h| h.is_lagging(o, r, now))) =>
        {
            let old = old?;
            Some(TenantRecord {
                observed_at: now,
                stale: false,
                last_error: String::new(),
                ..old.clone()
            })
        }
        PollResult::Observed(o) => Some(TenantRecord {
            state: o.state,
            endpoint: o.endpoint.clone(),
            api: o.api.clone(),
            version: o.version.clone(),
            valid_until: o.valid_until,
            ..fresh
        }),
        // A deleted tenant that SuperOffice no longer knows is still
        // deleted: it stays DELETED until it is forgotten.
        PollResult::NotFound => Some(match old {
            Some(o) => TenantRecord {
                state: match o.state {
                    TenantState::Deleted => TenantState::Deleted,
                    _ => TenantState::Unknown,
                },
                endpoint: o.endpoint.clone(),
                api: o.api.clone(),
                version: o.version.clone(),
                ..fresh
            },
            None => fresh,
        }),
        PollResult::Failed(error) => {
            let old = old?;
            // A failure never makes a record fresher: one already stale (a
            // restored record, not yet re-polled) stays so.
            let stale = old.stale || old.valid_until.is_none_or(|v| v <= now);
            Some(TenantRecord {
                stale,
                last_error: error.clone(),
                source: ChangeSource::Poll,
                ..old.clone()
            })
        }
    }
}

/// The record a verified notification leaves: it records it, and sets the
/// state it implies at once (see `Store::apply_notification`); `hold` is
/// the longest the implied change holds against lagging polls.
///
/// `None` when the record already holds this notification or a later one
/// (by the time it was received): a retry of a notification that was
/// applied, or older news, changes nothing. So applying a notification
/// twice is applying it once.
pub(crate) fn notification_rule(
    old: Option<&TenantRecord>,
    ctx: &ContextId,
    note: &NotificationInfo,
    now: SystemTime,
    hold: Duration,
) -> Option<TenantRecord> {
    if old
        .and_then(|o| o.last_notification.as_ref())
        .is_some_and(|n| n.received_at >= note.received_at)
    {
        return None;
    }
    let mut r = old
        .cloned()
        .unwrap_or_else(|| TenantRecord::unknown(ctx, now));
    let implied = match note.change_type {
        ChangeType::Upgrade => Some(TenantState::OfflineMaintenance),
        ChangeType::Suspend => Some(TenantState::Suspended),
        ChangeType::Delete => Some(TenantState::Deleted),
        _ => None,
    };
    // What SuperOffice said before this notification (or before the first
    // of a run of them still holding).
    let prior = match &r.hold {
        Some(h) if now < h.until => h.clone(),
        _ => Hold {
            until: now + hold,
            prior_state: r.state,
            prior_endpoint: r.endpoint.clone(),
        },
    };
    if let Some(state) = implied {
        if state != r.state {
            // The last poll's ValidUntil vouched for the old state, not
            // this one.
            r.valid_until = None;
        }
        r.state = state;
    }
    if note.change_type == ChangeType::Move {
        r.endpoint = moved_url(&r.endpoint, &note.public_endpoint, ctx, "");
        r.api = moved_url(&r.api, &note.public_endpoint, ctx, "/api");
    }
    // An implied change holds against lagging polls; Resume and
    // BackupRestored imply none and leave it all to the poll.
    r.hold = (implied.is_some() || note.change_type == ChangeType::Move)
        .then_some(prior)
        .filter(|_| !hold.is_zero());
    r.source = ChangeSource::Notification;
    r.last_notification = Some(note.clone());
    Some(r)
}

/// Finishes a rule's record against the one it replaces: a meaningful
/// change is stamped `changed_at` (when given) and will take a revision;
/// anything else is a refresh that keeps the old revision, change time and
/// source. Returns the record and whether it changed meaningfully.
pub(crate) fn settle(
    old: Option<&TenantRecord>,
    mut new: TenantRecord,
    changed_at: Option<SystemTime>,
) -> (TenantRecord, bool) {
    let changed = old.is_none_or(|o| o.meaningfully_differs(&new));
    match old {
        Some(o) if !changed => {
            new.revision = o.revision;
            new.changed_at = o.changed_at;
            new.source = o.source;
        }
        _ => {
            if let Some(at) = changed_at {
                new.changed_at = at;
            }
        }
    }
    (new, changed)
}
