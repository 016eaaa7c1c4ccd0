//! The mode as one value: one process alone (its store, and with
//! `--state-file` the state file and the notification journal), or one
//! replica of several (the shared store in NATS JetStream, with
//! `--nats-url`). `Backing` opens the mode's store, hands out its ledger,
//! its view of the fleet and its metrics, and starts its background tasks:
//! the rest of the application asks it rather than forking on the mode.

use std::{path::PathBuf, sync::Arc};

use anyhow::Context;

use super::tasks::{Background, Cut, Drain};
use crate::{
    admin::Readiness,
    cluster::Cluster,
    config::Config,
    core::ledger::{Fleet, Ledger, Solo},
    core::store::Store,
    core::tenant::ContextId,
    metrics::Metrics,
    persist::{self, Durability, JournaledLedger, journal::Journal},
    superoffice::budget::Budget,
    superoffice::poller::Poller,
    superoffice::tracker::Tracker,
    token::SeenTokens,
};

/// The store, the memory of used tokens and the metrics, with the mode
/// they are kept in.
pub(crate) struct Backing {
    store: Arc<Store>,
    /// The memory of used tokens (saved with the state file alone).
    seen: Arc<SeenTokens>,
    metrics: Arc<Metrics>,
    mode: Mode,
}

enum Mode {
    /// One process: its store is the truth. With a state file, saved soon
    /// after changes, and every notification journaled before it is
    /// acknowledged.
    Alone { files: Option<StateFiles> },
    /// One replica of several: every write goes to the shared store first.
    /// (Boxed: the connection's handles are many, and there is one `Mode`.)
    Replicated(Box<Cluster>),
}

/// `--state-file`: where the store is saved, and the journal beside it.
struct StateFiles {
    path: PathBuf,
    journal: Arc<Journal>,
    /// Whether what the webhook acknowledges can be made durable now.
    durability: Arc<Durability>,
}

impl Backing {
    /// Opens the mode `config` asks for: restores the state file and
    /// replays its journal, or connects to NATS (nothing is read or leased
    /// until `start`).
    pub(crate) async fn open(config: &Config) -> anyhow::Result<Self> {
        let seen = Arc::new(SeenTokens::new(config.webhook.seen_tokens_max));
        let hold = config.webhook.notification_hold;
        Ok(match &config.cluster {
            None => {
                // Alone, revisions start from the clock, so a restart
                // issues larger ones.
                let store = Arc::new(Store::starting_from_clock().with_notification_hold(hold));
                let metrics = Arc::new(Metrics::new());
                let files = match &config.state_file {
                    Some(path) => {
                        let durability = Arc::new(Durability::new(Arc::clone(&metrics)));
                        // Whatever the store holds after this came from the
                        // state file and its journal: `start` re-polls those
                        // tenants over a spread. The tokens they name are
                        // remembered again, so a replay after the restart
                        // is refused like one before it.
                        restore(&store, &seen, path)?;
                        let journal = replay_journal(&store, &seen, path, &durability)?;
                        Some(StateFiles {
                            path: path.clone(),
                            journal,
                            durability,
                        })
                    }
                    None => None,
                };
                Self {
                    store,
                    seen,
                    metrics,
                    mode: Mode::Alone { files },
                }
            }
            Some(c) => {
                // Among replicas, revisions are the shared log's.
                let store = Arc::new(Store::new().with_notification_hold(hold));
                let metrics = Arc::new(Metrics::new().with_cluster());
                let cluster =
                    Cluster::connect(c, Arc::clone(&store), metrics.cluster(), hold).await?;
                Self {
                    store,
                    seen,
                    metrics,
                    mode: Mode::Replicated(Box::new(cluster)),
                }
            }
        })
    }

    pub(crate) fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub(crate) fn seen(&self) -> &Arc<SeenTokens> {
        &self.seen
    }

    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub(crate) fn replicated(&self) -> bool {
        matches!(self.mode, Mode::Replicated(_))
    }

    /// Where every rule writes: the store (through the journal with a state
    /// file), or the shared log.
    pub(crate) fn ledger(&self) -> Arc<dyn Ledger> {
        match &self.mode {
            Mode::Alone { files: None } => Arc::clone(&self.store) as Arc<dyn Ledger>,
            Mode::Alone { files: Some(f) } => Arc::new(JournaledLedger::new(
                Arc::clone(&self.store),
                Arc::clone(&f.journal),
                Arc::clone(&self.seen),
            )),
            Mode::Replicated(c) => c.ledger(),
        }
    }

    /// What this process knows of the fleet: itself alone, or the shared
    /// log's view.
    pub(crate) fn fleet(&self) -> Arc<dyn Fleet> {
        match &self.mode {
            Mode::Alone { .. } => Arc::new(Solo),
            Mode::Replicated(c) => c.ledger(),
        }
    }

    /// Among replicas, each takes its share of the fleet's budget toward
    /// SuperOffice as members come and go; alone, the whole of it.
    pub(crate) fn share_budget(&self, budget: &Arc<Budget>) {
        if let Mode::Replicated(c) = &self.mode {
            c.share_budget(Arc::clone(budget));
        }
    }

    /// The admin listener's routes of this mode (a replica's lease tenures).
    pub(crate) fn admin_routes(&self) -> Option<(axum::Router, &'static str)> {
        match &self.mode {
            Mode::Alone { .. } => None,
            Mode::Replicated(c) => Some((c.admin_router(), crate::cluster::LEASES_PATH)),
        }
    }

    /// Starts polling and the mode's tasks, and adds them to `drain` in
    /// the order they must stop: the poller; among replicas, the leases
    /// (given back, so the others poll at once); alone with a state file,
    /// its saver, after every writer, so it holds everything acknowledged.
    pub(crate) fn start(
        self,
        config: &Config,
        tracker: &Tracker,
        poller: Poller,
        readiness: &Arc<Readiness>,
        drain: &mut Drain,
    ) {
        let Self {
            store,
            seen,
            metrics: _,
            mode,
        } = self;
        match mode {
            Mode::Alone { files } => {
                let polling = spawn_polling(config, &store, tracker, poller, readiness);
                drain.then(polling, Cut::Warn("the poller"));
                if let Some(StateFiles {
                    path,
                    journal,
                    durability,
                }) = files
                {
                    let d = Arc::clone(&durability);
                    readiness.also(Arc::new(move || d.check()));
                    let interval = config.state_file_interval;
                    let saving = Background::spawn(|stop| {
                        persist::run(store, seen, path, Some(journal), durability, interval, stop)
                    });
                    drain.then(
                        saving,
                        Cut::Error(
                            "the shutdown deadline came before the state file was saved; the journal beside it keeps every notification acknowledged since the last save, and the next start replays it",
                        ),
                    );
                }
            }
            Mode::Replicated(cluster) => {
                let cluster = *cluster;
                readiness.also(cluster.readiness());
                let ledger = cluster.ledger();
                let handle = tracker.poller().clone();
                let polling = Background::spawn(|stop| poller.run(stop));
                let configured = config.tenants.clone();
                let bounds = (config.policy.min_interval, config.policy.max_interval);
                let sharing = Background::spawn(|stop| async move {
                    let _ = cluster.start(handle, &configured, bounds, stop).await;
                });
                // The configured tenants are tracked fleet-wide; their
                // pollers are the holders of their partitions.
                let tenants = config.tenants.clone();
                tokio::spawn(async move {
                    for t in tenants {
                        let now = std::time::SystemTime::now();
                        if let Err(e) = ledger.track_unknown(t.clone(), now, None).await {
                            tracing::warn!(tenant = %t, error = %e, "could not track a configured tenant in the shared store");
                        }
                    }
                });
                readiness.first_round_done();
                drain.then(polling, Cut::Warn("the poller"));
                drain.then(sharing, Cut::Warn("giving the partition leases back"));
            }
        }
    }
}

/// Starts the poller: the configured tenants the state file did not give
/// us are polled at once, and readiness waits for that first round (or
/// `--ready-timeout`); restored tenants are re-polled over
/// `--restore-spread`.
fn spawn_polling(
    config: &Config,
    store: &Store,
    tracker: &Tracker,
    mut poller: Poller,
    readiness: &Arc<Readiness>,
) -> Background {
    // Everything in the store now was restored from the state file.
    let restored: Vec<ContextId> = store
        .snapshot()
        .iter()
        .map(|r| r.context_identifier.clone())
        .collect();
    let awaited: Vec<ContextId> = config
        .tenants
        .iter()
        .filter(|t| !store.contains(t))
        .cloned()
        .collect();
    let mut first_round = poller.first_round(awaited.iter().cloned());
    let task = Background::spawn(|stop| poller.run(stop));
    for t in restored {
        tracker.poller().track_within(t, config.restore_spread);
    }
    for t in awaited {
        tracker.poller().track(t);
    }
    let readiness = Arc::clone(readiness);
    let timeout = config.ready_timeout;
    tokio::spawn(async move {
        let done = tokio::time::timeout(timeout, first_round.wait_for(|d| *d)).await;
        if done.is_err() {
            tracing::warn!(?timeout, "first poll round not done in time; ready anyway");
        }
        readiness.first_round_done();
    });
    task
}

/// Puts the state file's records back into `store` and its used tokens
/// into `seen`. A record that cannot be read is skipped and named in the
/// log; a file that cannot be parsed at all is reported and set aside, not
/// fatal; a file of a newer format version stops the start (a rollback
/// must not start blind and overwrite it).
fn restore(store: &Store, seen: &SeenTokens, path: &std::path::Path) -> anyhow::Result<()> {
    let leftovers = persist::remove_leftovers(path);
    if leftovers > 0 {
        tracing::info!(path = %path.display(), leftovers, "removed temporary files of saves cut short");
    }
    match persist::load(path) {
        Ok(None) => {
            tracing::info!(path = %path.display(), "no state file yet; a first start");
            Ok(())
        }
        Ok(Some(saved)) => {
            for why in &saved.skipped {
                tracing::error!(path = %path.display(), record = %why, "skipped a record of the state file that cannot be read");
            }
            let tenants = saved.records.len();
            for r in saved.records {
                store.restore(r);
            }
            let tokens = seen.restore(saved.seen_tokens, std::time::SystemTime::now());
            tracing::info!(path = %path.display(), tenants, tokens, skipped = saved.skipped.len(), "restored the last known states (stale until re-polled) and the tokens already used");
            Ok(())
        }
        Err(e @ persist::LoadError::Corrupt { .. }) => {
            let aside = persist::set_aside(path)
                .with_context(|| format!("--state-file: {e}; and it cannot be set aside"))?;
            tracing::error!(error = %e, set_aside = %aside.display(), "state file unusable; starting without it");
            Ok(())
        }
        Err(e @ persist::LoadError::TooNew { .. }) => {
            Err(StartRefused(format!("--state-file: {e}")).into())
        }
        Err(e) => Err(anyhow::anyhow!("--state-file: {e}")),
    }
}

/// A start refused for a file that cannot be used as it is: the command
/// line exits 2, as for a flag that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartRefused(String);

/// Applies the notifications journaled after the state file was saved
/// (a kill -9 came before the next save), and opens the journal's next
/// generation.
fn replay_journal(
    store: &Store,
    seen: &SeenTokens,
    path: &std::path::Path,
    durability: &Arc<Durability>,
) -> anyhow::Result<Arc<Journal>> {
    let replay = persist::journal::replay(path, |ctx| store.get(ctx)).with_context(|| {
        format!(
            "--state-file: cannot read the journal beside {}",
            path.display()
        )
    })?;
    let now = std::time::SystemTime::now();
    let count = replay.notifications.len();
    for e in replay.notifications {
        store.apply_notification(&e.ctx, e.info, now);
    }
    let tokens = seen.restore(replay.tokens, now);
    let torn = replay.unreadable;
    if count > 0 || torn > 0 {
        tracing::info!(
            notifications = count,
            tokens,
            unreadable = torn,
            "replayed the notification journal over the state file"
        );
    }
    let journal = Journal::open(path, Arc::clone(durability)).with_context(|| {
        format!(
            "--state-file: cannot open a journal beside {}",
            path.display()
        )
    })?;
    Ok(Arc::new(journal))
}
