//! `bench`: the benchmark harness behind `scripts/bench.sh`. It owns two commands:
//!
//! - `bare-server`: a baseline CacheService doing nothing but a `HashMap` behind a `Mutex`
//!   (Get and Set; every other RPC is UNIMPLEMENTED), served by bare tonic with the same worker
//!   thread count and TCP_NODELAY as larder, so that larder's cost over the gRPC stack itself
//!   can be read off side by side.
//! - `load`: a closed-loop load generator: `--concurrency` tasks, each issuing one operation
//!   back to back on uniformly random keys, with per-call latency in an HDR histogram; prints
//!   ops/s, p50, p99, p99.9 and errors (one JSON line with `--json`), and the CPU the client
//!   and (with `--server-pid`) the server spent in the measured window, since on a small
//!   machine the two share the cores. Against larder (`http://…`, tasks spread round-robin
//!   over `--connections` HTTP/2 connections) the operations are unary Get, Set,
//!   GetSession and RateLimitService Check calls; against Redis (`redis://…`, one connection
//!   per task, as web workers hold them) they are what apps send Redis for the same job: GET,
//!   SET, and for a session `MULTI; HGETALL session:{i}; PEXPIRE session:{i} <idle>; EXEC`
//!   (read it and slide its expiry in one round trip).
//! - The rate-limit ops check key `rl:sliding:{i}` or `rl:gcra:{i}` against `--rl-limit`
//!   units per `--rl-period-ms` (default 100 per minute; cost 1; GCRA burst = limit), with no
//!   preload. `ratelimit-sliding` is larder's `Check` with `ALGORITHM_SLIDING_WINDOW`, against
//!   the sliding-window log web apps keep in Redis: `MULTI; ZREMRANGEBYSCORE k 0
//!   <now_ms - period>; ZADD k <now_ms> <unique member>; ZCARD k; PEXPIRE k <period>; EXEC`,
//!   allowed when the count is at most the limit (the client's clock; denied calls are
//!   logged too, as those limiters do). `ratelimit-gcra` is `Check` with `ALGORITHM_GCRA`,
//!   against `EVALSHA` of a GCRA Lua script (loaded once with `SCRIPT LOAD`; the server's
//!   clock). A denied answer is a successful call; the report gives the fraction allowed.
//!
//! Usage: `cargo run --release --example bench -- load --target http://127.0.0.1:7379 --op get`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use larder::pb;
use larder::pb::cache_service_client::CacheServiceClient;
use larder::pb::cache_service_server::{CacheService, CacheServiceServer};
use larder::pb::rate_limit_service_client::RateLimitServiceClient;
use larder::pb::session_service_client::SessionServiceClient;
use tokio::task::JoinSet;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Request, Response, Status};

/// How long a run may overrun its warmup + duration before its stuck tasks are abandoned.
const OVERRUN_GRACE: Duration = Duration::from_secs(30);
/// Bound on connecting to the target, and on preloading the key space.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const PRELOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// The histogram's range, in nanoseconds: 1 ns to 60 s at 3 significant digits.
const HIST_MAX_NS: u64 = 60_000_000_000;

/// Benchmark harness for larder's CacheService.
#[derive(Debug, Parser)]
#[command(name = "bench")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serve a baseline CacheService (Get/Set on a HashMap) with bare tonic.
    BareServer(BareServerArgs),
    /// Drive larder, the baseline or Redis with closed-loop calls of one op and report
    /// throughput and latency.
    Load(LoadArgs),
}

#[derive(Debug, Args)]
struct BareServerArgs {
    /// TCP address to listen on.
    #[arg(long, default_value = "127.0.0.1:17001")]
    listen: SocketAddr,
    /// Tokio worker threads (larder's default is 1).
    #[arg(long, default_value_t = 1)]
    worker_threads: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Op {
    /// CacheService/Get; Redis GET.
    Get,
    /// CacheService/Set; Redis SET.
    Set,
    /// SessionService/GetSession; Redis MULTI HGETALL + PEXPIRE EXEC.
    GetSession,
    /// RateLimitService/Check, sliding window; Redis MULTI ZREMRANGEBYSCORE + ZADD + ZCARD +
    /// PEXPIRE EXEC (a sliding-window log).
    RatelimitSliding,
    /// RateLimitService/Check, GCRA; Redis EVALSHA of a GCRA Lua script.
    RatelimitGcra,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Set => "set",
            Op::GetSession => "get-session",
            Op::RatelimitSliding => "ratelimit-sliding",
            Op::RatelimitGcra => "ratelimit-gcra",
        }
    }

    fn is_rate_limit(self) -> bool {
        matches!(self, Op::RatelimitSliding | Op::RatelimitGcra)
    }
}

/// The idle TTL of benchmark sessions (both systems), as web frameworks default to.
const SESSION_IDLE_MS: u64 = 30 * 60 * 1000;

/// The Redis side of `ratelimit-gcra`: GCRA over one key per client holding its theoretical
/// arrival time (TAT), in milliseconds since the epoch by the Redis server's clock.
/// KEYS[1]: the client's key. ARGV: burst, rate (units per period), period (ms), cost.
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

#[derive(Debug, Args)]
struct LoadArgs {
    /// The server: larder as http://127.0.0.1:7379 or unix:/path/to.sock, Redis as
    /// redis://127.0.0.1:6379 or unix+redis:/path/to.sock.
    #[arg(long)]
    target: String,
    /// Label for the report (e.g. "larder", "bare"); defaults to the target.
    #[arg(long)]
    system: Option<String>,
    /// Which RPC to issue.
    #[arg(long, value_enum, default_value = "get")]
    op: Op,
    /// Tasks issuing calls back to back (calls in flight).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// HTTP/2 connections the tasks are spread over, round-robin.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// How long to measure (after the warmup), e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// How long to run before measuring, e.g. 2s.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Size of the key space: keys are `key:0` .. `key:{keys-1}` (sessions: that many
    /// sessions, preloaded; rate limits: that many clients, `rl:sliding:{i}` or
    /// `rl:gcra:{i}`).
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Bytes per value written (Set, the preload before Get, and each session's data).
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Rate-limit ops: units admitted per key and period (GCRA's burst too).
    #[arg(long, default_value_t = 100)]
    rl_limit: u32,
    /// Rate-limit ops: the period, in milliseconds.
    #[arg(long, default_value_t = 60_000)]
    rl_period_ms: u64,
    /// Worker threads of the client's own runtime (default: one per core).
    #[arg(long)]
    client_threads: Option<usize>,
    /// The server's process id: its CPU time over the measured window is reported (Linux;
    /// read from /proc, so only for a server on this machine).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Print one JSON line instead of the human-readable report.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::BareServer(args) => bare_server(args),
        Cmd::Load(args) => load(args),
    }
}

// ---------------------------------------------------------------------------------------------
// The baseline server.

/// The baseline: what a CacheService costs with no store behind it at all.
#[derive(Debug, Default)]
struct Bare {
    map: Mutex<HashMap<String, Bytes>>,
}

#[tonic::async_trait]
impl CacheService for Bare {
    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let req = req.into_inner();
        let value = self
            .map
            .lock()
            .map_err(|_| Status::internal("map lock poisoned"))?
            .get(&req.key)
            .cloned();
        Ok(Response::new(match value {
            Some(value) => pb::GetResponse {
                found: true,
                value,
                version: 1,
                ttl_ms: 0,
            },
            None => pb::GetResponse::default(),
        }))
    }

    async fn set(&self, req: Request<pb::SetRequest>) -> Result<Response<pb::SetResponse>, Status> {
        let req = req.into_inner();
        self.map
            .lock()
            .map_err(|_| Status::internal("map lock poisoned"))?
            .insert(req.key, req.value);
        Ok(Response::new(pb::SetResponse {
            stored: true,
            version: 1,
        }))
    }

    async fn delete(
        &self,
        _: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        Err(Status::unimplemented("bare baseline: Get and Set only"))
    }

    async fn get_many(
        &self,
        _: Request<pb::GetManyRequest>,
    ) -> Result<Response<pb::GetManyResponse>, Status> {
        Err(Status::unimplemented("bare baseline: Get and Set only"))
    }

    async fn set_many(
        &self,
        _: Request<pb::SetManyRequest>,
    ) -> Result<Response<pb::SetManyResponse>, Status> {
        Err(Status::unimplemented("bare baseline: Get and Set only"))
    }

    async fn delete_many(
        &self,
        _: Request<pb::DeleteManyRequest>,
    ) -> Result<Response<pb::DeleteManyResponse>, Status> {
        Err(Status::unimplemented("bare baseline: Get and Set only"))
    }

    async fn delete_prefix(
        &self,
        _: Request<pb::DeletePrefixRequest>,
    ) -> Result<Response<pb::DeletePrefixResponse>, Status> {
        Err(Status::unimplemented("bare baseline: Get and Set only"))
    }

    async fn touch(
        &self,
        _: Request<pb::TouchRequest>,
    ) -> Result<Response<pb::TouchResponse>, Status> {
        Err(Status::unimplemented("bare baseline: Get and Set only"))
    }

    async fn increment(
        &self,
        _: Request<pb::IncrementRequest>,
    ) -> Result<Response<pb::IncrementResponse>, Status> {
        Err(Status::unimplemented("bare baseline: Get and Set only"))
    }

    async fn clear(
        &self,
        _: Request<pb::ClearRequest>,
    ) -> Result<Response<pb::ClearResponse>, Status> {
        Err(Status::unimplemented("bare baseline: Get and Set only"))
    }

    async fn stats(
        &self,
        _: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        Err(Status::unimplemented("bare baseline: Get and Set only"))
    }
}

fn bare_server(args: BareServerArgs) -> anyhow::Result<()> {
    if args.worker_threads == 0 {
        bail!("--worker-threads must be at least 1");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.worker_threads)
        .thread_name("bare-worker")
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        eprintln!(
            "bare-server: listening on {} with {} worker threads",
            args.listen, args.worker_threads
        );
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        Server::builder()
            .add_service(CacheServiceServer::new(Bare::default()))
            .serve_with_incoming_shutdown(incoming, async {
                // An error here means no signal handler could be set up: then run until killed.
                if tokio::signal::ctrl_c().await.is_err() {
                    std::future::pending::<()>().await;
                }
            })
            .await
            .context("serving")?;
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// The load generator.

/// What one task measured.
struct TaskResult {
    /// Latency of each successful call, in nanoseconds.
    hist: Histogram<u64>,
    /// Successful calls.
    ops: u64,
    /// Failed calls (any non-OK status).
    errors: u64,
    /// Successful calls that answered `found = false` (Get), `stored = false` (Set) or
    /// `allowed = false` (rate limits).
    misses: u64,
    first_error: Option<String>,
}

/// xorshift64*: enough to pick load keys uniformly, and free of dependencies.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        // splitmix64 of the seed, so nearby seeds give unrelated streams; never zero.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Self((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0), without modulo bias worth mentioning for n ≪ 2^64.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
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

fn load(args: LoadArgs) -> anyhow::Result<()> {
    if args.concurrency == 0 || args.connections == 0 || args.keys == 0 {
        bail!("--concurrency, --connections and --keys must be at least 1");
    }
    if args.duration.is_zero() {
        bail!("--duration must be more than 0");
    }
    if args.rl_limit == 0 || args.rl_period_ms == 0 {
        bail!("--rl-limit and --rl-period-ms must be at least 1");
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.client_threads {
        if threads == 0 {
            bail!("--client-threads must be at least 1");
        }
        builder.worker_threads(threads);
    }
    let runtime = builder.thread_name("load-worker").enable_all().build()?;
    runtime.block_on(run_load(args))
}

async fn run_load(args: LoadArgs) -> anyhow::Result<()> {
    let system_under_test = Sut::connect(&args).await?;
    let value = Bytes::from(vec![b'v'; args.value_size]);
    let tokens = tokio::time::timeout(PRELOAD_TIMEOUT, preload(&system_under_test, &args, &value))
        .await
        .context("preloading the key space timed out")??;
    let gcra_sha = match (&system_under_test, args.op) {
        (Sut::Redis(client), Op::RatelimitGcra) => Some(load_gcra_script(client).await?),
        _ => None,
    };
    let workload = Arc::new(Workload {
        op: args.op,
        keys: args.keys,
        value,
        tokens,
        rl_limit: args.rl_limit,
        rl_period_ms: args.rl_period_ms,
        gcra_sha,
    });
    let stats_before = system_under_test.stats().await;

    let start = Instant::now();
    let measure_from = start + args.warmup;
    let measure_until = measure_from + args.duration;
    let mut conns = Vec::with_capacity(args.concurrency);
    for task in 0..args.concurrency {
        conns.push(system_under_test.conn(task).await?);
    }
    let cpu = tokio::spawn(cpu_over(args.server_pid, measure_from, measure_until));
    let mut tasks = JoinSet::new();
    for (task, conn) in conns.into_iter().enumerate() {
        tasks.spawn(run_task(
            conn,
            workload.clone(),
            task as u64,
            measure_from,
            measure_until,
        ));
    }

    let mut total = Histogram::<u64>::new_with_bounds(1, HIST_MAX_NS, 3)?;
    let (mut ops, mut errors, mut misses, mut first_error) = (0u64, 0u64, 0u64, None);
    let deadline = tokio::time::Instant::from_std(measure_until + OVERRUN_GRACE);
    loop {
        let joined = match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(Some(joined)) => joined,
            Ok(None) => break,
            Err(_) => {
                let stuck = tasks.len();
                tasks.abort_all();
                bail!(
                    "{stuck} tasks still had a call in flight {OVERRUN_GRACE:?} after the run ended"
                );
            }
        };
        let r = joined.context("a load task panicked")?;
        total.add(&r.hist)?;
        ops += r.ops;
        errors += r.errors;
        misses += r.misses;
        if first_error.is_none() {
            first_error = r.first_error;
        }
    }

    // The sampler only sleeps and reads /proc, and the tasks have all ended by now.
    let cpu = cpu.await.context("the CPU sampler panicked")?;
    if let Some(error) = &first_error {
        eprintln!("bench: {errors} calls failed; the first: {error}");
    }
    if misses > 0 {
        match args.op {
            Op::Get | Op::GetSession => eprintln!(
                "bench: {misses} lookups found nothing although the key space was preloaded"
            ),
            Op::Set => eprintln!("bench: {misses} unconditional Sets answered stored=false"),
            // Denials are what a rate limiter is for: reported as the fraction allowed.
            Op::RatelimitSliding | Op::RatelimitGcra => {}
        }
    }
    // The cache's counters say nothing about rate limits.
    let stats_after = if args.op.is_rate_limit() {
        None
    } else {
        system_under_test.stats().await
    };
    if let (Some(before), Some(after)) = (stats_before, stats_after) {
        let hits = after.hits.saturating_sub(before.hits);
        let memory = after.memory_hits.saturating_sub(before.memory_hits);
        eprintln!(
            "bench: over warmup and run the server counted {hits} cache hits ({memory} from \
             memory), {} misses, {} sets",
            after.misses.saturating_sub(before.misses),
            after.sets.saturating_sub(before.sets),
        );
    }

    let system = args.system.as_deref().unwrap_or(&args.target);
    let ops_per_sec = ops as f64 / args.duration.as_secs_f64();
    let us = |q: f64| total.value_at_quantile(q) as f64 / 1000.0;
    let (p50, p99, p999) = (us(0.50), us(0.99), us(0.999));
    let window_ns = args.duration.as_nanos() as f64;
    let client_cores = cpu.client_ns.map(|ns| ns as f64 / window_ns);
    let server_cores = cpu.server_ns.map(|ns| ns as f64 / window_ns);
    // What neither side of the benchmark used: other processes, the kernel's own threads, and
    // time the hypervisor took. Without a server pid it includes the server.
    let other_cores = cpu.machine_ns.map(|ns| {
        let ours = cpu.server_ns.unwrap_or(0) + cpu.client_ns.unwrap_or(0);
        (ns as f64 - ours as f64).max(0.0) / window_ns
    });
    // Rate limits: the share of answered checks that were admitted.
    let allowed_fraction =
        (args.op.is_rate_limit() && ops > 0).then(|| (ops - misses) as f64 / ops as f64);
    let server_us_per_op = cpu
        .server_ns
        .filter(|_| ops > 0)
        .map(|ns| ns as f64 / ops as f64 / 1000.0);
    let fmt = |v: Option<f64>, decimals: usize| match v {
        Some(v) => format!("{v:.decimals$}"),
        None => "null".to_owned(),
    };
    if args.json {
        println!(
            "{{\"system\":{},\"op\":\"{}\",\"concurrency\":{},\"connections\":{},\
             \"ops\":{ops},\"ops_per_sec\":{ops_per_sec:.0},\"p50_us\":{p50:.1},\
             \"p99_us\":{p99:.1},\"p999_us\":{p999:.1},\"errors\":{errors},\"misses\":{misses},\
             \"server_cpu_us_per_op\":{},\"server_cores\":{},\"client_cores\":{},\
             \"other_cores\":{},\"allowed_fraction\":{}}}",
            json_string(system),
            args.op.name(),
            args.concurrency,
            args.connections,
            fmt(server_us_per_op, 1),
            fmt(server_cores, 2),
            fmt(client_cores, 2),
            fmt(other_cores, 2),
            fmt(allowed_fraction, 4),
        );
    } else {
        println!(
            "{system} {}: {ops_per_sec:.0} ops/s over {:?} ({ops} calls, concurrency {}, \
             {} connections), p50 {p50:.1} µs, p99 {p99:.1} µs, p99.9 {p999:.1} µs, \
             {errors} errors, {misses} misses{}; CPU: server {} cores ({} µs/op), client {} \
             cores, other {} cores",
            args.op.name(),
            args.duration,
            args.concurrency,
            args.connections,
            allowed_fraction
                .map(|f| format!(" (denials; {:.2}% allowed)", f * 100.0))
                .unwrap_or_default(),
            fmt(server_cores, 2),
            fmt(server_us_per_op, 1),
            fmt(client_cores, 2),
            fmt(other_cores, 2),
        );
    }
    Ok(())
}

/// The system under test: larder (or the bare baseline) over gRPC, or Redis.
enum Sut {
    Grpc(Vec<Channel>),
    Redis(redis::Client),
}

/// One task's connection.
enum Conn {
    Grpc(Box<GrpcConn>),
    Redis(redis::aio::MultiplexedConnection),
}

/// The clients of one gRPC task (one channel shared by all).
struct GrpcConn {
    cache: CacheServiceClient<Channel>,
    sessions: SessionServiceClient<Channel>,
    rate_limits: RateLimitServiceClient<Channel>,
}

/// What every task draws its calls from.
struct Workload {
    op: Op,
    keys: u64,
    value: Bytes,
    /// Session tokens by index (larder); empty for Redis, whose sessions are `session:{i}`.
    tokens: Vec<String>,
    /// Rate limits: units per key and period, and the period in milliseconds.
    rl_limit: u32,
    rl_period_ms: u64,
    /// The SHA1 of the GCRA script as Redis loaded it (Redis `ratelimit-gcra` only).
    gcra_sha: Option<String>,
}

impl Sut {
    async fn connect(args: &LoadArgs) -> anyhow::Result<Self> {
        if args.target.starts_with("redis://") || args.target.starts_with("unix+redis:") {
            // `unix+redis:/path` names Redis on a Unix socket (redis-rs spells it unix://).
            let url = match args.target.strip_prefix("unix+redis:") {
                Some(path) => format!("unix://{path}"),
                None => args.target.clone(),
            };
            let client = redis::Client::open(url.as_str())
                .with_context(|| format!("--target {:?} is not a Redis URL", args.target))?;
            return Ok(Sut::Redis(client));
        }
        let unix = args
            .target
            .strip_prefix("unix:")
            .map(std::path::PathBuf::from);
        let uri = if unix.is_some() {
            "http://localhost".to_owned()
        } else {
            args.target.clone()
        };
        let endpoint = Endpoint::from_shared(uri)
            .with_context(|| format!("--target {:?} is not a URI", args.target))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        let mut channels = Vec::with_capacity(args.connections);
        for _ in 0..args.connections {
            // `Channel` is one HTTP/2 connection; connecting each one eagerly makes it a
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
                .with_context(|| format!("connecting to {} timed out", args.target))?
                .with_context(|| format!("cannot connect to {}", args.target))?;
            channels.push(channel);
        }
        Ok(Sut::Grpc(channels))
    }

    /// The connection of task `task`: a share of the gRPC channels, or a Redis connection of
    /// its own.
    async fn conn(&self, task: usize) -> anyhow::Result<Conn> {
        Ok(match self {
            Sut::Grpc(channels) => {
                let channel = channels[task % channels.len()].clone();
                Conn::Grpc(Box::new(GrpcConn {
                    cache: CacheServiceClient::new(channel.clone()),
                    sessions: SessionServiceClient::new(channel.clone()),
                    rate_limits: RateLimitServiceClient::new(channel),
                }))
            }
            Sut::Redis(client) => Conn::Redis(
                tokio::time::timeout(CONNECT_TIMEOUT, client.get_multiplexed_async_connection())
                    .await
                    .context("connecting to Redis timed out")?
                    .context("cannot connect to Redis")?,
            ),
        })
    }

    /// The server's counters, when it answers Stats (larder does; the bare baseline and
    /// Redis do not).
    async fn stats(&self) -> Option<pb::StatsResponse> {
        let Sut::Grpc(channels) = self else {
            return None;
        };
        let mut client = CacheServiceClient::new(channels[0].clone());
        let call = client.stats(pb::StatsRequest::default());
        match tokio::time::timeout(CONNECT_TIMEOUT, call).await {
            Ok(Ok(r)) => Some(r.into_inner()),
            _ => None,
        }
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

impl Conn {
    /// Writes key or session `i` of the key space, as the preload before a read run does;
    /// returns the session token, if the system made one.
    async fn preload(&mut self, op: Op, i: u64, value: &Bytes) -> anyhow::Result<Option<String>> {
        match (self, op) {
            (_, Op::Set | Op::RatelimitSliding | Op::RatelimitGcra) => Ok(None),
            (Conn::Grpc(c), Op::Get) => {
                c.cache
                    .set(set_request(format!("key:{i}"), value.clone()))
                    .await?;
                Ok(None)
            }
            (Conn::Grpc(c), Op::GetSession) => {
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
            (Conn::Redis(conn), Op::Get) => {
                redis::cmd("SET")
                    .arg(format!("key:{i}"))
                    .arg(&value[..])
                    .exec_async(conn)
                    .await?;
                Ok(None)
            }
            (Conn::Redis(conn), Op::GetSession) => {
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

    /// One measured call on key or session `i`: whether it found (or stored) something, or
    /// (rate limits) was allowed. `nonce` differs between all calls of a run.
    async fn call(&mut self, w: &Workload, i: u64, nonce: u64) -> Result<bool, String> {
        match (self, w.op) {
            (Conn::Grpc(c), Op::Get) => c
                .cache
                .get(pb::GetRequest {
                    namespace: String::new(),
                    key: format!("key:{i}"),
                })
                .await
                .map(|r| r.into_inner().found)
                .map_err(|s| format!("{:?}: {}", s.code(), s.message())),
            (Conn::Grpc(c), Op::Set) => c
                .cache
                .set(set_request(format!("key:{i}"), w.value.clone()))
                .await
                .map(|r| r.into_inner().stored)
                .map_err(|s| format!("{:?}: {}", s.code(), s.message())),
            (Conn::Grpc(c), Op::GetSession) => c
                .sessions
                .get_session(pb::GetSessionRequest {
                    token: w.tokens[i as usize].clone(),
                })
                .await
                .map(|r| r.into_inner().found)
                .map_err(|s| format!("{:?}: {}", s.code(), s.message())),
            (Conn::Grpc(c), op @ (Op::RatelimitSliding | Op::RatelimitGcra)) => {
                let algorithm = match op {
                    Op::RatelimitSliding => pb::Algorithm::SlidingWindow,
                    _ => pb::Algorithm::Gcra,
                };
                c.rate_limits
                    .check(pb::CheckRequest {
                        key: rate_limit_key(op, i),
                        limit: w.rl_limit,
                        period_ms: w.rl_period_ms,
                        algorithm: algorithm as i32,
                        ..Default::default()
                    })
                    .await
                    .map(|r| r.into_inner().allowed)
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
            }
            (Conn::Redis(conn), Op::Get) => redis::cmd("GET")
                .arg(format!("key:{i}"))
                .query_async::<Option<Vec<u8>>>(conn)
                .await
                .map(|v| v.is_some())
                .map_err(|e| e.to_string()),
            (Conn::Redis(conn), Op::Set) => redis::cmd("SET")
                .arg(format!("key:{i}"))
                .arg(&w.value[..])
                .exec_async(conn)
                .await
                .map(|()| true)
                .map_err(|e| e.to_string()),
            (Conn::Redis(conn), Op::GetSession) => {
                let key = format!("session:{i}");
                redis::pipe()
                    .atomic()
                    .hgetall(&key)
                    .pexpire(&key, SESSION_IDLE_MS as i64)
                    .query_async::<(HashMap<String, String>, bool)>(conn)
                    .await
                    .map(|(fields, _)| !fields.is_empty())
                    .map_err(|e| e.to_string())
            }
            (Conn::Redis(conn), Op::RatelimitSliding) => {
                let key = rate_limit_key(Op::RatelimitSliding, i);
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_err(|e| e.to_string())?
                    .as_millis() as u64;
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
                    .map_err(|e| e.to_string())
            }
            (Conn::Redis(conn), Op::RatelimitGcra) => {
                let sha = w
                    .gcra_sha
                    .as_deref()
                    .ok_or("the GCRA script was not loaded")?;
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
                    .map_err(|e| e.to_string())
            }
        }
    }
}

/// The key of rate-limit client `i` (the same on both systems; one prefix per algorithm, as
/// Redis keeps a sorted set for one and a string for the other).
fn rate_limit_key(op: Op, i: u64) -> String {
    match op {
        Op::RatelimitSliding => format!("rl:sliding:{i}"),
        _ => format!("rl:gcra:{i}"),
    }
}

/// Loads the GCRA script into Redis (`SCRIPT LOAD`) and returns its SHA1, for `EVALSHA`.
async fn load_gcra_script(client: &redis::Client) -> anyhow::Result<String> {
    let loading = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(GCRA_LUA)
            .query_async::<String>(&mut conn)
            .await
    };
    tokio::time::timeout(CONNECT_TIMEOUT, loading)
        .await
        .context("loading the GCRA script into Redis timed out")?
        .context("cannot load the GCRA script into Redis")
}

/// Writes every key (or session) of the key space once, spread over `--concurrency` tasks,
/// so that every read hits (Set and the rate limits start from nothing); returns the session
/// tokens by index (larder sessions).
async fn preload(sut: &Sut, args: &LoadArgs, value: &Bytes) -> anyhow::Result<Vec<String>> {
    if !matches!(args.op, Op::Get | Op::GetSession) {
        return Ok(Vec::new());
    }
    let writers = args.concurrency as u64;
    let mut tasks = JoinSet::new();
    for w in 0..writers {
        let mut conn = sut.conn(w as usize).await?;
        let (keys, value, op) = (args.keys, value.clone(), args.op);
        tasks.spawn(async move {
            let mut made = Vec::new();
            let mut i = w;
            while i < keys {
                if let Some(token) = conn
                    .preload(op, i, &value)
                    .await
                    .with_context(|| format!("preloading {i}"))?
                {
                    made.push((i, token));
                }
                i += writers;
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

/// One closed-loop caller: issues calls back to back until `until`, recording those that start
/// at or after `from`.
async fn run_task(
    mut conn: Conn,
    workload: Arc<Workload>,
    seed: u64,
    from: Instant,
    until: Instant,
) -> TaskResult {
    let mut rng = XorShift::new(seed);
    let mut r = TaskResult {
        // The bounds are constants that `new_with_bounds` accepts (1 ≤ low, high ≥ 2·low).
        hist: Histogram::new_with_bounds(1, HIST_MAX_NS, 3).expect("valid histogram bounds"),
        ops: 0,
        errors: 0,
        misses: 0,
        first_error: None,
    };
    // Unique per call of the run: the task in the high bits, its call count in the low ones.
    let mut nonce = seed << 40;
    loop {
        let i = rng.below(workload.keys);
        let t0 = Instant::now();
        if t0 >= until {
            break;
        }
        nonce += 1;
        let outcome = conn.call(&workload, i, nonce).await;
        let elapsed = t0.elapsed();
        if t0 < from {
            continue;
        }
        // Failed calls count neither as throughput nor in the latencies: a fast error would
        // flatter both.
        match outcome {
            Ok(answered) => {
                r.ops += 1;
                r.hist.saturating_record(elapsed.as_nanos() as u64);
                if !answered {
                    r.misses += 1;
                }
            }
            Err(error) => {
                r.errors += 1;
                r.first_error.get_or_insert(error);
            }
        }
    }
    r
}

/// CPU time spent in the measured window; `None` where /proc could not tell.
struct CpuUse {
    server_ns: Option<u64>,
    client_ns: Option<u64>,
    /// Every CPU of the machine, busy or stolen by the hypervisor.
    machine_ns: Option<u64>,
}

/// `/proc/stat` counts in USER_HZ ticks, which Linux fixes at 100 per second on x86 and arm64.
const NS_PER_USER_HZ_TICK: u64 = 10_000_000;

/// Samples the CPU time of the server (if its pid is known) and of this process at `from` and
/// at `until`.
async fn cpu_over(server_pid: Option<u32>, from: Instant, until: Instant) -> CpuUse {
    let sample = || {
        (
            server_pid.and_then(|pid| process_cpu_ns(&pid.to_string())),
            process_cpu_ns("self"),
            machine_busy_ns(),
        )
    };
    tokio::time::sleep_until(tokio::time::Instant::from_std(from)).await;
    let (server0, client0, machine0) = sample();
    tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await;
    let (server1, client1, machine1) = sample();
    let delta = |a: Option<u64>, b: Option<u64>| Some(b?.saturating_sub(a?));
    CpuUse {
        server_ns: delta(server0, server1),
        client_ns: delta(client0, client1),
        machine_ns: delta(machine0, machine1),
    }
}

/// On-CPU nanoseconds of every live thread of process `pid` ("self" for this one), from
/// `/proc/<pid>/task/*/schedstat` (whose first field is exactly that). Threads that exit
/// between two samples are missed; the servers measured here keep theirs.
fn process_cpu_ns(pid: &str) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let on_cpu_ns = |task: std::fs::DirEntry| {
        let schedstat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
        schedstat.split_whitespace().next()?.parse::<u64>().ok()
    };
    // A thread that ends while being listed has no schedstat left to read: it is skipped.
    Some(tasks.flatten().filter_map(on_cpu_ns).sum())
}

/// Busy and stolen time of all CPUs together, from the first line of `/proc/stat`
/// (`cpu user nice system idle iowait irq softirq steal ...`).
fn machine_busy_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let [user, nice, system, _idle, _iowait, irq, softirq, steal] = fields[..] else {
        return None;
    };
    Some((user + nice + system + irq + softirq + steal) * NS_PER_USER_HZ_TICK)
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
