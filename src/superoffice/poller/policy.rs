//! How the poller paces itself: ValidUntil clamped and jittered, backoff
//! after failures, the settle polls after a notification.

use std::time::{Duration, SystemTime};

use rand::Rng;

/// How the poller paces itself.
#[derive(Debug, Clone)]
pub struct PollPolicy {
    pub min_interval: Duration,
    pub max_interval: Duration,
    /// The largest fraction of an interval taken off by jitter.
    pub jitter: f64,
    /// The first retry after a failure; doubled per failure.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// New tenants are first polled within this window, spread at random.
    pub initial_spread: Duration,
    pub deleted_retention: Duration,
    /// After a notification, this many polls come at most `settle_interval`
    /// apart, whatever ValidUntil says, while the state settles.
    pub settle_polls: u32,
    pub settle_interval: Duration,
    /// Tenants SuperOffice does not know, tracked for watchers: at most
    /// this many, each forgotten this long after no stream watches it.
    pub max_unknown: usize,
    pub forget_unknown_after: Duration,
}

impl Default for PollPolicy {
    fn default() -> Self {
        Self {
            min_interval: Duration::from_secs(5),
            max_interval: Duration::from_secs(15 * 60),
            jitter: 0.1,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(5 * 60),
            initial_spread: Duration::from_secs(1),
            deleted_retention: Duration::from_secs(24 * 3600),
            settle_polls: 3,
            settle_interval: Duration::from_secs(5),
            max_unknown: 1000,
            forget_unknown_after: Duration::from_secs(600),
        }
    }
}

impl PollPolicy {
    /// The delay until the next poll of a tenant that SuperOffice said is
    /// valid until `valid_until`.
    pub fn after_success(
        &self,
        valid_until: Option<SystemTime>,
        now: SystemTime,
        rng: &mut impl Rng,
    ) -> Duration {
        let wanted = valid_until
            .map(|v| v.duration_since(now).unwrap_or_default())
            .unwrap_or(self.min_interval);
        let clamped = wanted.clamp(self.min_interval, self.max_interval.max(self.min_interval));
        let cut = clamped.mul_f64(self.jitter.clamp(0.0, 1.0) * rng.random::<f64>());
        (clamped - cut).max(self.min_interval.mul_f64(1.0 - self.jitter.clamp(0.0, 1.0)))
    }

    /// The delay before retrying after the `failures`-th failure in a row
    /// (1 for the first).
    pub fn after_failure(
        &self,
        failures: u32,
        retry_after: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Duration {
        let exp = failures.saturating_sub(1).min(30);
        let backoff = self
            .backoff_base
            .saturating_mul(1u32 << exp)
            .min(self.backoff_max);
        // "Equal jitter": between half and all of the backoff.
        let backoff = backoff.mul_f64(0.5 + 0.5 * rng.random::<f64>());
        backoff.max(retry_after.unwrap_or_default())
    }
}
