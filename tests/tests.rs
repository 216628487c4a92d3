//! Larder's integration suite, one test binary: the real gRPC server on a temporary data
//! directory (TCP port 0 and a Unix socket, a manual clock so that expiry is tested without
//! sleeping), the store API where a property is checked directly, and the built `larder`
//! binary for signals and process-level behaviour.
//!
//! The modules live in `tests/common/` and `tests/suite/` rather than as files directly under
//! `tests/`, which Cargo would build as separate test binaries.

mod common;

mod suite {
    mod auth;
    mod backpressure;
    mod backup;
    mod bench;
    mod binary;
    mod bounds;
    mod bulk;
    mod concurrency;
    mod conditions;
    mod config;
    mod connections;
    mod crash;
    mod disk_bounds;
    mod expiry;
    mod faults;
    mod files;
    mod hostile;
    mod increment;
    mod layering;
    mod metrics;
    mod ops;
    mod persistence;
    mod pipeline;
    mod queue;
    mod ratelimit;
    mod reads;
    mod rpc;
    mod scan;
    mod security;
    mod server;
    mod sessions;
    mod soak;
    mod startup;
    mod validation;
}
