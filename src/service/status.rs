//! The one place where an [`Error`] becomes a gRPC status: the code each error is answered
//! with, and the short, safe message the client gets. Storage details go to the log only.
//!
//! Messages quote a client's strings only through [`crate::error::echo`] (at most 128 bytes
//! each), and every message is cut at [`MAX_MESSAGE_BYTES`] here as well: the message travels
//! in the `grpc-message` header, and a request of megabytes must not come back as one.

use tonic::{Code, Status};

use crate::error::Error;

/// The longest message a client gets, in bytes: room for a field name, two quoted strings and
/// the explanation of any error Larder sends.
pub(crate) const MAX_MESSAGE_BYTES: usize = 1024;

/// `msg` cut at [`MAX_MESSAGE_BYTES`] on a character boundary, with an ellipsis when cut.
fn capped(mut msg: String) -> String {
    if msg.len() > MAX_MESSAGE_BYTES {
        let mut end = MAX_MESSAGE_BYTES - '…'.len_utf8();
        while !msg.is_char_boundary(end) {
            end -= 1;
        }
        msg.truncate(end);
        msg.push('…');
    }
    msg
}

/// The gRPC code `err` is answered with.
pub fn code(err: &Error) -> Code {
    match err {
        Error::InvalidArgument { .. } => Code::InvalidArgument,
        Error::FailedPrecondition(_) => Code::FailedPrecondition,
        Error::Unavailable(_) => Code::Unavailable,
        Error::ResourceExhausted(_) => Code::ResourceExhausted,
        Error::Storage { source, .. } => storage_code(source),
        Error::Setup(_) | Error::Internal(_) => Code::Internal,
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
        let code = code(&err);
        match code {
            Code::InvalidArgument | Code::FailedPrecondition => {
                Status::new(code, capped(err.to_string()))
            }
            Code::ResourceExhausted => {
                tracing::warn!(error = %err, "storage full");
                match err {
                    // A bound of Larder's own: its message names the setting, no path.
                    Error::ResourceExhausted(msg) => Status::new(code, msg),
                    _ => Status::new(code, "storage is full"),
                }
            }
            Code::Unavailable => {
                tracing::warn!(error = %err, "request not served");
                match err {
                    Error::Unavailable(msg) => Status::new(code, capped(msg)),
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
    fn a_message_is_cut_on_a_char_boundary() {
        let status = Status::from(Error::invalid("key", "é".repeat(10_000)));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().len() <= MAX_MESSAGE_BYTES,
            "{}",
            status.message().len()
        );
        assert!(status.message().starts_with("key: éé"));
        assert!(status.message().ends_with('…'));
        let short = Status::from(Error::invalid("key", "must not be empty"));
        assert_eq!(short.message(), "key: must not be empty");
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
