//! Compiles the repository's `proto/larder/v1/*.proto` (the daemon's own) and the well-known
//! `wrappers.proto` (whose messages have the wire form of grpc.health.v1's) into one encoded
//! `FileDescriptorSet` in `OUT_DIR`, which the module embeds and reads at start.

use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() {
    let proto_dir = env::var_os("LARDER_PROTO_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
                .join("../../../proto")
        });
    println!("cargo:rerun-if-env-changed=LARDER_PROTO_DIR");
    let source = proto_dir.join("larder/v1");
    println!("cargo:rerun-if-changed={}", source.display());
    let mut files: Vec<String> = fs::read_dir(&source)
        .unwrap_or_else(|e| {
            panic!(
                "no protos at {} ({e}): build from a checkout of the repository, or set \
                 LARDER_PROTO_DIR to the directory that holds larder/v1/*.proto",
                source.display()
            )
        })
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            name.ends_with(".proto")
                .then(|| format!("larder/v1/{name}"))
        })
        .collect();
    files.sort();
    for file in &files {
        println!("cargo:rerun-if-changed={}", proto_dir.join(file).display());
    }
    files.push("google/protobuf/wrappers.proto".to_owned());
    let set = protox::compile(&files, [&proto_dir]).expect("the protos compile");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    fs::write(out.join("descriptors.bin"), set.encode_to_vec()).expect("OUT_DIR is writable");
}
