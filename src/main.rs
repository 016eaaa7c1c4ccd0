//! tenant-status: see the README. Everything happens in the library's
//! `cli::run`, which the benchmark's child processes run too.

use std::process::ExitCode;

/// mimalloc rather than glibc's malloc: measured in BENCHMARKS.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tenant-status: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(tenant_status::cli::run(std::env::args_os().collect()));
    // A final save that the shutdown deadline cut short is not waited for
    // (dropping the runtime would wait for its blocking thread): what was
    // acknowledged is in the journal already, and the file on disk is the
    // previous whole one.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    code
}
