//! tenant-status: see the README. Everything happens in the library's
//! `cli::run`, which the benchmark's child processes run too.

use std::process::ExitCode;

/// mimalloc rather than glibc's malloc: measured in BENCHMARKS.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    tenant_status::cli::run(std::env::args_os().collect()).await
}
