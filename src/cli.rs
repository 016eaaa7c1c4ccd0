//! The command line: its parser (subcommands, and the completion scripts
//! made from it), then set up telemetry, run the chosen command, and turn
//! the outcome into an exit code (0; 1 for a failure at run time; 2 for a
//! configuration that cannot be used; the client commands add 3 and 4, see
//! `client`). `main` and the benchmark's child processes both run this.
//! The subcommands' flags are `config`'s (the service) and `client`'s.

use std::{
    ffi::OsString,
    io::{self, Write},
    process::ExitCode,
};

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

pub use crate::telemetry::LogFormat;
use crate::{
    app::Application,
    client,
    config::{ConfigError, DemoArgs, DevCertsArgs, FakeArgs, ServeArgs, with_file_defaults},
    shutdown_signal, sim,
    sim::demo,
    sim::devcerts::DevCerts,
    telemetry,
};

#[derive(Debug, Parser)]
#[command(
    name = "tenant-status",
    version,
    about = "Knows, at every moment, whether each SuperOffice tenant can take API calls and where its API lives; serves it over gRPC."
)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "TENANT_STATUS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Track tenants at SuperOffice and serve their state over gRPC.
    Serve(Box<ServeArgs>),
    /// Check a configuration (flags, environment, --config file) and exit:
    /// 0 when `serve` would start with it, 2 with the reason when not.
    CheckConfig(Box<ServeArgs>),
    /// Write a throwaway CA, server and client certificate for trying TLS
    /// and mTLS (`--tls-cert`, `--tls-client-ca`) with grpcurl.
    DevCerts(DevCertsArgs),
    /// Run against a built-in simulated SuperOffice with a dozen tenants
    /// changing state; works offline.
    Demo(DemoArgs),
    /// Run only the simulated SuperOffice state API (for tests, smoke
    /// checks and benchmarks).
    FakeSuperoffice(FakeArgs),
    /// Print tenants' records from a running tenant-status. Exit 0 when
    /// each was found, 3 when one is not found, 4 when the server (or
    /// SuperOffice, for a tenant not tracked yet) is unavailable.
    Get(client::GetArgs),
    /// List the tenants a running tenant-status tracks.
    List(client::ListArgs),
    /// Follow tenants' changes, reconnecting and resuming from the last
    /// revision seen when the stream breaks.
    Watch(client::WatchArgs),
    /// Print a shell completion script: `tenant-status completions bash`.
    Completions(CompletionsArgs),
}

/// `tenant-status completions SHELL`
#[derive(Debug, Clone, Args)]
pub struct CompletionsArgs {
    /// The shell to write a completion script for (to standard output).
    pub shell: clap_complete::Shell,
}

/// Why the command line could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A flag clap refuses (or --help, --version).
    #[error(transparent)]
    Clap(#[from] clap::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Parses the command line. With `--config FILE` (or TENANT_STATUS_CONFIG),
/// the file's settings become the defaults of `serve` and `check-config`,
/// so a flag wins over the environment, which wins over the file.
pub fn parse_cli_from(args: Vec<OsString>) -> Result<Cli, CliError> {
    let cmd = with_file_defaults(Cli::command(), &args)?;
    let matches = cmd.try_get_matches_from(args)?;
    Ok(Cli::from_arg_matches(&matches)?)
}

/// `completions SHELL`: the completion script, from the same definition
/// that parses the command line, so it never falls behind a flag.
pub fn completions(args: CompletionsArgs) -> ExitCode {
    let mut cmd = Cli::command();
    // Into a buffer first: clap_complete panics when its writer fails,
    // as standard output does when closed early (`| head`).
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "tenant-status", &mut script);
    let _ = io::stdout().lock().write_all(&script);
    ExitCode::SUCCESS
}

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
            sim::fake_superoffice::run_standalone(args, shutdown_signal()).await
        }
        // The client commands choose their own exit codes (client::EXIT_*).
        Command::Get(args) => return client::get(args).await,
        Command::List(args) => return client::list(args).await,
        Command::Watch(args) => return client::watch(args).await,
        Command::Completions(args) => return completions(args),
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
