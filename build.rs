//! Generates the gRPC code for `proto/larder/v1/*.proto` with protox (a pure-Rust protobuf
//! compiler, so no system `protoc`) and tonic-prost-build, and writes the encoded file descriptor
//! set that the reflection service serves.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/larder/v1/cache.proto",
        "proto/larder/v1/session.proto",
        "proto/larder/v1/ratelimit.proto",
        "proto/larder/v1/pipeline.proto",
        "proto/larder/v1/queue.proto",
    ];
    for proto in &protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("larder_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .bytes(".larder.v1")
        .compile_fds(fds)?;
    Ok(())
}
