//! Shared by every test: [`TestServer`] (the real gRPC server over a real store in a temporary
//! data directory, listening on TCP port 0 and on a Unix socket, with a manual clock; metrics
//! over HTTP on another port 0 when asked), the
//! clients (CacheService over either transport, SessionService and QueueService over TCP,
//! RateLimitService over either transport), one-line wrappers for the common calls, and assertions on gRPC statuses.

use std::fmt::Debug;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper_util::rt::TokioIo;
use larder::ManualClock;
use larder::pb;
use larder::pb::cache_service_client::CacheServiceClient;
use larder::pb::queue_service_client::QueueServiceClient;
use larder::pb::rate_limit_service_client::RateLimitServiceClient;
use larder::pb::session_service_client::SessionServiceClient;
use larder::store::{Store, StoreConfig};
use larder::{Listeners, ServerSettings};
use tempfile::TempDir;
use tokio::net::{TcpListener, UnixStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Status};

/// A CacheService client over either transport.
pub type Client = CacheServiceClient<Channel>;

/// A SessionService client.
pub type Sessions = SessionServiceClient<Channel>;

/// A QueueService client.
pub type Queues = QueueServiceClient<Channel>;

/// A RateLimitService client.
pub type RateLimits = RateLimitServiceClient<Channel>;

/// Where every test clock starts (2023-11-14T22:13:20Z), far from 0 so that "expired" and
/// "never expires" (0) cannot be confused.
pub const START_MS: u64 = 1_700_000_000_000;

/// Tries of [`open_store`] while this process holds the directory lock, and the pause between
/// two: a bounded wait, not a measurement.
const LOCK_TRIES: usize = 500;
const LOCK_PAUSE: Duration = Duration::from_millis(20);

/// Opens a store on `config`, again and again (bounded) while its directory lock is held by
/// this very process. After a store on the directory closed, a child that another test forked
/// meanwhile (mount, cc, the larder binary) shares the lock file's open description from fork
/// until exec, and flock counts it as a holder. Any other error is returned at once.
pub async fn open_store(
    config: &StoreConfig,
    clock: Arc<dyn larder::Clock>,
) -> larder::Result<Store> {
    let own = format!("(pid {})", std::process::id());
    let mut tries = 1;
    loop {
        match Store::open(config.clone(), clock.clone()) {
            Err(larder::Error::Unavailable(held)) if held.contains(&own) && tries < LOCK_TRIES => {
                tries += 1;
                tokio::time::sleep(LOCK_PAUSE).await;
            }
            other => return other,
        }
    }
}

/// The socket file's name inside the test's temporary directory.
const SOCKET_FILE: &str = "larder.sock";

/// A running larder server on its own temporary data directory.
///
/// The temporary directory lives as long as this value, across [`TestServer::restart`], and
/// the clock is shared by every incarnation of the server.
pub struct TestServer {
    dir: TempDir,
    clock: ManualClock,
    config: StoreConfig,
    settings: ServerSettings,
    /// Whether the server also serves metrics (on a port 0 of its own).
    metrics: bool,
    running: Option<Running>,
}

/// One incarnation of the server.
struct Running {
    store: Store,
    tcp_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    shutdown: oneshot::Sender<()>,
    handle: JoinHandle<larder::Result<()>>,
}

impl TestServer {
    /// A server with the default store config (except that the sweeper only runs when a test
    /// calls `store().maintain()`) and default server settings.
    pub async fn start() -> Self {
        Self::start_with(|_| {}, ServerSettings::default()).await
    }

    /// A server whose store config is adjusted by `tune` and which runs with `settings`.
    pub async fn start_with(tune: impl FnOnce(&mut StoreConfig), settings: ServerSettings) -> Self {
        Self::start_inner(tune, settings, false).await
    }

    /// A server with `settings` that also serves Prometheus metrics over HTTP; see
    /// [`TestServer::metrics_addr`].
    pub async fn start_with_metrics(settings: ServerSettings) -> Self {
        Self::start_inner(|_| {}, settings, true).await
    }

    async fn start_inner(
        tune: impl FnOnce(&mut StoreConfig),
        settings: ServerSettings,
        metrics: bool,
    ) -> Self {
        let dir = tempfile::tempdir().expect("creating a temporary directory");
        let mut config = StoreConfig::new(dir.path().join("data"));
        // The background sweeper would race the tests' own `maintain()` calls.
        config.sweep_interval = Duration::from_secs(24 * 3600);
        tune(&mut config);
        let mut server = Self {
            dir,
            clock: ManualClock::new(START_MS),
            config,
            settings,
            metrics,
            running: None,
        };
        server.launch().await;
        server
    }

    /// A server with the default store config and these settings.
    pub async fn with_settings(settings: ServerSettings) -> Self {
        Self::start_with(|_| {}, settings).await
    }

    /// A server with default store config and these request limits.
    pub async fn with_limits(limits: larder::RequestLimits) -> Self {
        Self::start_with(
            |_| {},
            ServerSettings {
                limits,
                ..ServerSettings::default()
            },
        )
        .await
    }

    async fn launch(&mut self) {
        assert!(self.running.is_none(), "the server is already running");
        let store = open_store(&self.config, Arc::new(self.clock.clone()))
            .await
            .expect("opening the store");
        let tcp = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding TCP port 0");
        let tcp_addr = tcp.local_addr().expect("the bound TCP address");
        let socket = self.socket_path();
        let unix = larder::bind_unix(&socket, 0o660).expect("binding the Unix socket");
        let mut listeners = Listeners::from_bound(Some(tcp), Some((unix, socket)));
        let mut metrics_addr = None;
        if self.metrics {
            let metrics = TcpListener::bind("127.0.0.1:0")
                .await
                .expect("binding the metrics port 0");
            metrics_addr = Some(metrics.local_addr().expect("the bound metrics address"));
            listeners = listeners.with_metrics(metrics);
        }
        let (shutdown, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(
            larder::Server::new(store.clone(), self.settings.clone()).run(listeners, async move {
                let _ = stopped.await;
            }),
        );
        self.running = Some(Running {
            store,
            tcp_addr,
            metrics_addr,
            shutdown,
            handle,
        });
    }

    fn running(&self) -> &Running {
        self.running.as_ref().expect("the server is not running")
    }

    /// Stops the server gracefully and asserts that it stopped without an error.
    ///
    /// The store's directory lock is released once every [`Store`] handle is gone, so a test
    /// that took one with [`TestServer::store`] drops it before stopping.
    pub async fn stop(&mut self) {
        let Running {
            store,
            shutdown,
            handle,
            ..
        } = self.running.take().expect("the server is not running");
        drop(store);
        shutdown
            .send(())
            .expect("the server ended before it was told to");
        handle
            .await
            .expect("the server task panicked")
            .expect("the server stopped with an error");
    }

    /// Stops the server gracefully and starts it again on the same data directory, with the
    /// same clock, store config and settings. Clients of the old server must be replaced (the
    /// TCP port changes).
    pub async fn restart(&mut self) {
        self.stop().await;
        self.launch().await;
    }

    /// A client over TCP.
    pub async fn client(&self) -> Client {
        CacheServiceClient::new(self.channel().await)
    }

    /// A client over the Unix socket.
    pub async fn unix_client(&self) -> Client {
        CacheServiceClient::new(unix_channel(&self.socket_path()).await)
    }

    /// A SessionService client over TCP.
    pub async fn session_client(&self) -> Sessions {
        SessionServiceClient::new(self.channel().await)
    }

    /// A QueueService client over TCP, on a connection of its own.
    pub async fn queue(&self) -> Queues {
        QueueServiceClient::new(self.channel().await)
    }

    /// A RateLimitService client over TCP, on a connection of its own.
    pub async fn rate_limits(&self) -> RateLimits {
        RateLimitServiceClient::new(self.channel().await)
    }

    /// A RateLimitService client over the Unix socket.
    pub async fn unix_rate_limits(&self) -> RateLimits {
        RateLimitServiceClient::new(unix_channel(&self.socket_path()).await)
    }

    /// The TCP address the server listens on.
    pub fn tcp_addr(&self) -> SocketAddr {
        self.running().tcp_addr
    }

    /// A raw TCP channel, for the health and reflection clients.
    pub async fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.running().tcp_addr))
            .expect("a valid endpoint")
            .connect()
            .await
            .expect("connecting over TCP")
    }

    /// Where the metrics endpoint listens (a server started with
    /// [`TestServer::start_with_metrics`]).
    pub fn metrics_addr(&self) -> SocketAddr {
        self.running()
            .metrics_addr
            .expect("this server was started without metrics")
    }

    /// The clock the store reads; move it with `advance_ms`.
    pub fn clock(&self) -> &ManualClock {
        &self.clock
    }

    /// A handle on the running server's store (e.g. to run the sweeper with `maintain()`).
    pub fn store(&self) -> Store {
        self.running().store.clone()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    /// Path of the Unix socket.
    pub fn socket_path(&self) -> PathBuf {
        self.dir.path().join(SOCKET_FILE)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // A test that failed before `stop()` still lets its server wind down.
        if let Some(running) = self.running.take() {
            let _ = running.shutdown.send(());
        }
    }
}

/// A channel over the Unix socket at `path`.
pub async fn unix_channel(path: &Path) -> Channel {
    let path = path.to_owned();
    Endpoint::try_from("http://localhost")
        .expect("a valid endpoint")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .expect("connecting over the Unix socket")
}

/// A Set that always writes.
pub async fn set(
    c: &mut Client,
    namespace: &str,
    key: &str,
    value: impl Into<Bytes>,
    ttl_ms: u64,
) -> pb::SetResponse {
    c.set(pb::SetRequest {
        namespace: namespace.into(),
        key: key.into(),
        value: value.into(),
        ttl_ms,
        ..Default::default()
    })
    .await
    .unwrap_or_else(|s| panic!("Set {namespace:?}/{key:?}: {s:?}"))
    .into_inner()
}

/// A Set under a condition, without TTL.
pub async fn set_if(
    c: &mut Client,
    key: &str,
    value: impl Into<Bytes>,
    condition: pb::Condition,
    expected_version: u64,
) -> pb::SetResponse {
    c.set(pb::SetRequest {
        key: key.into(),
        value: value.into(),
        condition: condition as i32,
        expected_version,
        ..Default::default()
    })
    .await
    .unwrap_or_else(|s| panic!("Set {key:?} {condition:?}: {s:?}"))
    .into_inner()
}

/// A Get.
pub async fn get(c: &mut Client, namespace: &str, key: &str) -> pb::GetResponse {
    c.get(pb::GetRequest {
        namespace: namespace.into(),
        key: key.into(),
    })
    .await
    .unwrap_or_else(|s| panic!("Get {namespace:?}/{key:?}: {s:?}"))
    .into_inner()
}

/// A GetMany.
pub async fn get_many(c: &mut Client, namespace: &str, keys: &[&str]) -> Vec<pb::Entry> {
    c.get_many(pb::GetManyRequest {
        namespace: namespace.into(),
        keys: keys.iter().map(|k| k.to_string()).collect(),
    })
    .await
    .unwrap_or_else(|s| panic!("GetMany {namespace:?} {keys:?}: {s:?}"))
    .into_inner()
    .entries
}

/// Whether each key is found, in order (one GetMany).
pub async fn found(c: &mut Client, namespace: &str, keys: &[&str]) -> Vec<bool> {
    get_many(c, namespace, keys)
        .await
        .iter()
        .map(|e| e.found)
        .collect()
}

/// A Delete; returns `deleted`.
pub async fn delete(c: &mut Client, namespace: &str, key: &str) -> bool {
    c.delete(pb::DeleteRequest {
        namespace: namespace.into(),
        key: key.into(),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|s| panic!("Delete {namespace:?}/{key:?}: {s:?}"))
    .into_inner()
    .deleted
}

/// A Touch; returns `found`.
pub async fn touch(c: &mut Client, key: &str, ttl_ms: u64) -> bool {
    c.touch(pb::TouchRequest {
        namespace: String::new(),
        key: key.into(),
        ttl_ms,
    })
    .await
    .unwrap_or_else(|s| panic!("Touch {key:?}: {s:?}"))
    .into_inner()
    .found
}

/// An Increment in the default namespace.
pub async fn increment(
    c: &mut Client,
    key: &str,
    delta: i64,
    ttl_ms: u64,
) -> Result<pb::IncrementResponse, Status> {
    c.increment(pb::IncrementRequest {
        namespace: String::new(),
        key: key.into(),
        delta,
        ttl_ms,
        ..Default::default()
    })
    .await
    .map(tonic::Response::into_inner)
}

/// Stats of one namespace, or of all of them with `""`.
pub async fn stats(c: &mut Client, namespace: &str) -> pb::StatsResponse {
    c.stats(pb::StatsRequest {
        namespace: namespace.into(),
    })
    .await
    .unwrap_or_else(|s| panic!("Stats {namespace:?}: {s:?}"))
    .into_inner()
}

/// The status a health Check answers for `service` ('' for the whole server).
pub async fn health(channel: Channel, service: &str) -> Result<i32, Status> {
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map(|r| r.into_inner().status)
}

/// A CreateSession that must succeed.
pub async fn create_session(
    c: &mut Sessions,
    req: pb::CreateSessionRequest,
) -> pb::CreateSessionResponse {
    let user = req.user_id.clone();
    c.create_session(req)
        .await
        .unwrap_or_else(|s| panic!("CreateSession for {user:?}: {s:?}"))
        .into_inner()
}

/// A GetSession.
pub async fn get_session(c: &mut Sessions, token: &str) -> pb::GetSessionResponse {
    c.get_session(pb::GetSessionRequest {
        token: token.into(),
    })
    .await
    .unwrap_or_else(|s| panic!("GetSession {token:?}: {s:?}"))
    .into_inner()
}

/// Asserts that a call failed with `code`; returns the status.
#[track_caller]
pub fn assert_code<T: Debug>(result: Result<T, Status>, code: Code) -> Status {
    match result {
        Ok(ok) => panic!("expected {code:?}, got a success: {ok:?}"),
        Err(status) => {
            assert_eq!(status.code(), code, "unexpected status: {status:?}");
            status
        }
    }
}

/// Asserts that a call failed with INVALID_ARGUMENT and that the message names `field` as a
/// whole word (`key` is not found in `entries[3].key`, nor `keys` in `keys[2]`).
#[track_caller]
pub fn assert_invalid<T: Debug>(result: Result<T, Status>, field: &str) {
    let status = assert_code(result, Code::InvalidArgument);
    let is_field_char = |c: char| c.is_ascii_alphanumeric() || "_[].".contains(c);
    let names_it = status
        .message()
        .split(|c: char| !is_field_char(c))
        .any(|word| word == field);
    assert!(
        names_it,
        "the message {:?} does not name the field {field:?}",
        status.message()
    );
}

/// Says why a test checks nothing on this machine (no tmpfs, no `chattr`, no C compiler):
/// printed, or, with `LARDER_REQUIRE_FAULTS` set (as `.ci/run` sets it), a failure, so that a
/// skip never passes for a pass there.
pub fn skipped(reason: impl std::fmt::Display) {
    if std::env::var_os("LARDER_REQUIRE_FAULTS").is_some() {
        panic!("this test cannot run here, and LARDER_REQUIRE_FAULTS is set: {reason}");
    }
    println!("skipped: {reason}");
}
