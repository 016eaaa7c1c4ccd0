//! Connecting to NATS (servers, credentials, TLS, the connection's own
//! events counted) and opening the replicas' buckets, patiently: a bucket
//! whose stream is still electing its leader is tried again for a while.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use async_nats::jetstream::{self, kv};

use super::{ClusterConfig, health};
use crate::metrics::ClusterMetrics;

pub(super) async fn connect(
    config: &ClusterConfig,
    metrics: Arc<ClusterMetrics>,
) -> anyhow::Result<async_nats::Client> {
    let mut options = match &config.creds_file {
        Some(path) => async_nats::ConnectOptions::with_credentials_file(path)
            .await
            .with_context(|| format!("--nats-creds-file: cannot read {}", path.display()))?,
        None => async_nats::ConnectOptions::new(),
    };
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(ca) = &config.ca_file {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    let replica = config.replica_id.clone();
    options = options
        .name(format!("tenant-status {}", config.replica_id))
        .connection_timeout(Duration::from_secs(5))
        .ping_interval(health::ping_interval(config.lease_ttl))
        .request_timeout(Some(health::request_timeout(config.lease_ttl)))
        .event_callback(move |event| {
            let metrics = Arc::clone(&metrics);
            let replica = replica.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        metrics.connected(true);
                        tracing::info!(%replica, "connected to NATS");
                    }
                    async_nats::Event::Disconnected => {
                        metrics.connected(false);
                        tracing::warn!(%replica, "lost the connection to NATS; reconnecting (reads go on from memory; the webhook answers 503)");
                    }
                    other => tracing::info!(%replica, event = %other, "NATS"),
                }
            }
        });
    let started = Instant::now();
    let addrs = config
        .urls
        .iter()
        .map(|u| u.parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .context("--nats-url")?;
    let client = options
        .connect(addrs)
        .await
        .with_context(|| format!("--nats-url: cannot connect to {}", config.urls.join(",")))?;
    tracing::info!(servers = %config.urls.join(","), took = ?started.elapsed(), "connected to NATS");
    Ok(client)
}

/// How long a replica keeps trying to open its buckets at start.
pub(super) const OPEN_PATIENCE: Duration = Duration::from_secs(30);

/// Opens the buckets, trying again with a growing pause for up to
/// `patience`: replicas started together on a fresh NATS cluster meet
/// JetStream still forming ("no suitable peers for placement", a stream
/// just made and not yet found), which passes in seconds. A server without
/// JetStream is refused at once.
pub(super) async fn open_buckets<const N: usize>(
    js: &jetstream::Context,
    configs: [kv::Config; N],
    patience: Duration,
) -> anyhow::Result<[kv::Store; N]> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(250);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let mut opened = Vec::with_capacity(N);
        let mut failed = None;
        for config in &configs {
            match open_bucket(js, config.clone()).await {
                Ok(store) => opened.push(store),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let e = match failed {
            None => {
                return opened
                    .try_into()
                    .map_err(|_| anyhow::anyhow!("opened fewer buckets than asked"));
            }
            Some(e) => e,
        };
        let text = format!("{e:#}");
        if text.contains("not enabled") || started.elapsed() + pause > patience {
            return Err(e.context(format!(
                "gave up opening the JetStream buckets after {attempt} tries in {:.1} s",
                started.elapsed().as_secs_f64()
            )));
        }
        tracing::warn!(attempt, error = %text, retry_in = ?pause, "could not open the JetStream buckets yet; trying again");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(4));
    }
}

/// Opens a bucket, creating it when it is not there (another replica may
/// create it at the same moment: then it is opened).
///
/// The bucket's stream is made here as async-nats' `create_key_value`
/// makes it, but without its account-info request first: nats-server 2.9
/// (Debian's) answers that without fields async-nats 0.51 requires, and
/// the bucket would never be made.
async fn open_bucket(js: &jetstream::Context, config: kv::Config) -> anyhow::Result<kv::Store> {
    if let Ok(store) = js.get_key_value(&config.bucket).await {
        return Ok(store);
    }
    let name = config.bucket.clone();
    let stream = jetstream::stream::Config {
        name: format!("KV_{name}"),
        description: Some(config.description),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: config.history.max(1),
        max_bytes: config.max_bytes,
        max_age: config.max_age,
        max_message_size: config.max_value_size,
        storage: config.storage,
        allow_rollup: true,
        deny_delete: true,
        deny_purge: false,
        allow_direct: true,
        num_replicas: config.num_replicas.max(1),
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    };
    match js.create_stream(stream).await.map(|_| ()) {
        Ok(()) => js
            .get_key_value(&name)
            .await
            .with_context(|| format!("cannot open the JetStream bucket {name} just made")),
        Err(create) => js.get_key_value(&name).await.map_err(|_| {
            anyhow::anyhow!(
                "cannot create the JetStream bucket {name}: {create} (is JetStream enabled on the server, nats-server -js?)"
            )
        }),
    }
}
