//! The demo with replicas: `demo --nats-url URL --replicas 3` runs three
//! replicas in this process against one simulated SuperOffice, sharing
//! their state through JetStream, on consecutive ports (gRPC 50051, 50052,
//! 50053; webhooks 8080, 8081, 8082; admin 9090, 9091, 9092). Post a
//! notification to one replica and watch it arrive on another.

use std::{future::Future, net::SocketAddr, time::Duration};

use anyhow::Context;
use tokio::{sync::watch, time::Instant};

use crate::{
    app::Application,
    cluster::ClusterConfig,
    config::{Config, DemoArgs},
    core::tenant::ChangeType,
    sim::{
        demo::{DEMO_NOTIFICATIONS, DEMO_VALID_FOR, demo_settings, script},
        fake_superoffice::FakeSuperOffice,
    },
};

/// `addr` with its port moved up by `by` (port 0 stays 0: any free port).
fn shifted(setting: &str, addr: &str, by: u16) -> anyhow::Result<String> {
    let mut a: SocketAddr = addr.parse().with_context(|| {
        format!("{setting}: {addr:?} is not an address such as 127.0.0.1:50051")
    })?;
    if a.port() != 0 {
        a.set_port(a.port().checked_add(by).context("port out of range")?);
    }
    Ok(a.to_string())
}

pub async fn run(
    args: DemoArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (fake, _fake_task) = FakeSuperOffice::start()
        .await
        .context("could not start the simulated SuperOffice")?;
    let started = Instant::now();
    script(&fake, DEMO_VALID_FOR);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut running = Vec::new();
    let mut webhooks = Vec::new();
    let mut lines = Vec::new();
    for i in 0..args.replicas {
        let mut config = Config::for_base_url(&fake.url())?;
        config.grpc_addr = shifted("--grpc-addr", &args.grpc_addr, i)?;
        config.webhook.addr = shifted("--webhook-addr", &args.webhook_addr, i)?;
        config.admin_addr = shifted("--admin-addr", &args.admin_addr, i)?;
        demo_settings(&mut config, &args);
        let mut cluster = ClusterConfig::new(args.nats_urls.clone(), &format!("demo-{}", i + 1));
        cluster.bucket = "tenant-status-demo".into();
        cluster.lease_ttl = Duration::from_secs(5);
        config.cluster = Some(cluster);
        let path = config.webhook.path.clone();
        let app = Application::build(config)
            .await
            .with_context(|| format!("replica {} could not start", i + 1))?;
        let webhook = format!("http://{}{path}", app.webhook_addr());
        lines.push(format!(
            "  replica {}: gRPC {}, webhook {webhook}, metrics http://{}/metrics",
            i + 1,
            app.grpc_addr(),
            app.admin_addr()
        ));
        webhooks.push((app.grpc_addr(), webhook));
        let mut stop = stop_rx.clone();
        running.push(tokio::spawn(app.run_until(async move {
            let _ = stop.wait_for(|s| *s).await;
        })));
    }
    let by_hand = {
        let mut n = fake.notification(ChangeType::Upgrade, "Cust10001", None);
        n["Token"] = fake
            .signer()
            .notification_token("Cust10001", Duration::from_secs(3600))
            .into();
        n
    };
    let (first, last) = (&webhooks[0], &webhooks[webhooks.len() - 1]);
    println!(
        r#"
tenant-status demo: {n} replicas sharing their state through NATS JetStream
({nats}), simulated SuperOffice at {fake}
{lines}
Each tenant is polled by one replica only (the holder of its partition's
lease); every replica serves every tenant, with the same revisions.

Watch a tenant on the last replica:
  grpcurl -plaintext -d '{{"context_identifiers":["Cust10001"]}}' {watch_on} tenantstatus.v1.TenantStatusService/WatchTenant
then post a notification to the first one: the watcher sees it at once.
  curl -i {post_to} -H 'content-type: application/json' -d '{by_hand}'
Post it again, to any replica: a retry (204, applied once); its token with
another ChangeType is refused as a replay.
Which replica polls what: curl -s http://<admin>/metrics | grep tenant_status_cluster_

Ctrl-C stops them (each gives its leases back).
"#,
        n = args.replicas,
        nats = args.nats_urls.join(","),
        fake = fake.url(),
        lines = lines.join("\n"),
        watch_on = last.0,
        post_to = first.1,
    );
    // The simulated SuperOffice's own notifications go round the replicas,
    // as a load balancer in front of them would send them.
    let urls: Vec<String> = webhooks.iter().map(|(_, w)| w.clone()).collect();
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        for (i, (at, change, ctx, endpoint)) in DEMO_NOTIFICATIONS.into_iter().enumerate() {
            tokio::time::sleep_until(
                started + Duration::from_secs(at) + Duration::from_millis(300),
            )
            .await;
            let url = &urls[i % urls.len()];
            match fake.notify(&client, url, change, ctx, endpoint).await {
                Ok(status) if status.is_success() => {}
                Ok(status) => {
                    tracing::warn!(%status, tenant = ctx, "the demo's notification was refused")
                }
                Err(e) => {
                    tracing::warn!(error = %e, tenant = ctx, "the demo's notification failed")
                }
            }
        }
    });
    shutdown.await;
    stop_tx.send_replace(true);
    for r in running {
        r.await.context("a replica's task failed")??;
    }
    Ok(())
}
