//! Whether what is acknowledged can be made durable now, and why not:
//! the journal's state and the last save's, read by readiness and followed
//! by the metrics. Apart from the state file's format so the webhook and
//! readiness depend on this small part only.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::metrics::Metrics;

/// Why something could not be made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// No space (or quota) left on the device.
    NoSpace,
    /// The directory, or the file written, is gone.
    Gone,
    /// Any other I/O error (a failed sync, permissions, ...).
    Io,
}

impl Cause {
    pub fn of(e: &std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => Cause::NoSpace,
            std::io::ErrorKind::NotFound => Cause::Gone,
            _ if e.raw_os_error() == Some(libc::ENOSPC) => Cause::NoSpace,
            _ => Cause::Io,
        }
    }

    /// The metrics' label.
    pub fn label(self) -> &'static str {
        match self {
            Cause::NoSpace => "no_space",
            Cause::Gone => "gone",
            Cause::Io => "io",
        }
    }

    /// Why notifications are refused, for readiness and error texts.
    pub fn sentence(self) -> &'static str {
        match self {
            Cause::NoSpace => {
                "notifications cannot be made durable: no space left for the journal (the webhook answers 503 until a save succeeds)"
            }
            Cause::Gone => {
                "notifications cannot be made durable: the journal or its directory is gone (the webhook answers 503 until a save succeeds)"
            }
            Cause::Io => {
                "notifications cannot be made durable: the journal cannot be written or synced (the webhook answers 503 until a save succeeds)"
            }
        }
    }

    /// Why the state file is not saved, for readiness.
    fn save_sentence(self) -> &'static str {
        match self {
            Cause::NoSpace => "the state file cannot be saved: no space left on its device",
            Cause::Gone => "the state file cannot be saved: its directory is gone",
            Cause::Io => "the state file cannot be saved: an I/O error (see the log)",
        }
    }
}

/// Whether what is acknowledged can be made durable now: the journal's
/// state (a failed write, a failed sync, a file gone from disk stop
/// notifications until a save proves the directory usable again) and the
/// last save's. Readiness reads it; the metrics follow it.
pub struct Durability {
    journal: Mutex<Option<Cause>>,
    save: Mutex<Option<Cause>>,
    metrics: Arc<Metrics>,
}

impl Default for Durability {
    fn default() -> Self {
        Self::new(Arc::new(Metrics::new()))
    }
}

impl Durability {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            journal: Mutex::new(None),
            save: Mutex::new(None),
            metrics,
        }
    }

    /// Why the journal takes no entries now, if it does not.
    pub fn journal_broken(&self) -> Option<Cause> {
        *self.journal.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn journal_failed(&self, cause: Cause) {
        self.metrics.journal_failed(cause.label());
        self.metrics.set_durable(false);
        let mut j = self.journal.lock().unwrap_or_else(|e| e.into_inner());
        if j.is_none() {
            tracing::error!(
                cause = cause.label(),
                "{}; readiness says so",
                cause.sentence()
            );
        }
        *j = Some(cause);
    }

    pub(super) fn saved(&self, outcome: Result<(), Cause>, took: Duration) {
        self.metrics
            .state_file_saved(outcome.map_err(Cause::label), took);
        let mut save = self.save.lock().unwrap_or_else(|e| e.into_inner());
        *save = outcome.err();
        if outcome.is_ok() {
            let mut j = self.journal.lock().unwrap_or_else(|e| e.into_inner());
            if j.take().is_some() {
                tracing::info!(
                    "the state file is saved and the journal works again: notifications are accepted"
                );
            }
            self.metrics.set_durable(true);
        }
    }

    /// Whether anything failed that the next save must retry.
    pub(super) fn failing(&self) -> bool {
        self.journal_broken().is_some()
            || self
                .save
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some()
    }

    /// `Ok` when both work, or why not (for `/readyz`).
    pub fn check(&self) -> Result<(), &'static str> {
        if let Some(c) = self.journal_broken() {
            return Err(c.sentence());
        }
        match *self.save.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(c) => Err(c.save_sentence()),
            None => Ok(()),
        }
    }
}
