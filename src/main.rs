use std::process::ExitCode;

use clap::Parser;
use tenant_status::{
    app::Application,
    config::{Cli, Command},
    demo,
    fake_superoffice::{FakeSuperOffice, TenantSpec, demo_script},
    shutdown_signal, telemetry,
};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let result = match cli.command {
        Command::Serve(args) => match args.validate() {
            Ok(config) => match Application::build(config).await {
                Ok(app) => app.run_until(shutdown_signal()).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e.into()),
        },
        Command::Demo(args) => demo::run(args, shutdown_signal()).await,
        Command::FakeSuperoffice(args) => fake(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tenant-status: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn fake(args: tenant_status::config::FakeArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&args.addr).await?;
    let (fake, task) = FakeSuperOffice::serve(listener, shutdown_signal())?;
    if args.demo_script {
        demo_script(&fake, args.valid_for);
    }
    for n in 1..=args.tenants {
        let ctx = format!("Cust{n}");
        fake.set(
            &ctx,
            TenantSpec::running(&ctx, "sod2.superoffice.com").valid_for(args.valid_for),
        );
    }
    eprintln!("simulated SuperOffice state API at {}", fake.url());
    task.await?;
    Ok(())
}
