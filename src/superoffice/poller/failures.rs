//! Failures logged in proportion: a line when a tenant starts failing and
//! one when it recovers (at most `LOG_LINES` of them a minute), and a
//! summary of how many fail, by cause; the metrics count the rest. Kept
//! apart from the schedule so the poller's loop only reports outcomes here.

use std::{collections::HashMap, time::Duration};

use super::{Answer, PollFailure};
use crate::core::tenant::ContextId;

/// Lines a minute, at most, saying that one tenant started failing or
/// recovered; the minute's summary counts the rest.
const LOG_LINES: u32 = 20;

/// How often the failures are summed up in the log while any fail and
/// something changed; while nothing changes, the interval doubles up to
/// `SUMMARY_MAX`.
const SUMMARY_EVERY: Duration = Duration::from_secs(60);
const SUMMARY_MAX: Duration = Duration::from_secs(3600);

/// Which tenants fail now and what has been said about them in the log.
pub(super) struct FailureLog {
    /// Tenants whose last poll failed, with the cause.
    failing: HashMap<ContextId, &'static str>,
    /// Lines logged about single tenants this minute, and those left out.
    logged: (u32, u32),
    /// Whether a tenant started failing or recovered since the last
    /// summary, and the interval of summaries now.
    changed: bool,
    every: Duration,
}

impl FailureLog {
    pub(super) fn new() -> Self {
        Self {
            failing: HashMap::new(),
            logged: (0, 0),
            changed: false,
            every: SUMMARY_EVERY,
        }
    }

    /// The interval until the next summary.
    pub(super) fn every(&self) -> Duration {
        self.every
    }

    /// Whether a summary would have anything to say.
    pub(super) fn pending(&self) -> bool {
        !self.failing.is_empty() || self.logged.1 > 0
    }

    /// A tenant no longer on this poller's books is no longer failing.
    pub(super) fn forget(&mut self, ctx: &ContextId) {
        self.failing.remove(ctx);
    }

    /// Whether a line about one tenant may go to the log this minute.
    fn may_log(&mut self) -> bool {
        if self.logged.0 < LOG_LINES {
            self.logged.0 += 1;
            true
        } else {
            self.logged.1 += 1;
            false
        }
    }

    /// The minute's summary of failing polls.
    pub(super) fn summarise(&mut self) {
        let (_, left_out) = std::mem::take(&mut self.logged);
        self.every = if std::mem::take(&mut self.changed) {
            SUMMARY_EVERY
        } else {
            (self.every * 2).min(SUMMARY_MAX)
        };
        if self.failing.is_empty() && left_out == 0 {
            return;
        }
        let mut by_cause = std::collections::BTreeMap::<&str, usize>::new();
        for cause in self.failing.values() {
            *by_cause.entry(cause).or_default() += 1;
        }
        let causes = by_cause
            .iter()
            .map(|(c, n)| format!("{c}: {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        tracing::warn!(
            failing = self.failing.len(),
            causes = %causes,
            lines_left_out = left_out,
            "tenants whose polls are failing now; each keeps its last known state, marked stale once its ValidUntil passes"
        );
    }

    /// Logs a tenant starting to fail or recovering (within the minute's
    /// allowance); the summary counts the rest.
    pub(super) fn note(&mut self, ctx: &ContextId, result: &Result<Answer, PollFailure>) {
        match result {
            Ok(_) => {
                let Some(cause) = self.failing.remove(ctx) else {
                    return;
                };
                self.changed = true;
                if self.may_log() {
                    tracing::info!(tenant = %ctx, was = cause, "polls of this tenant are answered again");
                }
            }
            Err(failure) => {
                if self.failing.insert(ctx.clone(), failure.kind()).is_some() {
                    return;
                }
                self.changed = true;
                if self.may_log() {
                    match failure {
                        PollFailure::Fetch(err) => {
                            tracing::warn!(tenant = %ctx, error = %err, "polls of this tenant started failing; keeping its last known state")
                        }
                        PollFailure::Write(err) => {
                            tracing::warn!(tenant = %ctx, error = %err, "could not write a poll's answer; asking again later")
                        }
                        PollFailure::NotOurs => {}
                    }
                }
            }
        }
    }
}
