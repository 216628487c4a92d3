//! Bearer-token authentication: the token file (read at start, read again on SIGHUP so that
//! tokens rotate without a restart) and the tower layer that checks every call but
//! `grpc.health.v1.Health`'s before any handler runs.
//!
//! Each line of the file is a token, optionally followed by scope words (see
//! [`Scope::parse`]): which services it may call, whether it may only read, and the prefix
//! its cache namespaces must start with. The layer refuses a call outside the token's
//! services or a write under `read_only` (`PERMISSION_DENIED`) before the request is
//! decoded, and puts a namespace-limited scope into the request's extensions for the cache
//! service to check once decoded (`service::scope::Scoped`); a PipelineService stream gets
//! any restricting scope there, since each call on it is checked by its own path
//! (`service::pipeline`).
//!
//! Tokens are kept only as SHA-256 digests. A presented token is hashed and compared with
//! every configured digest in constant time, with no early exit, and its scope is picked by
//! a constant-time select, so neither the answer's timing nor its message tells how close a
//! guess came or which token matched. No token is ever written to a log or an error message:
//! errors name the file and the line.
//!
//! A reload that finds a file holding no token revokes every token (the emergency stop: every
//! call but health is refused until tokens are added back and the file read again); a file
//! that cannot be read or has a bad line keeps the tokens loaded before. Refused calls are
//! counted by reason ([`AuthRefusals`]) and logged at warn, at most one line per reason per
//! few seconds ([`Throttled`]), with the peer's address.

use std::fmt;
use std::future::{Future, Ready, ready};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};

use http::{Extensions, HeaderMap, Request, Response};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};
use tokio_util::either::Either;
use tonic::Status;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

use super::throttle::Throttled;
use crate::metrics::auth::AuthRefusals;
use crate::service::pipeline::Credentials;
use crate::service::scope::{PIPELINE_PREFIX, Refusal, Scope, ScopeProblem};

/// Bearer-token authentication: where the tokens are, and whether the Unix socket needs one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSettings {
    /// File of tokens, one per line, each optionally followed by scope words.
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
    /// Only blank lines and comments (refused at start; on reload it revokes every token).
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
    /// The scope words after the token.
    #[error(transparent)]
    Scope(#[from] ScopeProblem),
    /// The token of an earlier line again, with another scope: which one would apply is
    /// ambiguous.
    #[error("the token of line {0} again, with another scope")]
    Conflict(usize),
}

/// The digests of the tokens in one reading of the file, with their scopes.
struct TokenSet {
    /// SHA-256 of each distinct token, and what it may do.
    tokens: Vec<([u8; 32], Scope)>,
}

impl TokenSet {
    /// Reads and checks the token file. A file holding no token gives an empty set.
    fn read(path: &Path) -> Result<Self, TokenFileError> {
        let text = std::fs::read(path).map_err(|error| TokenFileError::Unreadable {
            path: path.to_owned(),
            error,
        })?;
        let mut tokens: Vec<([u8; 32], Scope)> = Vec::new();
        // The line each token was first read from, to name it in a conflict.
        let mut lines = Vec::new();
        for (index, line) in text.split(|b| *b == b'\n').enumerate() {
            let words: Vec<&[u8]> = line
                .split(u8::is_ascii_whitespace)
                .filter(|w| !w.is_empty())
                // A word starting with # after the token starts a comment.
                .enumerate()
                .take_while(|(i, w)| *i == 0 || !w.starts_with(b"#"))
                .map(|(_, w)| w)
                .collect();
            let mut words = words.into_iter();
            let Some(token) = words.next().filter(|t| !t.starts_with(b"#")) else {
                continue;
            };
            let bad = |problem| TokenFileError::BadToken {
                path: path.to_owned(),
                line: index + 1,
                problem,
            };
            // The token and its scope words, not a trailing comment, which may say anything
            // ("# José's laptop").
            if !words
                .as_slice()
                .iter()
                .chain([&token])
                .all(|w| w.iter().all(u8::is_ascii_graphic))
            {
                return Err(bad(TokenProblem::BadCharacter));
            }
            if token.len() < MIN_TOKEN_BYTES {
                return Err(bad(TokenProblem::TooShort(token.len())));
            }
            let scope = Scope::parse(words).map_err(|e| bad(e.into()))?;
            let digest: [u8; 32] = Sha256::digest(token).into();
            match tokens.iter().position(|(d, _)| *d == digest) {
                None => {
                    tokens.push((digest, scope));
                    lines.push(index + 1);
                }
                Some(i) if tokens[i].1 == scope => {}
                Some(i) => return Err(bad(TokenProblem::Conflict(lines[i]))),
            }
        }
        Ok(Self { tokens })
    }

    /// The scope of `token` if it is one of the set. Every digest is compared, in constant
    /// time, and the matching index is picked by a constant-time select.
    fn find(&self, token: &[u8]) -> Option<&Scope> {
        let presented: [u8; 32] = Sha256::digest(token).into();
        let mut found = Choice::from(0);
        let mut index = 0u64;
        for (i, (digest, _)) in self.tokens.iter().enumerate() {
            let same = digest.as_slice().ct_eq(presented.as_slice());
            index.conditional_assign(&(i as u64), same);
            found |= same;
        }
        bool::from(found).then(|| &self.tokens[index as usize].1)
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
    /// Counts the readings swapped in, so that an open Run stream sees cheaply that its
    /// token must be checked again.
    generation: AtomicU64,
    /// Refused calls, by reason.
    refusals: AuthRefusals,
    /// One throttled warning per reason, in the order of [`Refused::REASONS`].
    warnings: [Throttled; 5],
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
        // At start an empty file is taken for a mistake (a daemon that answers nothing is
        // better found at once); on reload it is the way to revoke every token.
        if tokens.tokens.is_empty() {
            return Err(TokenFileError::Empty {
                path: config.token_file.clone(),
            });
        }
        warn_if_world_readable(&config.token_file);
        Ok(Self {
            shared: Arc::new(Shared {
                path: config.token_file.clone(),
                unix_socket: config.unix_socket,
                tokens: RwLock::new(tokens),
                generation: AtomicU64::new(0),
                refusals: AuthRefusals::default(),
                warnings: Refused::REASONS.map(|_| Throttled::new("call refused")),
            }),
        })
    }

    /// The count of refused calls, by reason (for the metrics endpoint).
    pub(crate) fn refusals(&self) -> AuthRefusals {
        self.shared.refusals.clone()
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
        self.tokens().tokens.len()
    }

    /// Reads the token file again and, if it is good, accepts its tokens from now on (calls
    /// already admitted are not affected). A file holding no token is good: it revokes every
    /// token. A file that cannot be read or has a bad line leaves the tokens as they were and
    /// is reported.
    pub(crate) fn reload(&self) -> Result<usize, TokenFileError> {
        let fresh = TokenSet::read(&self.shared.path)?;
        let count = fresh.tokens.len();
        *self
            .shared
            .tokens
            .write()
            .unwrap_or_else(PoisonError::into_inner) = fresh;
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
        Ok(count)
    }

    fn tokens(&self) -> std::sync::RwLockReadGuard<'_, TokenSet> {
        // Nothing panics while holding the lock, so a poisoned one still holds a whole set.
        self.shared
            .tokens
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Checks the `authorization: Bearer <token>` header of a call to `path`, and the path
    /// against the token's scope; gives the scope.
    pub(crate) fn check(&self, headers: &HeaderMap, path: &str) -> Result<Scope, Refused> {
        let Some(token) = bearer_token(headers) else {
            return Err(Refused::Missing);
        };
        self.check_token(token, path)
    }

    /// Checks `token` and `path` against the token's scope; gives the scope.
    fn check_token(&self, token: &[u8], path: &str) -> Result<Scope, Refused> {
        let scope = self.tokens().find(token).cloned().ok_or(Refused::Invalid)?;
        scope.admits(path).map_err(Refused::Scope)?;
        Ok(scope)
    }

    /// Counts a refused call and logs it at warn, at most one line per reason per few
    /// seconds, with the count since the last line. Names the peer and the method, never
    /// the token.
    fn refused(&self, refused: &Refused, call: &CallInfo) {
        let reason = refused.reason();
        self.shared.refusals.count(reason);
        let kind = Refused::REASONS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        if let Some(count) = self.shared.warnings[kind].tick() {
            tracing::warn!(
                peer = %call.peer,
                method = %call.method,
                transport = call.transport.name(),
                reason,
                refused = count,
                "call refused: {}",
                refused.message()
            );
        }
    }
}

/// Why the auth layer refused a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refused {
    /// No `authorization: Bearer` header.
    Missing,
    /// A token that is not in the file.
    Invalid,
    /// A token whose scope does not cover the call.
    Scope(Refusal),
}

impl Refused {
    /// Every reason, as counted and logged.
    const REASONS: [&'static str; 5] = ["missing", "invalid", "service", "read_only", "namespace"];

    /// The label of this refusal in logs and metrics.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Refused::Missing => "missing",
            Refused::Invalid => "invalid",
            Refused::Scope(r) => r.reason(),
        }
    }

    /// What the client is told.
    fn message(&self) -> String {
        match self {
            Refused::Missing => "missing bearer token".to_owned(),
            Refused::Invalid => "invalid bearer token".to_owned(),
            Refused::Scope(r) => r.to_string(),
        }
    }

    /// The status the client gets: `UNAUTHENTICATED` without a good token,
    /// `PERMISSION_DENIED` outside its scope.
    pub(crate) fn status(&self) -> Status {
        match self {
            Refused::Missing | Refused::Invalid => Status::unauthenticated(self.message()),
            Refused::Scope(r) => r.clone().into(),
        }
    }
}

/// Who made a call, for the log line of a refusal.
struct CallInfo {
    peer: String,
    method: String,
    transport: Transport,
}

impl CallInfo {
    fn of(extensions: &Extensions, method: &str, transport: Transport) -> Self {
        let tcp = extensions.get::<TcpConnectInfo>().or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .map(TlsConnectInfo::get_ref)
        });
        let peer = match tcp.and_then(TcpConnectInfo::remote_addr) {
            Some(addr) => addr.to_string(),
            None => transport.name().to_owned(),
        };
        // The path is bounded by what hyper accepts in a request line; a log line takes at
        // most the first 128 bytes of it.
        let method = method.chars().take(128).collect();
        Self {
            peer,
            method,
            transport,
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
    type Future = Either<Ready<Result<Self::Response, Self::Error>>, NamespaceWatch<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let Some(auth) = &self.auth else {
            return Either::Right(NamespaceWatch::off(self.inner.call(request)));
        };
        if request.uri().path().starts_with(HEALTH_PREFIX) {
            return Either::Right(NamespaceWatch::off(self.inner.call(request)));
        }
        // Read before the check, so that a reload racing with it is seen by the stream.
        let generation = auth.shared.generation.load(Ordering::Acquire);
        match auth.check(request.headers(), request.uri().path()) {
            Err(refused) => {
                let call = CallInfo::of(request.extensions(), request.uri().path(), self.transport);
                auth.refused(&refused, &call);
                Either::Left(ready(Ok(refused.status().into_http())))
            }
            // The common case: nothing to check once the request is decoded.
            Ok(scope) if !scope.limits_namespace() => {
                if request.uri().path().starts_with(PIPELINE_PREFIX) {
                    StreamToken::attach(auth, generation, self.transport, &mut request);
                    if !scope.is_full() {
                        request.extensions_mut().insert(scope);
                    }
                }
                Either::Right(NamespaceWatch::off(self.inner.call(request)))
            }
            Ok(scope) => {
                let call = CallInfo::of(request.extensions(), request.uri().path(), self.transport);
                if request.uri().path().starts_with(PIPELINE_PREFIX) {
                    StreamToken::attach(auth, generation, self.transport, &mut request);
                }
                request.extensions_mut().insert(scope);
                Either::Right(NamespaceWatch {
                    inner: self.inner.call(request),
                    watch: Some((auth.clone(), call)),
                })
            }
        }
    }
}

/// The token a Run stream was opened with, kept so that each call read after a reload is
/// checked against the tokens then loaded (see `service::pipeline`).
struct StreamToken {
    auth: Authenticator,
    /// The presented token, never logged nor shown.
    token: Box<[u8]>,
    /// The generation the stream was admitted under.
    admitted: u64,
    call: CallInfo,
}

impl StreamToken {
    /// Puts the credentials of the Run stream `request` opens into its extensions.
    fn attach<B>(
        auth: &Authenticator,
        admitted: u64,
        transport: Transport,
        request: &mut Request<B>,
    ) {
        let Some(token) = bearer_token(request.headers()) else {
            return;
        };
        let credentials: Arc<dyn Credentials> = Arc::new(Self {
            auth: auth.clone(),
            token: token.into(),
            admitted,
            call: CallInfo::of(request.extensions(), request.uri().path(), transport),
        });
        request.extensions_mut().insert(credentials);
    }
}

impl fmt::Debug for StreamToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamToken")
            .field("admitted", &self.admitted)
            .finish_non_exhaustive()
    }
}

impl Credentials for StreamToken {
    fn admitted(&self) -> u64 {
        self.admitted
    }

    fn generation(&self) -> u64 {
        self.auth.shared.generation.load(Ordering::Acquire)
    }

    fn recheck(&self) -> Result<Option<Scope>, Status> {
        match self.auth.check_token(&self.token, &self.call.method) {
            Ok(scope) => Ok((!scope.is_full()).then_some(scope)),
            Err(refused) => {
                self.auth.refused(&refused, &self.call);
                Err(refused.status())
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of an admitted call. For a token limited to a cache namespace
    /// prefix, the namespace is checked once the request is decoded (`service::scope`),
    /// which answers `PERMISSION_DENIED`, the one status no other part of Larder gives: seen
    /// here, it is counted and logged like the refusals made before decoding.
    pub(crate) struct NamespaceWatch<F> {
        #[pin]
        inner: F,
        watch: Option<(Authenticator, CallInfo)>,
    }
}

impl<F> NamespaceWatch<F> {
    fn off(inner: F) -> Self {
        Self { inner, watch: None }
    }
}

impl<F, ResBody, E> Future for NamespaceWatch<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let output = std::task::ready!(this.inner.poll(cx));
        if let (Ok(response), Some((auth, call))) = (&output, this.watch.take())
            && response
                .headers()
                .get("grpc-status")
                .is_some_and(|s| s.as_bytes() == b"7")
        {
            auth.refused(&Refused::Scope(Refusal::Namespace), &call);
        }
        Poll::Ready(output)
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
        Ok(Ok(0)) => tracing::warn!(
            path = %auth.token_file().display(),
            "the auth token file holds no token: every token is revoked, and every call but \
             health is refused until tokens are added back and the file is reloaded (SIGHUP)"
        ),
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
        let set = TokenSet::read(path)?;
        if set.tokens.is_empty() {
            return Err(TokenFileError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(set.tokens.len())
    }

    /// A call to CacheService/Get.
    const GET: &str = "/larder.v1.CacheService/Get";

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
        assert!(set.find(GOOD.as_bytes()).is_some_and(Scope::is_full));
        assert!(set.find(OTHER.as_bytes()).is_some_and(Scope::is_full));
        assert!(set.find(b"0123456789abcdef012").is_none());
        assert!(set.find(format!("{OTHER}x").as_bytes()).is_none());
    }

    #[test]
    fn bad_lines_are_named_without_the_token() {
        let secret_short = "tooShort1";
        let cases: [(String, usize, TokenProblem); 6] = [
            (
                format!("{GOOD}\n# c\n{secret_short}\n"),
                3,
                TokenProblem::TooShort(9),
            ),
            // A token mistyped with a space in it: the second half is not a scope word.
            (
                format!("{GOOD} {OTHER}\n"),
                1,
                TokenProblem::Scope(ScopeProblem::Unknown(1)),
            ),
            (
                format!("{GOOD} read_only\n{GOOD} services=cache\n"),
                2,
                TokenProblem::Conflict(1),
            ),
            (
                format!("{GOOD} namespace=\u{7}\n"),
                1,
                TokenProblem::BadCharacter,
            ),
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
    fn a_trailing_comment_may_hold_any_text() {
        let f = file(format!("{GOOD} read_only   # José's laptop \u{7}\n").as_bytes());
        assert_eq!(count_tokens(f.path()).unwrap(), 1);
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
        assert!(a.check(&headers(&format!("Bearer {GOOD}")), GET).is_ok());
        assert!(a.check(&headers(&format!("bearer  {OTHER}")), GET).is_ok());
        let missing = a.check(&HeaderMap::new(), GET).unwrap_err().status();
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
        assert_eq!(missing.message(), "missing bearer token");
        for value in ["Basic abc", "Bearer", "Bearer ", "Bearerx", GOOD] {
            let s = a.check(&headers(value), GET).unwrap_err();
            assert_eq!(s, Refused::Missing, "{value:?}");
        }
        let wrong = a
            .check(&headers(&format!("Bearer {GOOD}x")), GET)
            .unwrap_err()
            .status();
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        assert_eq!(wrong.message(), "invalid bearer token");
    }

    #[test]
    fn each_token_gets_the_scope_of_its_line() {
        let (_f, a) = auth(&format!(
            "{GOOD} services=ratelimit  # the limiter\n{OTHER} read_only namespace=shop:\n"
        ));
        let limiter = headers(&format!("Bearer {GOOD}"));
        assert!(
            a.check(&limiter, "/larder.v1.RateLimitService/Check")
                .is_ok()
        );
        let refused = a.check(&limiter, GET).unwrap_err();
        assert_eq!(refused.reason(), "service");
        let status = refused.status();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(status.message().contains("services="), "{status:?}");
        assert!(!status.message().contains(GOOD), "{status:?}");

        let reader = headers(&format!("Bearer {OTHER}"));
        let scope = a.check(&reader, GET).unwrap();
        assert!(scope.limits_namespace());
        let refused = a
            .check(&reader, "/larder.v1.CacheService/Clear")
            .unwrap_err();
        assert_eq!(refused.reason(), "read_only");
    }

    #[test]
    fn a_reload_takes_new_tokens_an_empty_file_revokes_all_and_a_bad_one_keeps_the_old() {
        let (f, a) = auth(GOOD);
        std::fs::write(f.path(), OTHER).unwrap();
        assert_eq!(a.reload().unwrap(), 1);
        assert!(a.check(&headers(&format!("Bearer {OTHER}")), GET).is_ok());
        assert!(a.check(&headers(&format!("Bearer {GOOD}")), GET).is_err());

        std::fs::write(f.path(), "# bad line\nshort\n").unwrap();
        assert!(matches!(a.reload(), Err(TokenFileError::BadToken { .. })));
        assert!(a.check(&headers(&format!("Bearer {OTHER}")), GET).is_ok());
        std::fs::remove_file(f.path()).unwrap();
        assert!(matches!(a.reload(), Err(TokenFileError::Unreadable { .. })));
        assert!(a.check(&headers(&format!("Bearer {OTHER}")), GET).is_ok());
        assert_eq!(a.token_count(), 1);

        std::fs::write(f.path(), "# every token revoked\n").unwrap();
        assert_eq!(a.reload().unwrap(), 0);
        assert_eq!(a.token_count(), 0);
        let refused = a.check(&headers(&format!("Bearer {OTHER}")), GET);
        assert_eq!(refused.unwrap_err(), Refused::Invalid);
    }

    #[test]
    fn refusals_are_counted_by_reason() {
        let (_f, a) = auth(&format!("{GOOD} read_only\n"));
        let call = CallInfo {
            peer: "127.0.0.1:1".to_owned(),
            method: GET.to_owned(),
            transport: Transport::Tcp,
        };
        for _ in 0..3 {
            let refused = a.check(&HeaderMap::new(), GET).unwrap_err();
            a.refused(&refused, &call);
        }
        let write = a.check(
            &headers(&format!("Bearer {GOOD}")),
            "/larder.v1.CacheService/Set",
        );
        a.refused(&write.unwrap_err(), &call);
        let counts = a.refusals();
        assert_eq!(counts.get("missing"), 3);
        assert_eq!(counts.get("read_only"), 1);
        assert_eq!(counts.get("invalid"), 0);
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
