//! The application's background tasks, and the order they are drained in.

use std::future::Future;

use tokio_util::sync::CancellationToken;

/// A task that runs until told to stop.
pub(super) struct Background {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Background {
    pub(super) fn spawn<F>(f: impl FnOnce(CancellationToken) -> F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let task = tokio::spawn(f(stop.clone()));
        Self { stop, task }
    }

    pub(super) async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// What the drain does about a task the deadline cuts short.
pub(super) enum Cut {
    /// Logs a warning naming the task.
    Warn(&'static str),
    /// Logs this error.
    Error(&'static str),
    /// Nothing: the task ends at once when told (it only waits for its
    /// stop signal), so it is waited for whatever the deadline.
    Never,
}

/// Background tasks in the order they must stop: each is told to stop and
/// waited for before the next, all by one deadline. The order is the
/// drain's (see the module comment of `app`): writers before the state
/// file that must hold what they wrote, the admin listener last so probes
/// see the drain.
#[derive(Default)]
pub(super) struct Drain {
    tasks: Vec<(Background, Cut)>,
}

impl Drain {
    /// Adds `task`, stopped after every task added before it.
    pub(super) fn then(&mut self, task: Background, cut: Cut) {
        self.tasks.push((task, cut));
    }

    /// Stops every task in order; a task still running at `deadline` is
    /// left behind (the runtime's shutdown ends it) and logged.
    pub(super) async fn stop(self, deadline: tokio::time::Instant, timeout: std::time::Duration) {
        for (task, cut) in self.tasks {
            let what = match cut {
                Cut::Never => {
                    task.stop().await;
                    continue;
                }
                Cut::Warn(what) => Ok(what),
                Cut::Error(error) => Err(error),
            };
            if tokio::time::timeout_at(deadline, task.stop())
                .await
                .is_err()
            {
                match what {
                    Ok(what) => {
                        tracing::warn!(?timeout, "{what} had not finished at the shutdown deadline")
                    }
                    Err(error) => tracing::error!(?timeout, "{error}"),
                }
            }
        }
    }
}
