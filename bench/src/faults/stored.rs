//! The shared store's own history: every record the replicas stored, read
//! from JetStream at the end of the run.
//!
//! Watchers cannot be the only witnesses. A replica whose watch of the
//! bucket broke reads on from its last revision, and with one version kept
//! per key a record written and overwritten in the meantime is never handed
//! to any watcher: under a killed NATS node, a notification applied at one
//! revision and a poll over it a second later were both invisible to all
//! four watchers. So the suite makes the records bucket itself, before any
//! replica starts, keeping every version of every key, and reads each
//! tenant's versions back at the end. The replicas open the bucket as they
//! find it; nothing they do depends on how many versions it keeps (a
//! replica's mirror reads versions in revision order and keeps the last).

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use futures_util::StreamExt;

use super::history::Rec;

/// The bucket the replicas use (`--nats-bucket`'s default) and its records.
const RECORDS_STREAM: &str = "KV_tenant-status-records";
const RECORDS_BUCKET: &str = "tenant-status-records";

/// More versions per key than a run writes.
const VERSIONS_KEPT: i64 = 100_000;

/// Makes the records bucket as the replicas would, R3, but keeping every
/// version of each key. A fresh cluster may refuse it for a while after
/// its meta leader says every peer is current ("no suitable peers for
/// placement, peer offline"): tried again for up to 30 s, as the replicas
/// do with their own buckets.
pub async fn prepare(nats_url: &str) -> anyhow::Result<()> {
    let client = async_nats::connect(nats_url).await?;
    let js = jetstream::new(client);
    let started = std::time::Instant::now();
    loop {
        match make_records_bucket(&js).await {
            Ok(()) => return Ok(()),
            Err(e) if started.elapsed() < Duration::from_secs(30) => {
                eprintln!("faults: {e:#}; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn make_records_bucket(js: &jetstream::Context) -> anyhow::Result<()> {
    js.create_stream(stream::Config {
        name: RECORDS_STREAM.into(),
        subjects: vec![format!("$KV.{RECORDS_BUCKET}.>")],
        max_messages_per_subject: VERSIONS_KEPT,
        storage: stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        num_replicas: 3,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .map_err(|e| {
        anyhow::anyhow!("could not make the records bucket with every version kept: {e}")
    })?;
    Ok(())
}

/// Every version of each named tenant's record, oldest first, read as a
/// replica reads it (the revision is the stream sequence).
pub async fn read(nats_url: &str, tenants: &[String]) -> anyhow::Result<Vec<Rec>> {
    let client = async_nats::connect(nats_url).await?;
    let js = jetstream::new(client);
    let store = js
        .get_key_value(RECORDS_BUCKET)
        .await
        .map_err(|e| anyhow::anyhow!("could not open the records bucket: {e}"))?;
    let mut out = Vec::new();
    for ctx in tenants {
        let history = tokio::time::timeout(Duration::from_secs(20), versions(&store, ctx))
            .await
            .map_err(|_| anyhow::anyhow!("reading {ctx}'s versions took over 20 s"))??;
        out.extend(history);
    }
    Ok(out)
}

async fn versions(store: &kv::Store, ctx: &str) -> anyhow::Result<Vec<Rec>> {
    // A key never written has no versions: the history ends at once.
    let mut history = store
        .history(ctx)
        .await
        .map_err(|e| anyhow::anyhow!("could not read {ctx}'s versions: {e}"))?;
    let mut out = Vec::new();
    while let Some(entry) = history.next().await {
        let entry = entry.map_err(|e| anyhow::anyhow!("reading {ctx}'s versions: {e}"))?;
        if entry.operation != kv::Operation::Put {
            continue;
        }
        let mut record = tenant_status::codec::decode_record(&entry.value)
            .map_err(|e| anyhow::anyhow!("{ctx} revision {}: {e}", entry.revision))?;
        record.revision = entry.revision;
        out.push(Rec::of(&tenant_status::serve::grpc::tenant_to_pb(&record)));
    }
    Ok(out)
}
