//! Code generated from `proto/larder/v1/*.proto` (messages, clients and service traits of
//! `larder.v1`), and the encoded descriptor sets that reflection serves and the metrics name
//! methods from.
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
