//! How the rest of the process asks the poller for work: one command a
//! message, sent on an unbounded channel so a caller never waits.

use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use crate::core::tenant::ContextId;

pub(super) enum Command {
    /// Track a tenant; poll it soon unless it is already scheduled.
    Track(ContextId),
    /// Track a tenant restored from the state file: its record is served
    /// already, so its first poll may wait, at random within this window,
    /// to spare SuperOffice a stampede.
    TrackWithin(ContextId, Duration),
    /// A lookup just applied a fresh answer; schedule from it.
    Observed(ContextId, Option<SystemTime>),
    /// A lookup found SuperOffice does not know the tenant; keep asking.
    NotFound(ContextId),
    /// A notification arrived: poll now to confirm, then again shortly
    /// while the state settles. Tracks the tenant if it was not.
    Confirm(ContextId),
    /// A tenant this replica just became the poller of (a partition it
    /// took over, or a tenant another replica started tracking): poll at
    /// its ValidUntil, or, when that has passed, at a random point within
    /// the window, so that a takeover does not come as a burst; one never
    /// answered yet, as soon as any new tenant.
    TakeOver(ContextId, Option<SystemTime>, Duration),
}

/// Sends work to the poller task. Cheap to clone.
#[derive(Clone)]
pub struct PollerHandle {
    pub(super) tx: mpsc::UnboundedSender<Command>,
}

impl PollerHandle {
    pub fn track(&self, ctx: ContextId) {
        let _ = self.tx.send(Command::Track(ctx));
    }
    pub fn track_within(&self, ctx: ContextId, window: Duration) {
        let _ = self.tx.send(Command::TrackWithin(ctx, window));
    }
    pub fn observed(&self, ctx: ContextId, valid_until: Option<SystemTime>) {
        let _ = self.tx.send(Command::Observed(ctx, valid_until));
    }
    pub fn not_found(&self, ctx: ContextId) {
        let _ = self.tx.send(Command::NotFound(ctx));
    }
    pub fn confirm(&self, ctx: ContextId) {
        let _ = self.tx.send(Command::Confirm(ctx));
    }
    pub fn take_over(&self, ctx: ContextId, valid_until: Option<SystemTime>, spread: Duration) {
        let _ = self.tx.send(Command::TakeOver(ctx, valid_until, spread));
    }
}
