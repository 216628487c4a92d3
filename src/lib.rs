//! Larder: what small web apps used Redis for — a shared cache, login sessions and rate
//! limiting — as one daemon speaking gRPC, kept in one WAL-mode SQLite file with an in-memory
//! LRU in front.
//!
//! # Layout
//!
//! From the bottom up; a module uses only modules below it, never one at its own level or
//! above, and nothing in the library uses `config` (only the binary does).
//!
//! - Leaves, which use nothing else of the crate (`error` and `clock` aside):
//!   - `error`: [`Error`] and [`Result`]; knows nothing of gRPC.
//!   - `clock`: [`Clock`], the wall clock [`SystemClock`] and the [`ManualClock`] tests use.
//!   - [`limiter`]: the rate-limit algorithms, as pure functions.
//!   - [`pb`]: code generated from `proto/larder/v1/*.proto`, and its descriptor sets.
//! - [`store`]: the storage engine: memory LRU, reader threads, group-commit writer, sweeper.
//! - `service`: the gRPC services (validation, proto ⇄ store; no SQL here), and the one
//!   mapping of an [`Error`] to a gRPC status ([`status_code`]).
//! - `metrics`: Prometheus metrics: the gRPC call layer and the `/metrics` HTTP endpoint.
//! - `server`: [`Server::run`], the one entry point: routes, listeners, admission, auth, TLS,
//!   systemd notification, the ordered stop, and the [`signals`] the daemon stops and
//!   reloads on.
//! - [`config`]: each setting declared once, and from that declaration the flags, the config
//!   file's keys, the `LARDER_*` variables and the docs' table → one validated config.
//!
//! The binary (`src/bin/larder/`) sits on top: the command line, logging, the runtime, and,
//! with the cargo feature `bench`, `larder bench`, the load generator.
//!
//! `tests/suite/layering.rs` reads every file under `src/` and fails on a use of a module at
//! the same level or above.
//!
//! # The public API
//!
//! What the binary and the tests need, and no more: the [`Store`] and its [`StoreConfig`]; a [`Server`] over it with its [`ServerSettings`]
//! (request bounds [`RequestLimits`], [`SessionSettings`], [`RateLimitSettings`],
//! [`AuthSettings`], [`TlsSettings`]) and its [`ServerFiles`]; the [`Listeners`] it accepts
//! on ([`Listeners::reserve`] and [`Reservation::bind`] for a daemon that binds around
//! opening its store, [`bind_unix`], [`bind_metrics`]); the [`signals`] it stops and
//! reloads on; [`Error`], [`Result`] and the [`status_code`] a client sees for an error;
//! the clocks; and the generated [`pb`] code.

mod clock;
pub mod config;
mod error;
pub mod limiter;
mod metrics;
pub mod pb;
mod server;
mod service;
pub mod store;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{Error, Result};
pub use server::auth::AuthSettings;
pub use server::signals;
pub use server::tls::TlsSettings;
pub use server::{
    Listeners, Reservation, Server, ServerFiles, ServerSettings, bind_metrics, bind_unix,
};
pub use service::RequestLimits;
pub use service::ratelimit::RateLimitSettings;
pub use service::session::SessionSettings;
pub use service::status::code as status_code;
pub use store::{Store, StoreConfig};
