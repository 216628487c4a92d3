//! The error type of the library. It knows nothing of any transport: `service::status` is the
//! one place where an error becomes a gRPC status. Also [`echo`], the one way a message quotes
//! a string that came from a client (here, a leaf, so that the store's messages use it too).

use std::fmt::Write as _;

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

/// The most bytes of a client's string that an error message quotes (escapes included).
pub(crate) const ECHO_BYTES: usize = 128;

/// `s` quoted (escaped like `{:?}`) for an error message, cut at [`ECHO_BYTES`] on a character
/// boundary and followed by its full length when cut: `"aaaa…" (10485760 bytes)`. A request
/// may carry megabytes in a key, a map key or a policy name; quoted whole, it would come back
/// several times larger in the `grpc-message` header (escapes can multiply a byte by ten).
pub(crate) fn echo(s: &str) -> String {
    let mut out = String::with_capacity(ECHO_BYTES.min(s.len()) + 24);
    out.push('"');
    let mut taken = 0;
    for c in s.chars() {
        let escaped = c.escape_debug();
        if out.len() - 1 + escaped.len() > ECHO_BYTES {
            break;
        }
        out.extend(escaped);
        taken += c.len_utf8();
    }
    out.push('"');
    if taken < s.len() {
        let _ = write!(out, "… ({} bytes)", s.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_quotes_short_strings_whole_and_cuts_long_ones_on_a_char_boundary() {
        assert_eq!(echo("user:42"), "\"user:42\"");
        assert_eq!(echo("a\"b\n"), "\"a\\\"b\\n\"");
        let exact = "k".repeat(ECHO_BYTES);
        assert_eq!(echo(&exact), format!("{exact:?}"));

        let long = "é".repeat(10 << 20);
        let quoted = echo(&long);
        assert!(quoted.len() < ECHO_BYTES + 32, "{quoted}");
        assert!(
            quoted.ends_with(&format!("\"… ({} bytes)", long.len())),
            "{quoted}"
        );
        assert!(quoted.starts_with("\"éé"), "{quoted}");

        // Escapes count against the bound: control characters quote as \u{1}.
        let controls = "\u{1}".repeat(1 << 20);
        let quoted = echo(&controls);
        assert!(quoted.len() < ECHO_BYTES + 32, "{quoted}");
        assert!(
            quoted.ends_with(&format!("({} bytes)", controls.len())),
            "{quoted}"
        );
    }
}
