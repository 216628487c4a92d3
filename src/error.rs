//! The error type of the library. It knows nothing of any transport: `service::status` is the
//! one place where an error becomes a gRPC status.

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
    /// A bounded table is full and its rows are not evictable (the sessions table at
    /// `session.max_disk`): nothing was changed; the message says which bound.
    #[error("{0}")]
    ResourceExhausted(String),
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
}
