//! `cargo run --release -p tenant-status-bench -- all` (or one scenario by name): runs
//! tenant-status and its load in separate processes on this machine,
//! beside a baseline measured in the same run, prints a table and writes it
//! as JSON (target/bench/results.json). `--quick` runs every scenario once
//! at a tiny size (what CI does, so the bench cannot rot); its figures mean
//! nothing.
//!
//! Child processes are this same binary: `bench child -- tenant-status
//! serve ...` runs the service exactly as `tenant-status` would, so
//! `cargo run -p tenant-status-bench` needs no other build.

mod bare_watch;
mod burst;
mod cluster;
mod common;
mod fanout;
mod faults;
mod lookups;
mod newnames;
mod notifications;
mod outage;
mod polling;
mod soak;
mod start;
mod storm;

use std::{ffi::OsString, path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};

use common::Row;

/// mimalloc rather than glibc's malloc: measured in BENCHMARKS.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "bench",
    about = "tenant-status benchmarks, each beside a baseline"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Every scenario, in order.
    All(Opts),
    /// GetTenantState with 100,000 tenants, next to a bare tonic server.
    Lookups(Opts),
    /// One change reaching 10,000 and 50,000 watch streams, next to a bare
    /// tonic server on a tokio watch channel.
    Fanout(Opts),
    /// Signed notifications: accepted per second and POST-to-watcher
    /// latency, next to a do-nothing handler on the same HTTP stack.
    Notifications(Opts),
    /// 100,000 tenants polled on a 60 s ValidUntil from a fake SuperOffice
    /// in its own process.
    Polling(Opts),
    /// Start to SERVING with 100,000 tenants in a state file.
    Start(Opts),
    /// A reconnect storm: 100 watch-all streams of 100,000 tenants opened
    /// at once while lookups go on.
    Storm(Opts),
    /// A burst of changes: 100 watch-all streams of 10,000 tenants while
    /// they change 10,000 times a second; every stream must end on the
    /// latest.
    Burst(Opts),
    /// SuperOffice down with 500,000 tenants: the state file's cost and
    /// SIGTERM to exit.
    Outage(Opts),
    /// 5,000 lookups of new names at once under the budget toward
    /// SuperOffice: its peak in flight and the callers' latency, next to
    /// the same burst with no budget.
    Newnames(Opts),
    /// Three replicas through a real nats-server: cross-replica latency,
    /// accepted/s, polls fleet-wide, takeover after kill -9.
    Cluster(Opts),
    /// Ten minutes of a realistic mix with SuperOffice failing a tenth of
    /// the time and a kill -9 in the middle (not part of `all`).
    Soak(Opts),
    /// The replicas' fault suite: three replicas on a three-node NATS
    /// cluster under notifications, polls and watchers, through five or
    /// six faults one at a time; every property checked over the recorded
    /// history (not part of `all`; see RELIABILITY.md).
    Faults(Opts),
    /// (internal) Runs tenant-status with the arguments after `--`.
    #[command(hide = true)]
    Child {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// (internal) The bare tonic server answering a constant.
    #[command(hide = true)]
    BaselineGrpc {
        #[arg(long)]
        addr: String,
    },
    /// (internal) A tonic server configured as its documentation shows,
    /// serving tonic-health's Check, on tokio's default runtime.
    #[command(hide = true)]
    BaselineHealth {
        #[arg(long)]
        addr: String,
    },
    /// (internal) The bare tonic server of the fan-out baseline.
    #[command(hide = true)]
    BaselineWatch {
        #[arg(long)]
        addr: String,
    },
    /// (internal) The same HTTP stack as the webhook with a do-nothing
    /// handler.
    #[command(hide = true)]
    BaselineHttp {
        #[arg(long)]
        addr: String,
    },
}

#[derive(Args, Clone)]
struct Opts {
    /// Tiny sizes and short runs: checks the bench works, measures nothing.
    #[arg(long)]
    quick: bool,
    /// Where to write the results as JSON.
    #[arg(long, default_value = "target/bench/results.json")]
    out: PathBuf,
    /// Settings of the service's tokio runtime to measure in turns
    /// (lookups, fanout, notifications): `shipped`, or comma-separated
    /// `lifo=on|off`, `event=<ticks>`, `gqi=<ticks>`. Repeatable; without
    /// it, the shipped settings alone.
    #[arg(long = "runtime", value_name = "SETTINGS", value_parser = parse_mode)]
    runtime: Vec<common::RuntimeMode>,
}

fn parse_mode(spec: &str) -> Result<common::RuntimeMode, String> {
    common::RuntimeMode::parse(spec)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match cli.command {
        // The service as a child process: on the runtime it ships with
        // (src/runtime.rs), so what is measured is what runs in production.
        Cmd::Child { args } => return child(args),
        other => other,
    };
    // The load generator, the scenarios' own work and the baselines run on
    // tokio's defaults (what `#[tokio::main]` builds), whatever the service
    // chooses for itself: the baselines are "a tonic server as anyone would
    // start one", and the load must not change when the service's runtime
    // does. Built here on purpose rather than by `tenant_status::runtime`.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async move {
        let (opts, scenarios): (Opts, Vec<&str>) = match command {
            Cmd::Child { .. } => unreachable!("handled above"),
            Cmd::BaselineGrpc { addr } => return exit(lookups::baseline_server(&addr).await),
            Cmd::BaselineHealth { addr } => {
                return exit(lookups::baseline_health_server(&addr).await);
            }
            Cmd::BaselineWatch { addr } => return exit(bare_watch::server(&addr).await),
            Cmd::BaselineHttp { addr } => {
                return exit(notifications::baseline_server(&addr).await);
            }
            Cmd::All(o) => (
                o,
                vec![
                    "lookups",
                    "fanout",
                    "notifications",
                    "polling",
                    "start",
                    "storm",
                    "burst",
                    "outage",
                    "newnames",
                    "cluster",
                ],
            ),
            Cmd::Lookups(o) => (o, vec!["lookups"]),
            Cmd::Fanout(o) => (o, vec!["fanout"]),
            Cmd::Notifications(o) => (o, vec!["notifications"]),
            Cmd::Polling(o) => (o, vec!["polling"]),
            Cmd::Start(o) => (o, vec!["start"]),
            Cmd::Storm(o) => (o, vec!["storm"]),
            Cmd::Burst(o) => (o, vec!["burst"]),
            Cmd::Outage(o) => (o, vec!["outage"]),
            Cmd::Newnames(o) => (o, vec!["newnames"]),
            Cmd::Cluster(o) => (o, vec!["cluster"]),
            Cmd::Soak(o) => (o, vec!["soak"]),
            Cmd::Faults(o) => (o, vec!["faults"]),
        };
        common::set_runtime_modes(opts.runtime.clone());
        let mut rows: Vec<Row> = Vec::new();
        let all = scenarios.len() > 1;
        for s in scenarios {
            if all {
                // Each scenario in a fresh process of its own, so one's
                // leftovers (50,000 closed streams, say) cannot slow the next.
                match run_isolated(s, &opts) {
                    Ok(r) => rows.extend(r),
                    Err(e) => {
                        eprintln!("bench {s} failed: {e:#}");
                        return ExitCode::FAILURE;
                    }
                }
                continue;
            }
            eprintln!("== {s}{}", if opts.quick { " (quick)" } else { "" });
            let result = match s {
                "lookups" => lookups::run(opts.quick).await,
                "fanout" => fanout::run(opts.quick).await,
                "notifications" => notifications::run(opts.quick).await,
                "polling" => polling::run(opts.quick).await,
                "soak" => soak::run(opts.quick).await,
                "faults" => faults::run(opts.quick).await,
                "cluster" => cluster::run(opts.quick).await,
                "storm" => storm::run(opts.quick).await,
                "burst" => burst::run(opts.quick).await,
                "outage" => outage::run(opts.quick).await,
                "newnames" => newnames::run(opts.quick).await,
                _ => start::run(opts.quick).await,
            };
            match result {
                Ok(r) => rows.extend(r),
                Err(e) => {
                    eprintln!("bench {s} failed: {e:#}");
                    return ExitCode::FAILURE;
                }
            }
        }
        println!();
        common::print_table(&rows);
        if let Some(dir) = opts.out.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = common::write_json(&opts.out, &rows, opts.quick) {
            eprintln!("bench: cannot write {}: {e:#}", opts.out.display());
            return ExitCode::FAILURE;
        }
        eprintln!("results written to {}", opts.out.display());
        ExitCode::SUCCESS
    })
}

/// Runs `bench <scenario>` as a child process and reads its rows back.
fn run_isolated(scenario: &str, opts: &Opts) -> anyhow::Result<Vec<Row>> {
    let out = common::work_dir().join(format!("{scenario}.json"));
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.arg(scenario).arg("--out").arg(&out);
    if opts.quick {
        cmd.arg("--quick");
    }
    for mode in &opts.runtime {
        cmd.arg("--runtime").arg(&mode.label);
    }
    // Its table goes to the log; the combined one is printed at the end.
    cmd.stdout(std::process::Stdio::null());
    let status = cmd.status()?;
    anyhow::ensure!(status.success(), "bench {scenario} exited with {status}");
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&out)?)?;
    Ok(serde_json::from_value(doc["rows"].clone())?)
}

/// `bench child -- tenant-status ...`: the service as `main` runs it.
fn child(mut args: Vec<OsString>) -> ExitCode {
    if args.first().is_some_and(|a| a == "--") {
        args.remove(0);
    }
    let runtime = match tenant_status::runtime::build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tenant-status: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(tenant_status::cli::run(args));
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    code
}

fn exit(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
