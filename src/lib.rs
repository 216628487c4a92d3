//! Larder: what small web apps used Redis for — a shared cache, login sessions and rate
//! limiting — as one daemon speaking gRPC, kept in one WAL-mode SQLite file with an in-memory
//! LRU in front.
//!
//! # Layout
//! - [`config`]: the command line and environment → one validated config.
//! - [`server`]: binds TCP and Unix listeners, serves every gRPC service, ordered shutdown;
//!   bearer-token auth ([`server::auth`]) and TLS ([`server::tls`]).
//! - [`shutdown`]: SIGTERM/SIGINT as a future, SIGHUP as a stream of reloads.
//! - [`metrics`]: Prometheus metrics: the gRPC call layer and the `/metrics` HTTP endpoint.
//! - [`service`]: the gRPC services (validation, proto ⇄ store); no SQL here.
//! - [`store`]: the storage engine: memory LRU, reader pool, group-commit writer, sweeper.
//! - [`ratelimit`]: the rate-limit algorithms, as pure functions.
//! - [`clock`]: wall clock and the manual clock tests use.
//! - [`error`]: the error type and its one mapping to gRPC statuses.
//! - [`pb`]: code generated from `proto/larder/v1/*.proto`.

pub mod clock;
pub mod config;
pub mod error;
pub mod metrics;
pub mod ratelimit;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod store;

/// Generated protobuf and gRPC code for `larder.v1`, and its descriptor set for reflection.
pub mod pb {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("larder.v1");

    /// The encoded `FileDescriptorSet` of every `larder.v1` proto file.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("larder_descriptor");

    /// Every service the daemon serves, as encoded descriptor sets: what reflection describes
    /// and what the metrics name methods from, so that the two cannot disagree.
    pub const DESCRIPTOR_SETS: [&[u8]; 4] = [
        FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ];
}
