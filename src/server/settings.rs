//! [`ServerSettings`]: how the server behaves beyond the store, and the one place its defaults
//! are written.

use std::time::Duration;

use super::admission::{AUTH_TIMEOUT, HANDSHAKE_TIMEOUT};
use super::auth::AuthSettings;
use super::tls::TlsSettings;
use crate::service::RequestLimits;
use crate::service::ratelimit::RateLimitSettings;
use crate::service::session::SessionSettings;

/// How the server behaves, beyond the store.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Bounds every request is checked against.
    pub limits: RequestLimits,
    /// Session defaults and bounds.
    pub sessions: SessionSettings,
    /// Named rate-limit policies.
    pub ratelimit: RateLimitSettings,
    /// How long in-flight calls may run after shutdown starts before they are cut.
    pub drain_timeout: Duration,
    /// Longest a call may run (a client's shorter `grpc-timeout` wins); past it the handler
    /// is dropped and the call answers `CANCELLED` (tonic's code for a server-side timeout).
    pub request_timeout: Duration,
    /// Most calls in progress at once over all connections; more answer `UNAVAILABLE` at
    /// once instead of queueing.
    pub max_concurrent_requests: usize,
    /// Most open client connections over all listeners; more are closed on accept.
    pub max_connections: usize,
    /// How long a new connection may take to send the HTTP/2 preface before it is closed
    /// (over TLS, to finish the TLS handshake and then send it).
    pub handshake_timeout: Duration,
    /// Most bytes of requests and responses held in memory at once over all connections (a
    /// response until it has been written to the socket); past it calls answer
    /// `UNAVAILABLE`. At least one maximal message ([`RequestLimits::max_message_bytes`]).
    pub max_inflight_bytes: u64,
    /// How long a connection's writes may make no progress (the client does not read) before
    /// the connection is closed, returning what it held to the in-flight budget.
    pub write_timeout: Duration,
    /// How long a new connection may go without starting a call that passed authentication
    /// and is not health before it is closed.
    pub auth_timeout: Duration,
    /// Age at which a connection is sent GOAWAY (clients reconnect for their next calls).
    pub max_connection_age: Duration,
    /// How long calls may go on after GOAWAY before the connection is closed.
    pub max_connection_age_grace: Duration,
    /// Most open TCP connections from one peer address (IPv6: one /64); Unix socket
    /// connections are not counted.
    pub max_connections_per_peer: usize,
    /// Most health Watch streams open at once over all connections; more answer
    /// `RESOURCE_EXHAUSTED`.
    pub max_health_watches: usize,
    /// Most calls of one PipelineService/Run stream in flight at once; past it the stream is
    /// not read until an answer has been sent.
    pub max_pipeline_inflight: usize,
    /// Bearer-token authentication, if on.
    pub auth: Option<AuthSettings>,
    /// TLS on the TCP listener, if on.
    pub tls: Option<TlsSettings>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            limits: RequestLimits::default(),
            sessions: SessionSettings::default(),
            ratelimit: RateLimitSettings::default(),
            drain_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_concurrent_requests: 1024,
            max_connections: 512,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            // A quarter of a 1 GiB machine: about 15 maximal (17 MiB) answers at once, or
            // thousands of ordinary ones, beside the LRU's 256 MiB and SQLite's page cache.
            max_inflight_bytes: 256 << 20,
            // As long as a call may run: a client that reads nothing for that long is gone.
            write_timeout: Duration::from_secs(30),
            auth_timeout: AUTH_TIMEOUT,
            // Long enough that reconnecting costs nothing measurable; short enough that a
            // connection does not pin a place (or a stale DNS answer) for days.
            max_connection_age: Duration::from_secs(3600),
            // As long as the longest call (request_timeout), so that a call started just
            // before GOAWAY can finish.
            max_connection_age_grace: Duration::from_secs(30),
            // A quarter of max_connections: an app host's workers need a few each.
            max_connections_per_peer: 128,
            // Health Watch is for a few load balancers or supervisors, not per client.
            max_health_watches: 64,
            // Four times the 64 callers a busy app process multiplexes on one connection, so
            // they never wait on the bound, and enough writes at once to fill a commit;
            // small enough that one stream holds a bounded share of the in-flight byte
            // budget (256 ordinary answers are a few hundred kilobytes).
            max_pipeline_inflight: 256,
            auth: None,
            tls: None,
        }
    }
}
