//! The error type of the library, and the one place where errors become gRPC statuses.
//!
//! Clients get a short, safe message; storage details go to the log only.

use tonic::{Code, Status};

/// Everything that can go wrong serving a request or running the daemon.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed or over a limit; nothing was changed.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The request field at fault, as named in the .proto (e.g. `entries[3].key`).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The stored state does not allow the operation (e.g. Increment on a non-integer).
    #[error("{0}")]
    FailedPrecondition(String),
    /// Busy or shutting down: the caller may retry elsewhere or later.
    #[error("{0}")]
    Unavailable(String),
    /// SQLite failed; the context says what Larder was doing.
    #[error("storage error while {context}: {source}")]
    Storage {
        /// What was being done ("committing a write batch").
        context: &'static str,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// A path, file or address the operator gave cannot be used (a data directory that is not
    /// writable, a database that is corrupt, foreign or too new, a port in use, a backup
    /// destination that exists): reported at start-up or by `larder backup`, with the message
    /// saying which and what to do.
    #[error("{0}")]
    Setup(String),
    /// A bug or an unexpected state; details are logged, not sent.
    #[error("internal error: {0}")]
    Internal(String),
    /// The auth token file cannot be used (at start-up; never sent to a client).
    #[error(transparent)]
    TokenFile(#[from] crate::server::auth::TokenFileError),
    /// The TLS certificate or key cannot be used (at start-up; never sent to a client).
    #[error(transparent)]
    Tls(#[from] crate::server::tls::TlsError),
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An `INVALID_ARGUMENT` naming `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Wraps a SQLite error with what was being done.
    pub fn storage(context: &'static str) -> impl FnOnce(rusqlite::Error) -> Self {
        move |source| Error::Storage { context, source }
    }

    /// The gRPC code this error is answered with.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument { .. } => Code::InvalidArgument,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Storage { source, .. } => storage_code(source),
            Error::Setup(_) | Error::Internal(_) | Error::TokenFile(_) | Error::Tls(_) => {
                Code::Internal
            }
        }
    }
}

/// How a SQLite failure looks to a client. Disk full is `RESOURCE_EXHAUSTED`; a busy, read-only
/// or unreachable database is `UNAVAILABLE` so that callers (and Envoy) apply their failure
/// mode instead of treating it as a bug; everything else is `INTERNAL`.
fn storage_code(err: &rusqlite::Error) -> Code {
    use rusqlite::ErrorCode as E;
    match err.sqlite_error_code() {
        Some(E::DiskFull) => Code::ResourceExhausted,
        Some(
            E::DatabaseBusy
            | E::DatabaseLocked
            | E::ReadOnly
            | E::CannotOpen
            | E::SystemIoFailure
            | E::NoLargeFileSupport,
        ) => Code::Unavailable,
        _ => Code::Internal,
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        let code = err.code();
        match code {
            Code::InvalidArgument | Code::FailedPrecondition => Status::new(code, err.to_string()),
            Code::ResourceExhausted => {
                tracing::warn!(error = %err, "storage full");
                Status::new(code, "storage is full")
            }
            Code::Unavailable => {
                tracing::warn!(error = %err, "request not served");
                match err {
                    Error::Unavailable(msg) => Status::new(code, msg),
                    _ => Status::new(code, "storage unavailable"),
                }
            }
            _ => {
                tracing::error!(error = %err, "internal error");
                Status::new(Code::Internal, "internal error (see the server log)")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite_error(code: i32) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None)
    }

    #[test]
    fn invalid_argument_names_the_field() {
        let status = Status::from(Error::invalid("entries[2].key", "must not be empty"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "entries[2].key: must not be empty");
    }

    #[test]
    fn storage_errors_map_to_failure_modes() {
        let full = Error::storage("committing")(sqlite_error(rusqlite::ffi::SQLITE_FULL));
        assert_eq!(Status::from(full).code(), Code::ResourceExhausted);
        let busy = Error::storage("committing")(sqlite_error(rusqlite::ffi::SQLITE_BUSY));
        assert_eq!(Status::from(busy).code(), Code::Unavailable);
        let corrupt = Error::storage("reading")(sqlite_error(rusqlite::ffi::SQLITE_CORRUPT));
        let status = Status::from(corrupt);
        assert_eq!(status.code(), Code::Internal);
        assert!(
            !status.message().contains("malformed"),
            "details stay in the log"
        );
    }
}
