//! What one bearer token may do: its [`Scope`], parsed from the words after the token on its
//! line of the token file, and the checks against it.
//!
//! The scope is checked in two places. The auth layer (in `server`) finds the token, checks
//! the call's path against [`Scope::admits`] (which service; a read or a write) before the
//! request is decoded, and puts the scope into the request's extensions. The cache namespace
//! can only be read from the decoded request, so [`Scoped`] wraps the CacheService and checks
//! every call's namespace with [`Scope::admits_namespace`] before the call reaches
//! validation or the store: a refused call writes nothing, a batch included (each batch
//! call has one namespace for all its items). A PipelineService stream passes the path
//! check; each call on it is checked with [`Scope::admits`] by its unary twin's path, then
//! goes through [`Scoped`] like the twin. A call that carries no scope (auth off, or a
//! Unix socket that needs no token) is not restricted.
//!
//! The type lives here, not in `server`, because both layers use it and `service` must not
//! import `server`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::pb;
use crate::pb::cache_service_server::CacheService;
use crate::service::cache::DEFAULT_NAMESPACE;

/// One of the Larder services a scope can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Service {
    /// `larder.v1.CacheService`, `cache` in the token file.
    Cache,
    /// `larder.v1.SessionService`, `session`.
    Session,
    /// `larder.v1.RateLimitService`, `ratelimit`.
    RateLimit,
    /// `larder.v1.QueueService`, `queue`.
    Queue,
}

impl Service {
    const ALL: [Service; 4] = [
        Service::Cache,
        Service::Session,
        Service::RateLimit,
        Service::Queue,
    ];

    /// The word naming it in the token file.
    pub(crate) fn word(self) -> &'static str {
        match self {
            Service::Cache => "cache",
            Service::Session => "session",
            Service::RateLimit => "ratelimit",
            Service::Queue => "queue",
        }
    }

    /// Its gRPC path prefix.
    fn path_prefix(self) -> &'static str {
        match self {
            Service::Cache => "/larder.v1.CacheService/",
            Service::Session => "/larder.v1.SessionService/",
            Service::RateLimit => "/larder.v1.RateLimitService/",
            Service::Queue => "/larder.v1.QueueService/",
        }
    }

    /// The methods that only read, and so are open to a `read_only` token. A session read
    /// (GetSession) slides the session's idle expiry forward: it is counted as a read, since
    /// the slide is the bookkeeping of a use, not a change anyone asked for; it cannot
    /// create, alter or end a session, nor keep one past its absolute expiry. Rate-limit
    /// Check spends budget, and cache Touch moves an expiry: both are writes.
    fn reads(self) -> &'static [&'static str] {
        match self {
            Service::Cache => &["Get", "GetMany", "Scan", "Stats"],
            Service::Session => &["GetSession", "ListSessions"],
            Service::RateLimit => &["Peek"],
            Service::Queue => &["Stats", "ListJobs", "ListDead"],
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// Calls to these services pass any token's scope: they describe the API and hold no data.
const REFLECTION_PREFIXES: [&str; 2] = [
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// Calls to PipelineService pass the path check: what matters is each call on the stream,
/// which `service::pipeline` checks with [`Scope::admits`] by its unary twin's path.
pub(crate) const PIPELINE_PREFIX: &str = "/larder.v1.PipelineService/";

/// What one token may do. The default (a bare token line) may do everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scope {
    /// The services it may call, one bit per [`Service`].
    services: u8,
    /// Whether only the methods of [`Service::reads`] are open.
    read_only: bool,
    /// The prefix every cache namespace it names must start with.
    namespace: Option<Arc<str>>,
}

impl Default for Scope {
    fn default() -> Self {
        Self {
            services: Service::ALL.iter().map(|s| s.bit()).sum(),
            read_only: false,
            namespace: None,
        }
    }
}

/// Why the scope words of a token line cannot be used. Never holds any text of the line, so
/// that a token mistyped with a space in it cannot reach an error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ScopeProblem {
    /// A word that is none of the scope words.
    #[error(
        "word {0} after the token is not a scope (expected services=LIST, read_only or \
         namespace=PREFIX)"
    )]
    Unknown(usize),
    /// The same scope word twice.
    #[error("word {0} after the token repeats a scope word")]
    Repeated(usize),
    /// `services=` with an empty list or a name that is not a service.
    #[error(
        "word {0} after the token: services= takes a comma-separated list of cache, session, ratelimit and queue"
    )]
    BadService(usize),
    /// `namespace=` with nothing after it.
    #[error("word {0} after the token: namespace= needs a prefix")]
    EmptyNamespace(usize),
}

/// Why a call is outside its token's scope; the message names the scope word that refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The service is not in the token's `services=`.
    Service(Option<Service>),
    /// A write under `read_only`.
    ReadOnly,
    /// A cache namespace that does not start with the token's `namespace=`.
    Namespace,
}

impl Refusal {
    /// The label of this refusal in logs and metrics.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Refusal::Service(_) => "service",
            Refusal::ReadOnly => "read_only",
            Refusal::Namespace => "namespace",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Service(Some(s)) => write!(
                f,
                "outside the token's scope: services= does not include {}",
                s.word()
            ),
            Refusal::Service(None) => {
                f.write_str("outside the token's scope: services= does not include this service")
            }
            Refusal::ReadOnly => {
                f.write_str("outside the token's scope: read_only allows reads only")
            }
            Refusal::Namespace => f.write_str(
                "outside the token's scope: the namespace does not start with the token's \
                 namespace= prefix",
            ),
        }
    }
}

impl From<Refusal> for Status {
    fn from(refusal: Refusal) -> Self {
        Status::permission_denied(refusal.to_string())
    }
}

impl Scope {
    /// The scope the `words` after a token give (none: full access).
    pub(crate) fn parse<'a>(
        words: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Self, ScopeProblem> {
        let mut scope = Scope::default();
        let (mut services, mut read_only, mut namespace) = (false, false, false);
        for (i, word) in words.into_iter().enumerate() {
            let n = i + 1;
            let once = |seen: &mut bool| {
                if std::mem::replace(seen, true) {
                    Err(ScopeProblem::Repeated(n))
                } else {
                    Ok(())
                }
            };
            if word == b"read_only" {
                once(&mut read_only)?;
                scope.read_only = true;
            } else if let Some(list) = word.strip_prefix(b"services=") {
                once(&mut services)?;
                scope.services = 0;
                for name in list.split(|b| *b == b',') {
                    let service = Service::ALL
                        .into_iter()
                        .find(|s| s.word().as_bytes() == name)
                        .ok_or(ScopeProblem::BadService(n))?;
                    scope.services |= service.bit();
                }
            } else if let Some(prefix) = word.strip_prefix(b"namespace=") {
                once(&mut namespace)?;
                if prefix.is_empty() {
                    return Err(ScopeProblem::EmptyNamespace(n));
                }
                // The token file's bytes were checked to be printable ASCII.
                let prefix = String::from_utf8_lossy(prefix);
                scope.namespace = Some(Arc::from(prefix.as_ref()));
            } else {
                return Err(ScopeProblem::Unknown(n));
            }
        }
        Ok(scope)
    }

    /// Whether the call at `path` (`/package.Service/Method`) is inside the scope, as far as
    /// the path tells: its service, and under `read_only` whether the method is a read.
    /// Reflection is open to every token; any other path outside the three services is
    /// refused to a token limited by `services=` or `read_only` (fail closed).
    pub(crate) fn admits(&self, path: &str) -> Result<(), Refusal> {
        if REFLECTION_PREFIXES.iter().any(|p| path.starts_with(p)) {
            return Ok(());
        }
        // A pipeline stream carries calls of every service; each call on it is checked
        // against the scope, by its unary twin's path, when it is decoded.
        if path.starts_with(PIPELINE_PREFIX) {
            return Ok(());
        }
        let found = Service::ALL
            .into_iter()
            .find_map(|s| path.strip_prefix(s.path_prefix()).map(|m| (s, m)));
        let Some((service, method)) = found else {
            if self.is_full() {
                return Ok(());
            }
            return Err(if self.read_only {
                Refusal::ReadOnly
            } else {
                Refusal::Service(None)
            });
        };
        if self.services & service.bit() == 0 {
            return Err(Refusal::Service(Some(service)));
        }
        if self.read_only && !service.reads().contains(&method) {
            return Err(Refusal::ReadOnly);
        }
        Ok(())
    }

    /// Whether the cache `namespace` (as the request gives it: empty = the default one) is
    /// inside the scope. `all_if_empty`: an empty namespace means every namespace (Stats),
    /// which only a scope without `namespace=` covers.
    pub(crate) fn admits_namespace(
        &self,
        namespace: &str,
        all_if_empty: bool,
    ) -> Result<(), Refusal> {
        let Some(prefix) = &self.namespace else {
            return Ok(());
        };
        let namespace = match namespace {
            "" if all_if_empty => return Err(Refusal::Namespace),
            "" => DEFAULT_NAMESPACE,
            ns => ns,
        };
        if namespace.starts_with(prefix.as_ref()) {
            Ok(())
        } else {
            Err(Refusal::Namespace)
        }
    }

    /// Whether the scope restricts anything (a bare token line does not).
    pub(crate) fn is_full(&self) -> bool {
        *self == Scope::default()
    }

    /// Whether the scope restricts the cache namespace.
    pub(crate) fn limits_namespace(&self) -> bool {
        self.namespace.is_some()
    }
}

/// Checks the namespace of `request` against the scope the auth layer put into its
/// extensions, if any.
fn check<T>(
    request: &Request<T>,
    namespace: impl FnOnce(&T) -> &str,
    all_if_empty: bool,
) -> Result<(), Status> {
    match request.extensions().get::<Scope>() {
        Some(scope) => Ok(scope.admits_namespace(namespace(request.get_ref()), all_if_empty)?),
        None => Ok(()),
    }
}

/// A CacheService that checks each call's namespace against its token's scope, then hands
/// the call to the service it wraps.
#[derive(Debug, Clone)]
pub(crate) struct Scoped<S>(pub(crate) S);

/// The future every CacheService method returns (the shape `async_trait` gives the trait).
type CallFuture<'a, T> = Pin<Box<dyn Future<Output = Result<Response<T>, Status>> + Send + 'a>>;

/// One delegating method per CacheService call: check, then hand over the wrapped service's
/// own future. Written without `async_trait`, which would box a second future around the
/// wrapped one on every call (auth off included) only to await it; a refused call boxes its
/// ready error instead.
macro_rules! scoped {
    ($($method:ident($req:ty) -> $resp:ty, $all_if_empty:expr;)*) => {
        impl<S: CacheService> CacheService for Scoped<S> {
            $(
                fn $method<'life0, 'async_trait>(
                    &'life0 self,
                    req: Request<$req>,
                ) -> CallFuture<'async_trait, $resp>
                where
                    'life0: 'async_trait,
                    Self: 'async_trait,
                {
                    match check(&req, |r| &r.namespace, $all_if_empty) {
                        Ok(()) => self.0.$method(req),
                        Err(refused) => Box::pin(std::future::ready(Err(refused))),
                    }
                }
            )*
        }
    };
}

scoped! {
    get(pb::GetRequest) -> pb::GetResponse, false;
    set(pb::SetRequest) -> pb::SetResponse, false;
    delete(pb::DeleteRequest) -> pb::DeleteResponse, false;
    get_many(pb::GetManyRequest) -> pb::GetManyResponse, false;
    set_many(pb::SetManyRequest) -> pb::SetManyResponse, false;
    delete_many(pb::DeleteManyRequest) -> pb::DeleteManyResponse, false;
    delete_prefix(pb::DeletePrefixRequest) -> pb::DeletePrefixResponse, false;
    touch(pb::TouchRequest) -> pb::TouchResponse, false;
    increment(pb::IncrementRequest) -> pb::IncrementResponse, false;
    clear(pb::ClearRequest) -> pb::ClearResponse, false;
    stats(pb::StatsRequest) -> pb::StatsResponse, true;
    scan(pb::ScanRequest) -> pb::ScanResponse, false;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(line: &str) -> Result<Scope, ScopeProblem> {
        Scope::parse(line.split_ascii_whitespace().map(str::as_bytes))
    }

    #[test]
    fn no_words_is_full_access() {
        let full = scope("").unwrap();
        assert!(full.is_full());
        for path in [
            "/larder.v1.CacheService/Clear",
            "/larder.v1.SessionService/RevokeUserSessions",
            "/larder.v1.RateLimitService/Reset",
            "/other.Service/Method",
        ] {
            assert_eq!(full.admits(path), Ok(()), "{path}");
        }
        assert_eq!(full.admits_namespace("", true), Ok(()));
    }

    #[test]
    fn services_limit_the_services() {
        let s = scope("services=cache,ratelimit").unwrap();
        assert_eq!(s.admits("/larder.v1.CacheService/Clear"), Ok(()));
        assert_eq!(s.admits("/larder.v1.RateLimitService/Check"), Ok(()));
        let refused = s
            .admits("/larder.v1.SessionService/ListSessions")
            .unwrap_err();
        assert_eq!(refused, Refusal::Service(Some(Service::Session)));
        assert!(refused.to_string().contains("services="), "{refused}");
        assert_eq!(
            s.admits("/other.Service/Method"),
            Err(Refusal::Service(None))
        );
        assert_eq!(
            s.admits("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            Ok(())
        );
        assert_eq!(s.admits("/larder.v1.PipelineService/Run"), Ok(()));
    }

    #[test]
    fn read_only_opens_the_reads_only() {
        let s = scope("read_only").unwrap();
        for read in [
            "/larder.v1.CacheService/Get",
            "/larder.v1.CacheService/GetMany",
            "/larder.v1.CacheService/Scan",
            "/larder.v1.CacheService/Stats",
            "/larder.v1.SessionService/GetSession",
            "/larder.v1.SessionService/ListSessions",
            "/larder.v1.RateLimitService/Peek",
        ] {
            assert_eq!(s.admits(read), Ok(()), "{read}");
        }
        for write in [
            "/larder.v1.CacheService/Set",
            "/larder.v1.CacheService/Touch",
            "/larder.v1.CacheService/Clear",
            "/larder.v1.SessionService/CreateSession",
            "/larder.v1.SessionService/RevokeUserSessions",
            "/larder.v1.RateLimitService/Check",
            "/larder.v1.RateLimitService/Reset",
            "/larder.v1.CacheService/NoSuchMethod",
        ] {
            assert_eq!(s.admits(write), Err(Refusal::ReadOnly), "{write}");
        }
    }

    #[test]
    fn a_namespace_prefix_covers_namespaces_starting_with_it() {
        let s = scope("namespace=shop:").unwrap();
        assert_eq!(s.admits_namespace("shop:carts", false), Ok(()));
        assert_eq!(s.admits_namespace("shop:", false), Ok(()));
        assert_eq!(s.admits_namespace("blog", false), Err(Refusal::Namespace));
        assert_eq!(s.admits_namespace("", false), Err(Refusal::Namespace));
        assert_eq!(s.admits_namespace("", true), Err(Refusal::Namespace));
        let default = scope("namespace=def").unwrap();
        assert_eq!(
            default.admits_namespace("", false),
            Ok(()),
            "'' is 'default'"
        );
        assert_eq!(
            default.admits_namespace("", true),
            Err(Refusal::Namespace),
            "'' is all"
        );
    }

    #[test]
    fn bad_words_are_named_by_position_only() {
        for (line, problem) in [
            ("secret-looking-word", ScopeProblem::Unknown(1)),
            ("read_only read_only", ScopeProblem::Repeated(2)),
            (
                "read_only services=cache services=session",
                ScopeProblem::Repeated(3),
            ),
            ("services=", ScopeProblem::BadService(1)),
            ("services=cache,,session", ScopeProblem::BadService(1)),
            ("services=cache,sessions", ScopeProblem::BadService(1)),
            ("namespace=", ScopeProblem::EmptyNamespace(1)),
            ("READ_ONLY", ScopeProblem::Unknown(1)),
        ] {
            let got = scope(line).unwrap_err();
            assert_eq!(got, problem, "{line}");
            assert!(!got.to_string().contains("secret"), "{got}");
            assert!(!got.to_string().contains("sessions"), "{got}");
        }
    }
}
