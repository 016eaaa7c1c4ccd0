//! tenant-status: see the README. Everything happens in the library's
//! `cli::run`, which the benchmark's child processes run too.

use std::process::ExitCode;

/// mimalloc rather than glibc's malloc: measured in BENCHMARKS.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Not `#[tokio::main]`: src/runtime.rs builds the runtime with tokio's
    // LIFO slot off. With the slot, each watch stream woken by a change woke
    // its connection's task, which ran at once and wrote a few frames per
    // write; without it the connection writes its streams' frames together.
    // Measured on 2 cores, each mode in turns in one run (BENCHMARKS.md):
    // fan-out server CPU per stream per change, 10,000 streams, 8.5-9.7 µs
    // off against 10.7-16.4 µs on (4 runs); GetTenantState under h2load
    // 35k-44k/s off against 19k-26k/s on (3 runs). The price:
    // POST-to-watcher p99 at 1,000 notifications a second, 1.5-2.0 ms off
    // against 0.8 ms on in two runs of three. Changing
    // tokio's event interval (31, 127) or global queue interval (31) moved
    // nothing beyond the noise, so both stay at tokio's defaults.
    // A setting that cannot be used exits 2, as a flag that cannot be used
    // does; a runtime that cannot start, 1.
    let settings = match tenant_status::runtime::Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tenant-status: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match settings.build() {
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
