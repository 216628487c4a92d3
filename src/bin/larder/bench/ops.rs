//! The operations `larder bench` measures, each done the way its users write it: on Larder as
//! one unary gRPC call, on Redis as the commands web apps send for the same job. Owns the op
//! names and their parsing, the connections to both systems, the preload that makes reads
//! hit, and the one measured call.
//!
//! | op | Larder | Redis |
//! |---|---|---|
//! | `get` | CacheService.Get of `key:{i}` (preloaded: a hit) | `GET` |
//! | `set` | CacheService.Set (durable ack) | `SET` |
//! | `incr` | CacheService.Increment of `counter:{i}` by 1 | `INCR` |
//! | `getmany` | CacheService.GetMany of 16 preloaded keys | `MGET` of the same 16 |
//! | `session_get` | SessionService.GetSession (sliding idle TTL) | `MULTI; HGETALL; PEXPIRE; EXEC` |
//! | `ratelimit_sliding` | RateLimitService.Check, sliding window | `MULTI; ZREMRANGEBYSCORE; ZADD; ZCARD; PEXPIRE; EXEC` |
//! | `ratelimit_gcra` | RateLimitService.Check, GCRA | `EVALSHA` of a GCRA Lua script |
//! | `enqueue` | QueueService.Enqueue of a value-sized payload (durable ack) | `LPUSH` |
//! | `dequeue_ack` | QueueService.Dequeue of one job with a lease, then Ack of the lease | `BLMOVE` to a processing list, then `LREM` of the job from it |
//!
//! With `--pipeline` every Larder call goes as the same request on a PipelineService/Run
//! stream (one per connection, see [`super::pipeline`]); with `--redis-pipeline N` each Redis
//! caller sends N of its op's commands per round trip.
//!
//! The rate-limit ops check `rl:sliding:{i}` or `rl:gcra:{i}` against `--rl-limit` units per
//! `--rl-period-ms`, with no preload; a denied answer is a successful call.
//!
//! The queue ops use one queue of their own per run (see [`queue_name`]), emptied when the
//! run ends. `dequeue_ack` takes jobs that [`Sut::fill_queue`] enqueued before the run, each
//! with a payload of its own (Redis's `LREM` finds a job by its payload); one call is the
//! whole pair, so its rate is of jobs done. A Dequeue (or `BLMOVE`) that finds the queue
//! empty for [`QUEUE_WAIT_MS`] is [`CallError::QueueEmpty`], an error of the run: the fill
//! was too small, and a fast empty answer must not pass for throughput.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use larder::pb;
use larder::pb::cache_service_client::CacheServiceClient;
use larder::pb::queue_service_client::QueueServiceClient;
use larder::pb::rate_limit_service_client::RateLimitServiceClient;
use larder::pb::run_request::Call;
use larder::pb::run_response::Result as Outcome;
use larder::pb::session_service_client::SessionServiceClient;

use super::pipeline::Pipe;

/// Bound on connecting to either system.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Keys per `getmany` call (and per `MGET`).
pub const GETMANY_KEYS: usize = 16;
/// The idle TTL of benchmark sessions (both systems), as web frameworks default to.
const SESSION_IDLE_MS: u64 = 30 * 60 * 1000;
/// Cache keys per preload call (SetMany, MSET): well under the server's batch limit, and
/// 256 KiB a call with 1 KiB values.
const PRELOAD_BATCH: u64 = 256;
/// Most jobs per fill call of `dequeue_ack` (EnqueueMany, LPUSH): the server's batch limit.
const FILL_BATCH: u64 = 1000;
/// Payload bytes per fill call, so that a batch of large values stays far below the message
/// limit.
const FILL_BATCH_BYTES: u64 = 1 << 20;
/// How long a `dequeue_ack` call waits for a job (Dequeue `wait_ms`, `BLMOVE` timeout) before
/// it is [`CallError::QueueEmpty`]: long enough that a job still being committed is never
/// taken for an empty queue.
pub(crate) const QUEUE_WAIT_MS: u64 = 1000;

/// One operation of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// CacheService.Get; Redis GET.
    Get,
    /// CacheService.Set; Redis SET.
    Set,
    /// CacheService.Increment; Redis INCR.
    Incr,
    /// CacheService.GetMany of [`GETMANY_KEYS`]; Redis MGET of as many.
    GetMany,
    /// SessionService.GetSession; Redis MULTI HGETALL + PEXPIRE EXEC.
    SessionGet,
    /// RateLimitService.Check, sliding window; a sliding-window log in a Redis sorted set.
    RatelimitSliding,
    /// RateLimitService.Check, GCRA; EVALSHA of a GCRA Lua script.
    RatelimitGcra,
    /// QueueService.Enqueue; Redis LPUSH.
    Enqueue,
    /// QueueService.Dequeue of one job with a lease, then Ack; Redis BLMOVE to a processing
    /// list, then LREM from it (the reliable-queue pattern).
    DequeueAck,
}

/// Every op, in the order the default run takes them.
pub const ALL_OPS: [Op; 9] = [
    Op::Get,
    Op::Set,
    Op::Incr,
    Op::GetMany,
    Op::SessionGet,
    Op::RatelimitSliding,
    Op::RatelimitGcra,
    Op::Enqueue,
    Op::DequeueAck,
];

/// An `--ops` entry that names no operation.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpsError {
    /// A name that is not an op.
    #[error(
        "unknown op {0:?}; the ops are get, set, incr, getmany, session_get, ratelimit_sliding, \
         ratelimit_gcra, enqueue and dequeue_ack"
    )]
    Unknown(String),
    /// An empty list, or an empty entry between two commas.
    #[error("--ops needs at least one op, and no empty entry between commas")]
    Empty,
}

impl Op {
    /// The op's name in reports and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Set => "set",
            Op::Incr => "incr",
            Op::GetMany => "getmany",
            Op::SessionGet => "session_get",
            Op::RatelimitSliding => "ratelimit_sliding",
            Op::RatelimitGcra => "ratelimit_gcra",
            Op::Enqueue => "enqueue",
            Op::DequeueAck => "dequeue_ack",
        }
    }

    /// The op named `name`; dashes are taken as underscores, and `get_session` (the name
    /// earlier scripts used) as `session_get`.
    pub fn parse(name: &str) -> Result<Op, OpsError> {
        let normal = name.trim().to_ascii_lowercase().replace('-', "_");
        if normal == "get_session" {
            return Ok(Op::SessionGet);
        }
        ALL_OPS
            .into_iter()
            .find(|op| op.name() == normal)
            .ok_or_else(|| OpsError::Unknown(name.trim().to_owned()))
    }

    /// Whether a successful call may answer "denied" as a matter of course.
    pub fn is_rate_limit(self) -> bool {
        matches!(self, Op::RatelimitSliding | Op::RatelimitGcra)
    }

    /// Whether the op works on a queue of its run rather than on the key space.
    pub fn is_queue(self) -> bool {
        matches!(self, Op::Enqueue | Op::DequeueAck)
    }

    /// Keys read or written per call.
    pub fn keys_per_call(self) -> u64 {
        match self {
            Op::GetMany => GETMANY_KEYS as u64,
            _ => 1,
        }
    }

    /// Whether the key space is written before the run, so that every read hits.
    fn preloads(self) -> bool {
        matches!(self, Op::Get | Op::GetMany | Op::SessionGet)
    }
}

/// Parses a comma list of ops (`get,set,...`), keeping the order given and dropping repeats.
pub fn parse_ops(list: &str) -> Result<Vec<Op>, OpsError> {
    let mut ops = Vec::new();
    for name in list.split(',') {
        if name.trim().is_empty() {
            return Err(OpsError::Empty);
        }
        let op = Op::parse(name)?;
        if !ops.contains(&op) {
            ops.push(op);
        }
    }
    Ok(ops)
}

/// The name of the queue one run of `op` uses: its own, so that no run takes or counts another
/// run's jobs (on either system, in this process or another one).
pub(crate) fn queue_name(op: Op, system: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!(
        "bench:{}:{system}:{}:{nanos}",
        op.name(),
        std::process::id()
    )
}

/// The Redis list holding the jobs `dequeue_ack` has taken and not yet acknowledged.
fn processing_list(queue: &str) -> String {
    format!("{queue}:processing")
}

/// The payload of fill job `i`: `value` with the job's number written over its start, so that
/// every job of the queue is distinct (Redis's LREM removes a job by its payload).
fn fill_payload(i: u64, value: &Bytes) -> Bytes {
    let tag = format!("{i:x}:");
    let mut payload = value.to_vec();
    if payload.len() < tag.len() {
        payload.resize(tag.len(), b'v');
    }
    payload[..tag.len()].copy_from_slice(tag.as_bytes());
    Bytes::from(payload)
}

/// Why a measured call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CallError {
    /// The system answered with an error (or none at all).
    Failed(String),
    /// `dequeue_ack` found no job within [`QUEUE_WAIT_MS`]: the queue ran dry.
    QueueEmpty,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Failed(e) => f.write_str(e),
            CallError::QueueEmpty => write!(f, "no job came within {QUEUE_WAIT_MS} ms"),
        }
    }
}

/// The GCRA Lua script of the Redis side of `ratelimit_gcra`: one key per client holding its
/// theoretical arrival time (TAT), in milliseconds since the epoch by the Redis server's
/// clock. KEYS[1]: the client's key. ARGV: burst, rate (units per period), period (ms), cost.
/// Returns {allowed (1 or 0), remaining, retry_after_ms, reset_after_ms}; a denied request
/// consumes nothing.
const GCRA_LUA: &str = r"
local burst = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local period = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])

-- Milliseconds between two units at the steady rate, and how far ahead of now the TAT may
-- run (a full bucket of `burst` units).
local interval = period / rate
local tolerance = interval * burst

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + tonumber(time[2]) / 1000

local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then
  tat = now
end
local new_tat = tat + interval * cost
-- Milliseconds of budget left once this request is counted.
local room = now + tolerance - new_tat
if room < 0 then
  return {0, 0, math.ceil(-room), math.ceil(tat - now)}
end
local reset_after = new_tat - now
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil(reset_after))
return {1, math.floor(room / interval), 0, math.ceil(reset_after)}
";

/// A system under test: Larder (or the bare baseline) over gRPC, or Redis.
pub(crate) enum Sut {
    /// `--connections` HTTP/2 connections, which the tasks share round-robin, and the bearer
    /// token every call carries; with `--pipeline`, one Run stream per connection, which
    /// the measured calls go on.
    Grpc {
        channels: Vec<Channel>,
        bearer: Bearer,
        pipes: Vec<Arc<Pipe>>,
    },
    /// A Redis client; every task opens a connection of its own, as web workers hold them.
    Redis {
        client: redis::Client,
        /// The URL as given, for messages.
        url: String,
        /// Commands each caller sends per round trip (`--redis-pipeline`; 1: one at a time).
        depth: usize,
    },
}

/// What a run's calls are drawn from.
pub(crate) struct Workload {
    pub(crate) op: Op,
    pub(crate) keys: u64,
    pub(crate) value: Bytes,
    /// Larder session tokens by index (`session_get`); Redis sessions are `session:{i}`.
    pub(crate) tokens: Vec<String>,
    /// Rate limits: units per key and period, and the period in milliseconds.
    pub(crate) rl_limit: u32,
    pub(crate) rl_period_ms: u64,
    /// The SHA1 of the GCRA script as Redis loaded it (Redis `ratelimit_gcra` only).
    pub(crate) gcra_sha: Option<String>,
    /// The run's queue (the queue ops; see [`queue_name`]).
    pub(crate) queue: String,
}

/// One task's connection.
pub(crate) enum Conn {
    Grpc(Box<GrpcConn>),
    Redis(redis::aio::MultiplexedConnection),
}

/// A channel whose calls carry the bearer token.
type Authed = InterceptedService<Channel, Bearer>;

/// The clients of one gRPC task (over one shared channel).
pub(crate) struct GrpcConn {
    cache: CacheServiceClient<Authed>,
    sessions: SessionServiceClient<Authed>,
    rate_limits: RateLimitServiceClient<Authed>,
    queues: QueueServiceClient<Authed>,
    /// The connection's Run stream, with `--pipeline`: measured calls go there.
    pipe: Option<Arc<Pipe>>,
}

/// Adds `authorization: Bearer <token>` to every call, when a token was given.
#[derive(Clone, Default)]
pub(crate) struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// The header for `token` (surrounding whitespace, such as a file's newline, dropped).
    pub(crate) fn new(token: &str) -> anyhow::Result<Self> {
        let token = token.trim();
        if token.is_empty() {
            anyhow::bail!("the token is empty");
        }
        let value = MetadataValue::try_from(format!("Bearer {token}"))
            .context("the token has characters a header cannot carry")?;
        Ok(Self(Some(value)))
    }
}

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

impl Sut {
    /// Whether `target` names Redis (`redis://…`, or `unix+redis:/path` for its Unix socket).
    pub(crate) fn is_redis_url(target: &str) -> bool {
        target.starts_with("redis://")
            || target.starts_with("rediss://")
            || target.starts_with("unix+redis:")
    }

    /// Opens Redis at `url` and checks that it answers (a `PING`), so that a wrong URL stops
    /// the benchmark before anything is measured. Each caller sends `depth` commands per
    /// round trip.
    pub(crate) async fn redis(url: &str, depth: usize) -> anyhow::Result<Self> {
        // `unix+redis:/path` names Redis on a Unix socket (redis-rs spells it unix://).
        let open_url = match url.strip_prefix("unix+redis:") {
            Some(path) => format!("unix://{path}"),
            None => url.to_owned(),
        };
        let client = redis::Client::open(open_url.as_str())
            .with_context(|| format!("{url:?} is not a Redis URL"))?;
        let sut = Sut::Redis {
            client,
            url: url.to_owned(),
            depth: depth.max(1),
        };
        let Conn::Redis(mut conn) = sut.conn(0).await? else {
            unreachable!("a Redis system under test makes Redis connections");
        };
        tokio::time::timeout(
            CONNECT_TIMEOUT,
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await
        .with_context(|| format!("Redis at {url} did not answer PING in {CONNECT_TIMEOUT:?}"))?
        .with_context(|| format!("Redis at {url} did not answer PING"))?;
        Ok(sut)
    }

    /// Connects `connections` HTTP/2 connections to Larder at `target`: `http://host:port`,
    /// or `unix:/path` for its Unix socket (with the authority `localhost`); with `pipeline`,
    /// opens one Run stream on each.
    pub(crate) async fn grpc(
        target: &str,
        connections: usize,
        bearer: Bearer,
        pipeline: bool,
    ) -> anyhow::Result<Self> {
        let unix = target.strip_prefix("unix:").map(PathBuf::from);
        let uri = if unix.is_some() {
            "http://localhost".to_owned()
        } else {
            target.to_owned()
        };
        let endpoint = Endpoint::from_shared(uri)
            .with_context(|| {
                format!("--target {target:?} is neither a URL (http://host:port) nor unix:/path")
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        let mut channels = Vec::with_capacity(connections);
        for _ in 0..connections {
            // A `Channel` is one HTTP/2 connection; connecting each one eagerly makes it a
            // distinct connection (clones of one Channel would share it).
            let connecting = async {
                match &unix {
                    Some(path) => {
                        let path = path.clone();
                        endpoint
                            .connect_with_connector(tower::service_fn(
                                move |_: tonic::transport::Uri| {
                                    let path = path.clone();
                                    async move {
                                        tokio::net::UnixStream::connect(path)
                                            .await
                                            .map(hyper_util::rt::TokioIo::new)
                                    }
                                },
                            ))
                            .await
                    }
                    None => endpoint.connect().await,
                }
            };
            let channel = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
                .await
                .with_context(|| format!("connecting to {target} timed out"))?
                .with_context(|| format!("cannot connect to {target}"))?;
            channels.push(channel);
        }
        let mut pipes = Vec::new();
        if pipeline {
            for channel in &channels {
                let pipe = tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    Pipe::open(channel.clone(), bearer.clone()),
                )
                .await
                .with_context(|| format!("opening a Run stream on {target} timed out"))?
                .map_err(|s| anyhow::anyhow!("cannot open a Run stream: {}", status_text(s)))?;
                pipes.push(pipe);
            }
        }
        Ok(Sut::Grpc {
            channels,
            bearer,
            pipes,
        })
    }

    /// Calls each caller sends per round trip: `--redis-pipeline` for Redis, else 1 (a
    /// pipelined Larder caller still waits for each answer; its stream is shared).
    pub(crate) fn depth(&self) -> usize {
        match self {
            Sut::Redis { depth, .. } => *depth,
            Sut::Grpc { .. } => 1,
        }
    }

    /// The connection of task `task`: a share of the gRPC channels, or a Redis connection of
    /// its own.
    pub(crate) async fn conn(&self, task: usize) -> anyhow::Result<Conn> {
        Ok(match self {
            Sut::Grpc {
                channels,
                bearer,
                pipes,
            } => {
                let channel = channels[task % channels.len()].clone();
                let authed = || InterceptedService::new(channel.clone(), bearer.clone());
                Conn::Grpc(Box::new(GrpcConn {
                    cache: CacheServiceClient::new(authed()),
                    sessions: SessionServiceClient::new(authed()),
                    rate_limits: RateLimitServiceClient::new(authed()),
                    queues: QueueServiceClient::new(authed()),
                    pipe: (!pipes.is_empty()).then(|| pipes[task % pipes.len()].clone()),
                }))
            }
            Sut::Redis { client, url, .. } => Conn::Redis(
                tokio::time::timeout(CONNECT_TIMEOUT, client.get_multiplexed_async_connection())
                    .await
                    .with_context(|| format!("connecting to Redis at {url} timed out"))?
                    .with_context(|| format!("cannot connect to Redis at {url}"))?,
            ),
        })
    }

    /// The server's cache counters, when it answers Stats (Larder does; the bare baseline
    /// and Redis do not).
    pub(crate) async fn stats(&self) -> Option<pb::StatsResponse> {
        let Sut::Grpc {
            channels, bearer, ..
        } = self
        else {
            return None;
        };
        let mut client =
            CacheServiceClient::new(InterceptedService::new(channels[0].clone(), bearer.clone()));
        let call = client.stats(pb::StatsRequest::default());
        match tokio::time::timeout(CONNECT_TIMEOUT, call).await {
            Ok(Ok(r)) => Some(r.into_inner()),
            _ => None,
        }
    }

    /// Loads the GCRA script into Redis (`SCRIPT LOAD`) and returns its SHA1, for `EVALSHA`;
    /// `None` for gRPC.
    pub(crate) async fn load_gcra_script(&self) -> anyhow::Result<Option<String>> {
        let Sut::Redis { client, .. } = self else {
            return Ok(None);
        };
        let loading = async {
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(GCRA_LUA)
                .query_async::<String>(&mut conn)
                .await
        };
        let sha = tokio::time::timeout(CONNECT_TIMEOUT, loading)
            .await
            .context("loading the GCRA script into Redis timed out")?
            .context("cannot load the GCRA script into Redis")?;
        Ok(Some(sha))
    }

    /// Writes every key (or session) of the key space once, spread over `writers` tasks, so
    /// that every read of `op` hits; returns the session tokens by index (Larder sessions).
    /// Cache keys go [`PRELOAD_BATCH`] at a time (SetMany, MSET), sessions one by one. Ops that
    /// read nothing preloaded return at once.
    pub(crate) async fn preload(
        &self,
        op: Op,
        keys: u64,
        value: &Bytes,
        writers: usize,
    ) -> anyhow::Result<Vec<String>> {
        if !op.preloads() {
            return Ok(Vec::new());
        }
        // Each task writes every `writers`-th chunk of `chunk` consecutive indices.
        let chunk = match op {
            Op::SessionGet => 1,
            _ => PRELOAD_BATCH,
        };
        let writers = writers as u64;
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..writers {
            let mut conn = self.conn(w as usize).await?;
            let value = value.clone();
            tasks.spawn(async move {
                let mut made = Vec::new();
                let mut first = w * chunk;
                while first < keys {
                    let indices = first..(first + chunk).min(keys);
                    if op == Op::SessionGet {
                        let token = conn
                            .preload_session(first, &value)
                            .await
                            .with_context(|| format!("preloading session {first}"))?;
                        made.extend(token.map(|t| (first, t)));
                    } else {
                        conn.preload_keys(indices.clone(), &value)
                            .await
                            .with_context(|| format!("preloading keys {indices:?}"))?;
                    }
                    first += writers * chunk;
                }
                anyhow::Ok(made)
            });
        }
        let mut tokens = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            tokens.extend(joined.context("a preload task panicked")??);
        }
        tokens.sort_unstable();
        Ok(tokens.into_iter().map(|(_, t)| t).collect())
    }

    /// Enqueues `jobs` jobs of `value`'s size (each with a payload of its own) to `queue`, in
    /// batches (EnqueueMany, LPUSH) spread over `writers` tasks, as the fill before a
    /// `dequeue_ack` run.
    pub(crate) async fn fill_queue(
        &self,
        queue: &str,
        jobs: u64,
        value: &Bytes,
        writers: usize,
    ) -> anyhow::Result<()> {
        let batch = (FILL_BATCH_BYTES / (value.len() as u64 + 32)).clamp(1, FILL_BATCH);
        let writers = writers as u64;
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..writers {
            let mut conn = self.conn(w as usize).await?;
            let (queue, value) = (queue.to_owned(), value.clone());
            tasks.spawn(async move {
                let mut first = w * batch;
                while first < jobs {
                    let payloads: Vec<Bytes> = (first..(first + batch).min(jobs))
                        .map(|i| fill_payload(i, &value))
                        .collect();
                    conn.enqueue_many(&queue, payloads)
                        .await
                        .with_context(|| format!("enqueueing jobs {first}.. of the fill"))?;
                    first += writers * batch;
                }
                anyhow::Ok(())
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined.context("a fill task panicked")??;
        }
        Ok(())
    }

    /// Empties the queue of a run (Larder: Purge; Redis: the list and its processing list
    /// deleted), so that a run leaves no jobs behind in the system it measured.
    pub(crate) async fn drop_queue(&self, queue: &str) -> anyhow::Result<()> {
        match self.conn(0).await? {
            Conn::Grpc(mut c) => {
                c.queues
                    .purge(pb::PurgeRequest {
                        queue: queue.to_owned(),
                    })
                    .await
                    .map_err(|s| anyhow::anyhow!("{}", status_text(s)))?;
            }
            Conn::Redis(mut conn) => {
                redis::cmd("DEL")
                    .arg(queue)
                    .arg(processing_list(queue))
                    .exec_async(&mut conn)
                    .await?;
            }
        }
        Ok(())
    }
}

fn set_request(key: String, value: Bytes) -> pb::SetRequest {
    pb::SetRequest {
        namespace: String::new(),
        key,
        value,
        ttl_ms: 0,
        condition: pb::Condition::Always as i32,
        expected_version: 0,
    }
}

/// The data of benchmark session `i`: a user id, a CSRF secret and `value` as a third field
/// (both systems store the same).
fn session_fields(i: u64, value: &Bytes) -> [(String, String); 3] {
    [
        ("user_id".to_owned(), format!("user:{i}")),
        (
            "csrf".to_owned(),
            format!("{:032x}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        ),
        (
            "blob".to_owned(),
            String::from_utf8_lossy(value).into_owned(),
        ),
    ]
}

/// The key of rate-limit client `i` (the same on both systems; one prefix per algorithm, as
/// Redis keeps a sorted set for one and a string for the other).
fn rate_limit_key(op: Op, i: u64) -> String {
    match op {
        Op::RatelimitSliding => format!("rl:sliding:{i}"),
        _ => format!("rl:gcra:{i}"),
    }
}

fn status_text(s: tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

impl Conn {
    /// Enqueues `payloads` to `queue` in one call: EnqueueMany (one transaction), or LPUSH
    /// of them all.
    async fn enqueue_many(&mut self, queue: &str, payloads: Vec<Bytes>) -> anyhow::Result<()> {
        match self {
            Conn::Grpc(c) => {
                let jobs = payloads
                    .into_iter()
                    .map(|payload| new_job(queue, payload))
                    .collect();
                c.queues
                    .enqueue_many(pb::EnqueueManyRequest { jobs })
                    .await
                    .map_err(|s| anyhow::anyhow!("{}", status_text(s)))?;
            }
            Conn::Redis(conn) => {
                let mut lpush = redis::cmd("LPUSH");
                lpush.arg(queue);
                for payload in &payloads {
                    lpush.arg(&payload[..]);
                }
                lpush.exec_async(conn).await?;
            }
        }
        Ok(())
    }

    /// Writes session `i`, as the preload before a `session_get` run does; returns the
    /// session token, if the system made one.
    async fn preload_session(&mut self, i: u64, value: &Bytes) -> anyhow::Result<Option<String>> {
        match self {
            Conn::Grpc(c) => {
                let created = c
                    .sessions
                    .create_session(pb::CreateSessionRequest {
                        user_id: format!("user:{i}"),
                        data: session_fields(i, value).into_iter().collect(),
                        idle_ttl_ms: SESSION_IDLE_MS,
                        ..Default::default()
                    })
                    .await?;
                Ok(Some(created.into_inner().token))
            }
            Conn::Redis(conn) => {
                let key = format!("session:{i}");
                redis::pipe()
                    .atomic()
                    .hset_multiple(&key, &session_fields(i, value))
                    .ignore()
                    .pexpire(&key, SESSION_IDLE_MS as i64)
                    .ignore()
                    .exec_async(conn)
                    .await?;
                Ok(None)
            }
        }
    }

    /// Writes `key:{i}` for every `i` of `indices` in one call (SetMany, or MSET), as the
    /// preload before a read run does.
    async fn preload_keys(
        &mut self,
        indices: std::ops::Range<u64>,
        value: &Bytes,
    ) -> anyhow::Result<()> {
        match self {
            Conn::Grpc(c) => {
                let entries = indices
                    .map(|i| pb::SetEntry {
                        key: format!("key:{i}"),
                        value: value.clone(),
                        ttl_ms: 0,
                    })
                    .collect();
                c.cache
                    .set_many(pb::SetManyRequest {
                        namespace: String::new(),
                        entries,
                    })
                    .await?;
            }
            Conn::Redis(conn) => {
                let mut mset = redis::cmd("MSET");
                for i in indices {
                    mset.arg(format!("key:{i}")).arg(&value[..]);
                }
                mset.exec_async(conn).await?;
            }
        }
        Ok(())
    }

    /// `depth` measured calls in one round trip (Redis pipelining), on the keys of `batch`
    /// (`getmany`: `many[j]` for the j-th); how many found, stored or were allowed. One
    /// gRPC call when `batch` holds one key.
    pub(crate) async fn call_batch(
        &mut self,
        w: &Workload,
        batch: &[u64],
        many: &[[u64; GETMANY_KEYS]],
        nonce: u64,
    ) -> Result<u64, CallError> {
        match self {
            Conn::Redis(conn) if batch.len() > 1 => redis_batch(conn, w, batch, many, nonce)
                .await
                .map_err(|e| CallError::Failed(e.to_string())),
            _ => {
                let empty = [0; GETMANY_KEYS];
                let many = many.first().unwrap_or(&empty);
                self.call(w, batch[0], many, nonce).await.map(u64::from)
            }
        }
    }

    /// One measured call on key, session or client `i` (`getmany`: `keys[0..16]`): whether
    /// it found (or stored) everything asked for or, for rate limits, was allowed. `nonce`
    /// differs between all calls of a run.
    pub(crate) async fn call(
        &mut self,
        w: &Workload,
        i: u64,
        many: &[u64; GETMANY_KEYS],
        nonce: u64,
    ) -> Result<bool, CallError> {
        match self {
            Conn::Grpc(c) if w.op == Op::DequeueAck => c.dequeue_ack(w).await,
            Conn::Grpc(c) => c
                .call(w, i, many)
                .await
                .map_err(|s| CallError::Failed(status_text(s))),
            Conn::Redis(conn) if w.op == Op::DequeueAck => redis_dequeue_ack(conn, w).await,
            Conn::Redis(conn) => redis_call(conn, w, i, many, nonce)
                .await
                .map_err(|e| CallError::Failed(e.to_string())),
        }
    }
}

/// One job of `queue` with `payload`, ready now, with the server's defaults.
fn new_job(queue: &str, payload: Bytes) -> pb::NewJob {
    pb::NewJob {
        queue: queue.to_owned(),
        payload,
        ..Default::default()
    }
}

/// The request of a measured call, as a call on a Run stream: the same message the unary
/// call sends. `None` for the queue ops, which PipelineService does not carry (`larder bench`
/// refuses `--pipeline` with them).
fn pipelined(w: &Workload, i: u64, many: &[u64; GETMANY_KEYS]) -> Option<Call> {
    Some(match w.op {
        Op::Get => Call::Get(pb::GetRequest {
            namespace: String::new(),
            key: format!("key:{i}"),
        }),
        Op::Set => Call::Set(set_request(format!("key:{i}"), w.value.clone())),
        Op::Incr => Call::Increment(pb::IncrementRequest {
            namespace: String::new(),
            key: format!("counter:{i}"),
            delta: 1,
            ttl_ms: 0,
            ..Default::default()
        }),
        Op::GetMany => Call::GetMany(pb::GetManyRequest {
            namespace: String::new(),
            keys: many.iter().map(|k| format!("key:{k}")).collect(),
        }),
        Op::SessionGet => Call::GetSession(pb::GetSessionRequest {
            token: w.tokens[i as usize].clone(),
        }),
        Op::RatelimitSliding | Op::RatelimitGcra => Call::Check(rate_limit_check(w, i)),
        Op::Enqueue | Op::DequeueAck => return None,
    })
}

/// Whether a pipelined answer found, stored or allowed what was asked, as for the unary call.
fn answered(outcome: Outcome) -> bool {
    match outcome {
        Outcome::Get(r) => r.found,
        Outcome::Set(r) => r.stored,
        Outcome::Increment(r) => r.value > 0,
        Outcome::GetMany(r) => r.entries.iter().all(|e| e.found),
        Outcome::GetSession(r) => r.found,
        Outcome::Check(r) => r.allowed,
        _ => true,
    }
}

/// The Check of a rate-limit op on client `i`.
fn rate_limit_check(w: &Workload, i: u64) -> pb::CheckRequest {
    let algorithm = match w.op {
        Op::RatelimitSliding => pb::Algorithm::SlidingWindow,
        _ => pb::Algorithm::Gcra,
    };
    pb::CheckRequest {
        key: rate_limit_key(w.op, i),
        limit: w.rl_limit,
        period_ms: w.rl_period_ms,
        algorithm: algorithm as i32,
        ..Default::default()
    }
}

impl GrpcConn {
    async fn call(
        &mut self,
        w: &Workload,
        i: u64,
        many: &[u64; GETMANY_KEYS],
    ) -> Result<bool, tonic::Status> {
        if let Some(pipe) = &self.pipe
            && let Some(call) = pipelined(w, i, many)
        {
            return pipe.call(call).await.map(answered);
        }
        match w.op {
            Op::Get => self
                .cache
                .get(pb::GetRequest {
                    namespace: String::new(),
                    key: format!("key:{i}"),
                })
                .await
                .map(|r| r.into_inner().found),
            Op::Set => self
                .cache
                .set(set_request(format!("key:{i}"), w.value.clone()))
                .await
                .map(|r| r.into_inner().stored),
            Op::Incr => self
                .cache
                .increment(pb::IncrementRequest {
                    namespace: String::new(),
                    key: format!("counter:{i}"),
                    delta: 1,
                    ttl_ms: 0,
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner().value > 0),
            Op::GetMany => self
                .cache
                .get_many(pb::GetManyRequest {
                    namespace: String::new(),
                    keys: many.iter().map(|k| format!("key:{k}")).collect(),
                })
                .await
                .map(|r| r.into_inner().entries.iter().all(|e| e.found)),
            Op::SessionGet => self
                .sessions
                .get_session(pb::GetSessionRequest {
                    token: w.tokens[i as usize].clone(),
                })
                .await
                .map(|r| r.into_inner().found),
            Op::RatelimitSliding | Op::RatelimitGcra => self
                .rate_limits
                .check(rate_limit_check(w, i))
                .await
                .map(|r| r.into_inner().allowed),
            Op::Enqueue => self
                .queues
                .enqueue(pb::EnqueueRequest {
                    job: Some(new_job(&w.queue, w.value.clone())),
                })
                .await
                .map(|r| !r.into_inner().duplicate),
            // Two calls: `Conn::call` sends it to `dequeue_ack`.
            Op::DequeueAck => Err(tonic::Status::internal("dequeue_ack is two calls")),
        }
    }

    /// One `dequeue_ack`: leases one job of the run's queue (waiting up to
    /// [`QUEUE_WAIT_MS`] for one), then acknowledges its lease.
    async fn dequeue_ack(&mut self, w: &Workload) -> Result<bool, CallError> {
        let failed = |s| CallError::Failed(status_text(s));
        let jobs = self
            .queues
            .dequeue(pb::DequeueRequest {
                queues: vec![w.queue.clone()],
                max_jobs: 1,
                wait_ms: QUEUE_WAIT_MS,
                ..Default::default()
            })
            .await
            .map_err(failed)?
            .into_inner()
            .jobs;
        let job = jobs.into_iter().next().ok_or(CallError::QueueEmpty)?;
        self.queues
            .ack(pb::AckRequest { lease: job.lease })
            .await
            .map_err(failed)?;
        Ok(true)
    }
}

/// One `dequeue_ack` the way Redis users write a reliable queue: `BLMOVE` the oldest job to
/// the processing list (waiting up to [`QUEUE_WAIT_MS`]), then, the work done, `LREM` it from
/// there. Two round trips, as the second needs the first's answer.
async fn redis_dequeue_ack(
    conn: &mut redis::aio::MultiplexedConnection,
    w: &Workload,
) -> Result<bool, CallError> {
    let failed = |e: redis::RedisError| CallError::Failed(e.to_string());
    // The client gives up on a reply after 500 ms by default: BLMOVE's own wait must end
    // first, so that an empty queue answers nil rather than a client-side timeout.
    conn.set_response_timeout(Duration::from_millis(QUEUE_WAIT_MS) + CONNECT_TIMEOUT);
    let processing = processing_list(&w.queue);
    let job = redis::cmd("BLMOVE")
        .arg(&w.queue)
        .arg(&processing)
        .arg("RIGHT")
        .arg("LEFT")
        .arg(QUEUE_WAIT_MS as f64 / 1000.0)
        .query_async::<Option<Vec<u8>>>(conn)
        .await
        .map_err(failed)?
        .ok_or(CallError::QueueEmpty)?;
    let removed = redis::cmd("LREM")
        .arg(&processing)
        .arg(1)
        .arg(job)
        .query_async::<i64>(conn)
        .await
        .map_err(failed)?;
    Ok(removed == 1)
}

async fn redis_call(
    conn: &mut redis::aio::MultiplexedConnection,
    w: &Workload,
    i: u64,
    many: &[u64; GETMANY_KEYS],
    nonce: u64,
) -> redis::RedisResult<bool> {
    match w.op {
        Op::Get => redis::cmd("GET")
            .arg(format!("key:{i}"))
            .query_async::<Option<Vec<u8>>>(conn)
            .await
            .map(|v| v.is_some()),
        Op::Set => redis::cmd("SET")
            .arg(format!("key:{i}"))
            .arg(&w.value[..])
            .exec_async(conn)
            .await
            .map(|()| true),
        Op::Incr => redis::cmd("INCR")
            .arg(format!("counter:{i}"))
            .query_async::<i64>(conn)
            .await
            .map(|v| v > 0),
        Op::GetMany => {
            let mut mget = redis::cmd("MGET");
            for k in many {
                mget.arg(format!("key:{k}"));
            }
            mget.query_async::<Vec<Option<Vec<u8>>>>(conn)
                .await
                .map(|values| values.iter().all(Option::is_some))
        }
        Op::SessionGet => {
            let key = format!("session:{i}");
            redis::pipe()
                .atomic()
                .hgetall(&key)
                .pexpire(&key, SESSION_IDLE_MS as i64)
                .query_async::<(HashMap<String, String>, bool)>(conn)
                .await
                .map(|(fields, _)| !fields.is_empty())
        }
        Op::RatelimitSliding => {
            let key = rate_limit_key(Op::RatelimitSliding, i);
            // The client's clock, as the web apps keeping this log in Redis use.
            let now_ms = now_ms();
            let period = w.rl_period_ms;
            redis::pipe()
                .atomic()
                .zrembyscore(&key, 0, now_ms.saturating_sub(period))
                .ignore()
                .zadd(&key, format!("{now_ms}-{nonce:x}"), now_ms)
                .ignore()
                .zcard(&key)
                .pexpire(&key, period as i64)
                .ignore()
                .query_async::<(u64,)>(conn)
                .await
                .map(|(count,)| count <= u64::from(w.rl_limit))
        }
        Op::Enqueue => redis::cmd("LPUSH")
            .arg(&w.queue)
            .arg(&w.value[..])
            .query_async::<i64>(conn)
            .await
            .map(|len| len > 0),
        Op::DequeueAck => Err(redis::RedisError::from((
            redis::ErrorKind::Client,
            "dequeue_ack is two round trips: `Conn::call` sends it to redis_dequeue_ack",
        ))),
        Op::RatelimitGcra => {
            let Some(sha) = w.gcra_sha.as_deref() else {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::Client,
                    "the GCRA script was not loaded",
                )));
            };
            redis::cmd("EVALSHA")
                .arg(sha)
                .arg(1)
                .arg(rate_limit_key(Op::RatelimitGcra, i))
                .arg(w.rl_limit) // burst
                .arg(w.rl_limit) // rate
                .arg(w.rl_period_ms)
                .arg(1) // cost
                .query_async::<(u8, u64, u64, u64)>(conn)
                .await
                .map(|(allowed, _remaining, _retry_after, _reset_after)| allowed == 1)
        }
    }
}

/// The current time by the client's clock, in Unix milliseconds (the sliding-window log, as
/// the web apps keeping it in Redis take it).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Appends to `pipe` the commands one call of `w.op` on `i` sends (`many`: getmany's keys),
/// exactly those [`redis_call`] sends, with a transaction's `MULTI` and `EXEC` spelled out.
/// Gives how many replies they make.
fn queue_commands(
    pipe: &mut redis::Pipeline,
    w: &Workload,
    i: u64,
    many: &[u64; GETMANY_KEYS],
    nonce: u64,
) -> usize {
    match w.op {
        Op::Get => {
            pipe.cmd("GET").arg(format!("key:{i}"));
            1
        }
        Op::Set => {
            pipe.cmd("SET").arg(format!("key:{i}")).arg(&w.value[..]);
            1
        }
        Op::Incr => {
            pipe.cmd("INCR").arg(format!("counter:{i}"));
            1
        }
        Op::Enqueue => {
            pipe.cmd("LPUSH").arg(&w.queue).arg(&w.value[..]);
            1
        }
        // Never pipelined: its LREM needs BLMOVE's answer, so `larder bench` refuses
        // `--redis-pipeline` with it before any call is made.
        Op::DequeueAck => unreachable!("dequeue_ack is never pipelined"),
        Op::GetMany => {
            let mget = pipe.cmd("MGET");
            for k in many {
                mget.arg(format!("key:{k}"));
            }
            1
        }
        Op::SessionGet => {
            let key = format!("session:{i}");
            pipe.cmd("MULTI")
                .cmd("HGETALL")
                .arg(&key)
                .cmd("PEXPIRE")
                .arg(&key)
                .arg(SESSION_IDLE_MS)
                .cmd("EXEC");
            4
        }
        Op::RatelimitSliding => {
            let key = rate_limit_key(Op::RatelimitSliding, i);
            let (now, period) = (now_ms(), w.rl_period_ms);
            pipe.cmd("MULTI")
                .cmd("ZREMRANGEBYSCORE")
                .arg(&key)
                .arg(0)
                .arg(now.saturating_sub(period))
                .cmd("ZADD")
                .arg(&key)
                .arg(now)
                .arg(format!("{now}-{nonce:x}"))
                .cmd("ZCARD")
                .arg(&key)
                .cmd("PEXPIRE")
                .arg(&key)
                .arg(period)
                .cmd("EXEC");
            6
        }
        Op::RatelimitGcra => {
            pipe.cmd("EVALSHA")
                .arg(w.gcra_sha.as_deref().unwrap_or_default())
                .arg(1)
                .arg(rate_limit_key(Op::RatelimitGcra, i))
                .arg(w.rl_limit)
                .arg(w.rl_limit)
                .arg(w.rl_period_ms)
                .arg(1);
            1
        }
    }
}

/// Whether the last reply of one call (`EXEC`'s for a transaction) found, stored or allowed
/// what was asked, as [`redis_call`] judges it.
fn redis_answered(op: Op, rl_limit: u32, reply: &redis::Value) -> redis::RedisResult<bool> {
    use redis::Value;
    let bad = |what: &str| {
        redis::RedisError::from((
            redis::ErrorKind::Client,
            "unexpected reply",
            format!("{}: {what}: {reply:?}", op.name()),
        ))
    };
    if let Value::ServerError(e) = reply {
        return Err(bad(&format!("{e:?}")));
    }
    let int = |v: &Value| match v {
        Value::Int(n) => Some(*n),
        _ => None,
    };
    Ok(match op {
        Op::Get => !matches!(reply, Value::Nil),
        Op::Set => true,
        Op::Incr => int(reply).ok_or_else(|| bad("not an integer"))? > 0,
        Op::Enqueue => int(reply).ok_or_else(|| bad("not an integer"))? > 0,
        Op::DequeueAck => return Err(bad("dequeue_ack is never pipelined")),
        Op::GetMany => match reply {
            Value::Array(values) => values.iter().all(|v| !matches!(v, Value::Nil)),
            _ => return Err(bad("not an array")),
        },
        Op::SessionGet => match reply {
            Value::Array(replies) => match replies.first() {
                Some(Value::Array(fields)) => !fields.is_empty(),
                Some(Value::Map(fields)) => !fields.is_empty(),
                _ => return Err(bad("no HGETALL reply")),
            },
            _ => return Err(bad("not an EXEC reply")),
        },
        Op::RatelimitSliding => match reply {
            Value::Array(replies) => {
                let count = replies
                    .get(2)
                    .and_then(int)
                    .ok_or_else(|| bad("no ZCARD"))?;
                count <= i64::from(rl_limit)
            }
            _ => return Err(bad("not an EXEC reply")),
        },
        Op::RatelimitGcra => match reply {
            Value::Array(replies) => replies.first().and_then(int) == Some(1),
            _ => return Err(bad("not an array")),
        },
    })
}

/// One round trip carrying a call of `w.op` for each key of `batch` (Redis pipelining); how
/// many of them found, stored or were allowed.
async fn redis_batch(
    conn: &mut redis::aio::MultiplexedConnection,
    w: &Workload,
    batch: &[u64],
    many: &[[u64; GETMANY_KEYS]],
    nonce: u64,
) -> redis::RedisResult<u64> {
    let mut pipe = redis::pipe();
    let empty = [0; GETMANY_KEYS];
    let mut replies_per_call = 1;
    for (j, &i) in batch.iter().enumerate() {
        let keys = many.get(j).unwrap_or(&empty);
        replies_per_call = queue_commands(&mut pipe, w, i, keys, nonce + j as u64);
    }
    let replies: Vec<redis::Value> = pipe.query_async(conn).await?;
    let mut answered = 0;
    for call in replies.chunks(replies_per_call) {
        let last = call.last().ok_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::Client, "a pipeline with no reply"))
        })?;
        answered += u64::from(redis_answered(w.op, w.rl_limit, last)?);
    }
    Ok(answered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_lists_parse_in_order_in_either_spelling() {
        assert_eq!(parse_ops("get").unwrap(), vec![Op::Get]);
        assert_eq!(
            parse_ops(
                "get,set,incr,getmany,session_get,ratelimit_sliding,ratelimit_gcra,enqueue,\
                 dequeue_ack"
            )
            .unwrap(),
            ALL_OPS.to_vec()
        );
        assert_eq!(
            parse_ops("ratelimit-gcra, get-session,Session-Get,get").unwrap(),
            vec![Op::RatelimitGcra, Op::SessionGet, Op::Get]
        );
        for op in ALL_OPS {
            assert_eq!(Op::parse(op.name()), Ok(op));
        }
    }

    #[test]
    fn an_unknown_or_empty_op_is_a_clear_error() {
        let error = parse_ops("get,hgetall").unwrap_err();
        assert_eq!(error, OpsError::Unknown("hgetall".to_owned()));
        let message = error.to_string();
        assert!(message.contains("\"hgetall\""), "{message}");
        assert!(message.contains("dequeue_ack"), "{message}");
        assert_eq!(parse_ops(""), Err(OpsError::Empty));
        assert_eq!(parse_ops("get,,set"), Err(OpsError::Empty));
    }

    fn workload(op: Op) -> Workload {
        Workload {
            op,
            keys: 10,
            value: Bytes::from_static(b"vvv"),
            tokens: vec!["lds_t0".into(), "lds_t1".into()],
            rl_limit: 5,
            rl_period_ms: 1000,
            gcra_sha: Some("abc".into()),
            queue: "q".into(),
        }
    }

    #[test]
    fn a_pipelined_call_carries_the_unary_request_of_its_op() {
        let many = [3; GETMANY_KEYS];
        for op in ALL_OPS {
            let w = workload(op);
            let Some(call) = pipelined(&w, 1, &many) else {
                assert!(op.is_queue(), "{op:?} has no pipelined call");
                continue;
            };
            match (op, call) {
                (Op::Get, Call::Get(r)) => assert_eq!(r.key, "key:1"),
                (Op::Set, Call::Set(r)) => {
                    assert_eq!((r.key.as_str(), &r.value[..]), ("key:1", &b"vvv"[..]));
                }
                (Op::Incr, Call::Increment(r)) => {
                    assert_eq!((r.key.as_str(), r.delta), ("counter:1", 1))
                }
                (Op::GetMany, Call::GetMany(r)) => assert_eq!(r.keys, vec!["key:3"; GETMANY_KEYS]),
                (Op::SessionGet, Call::GetSession(r)) => assert_eq!(r.token, "lds_t1"),
                (Op::RatelimitSliding, Call::Check(r)) => {
                    assert_eq!(r, rate_limit_check(&w, 1));
                    assert_eq!(r.algorithm, pb::Algorithm::SlidingWindow as i32);
                }
                (Op::RatelimitGcra, Call::Check(r)) => {
                    assert_eq!(
                        (r.key.as_str(), r.algorithm),
                        ("rl:gcra:1", pb::Algorithm::Gcra as i32)
                    );
                }
                (op, call) => panic!("{op:?} sent {call:?}"),
            }
        }
    }

    #[test]
    fn a_pipelined_answer_counts_as_found_like_the_unary_one() {
        let found = pb::GetResponse {
            found: true,
            ..Default::default()
        };
        assert!(answered(Outcome::Get(found)));
        assert!(!answered(Outcome::Get(pb::GetResponse::default())));
        assert!(!answered(Outcome::Set(pb::SetResponse::default())));
        let partial = pb::GetManyResponse {
            entries: vec![
                pb::Entry {
                    found: true,
                    ..Default::default()
                },
                pb::Entry::default(),
            ],
        };
        assert!(!answered(Outcome::GetMany(partial)));
        assert!(!answered(Outcome::Check(pb::CheckResponse::default())));
    }

    #[test]
    fn a_redis_batch_queues_each_calls_commands_and_reads_its_last_reply() {
        use redis::Value;
        let many = [0; GETMANY_KEYS];
        for (op, replies) in [
            (Op::Get, 1),
            (Op::Set, 1),
            (Op::Incr, 1),
            (Op::GetMany, 1),
            (Op::SessionGet, 4),
            (Op::RatelimitSliding, 6),
            (Op::RatelimitGcra, 1),
            (Op::Enqueue, 1),
        ] {
            let mut pipe = redis::pipe();
            let w = workload(op);
            assert_eq!(
                queue_commands(&mut pipe, &w, 1, &many, 7),
                replies,
                "{op:?}"
            );
            assert_eq!(
                queue_commands(&mut pipe, &w, 2, &many, 8),
                replies,
                "{op:?}"
            );
            let commands = pipe.cmd_iter().count();
            // MULTI and EXEC are commands of their own.
            assert_eq!(commands, 2 * replies, "{op:?}");
        }
        let yes = |op, reply: Value| redis_answered(op, 5, &reply).unwrap();
        assert!(yes(Op::Get, Value::BulkString(b"v".to_vec())));
        assert!(!yes(Op::Get, Value::Nil));
        assert!(yes(Op::Incr, Value::Int(3)));
        assert!(yes(Op::Enqueue, Value::Int(1)));
        assert!(redis_answered(Op::DequeueAck, 5, &Value::Int(1)).is_err());
        assert!(!yes(
            Op::GetMany,
            Value::Array(vec![Value::Nil, Value::Okay])
        ));
        let exec = |first: Value, count: i64| {
            Value::Array(vec![Value::Int(0), Value::Int(1), first, Value::Int(count)])
        };
        assert!(yes(
            Op::SessionGet,
            Value::Array(vec![Value::Array(vec![Value::Okay]), Value::Int(1)])
        ));
        assert!(!yes(
            Op::SessionGet,
            Value::Array(vec![Value::Array(vec![]), Value::Int(0)])
        ));
        assert!(yes(Op::RatelimitSliding, exec(Value::Int(5), 1)));
        assert!(!yes(Op::RatelimitSliding, exec(Value::Int(6), 1)));
        assert!(yes(
            Op::RatelimitGcra,
            Value::Array(vec![Value::Int(1), Value::Int(4)])
        ));
        assert!(!yes(
            Op::RatelimitGcra,
            Value::Array(vec![Value::Int(0), Value::Int(0)])
        ));
        assert!(
            redis_answered(Op::Incr, 5, &Value::Nil).is_err(),
            "a reply of the wrong type"
        );
    }

    #[test]
    fn fill_payloads_are_distinct_and_of_the_value_size() {
        let value = Bytes::from(vec![b'v'; 100]);
        let payloads: std::collections::HashSet<Bytes> =
            (0..1000).map(|i| fill_payload(i, &value)).collect();
        assert_eq!(payloads.len(), 1000);
        assert!(payloads.iter().all(|p| p.len() == 100));
        assert_eq!(&fill_payload(255, &value)[..4], b"ff:v");
        // A value too short for the number grows to hold it.
        assert_eq!(
            &fill_payload(0x1234, &Bytes::from_static(b"v"))[..],
            b"1234:"
        );
    }

    #[test]
    fn every_run_of_a_queue_op_has_a_queue_of_its_own() {
        let a = queue_name(Op::DequeueAck, "larder");
        let b = queue_name(Op::DequeueAck, "larder");
        assert_ne!(a, b);
        assert!(a.starts_with("bench:dequeue_ack:larder:"), "{a}");
        // Queue names are at most 128 bytes.
        assert!(queue_name(Op::DequeueAck, "redis-pipeline").len() <= 128);
        assert_eq!(processing_list("q"), "q:processing");
    }

    #[test]
    fn only_getmany_reads_many_keys() {
        for op in ALL_OPS {
            let expected = if op == Op::GetMany { 16 } else { 1 };
            assert_eq!(op.keys_per_call(), expected, "{op:?}");
        }
    }
}
