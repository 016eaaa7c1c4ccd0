//! Compiles the proto with protox (pure Rust), so no system `protoc` is
//! needed, writes the descriptor set that reflection serves, and records
//! the git commit for `tenant_status_build_info`.

use std::{env, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/tenantstatus/v1/tenant_status.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out.join("tenant_status_descriptor.bin"),
        fds.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        // A smaller encode buffer per stream: see src/serve/codec.rs.
        .codec_path("crate::serve::codec::SmallBufferCodec")
        .compile_fds(fds.clone())?;
    // The server once more, for the service itself: the two replies that
    // carry a tenant are the pre-encoded ones of src/serve/replies.rs
    // (encode once); every other type is the module above's. Same wire.
    let encoded = out.join("encoded");
    std::fs::create_dir_all(&encoded)?;
    tonic_prost_build::configure()
        .build_client(false)
        .codec_path("crate::serve::codec::SmallBufferCodec")
        .extern_path(".tenantstatus.v1", "crate::pb")
        .extern_path(
            ".tenantstatus.v1.GetTenantStateResponse",
            "crate::serve::replies::TenantReply",
        )
        .extern_path(
            ".tenantstatus.v1.WatchTenantResponse",
            "crate::serve::replies::WatchReply",
        )
        .out_dir(&encoded)
        .compile_fds(fds)?;
    println!("cargo:rustc-env=TENANT_STATUS_COMMIT={}", git_commit());
    Ok(())
}

/// The commit being built, or "unknown" outside a git checkout (a crate
/// tarball) or without git. Rebuilt when HEAD moves.
fn git_commit() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={dir}/{head}");
        }
    }
    git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned())
}
