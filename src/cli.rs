//! The command line: parse, set up telemetry, run the chosen command, and
//! turn the outcome into an exit code (0; 1 for a failure at run time; 2
//! for a configuration that cannot be used; the client commands add 3 and
//! 4, see `client`). `main` and the benchmark's
//! child processes both run this.

use std::{ffi::OsString, process::ExitCode};

use crate::{
    app::Application,
    client,
    config::{CliError, Command, parse_cli_from},
    shutdown_signal, sim,
    sim::demo,
    sim::devcerts::DevCerts,
    telemetry,
};

pub async fn run(args: Vec<OsString>) -> ExitCode {
    let cli = match parse_cli_from(args) {
        Ok(cli) => cli,
        Err(CliError::Clap(e)) => e.exit(),
        Err(CliError::Config(e)) => return config_error(e),
    };
    telemetry::init(cli.log_format);
    let result = match cli.command {
        Command::Serve(args) => match args.validate() {
            Ok(config) => match Application::build(config).await {
                Ok(app) => app.run_until(shutdown_signal()).await,
                Err(e) => Err(e),
            },
            Err(e) => return config_error(e),
        },
        Command::CheckConfig(args) => match args.validate() {
            Ok(c) => {
                println!(
                    "the configuration is valid: gRPC on {}, webhook on {}, admin on {}, {} tenants",
                    c.grpc_addr,
                    c.webhook.addr,
                    c.admin_addr,
                    c.tenants.len()
                );
                return ExitCode::SUCCESS;
            }
            Err(e) => return config_error(e),
        },
        Command::DevCerts(args) => DevCerts::generate().and_then(|c| c.write(&args.dir)),
        Command::Demo(args) => demo::run(args, shutdown_signal()).await,
        Command::FakeSuperoffice(args) => {
            sim::superoffice::run_standalone(args, shutdown_signal()).await
        }
        // The client commands choose their own exit codes (client::EXIT_*).
        Command::Get(args) => return client::get(args).await,
        Command::List(args) => return client::list(args).await,
        Command::Watch(args) => return client::watch(args).await,
        Command::Completions(args) => return client::completions(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<crate::app::StartRefused>() => config_error(e),
        Err(e) => {
            eprintln!("tenant-status: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A configuration that cannot be used: one sentence, exit code 2.
fn config_error(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("tenant-status: {e}");
    ExitCode::from(2)
}
