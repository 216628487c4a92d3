//! Bearer-token authentication: the token file (read at start, read again on SIGHUP so that
//! tokens rotate without a restart) and the tower layer that checks every call but
//! `grpc.health.v1.Health`'s before any handler runs.
//!
//! Tokens are kept only as SHA-256 digests. A presented token is hashed and compared with
//! every configured digest in constant time, with no early exit, so neither the answer's
//! timing nor its message tells how close a guess came or which token matched. No token is
//! ever written to a log or an error message: errors name the file and the line.

use std::fmt;
use std::future::{Ready, ready};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};

use http::{HeaderMap, Request, Response};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};
use tokio_util::either::Either;
use tonic::Status;
use tower::{Layer, Service};

/// Bearer-token authentication: where the tokens are, and whether the Unix socket needs one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSettings {
    /// File of tokens, one per line.
    pub token_file: PathBuf,
    /// Whether calls over the Unix socket need a token too.
    pub unix_socket: bool,
}

/// Shortest token accepted, in bytes. `openssl rand -base64 32` makes 44.
pub(crate) const MIN_TOKEN_BYTES: usize = 16;

/// Calls to this service need no token, so that load balancers and supervisors can probe.
const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";

/// Why the token file cannot be used. Each message names the file (and the line), never a
/// token.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TokenFileError {
    /// The file cannot be read.
    #[error("auth.token_file {}: cannot read it: {error}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What reading it said.
        error: std::io::Error,
    },
    /// Only blank lines and comments.
    #[error(
        "auth.token_file {}: holds no token (one token per line; blank lines and lines \
         starting with # are ignored)",
        path.display()
    )]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// A line that is not a usable token.
    #[error("auth.token_file {}, line {line}: {problem}", path.display())]
    BadToken {
        /// The file.
        path: PathBuf,
        /// The line, counted from 1.
        line: usize,
        /// What is wrong with it.
        problem: TokenProblem,
    },
}

/// What is wrong with one line of the token file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TokenProblem {
    /// Fewer than [`MIN_TOKEN_BYTES`] bytes.
    #[error(
        "the token is {0} bytes; a token needs at least {MIN_TOKEN_BYTES} \
         (make one with: openssl rand -base64 32)"
    )]
    TooShort(usize),
    /// Whitespace inside it, a control character or a byte outside printable ASCII, which a
    /// client could not send as gRPC metadata.
    #[error("a token may hold only printable ASCII characters, without spaces")]
    BadCharacter,
}

/// The digests of the tokens in one reading of the file.
struct TokenSet {
    /// SHA-256 of each distinct token.
    digests: Vec<[u8; 32]>,
}

impl TokenSet {
    /// Reads and checks the token file.
    fn read(path: &Path) -> Result<Self, TokenFileError> {
        let text = std::fs::read(path).map_err(|error| TokenFileError::Unreadable {
            path: path.to_owned(),
            error,
        })?;
        let mut digests = Vec::new();
        for (index, line) in text.split(|b| *b == b'\n').enumerate() {
            let token = line.trim_ascii();
            if token.is_empty() || token.starts_with(b"#") {
                continue;
            }
            let bad = |problem| TokenFileError::BadToken {
                path: path.to_owned(),
                line: index + 1,
                problem,
            };
            if !token.iter().all(u8::is_ascii_graphic) {
                return Err(bad(TokenProblem::BadCharacter));
            }
            if token.len() < MIN_TOKEN_BYTES {
                return Err(bad(TokenProblem::TooShort(token.len())));
            }
            let digest: [u8; 32] = Sha256::digest(token).into();
            if !digests.contains(&digest) {
                digests.push(digest);
            }
        }
        if digests.is_empty() {
            return Err(TokenFileError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(Self { digests })
    }

    /// Whether `token` is one of the set. Every digest is compared, in constant time.
    fn contains(&self, token: &[u8]) -> bool {
        let presented: [u8; 32] = Sha256::digest(token).into();
        let mut found = Choice::from(0);
        for digest in &self.digests {
            found |= digest.as_slice().ct_eq(presented.as_slice());
        }
        found.into()
    }
}

/// The loaded tokens and where they come from; a cheap `Clone` handle shared by the layers of
/// every listener, so a reload reaches all of them at once.
#[derive(Clone)]
pub(crate) struct Authenticator {
    shared: Arc<Shared>,
}

struct Shared {
    /// The token file.
    path: PathBuf,
    /// Whether calls over the Unix socket need a token too.
    unix_socket: bool,
    /// The tokens of the last good reading. A std lock: it is held only to compare digests
    /// or to swap in a new set, never across an `.await`.
    tokens: RwLock<TokenSet>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("token_file", &self.shared.path)
            .field("unix_socket", &self.shared.unix_socket)
            .field("tokens", &self.token_count())
            .finish()
    }
}

impl Authenticator {
    /// Reads the token file of `config`.
    pub(crate) fn load(config: &AuthSettings) -> Result<Self, TokenFileError> {
        let tokens = TokenSet::read(&config.token_file)?;
        warn_if_world_readable(&config.token_file);
        Ok(Self {
            shared: Arc::new(Shared {
                path: config.token_file.clone(),
                unix_socket: config.unix_socket,
                tokens: RwLock::new(tokens),
            }),
        })
    }

    /// The token file.
    pub(crate) fn token_file(&self) -> &Path {
        &self.shared.path
    }

    /// Whether calls over the Unix socket need a token too.
    pub(crate) fn unix_socket(&self) -> bool {
        self.shared.unix_socket
    }

    /// How many distinct tokens are accepted.
    pub(crate) fn token_count(&self) -> usize {
        self.tokens().digests.len()
    }

    /// Reads the token file again and, if it is good, accepts its tokens from now on (calls
    /// already admitted are not affected). A file that cannot be used leaves the tokens as
    /// they were and is reported.
    pub(crate) fn reload(&self) -> Result<usize, TokenFileError> {
        let fresh = TokenSet::read(&self.shared.path)?;
        let count = fresh.digests.len();
        *self
            .shared
            .tokens
            .write()
            .unwrap_or_else(PoisonError::into_inner) = fresh;
        Ok(count)
    }

    fn tokens(&self) -> std::sync::RwLockReadGuard<'_, TokenSet> {
        // Nothing panics while holding the lock, so a poisoned one still holds a whole set.
        self.shared
            .tokens
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Checks the `authorization: Bearer <token>` header of a call.
    pub(crate) fn check(&self, headers: &HeaderMap) -> Result<(), Status> {
        let Some(token) = bearer_token(headers) else {
            return Err(Status::unauthenticated("missing bearer token"));
        };
        if self.tokens().contains(token) {
            Ok(())
        } else {
            Err(Status::unauthenticated("invalid bearer token"))
        }
    }
}

/// The token of the first `authorization` header, if it uses the Bearer scheme (the scheme's
/// name is case-insensitive, as in RFC 7235).
fn bearer_token(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(http::header::AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || !rest.starts_with(b" ") {
        return None;
    }
    Some(rest.trim_ascii()).filter(|t| !t.is_empty())
}

/// Logs a warning when users other than the file's owner and group may read the token file.
fn warn_if_world_readable(path: &Path) {
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o004 != 0
    {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{:04o}", meta.permissions().mode() & 0o7777),
            "the auth token file is readable by every user; chmod 0640 it"
        );
    }
}

/// Which listener a layer guards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// The TCP listener: always needs a token when auth is on.
    Tcp,
    /// The Unix socket: needs one unless `auth.unix_socket` is false.
    Unix,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Unix => "unix",
        }
    }
}

/// The tower layer that answers `UNAUTHENTICATED` to a call without a good token, before it
/// reaches any service. One per listener.
#[derive(Debug, Clone)]
pub(crate) struct AuthLayer {
    /// `None`: every call passes (auth is off, or not needed on this listener).
    auth: Option<Authenticator>,
    transport: Transport,
}

impl AuthLayer {
    /// The layer for `transport` under `auth` (`None` = auth off).
    pub(crate) fn new(auth: Option<&Authenticator>, transport: Transport) -> Self {
        let auth = auth
            .filter(|a| transport == Transport::Tcp || a.shared.unix_socket)
            .cloned();
        Self { auth, transport }
    }

    /// Whether calls through this layer need a token.
    #[cfg(test)]
    pub(crate) fn requires_token(&self) -> bool {
        self.auth.is_some()
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = RequireToken<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireToken {
            inner,
            auth: self.auth.clone(),
            transport: self.transport,
        }
    }
}

/// The service [`AuthLayer`] wraps around the routes.
#[derive(Debug, Clone)]
pub(crate) struct RequireToken<S> {
    inner: S,
    auth: Option<Authenticator>,
    transport: Transport,
}

impl<S, B, ResBody> Service<Request<B>> for RequireToken<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Either<Ready<Result<Self::Response, Self::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if let Some(auth) = &self.auth
            && !request.uri().path().starts_with(HEALTH_PREFIX)
            && let Err(status) = auth.check(request.headers())
        {
            tracing::debug!(
                method = request.uri().path(),
                transport = self.transport.name(),
                reason = status.message(),
                "call refused"
            );
            return Either::Left(ready(Ok(status.into_http())));
        }
        Either::Right(self.inner.call(request))
    }
}

/// Reads `auth`'s token file again (on SIGHUP, in the daemon), on a blocking thread. A
/// failed reload keeps the tokens loaded before and logs why.
pub(crate) async fn reload(auth: &Authenticator) {
    // Reading a file may block (a slow or network file system): not on a runtime thread.
    let reloading = auth.clone();
    let reloaded = tokio::task::spawn_blocking(move || reloading.reload()).await;
    match reloaded {
        Err(e) => tracing::error!(error = %e, "the token file reload task failed"),
        Ok(Ok(count)) => tracing::info!(
            path = %auth.token_file().display(),
            tokens = count,
            "reloaded the auth token file"
        ),
        Ok(Err(e)) => tracing::error!(
            error = %e,
            tokens = auth.token_count(),
            "reloading the auth token file failed; keeping the tokens loaded before"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many distinct tokens the file at `path` holds, or why it cannot be used.
    fn count_tokens(path: &Path) -> Result<usize, TokenFileError> {
        TokenSet::read(path).map(|set| set.digests.len())
    }

    const GOOD: &str = "0123456789abcdef0123";
    const OTHER: &str = "ZYXWVUTSRQPONMLKJIHG";

    fn file(text: &[u8]) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    fn auth(text: &str) -> (tempfile::NamedTempFile, Authenticator) {
        let f = file(text.as_bytes());
        let a = Authenticator::load(&AuthSettings {
            token_file: f.path().to_owned(),
            unix_socket: true,
        })
        .unwrap();
        (f, a)
    }

    #[test]
    fn tokens_are_read_one_per_line_around_comments_and_blanks() {
        let text = format!("# rotated 2024-05\n\n  {GOOD}  \r\n\t{OTHER}\n{GOOD}\n#{OTHER}x\n");
        let f = file(text.as_bytes());
        assert_eq!(count_tokens(f.path()).unwrap(), 2, "duplicates count once");
        let set = TokenSet::read(f.path()).unwrap();
        assert!(set.contains(GOOD.as_bytes()));
        assert!(set.contains(OTHER.as_bytes()));
        assert!(!set.contains(b"0123456789abcdef012"));
        assert!(!set.contains(format!("{OTHER}x").as_bytes()));
    }

    #[test]
    fn bad_lines_are_named_without_the_token() {
        let secret_short = "tooShort1";
        let cases: [(String, usize, TokenProblem); 4] = [
            (
                format!("{GOOD}\n# c\n{secret_short}\n"),
                3,
                TokenProblem::TooShort(9),
            ),
            (format!("{GOOD} {OTHER}\n"), 1, TokenProblem::BadCharacter),
            (format!("\n{GOOD}\u{7}x\n"), 2, TokenProblem::BadCharacter),
            (format!("{GOOD}é\n"), 1, TokenProblem::BadCharacter),
        ];
        for (text, line, problem) in cases {
            let f = file(text.as_bytes());
            let err = count_tokens(f.path()).unwrap_err();
            match &err {
                TokenFileError::BadToken {
                    line: l,
                    problem: p,
                    ..
                } => assert_eq!((*l, *p), (line, problem), "{text:?}"),
                other => panic!("{text:?} gave {other:?}"),
            }
            let msg = err.to_string();
            assert!(msg.contains(&f.path().display().to_string()), "{msg}");
            assert!(msg.contains(&format!("line {line}")), "{msg}");
            for secret in [GOOD, OTHER, secret_short] {
                assert!(!msg.contains(secret), "{msg}");
            }
        }
    }

    #[test]
    fn a_file_without_tokens_or_unreadable_is_an_error() {
        for text in ["", "\n\n", "# only a comment\n   # another\n"] {
            let f = file(text.as_bytes());
            assert!(
                matches!(count_tokens(f.path()), Err(TokenFileError::Empty { .. })),
                "{text:?}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("tokens");
        let err = count_tokens(&missing).unwrap_err();
        assert!(matches!(err, TokenFileError::Unreadable { .. }), "{err:?}");
        assert!(err.to_string().contains(&missing.display().to_string()));
    }

    #[test]
    fn the_bearer_header_is_checked() {
        let (_f, a) = auth(&format!("{GOOD}\n{OTHER}\n"));
        assert!(a.check(&headers(&format!("Bearer {GOOD}"))).is_ok());
        assert!(a.check(&headers(&format!("bearer  {OTHER}"))).is_ok());
        let missing = a.check(&HeaderMap::new()).unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
        assert_eq!(missing.message(), "missing bearer token");
        for value in ["Basic abc", "Bearer", "Bearer ", "Bearerx", GOOD] {
            let s = a.check(&headers(value)).unwrap_err();
            assert_eq!(s.message(), "missing bearer token", "{value:?}");
        }
        let wrong = a.check(&headers(&format!("Bearer {GOOD}x"))).unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        assert_eq!(wrong.message(), "invalid bearer token");
    }

    #[test]
    fn a_reload_takes_new_tokens_and_a_bad_one_keeps_the_old() {
        let (f, a) = auth(GOOD);
        std::fs::write(f.path(), OTHER).unwrap();
        assert_eq!(a.reload().unwrap(), 1);
        assert!(a.check(&headers(&format!("Bearer {OTHER}"))).is_ok());
        assert!(a.check(&headers(&format!("Bearer {GOOD}"))).is_err());

        std::fs::write(f.path(), "# emptied by mistake\n").unwrap();
        assert!(matches!(a.reload(), Err(TokenFileError::Empty { .. })));
        assert!(a.check(&headers(&format!("Bearer {OTHER}"))).is_ok());
        assert_eq!(a.token_count(), 1);
    }

    #[test]
    fn debug_output_shows_the_file_and_count_only() {
        let (f, a) = auth(GOOD);
        assert_eq!(
            format!("{a:?}"),
            format!(
                "Authenticator {{ token_file: {:?}, unix_socket: true, tokens: 1 }}",
                f.path()
            )
        );
    }

    #[test]
    fn the_unix_socket_can_be_left_to_its_file_mode() {
        let (f, a) = auth(GOOD);
        assert!(AuthLayer::new(Some(&a), Transport::Unix).requires_token());
        let lax = Authenticator::load(&AuthSettings {
            token_file: f.path().to_owned(),
            unix_socket: false,
        })
        .unwrap();
        assert!(AuthLayer::new(Some(&lax), Transport::Tcp).requires_token());
        assert!(!AuthLayer::new(Some(&lax), Transport::Unix).requires_token());
        assert!(!AuthLayer::new(None, Transport::Tcp).requires_token());
    }
}
