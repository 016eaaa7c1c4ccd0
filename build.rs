//! Compiles the proto with protox (pure Rust), so no system `protoc` is
//! needed, and writes the descriptor set that reflection serves.

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
        // A smaller encode buffer per stream: see src/codec.rs.
        .codec_path("crate::serve::codec::SmallBufferCodec")
        .compile_fds(fds)?;
    Ok(())
}
