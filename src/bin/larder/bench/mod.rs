//! `larder bench`: Larder's own load generator, as `redis-benchmark` is to Redis. It drives a
//! running daemon over gRPC (`--target http://host:port` or `unix:/path`) and, with
//! `--redis URL`, Redis doing the same jobs, op by op, Larder then Redis, in the same run, so
//! that every figure comes with a ratio.
//!
//! Each run (one system, one op) has `--concurrency` tasks issue calls on uniformly random keys
//! of a `--keys` key space, for `--warmup` and then `--duration` (or until `--requests` calls
//! were measured), each recording its latencies in an HDR histogram of its own; the histograms
//! are merged at the end of the run. Failed calls count neither as throughput nor in the
//! latencies. By default the loop is closed (a task calls again as soon as it is answered),
//! which measures the most a system does; with `--rate` it is open: calls are due on a fixed
//! timetable and a late call is timed from when it was due, so a stall is charged to every
//! call it held up rather than hidden (coordinated omission).
//!
//! - [`ops`]: the operations, their names, and the connections to both systems.
//! - [`report`]: histogram merge, ratios, the JSON line and the human table.
//! - [`pipeline`]: `--pipeline`, Larder's calls multiplexed on one Run stream per connection.
//! - [`cpu`]: CPU time of the server, the client and the machine over the measured window.
//! - `bare`: the bare tonic baseline `scripts/bench.sh` compares Larder with.

mod bare;
pub mod cpu;
pub mod ops;
mod pipeline;
pub mod report;

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use hdrhistogram::Histogram;
use tokio::task::JoinSet;

use self::cpu::CpuSample;
use self::ops::{
    Bearer, CallError, Conn, GETMANY_KEYS, Op, OpsError, QUEUE_WAIT_MS, Sut, Workload, parse_ops,
    queue_name,
};
use self::report::{Measured, RunReport};

/// How long a timed run may overrun its warmup + duration before its stuck tasks are
/// abandoned.
const OVERRUN_GRACE: Duration = Duration::from_secs(30);
/// Bound on preloading the key space: this, plus [`PRELOAD_KEYS_PER_SEC_FLOOR`]'s share.
const PRELOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// The slowest preload rate the timeout allows for on top of [`PRELOAD_TIMEOUT`], in keys a
/// second (2M keys: about 5 more minutes).
const PRELOAD_KEYS_PER_SEC_FLOOR: u64 = 10_000;
/// The highest `--rate` accepted, in calls a second.
const MAX_RATE: f64 = 10_000_000.0;
/// The warmup of a timed run when `--warmup` is not given (a `--requests` run has none).
const DEFAULT_WARMUP: Duration = Duration::from_secs(2);
/// The measured time of a run when neither `--duration` nor `--requests` is given.
const DEFAULT_DURATION: Duration = Duration::from_secs(10);
/// Jobs done a second that the default fill of a closed-loop `dequeue_ack` run allows for,
/// over its warmup and its measured time. Above anything the 2-core machine the figures come
/// from can do: Redis's BLMOVE + LREM reached 24,000–38,000 pairs a second there, and a pair
/// is two commands, each about as costly as a GET, which Redis answers at most about 110,000
/// times a second there. The default run (12 s) still stays under Larder's `queue.max_jobs`
/// of 1,000,000.
const DEQUEUE_RATE_BOUND: f64 = 80_000.0;

/// The `--ops` list, parsed.
#[derive(Debug, Clone)]
pub struct OpList(pub Vec<Op>);

fn op_list(s: &str) -> Result<OpList, OpsError> {
    parse_ops(s).map(OpList)
}

/// Flags of `larder bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The Larder daemon: http://HOST:PORT, or unix:/path/to.sock. A Redis URL
    /// (redis://HOST:PORT or unix+redis:/path) measures that Redis alone.
    #[arg(long, default_value = "http://127.0.0.1:7379")]
    pub target: String,
    /// A file holding the bearer token for a daemon that requires one (auth.token_file).
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<std::path::PathBuf>,
    /// Redis to run every op against as well, right after Larder: redis://HOST:PORT or
    /// unix+redis:/path/to.sock.
    #[arg(long)]
    pub redis: Option<String>,
    /// Ops to run, a comma list of: get, set, incr, getmany, session_get, ratelimit_sliding,
    /// ratelimit_gcra, enqueue, dequeue_ack (dashes work too).
    #[arg(
        long,
        value_parser = op_list,
        default_value = "get,set,incr,getmany,session_get,ratelimit_sliding,ratelimit_gcra,enqueue,dequeue_ack"
    )]
    pub ops: OpList,
    /// Send Larder's calls on PipelineService/Run: one stream per connection, which the
    /// callers of that connection multiplex their calls on (rows say larder-pipeline).
    #[arg(long)]
    pub pipeline: bool,
    /// Each Redis caller sends this many commands per round trip (pipelining); each counts
    /// as an op, timed by its batch's round trip (rows say redis-pipeline) [default: one at
    /// a time].
    #[arg(long, value_name = "N")]
    pub redis_pipeline: Option<usize>,
    /// Callers issuing calls back to back (calls in flight).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// HTTP/2 connections to Larder the callers share, round-robin (Redis: one connection
    /// per caller, as web workers hold them).
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// How long to measure each run, after the warmup, e.g. 10s [default: 10s].
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "requests")]
    pub duration: Option<Duration>,
    /// Open loop: issue this many calls a second in all, on a fixed schedule spread over the
    /// callers, and time each call from when it was due, so that a stall shows in the
    /// latencies of the calls it delayed (no coordinated omission) [default: closed loop,
    /// each caller calling again as soon as it is answered].
    #[arg(long, value_name = "CALLS_PER_SEC")]
    pub rate: Option<f64>,
    /// Measure this many calls per run instead of a duration.
    #[arg(long)]
    pub requests: Option<u64>,
    /// How long to run before measuring, e.g. 2s [default: 2s, or 0s with --requests].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub warmup: Option<Duration>,
    /// Size of the key space: `key:0` .. `key:{keys-1}` (preloaded for get and getmany),
    /// `counter:{i}` for incr, that many sessions (preloaded), or rate-limit clients.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Skip the preload of get and getmany: the key space is there from an earlier run (as
    /// after a restart on the same data dir). Not with session_get, whose tokens the preload
    /// makes.
    #[arg(long)]
    pub no_preload: bool,
    /// Bytes per value written (set, the preload, each session's data).
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Rate-limit ops: units admitted per key and period (GCRA's burst too).
    #[arg(long, default_value_t = 100)]
    pub rl_limit: u32,
    /// Rate-limit ops: the period, in milliseconds.
    #[arg(long, default_value_t = 60_000)]
    pub rl_period_ms: u64,
    /// dequeue_ack: jobs enqueued before the run for it to take; the run fails if they run
    /// out [default: enough for warmup and run at --rate, or at 80,000 a second, plus
    /// --requests and one per caller].
    #[arg(long, value_name = "N")]
    pub queue_jobs: Option<u64>,
    /// Worker threads of the client's own runtime [default: half the cores, at least one, so
    /// that a server on the same machine keeps the other half].
    #[arg(long)]
    pub client_threads: Option<usize>,
    /// Process id of the --target server: its CPU time over each measured window is
    /// reported (Linux, a server on this machine).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Process id of the --redis server, for the same.
    #[arg(long)]
    pub redis_pid: Option<u32>,
    /// Label of the --target system in the report [default: larder, or redis for a Redis
    /// URL].
    #[arg(long)]
    pub system: Option<String>,
    /// Print one JSON object per line per system and op instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Serve the bare tonic baseline (Get and Set on a HashMap) on ADDR instead of
    /// benchmarking; used by scripts/bench.sh.
    #[arg(long, value_name = "ADDR", hide = true)]
    pub bare_server: Option<SocketAddr>,
    /// Worker threads of the bare baseline.
    #[arg(long, default_value_t = 1, hide = true)]
    pub bare_worker_threads: usize,
}

/// Half the machine's cores, at least one: a client that takes every core starves the server
/// it measures on the same machine (on 2 cores, a 2-thread client cut both Larder's and
/// Redis's Get rate by a quarter or more and tripled their p99).
fn default_client_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// The bearer token of `--token-file`, if given.
fn bearer(args: &BenchArgs) -> anyhow::Result<Bearer> {
    let Some(path) = &args.token_file else {
        return Ok(Bearer::default());
    };
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("--token-file {}: cannot read it", path.display()))?;
    Bearer::new(&token).with_context(|| format!("--token-file {}", path.display()))
}

/// When a run stops measuring.
#[derive(Debug, Clone, Copy)]
enum Stop {
    After(Duration),
    Requests(u64),
}

/// The validated settings of a benchmark.
struct Plan {
    ops: Vec<Op>,
    concurrency: usize,
    connections: usize,
    stop: Stop,
    warmup: Duration,
    keys: u64,
    value: Bytes,
    rl_limit: u32,
    rl_period_ms: u64,
    /// Open loop: calls a second in all.
    rate: Option<f64>,
    preload: bool,
    /// `--queue-jobs`: the fill of a `dequeue_ack` run, when given.
    queue_jobs: Option<u64>,
}

impl Plan {
    /// Jobs to enqueue before a `dequeue_ack` run: `--queue-jobs`, or every call the run can
    /// make, counted at its `--rate` (open loop) or at [`DEQUEUE_RATE_BOUND`] over the warmup
    /// and a timed run, plus a `--requests` run's calls, plus one in flight per caller.
    fn queue_fill(&self) -> u64 {
        if let Some(jobs) = self.queue_jobs {
            return jobs;
        }
        let (timed, measured) = match self.stop {
            Stop::After(d) => (self.warmup + d, 0),
            Stop::Requests(n) => (self.warmup, n),
        };
        let rate = self.rate.unwrap_or(DEQUEUE_RATE_BOUND);
        (rate * timed.as_secs_f64()).ceil() as u64 + measured + self.concurrency as u64
    }
}

/// The label a system's rows carry when `--system` does not give one.
fn default_label(redis: bool, args: &BenchArgs) -> &'static str {
    match (redis, args.pipeline, args.redis_pipeline) {
        (true, _, Some(_)) => "redis-pipeline",
        (true, _, None) => "redis",
        (false, true, _) => "larder-pipeline",
        (false, false, _) => "larder",
    }
}

/// One system the ops run against.
struct System {
    label: String,
    sut: Sut,
    pid: Option<u32>,
    /// Whether its calls are pipelined (`--pipeline` for Larder, `--redis-pipeline` for Redis).
    pipelined: bool,
}

/// Runs `larder bench` (or, with `--bare-server`, the baseline server).
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(addr) = args.bare_server {
        return bare::serve(addr, args.bare_worker_threads);
    }
    if args.concurrency == 0 || args.connections == 0 || args.keys == 0 {
        bail!("--concurrency, --connections and --keys must be at least 1");
    }
    if args.rl_limit == 0 || args.rl_period_ms == 0 {
        bail!("--rl-limit and --rl-period-ms must be at least 1");
    }
    let stop = match (args.duration, args.requests) {
        (_, Some(0)) => bail!("--requests must be at least 1"),
        (_, Some(n)) => Stop::Requests(n),
        (Some(d), None) if d.is_zero() => bail!("--duration must be more than 0"),
        (d, None) => Stop::After(d.unwrap_or(DEFAULT_DURATION)),
    };
    let warmup = args.warmup.unwrap_or(match stop {
        Stop::After(_) => DEFAULT_WARMUP,
        Stop::Requests(_) => Duration::ZERO,
    });
    if let Some(rate) = args.rate
        && !(rate.is_finite() && rate > 0.0 && rate <= MAX_RATE)
    {
        bail!("--rate must be more than 0 and at most {MAX_RATE} calls a second, got {rate}");
    }
    if args.no_preload && args.ops.0.contains(&Op::SessionGet) {
        bail!("--no-preload cannot run session_get: its session tokens come from the preload");
    }
    if args.redis_pipeline == Some(0) {
        bail!("--redis-pipeline must be at least 1");
    }
    if args.redis_pipeline.is_some() && args.rate.is_some() {
        bail!("--redis-pipeline sends calls in batches, which an open loop (--rate) cannot time");
    }
    if args.pipeline
        && let Some(op) = args.ops.0.iter().find(|op| op.is_queue())
    {
        bail!(
            "--pipeline cannot run {}: PipelineService carries no QueueService calls",
            op.name()
        );
    }
    if args.redis_pipeline.is_some() && args.ops.0.contains(&Op::DequeueAck) {
        bail!("--redis-pipeline cannot run dequeue_ack: its LREM needs BLMOVE's answer first");
    }
    if args.queue_jobs == Some(0) && args.ops.0.contains(&Op::DequeueAck) {
        bail!("--queue-jobs must be at least 1 for dequeue_ack");
    }
    if args.redis.is_some() && Sut::is_redis_url(&args.target) {
        bail!("--redis is the second system next to a Larder --target; --target is Redis too");
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    let threads = match args.client_threads {
        Some(0) => bail!("--client-threads must be at least 1"),
        Some(threads) => threads,
        None => default_client_threads(),
    };
    builder.worker_threads(threads);
    let runtime = builder.thread_name("bench-worker").enable_all().build()?;
    let plan = Plan {
        ops: args.ops.0.clone(),
        concurrency: args.concurrency,
        connections: args.connections,
        stop,
        warmup,
        keys: args.keys,
        value: Bytes::from(vec![b'v'; args.value_size]),
        rl_limit: args.rl_limit,
        rl_period_ms: args.rl_period_ms,
        rate: args.rate,
        preload: !args.no_preload,
        queue_jobs: args.queue_jobs,
    };
    runtime.block_on(bench(args, plan))
}

async fn bench(args: BenchArgs, plan: Plan) -> anyhow::Result<()> {
    let mut systems = Vec::with_capacity(2);
    let depth = args.redis_pipeline.unwrap_or(1);
    let label = |redis| {
        args.system
            .clone()
            .unwrap_or_else(|| default_label(redis, &args).to_owned())
    };
    if Sut::is_redis_url(&args.target) {
        systems.push(System {
            label: label(true),
            sut: Sut::redis(&args.target, depth).await?,
            pid: args.server_pid,
            pipelined: args.redis_pipeline.is_some(),
        });
    } else {
        let sut = Sut::grpc(
            &args.target,
            plan.connections,
            bearer(&args)?,
            args.pipeline,
        );
        systems.push(System {
            label: label(false),
            sut: sut.await?,
            pid: args.server_pid,
            pipelined: args.pipeline,
        });
    }
    if let Some(url) = &args.redis {
        systems.push(System {
            label: default_label(true, &args).to_owned(),
            sut: Sut::redis(url, depth).await?,
            pid: args.redis_pid,
            pipelined: args.redis_pipeline.is_some(),
        });
    }

    let mut reports = Vec::with_capacity(plan.ops.len() * systems.len());
    for &op in &plan.ops {
        for system in &systems {
            if !args.json {
                eprintln!("bench: {} {} ...", system.label, op.name());
            }
            let report = run_op(system, op, &plan)
                .await
                .with_context(|| format!("{} {}", system.label, op.name()))?;
            if args.json {
                let mut out = std::io::stdout().lock();
                writeln!(out, "{}", report.json_line())?;
                out.flush()?;
            }
            reports.push(report);
        }
    }
    if !args.json {
        print!("{}", report::table(&reports));
    }
    Ok(())
}

/// What one task measured.
struct TaskResult {
    /// Latency of each successful call, in nanoseconds.
    hist: Histogram<u64>,
    ops: u64,
    errors: u64,
    misses: u64,
    /// `dequeue_ack` calls that found the queue empty, warmup included.
    dry: u64,
    first_error: Option<String>,
}

/// One run: `op` against `system`, preloaded as the op needs, measured as the plan says.
async fn run_op(system: &System, op: Op, plan: &Plan) -> anyhow::Result<RunReport> {
    let sut = &system.sut;
    let tokens = if plan.preload {
        tokio::time::timeout(
            PRELOAD_TIMEOUT + Duration::from_secs(plan.keys / PRELOAD_KEYS_PER_SEC_FLOOR),
            sut.preload(op, plan.keys, &plan.value, plan.concurrency),
        )
        .await
        .context("preloading the key space timed out")??
    } else {
        Vec::new()
    };
    let gcra_sha = match op {
        Op::RatelimitGcra => sut.load_gcra_script().await?,
        _ => None,
    };
    let queue = if op.is_queue() {
        queue_name(op, &system.label)
    } else {
        String::new()
    };
    let fill = if op == Op::DequeueAck {
        plan.queue_fill()
    } else {
        0
    };
    if fill > 0 {
        tokio::time::timeout(
            PRELOAD_TIMEOUT + Duration::from_secs(fill / PRELOAD_KEYS_PER_SEC_FLOOR),
            sut.fill_queue(&queue, fill, &plan.value, plan.concurrency),
        )
        .await
        .with_context(|| format!("enqueueing the {fill} jobs of the run timed out"))?
        .with_context(|| format!("enqueueing the {fill} jobs of the run"))?;
    }
    let workload = Arc::new(Workload {
        op,
        keys: plan.keys,
        value: plan.value.clone(),
        tokens,
        rl_limit: plan.rl_limit,
        rl_period_ms: plan.rl_period_ms,
        gcra_sha,
        queue: queue.clone(),
    });
    let stats_before = sut.stats().await;
    let mut conns = Vec::with_capacity(plan.concurrency);
    for task in 0..plan.concurrency {
        conns.push(sut.conn(task).await?);
    }

    let start = Instant::now();
    let from = start + plan.warmup;
    let (until, budget) = match plan.stop {
        Stop::After(d) => (Some(from + d), None),
        Stop::Requests(n) => (None, Some((Arc::new(AtomicU64::new(0)), n))),
    };
    let pid = system.pid;
    let cpu_start = tokio::spawn(async move {
        tokio::time::sleep_until(tokio::time::Instant::from_std(from)).await;
        CpuSample::take(pid)
    });
    let cpu_end = until.map(|until| {
        tokio::spawn(async move {
            tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await;
            CpuSample::take(pid)
        })
    });
    let dry = Arc::new(AtomicBool::new(false));
    let mut tasks = JoinSet::new();
    for (task, conn) in conns.into_iter().enumerate() {
        // Open loop: each caller takes an equal share of the rate, the callers' schedules
        // staggered evenly over one interval.
        let schedule = plan.rate.map(|rate| {
            let interval = Duration::from_secs_f64(plan.concurrency as f64 / rate);
            Schedule::new(
                start + interval.mul_f64(task as f64 / plan.concurrency as f64),
                interval,
            )
        });
        let caller = Caller {
            depth: sut.depth(),
            workload: workload.clone(),
            seed: task as u64,
            from,
            until,
            budget: budget.clone(),
            schedule,
            dry: dry.clone(),
        };
        tasks.spawn(caller.run(conn));
    }

    let deadline = until.map(|u| tokio::time::Instant::from_std(u + OVERRUN_GRACE));
    let mut results = Vec::with_capacity(plan.concurrency);
    loop {
        let next = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, tasks.join_next()).await {
                Ok(next) => next,
                Err(_) => {
                    let stuck = tasks.len();
                    tasks.abort_all();
                    bail!(
                        "{stuck} callers still had a call in flight {OVERRUN_GRACE:?} after the \
                         run ended"
                    );
                }
            },
            None => tasks.join_next().await,
        };
        let Some(joined) = next else { break };
        results.push(joined.context("a load task panicked")?);
    }
    let ended = Instant::now();
    // The samplers only sleep and read /proc.
    let cpu_from = cpu_start.await.context("the CPU sampler panicked")?;
    let cpu_to = match cpu_end {
        Some(sampler) => sampler.await.context("the CPU sampler panicked")?,
        None => CpuSample::take(pid),
    };
    let cpu = cpu_from.until(cpu_to);
    let window = match plan.stop {
        Stop::After(d) => d,
        Stop::Requests(_) => ended.saturating_duration_since(from),
    };

    if op.is_queue()
        && let Err(e) = sut.drop_queue(&queue).await
    {
        eprintln!(
            "bench: {} {}: the run's queue {queue} could not be emptied: {e:#}",
            system.label,
            op.name()
        );
    }
    let hist = report::merge(results.iter().map(|r| &r.hist))?;
    let sum = |f: fn(&TaskResult) -> u64| results.iter().map(f).sum::<u64>();
    let (ops, errors, misses) = (sum(|r| r.ops), sum(|r| r.errors), sum(|r| r.misses));
    let dry = sum(|r| r.dry);
    if dry > 0 {
        bail!(
            "the queue ran dry: {dry} Dequeues found no job within {QUEUE_WAIT_MS} ms after \
             {ops} jobs were done; {fill} were enqueued before the run: give more with \
             --queue-jobs"
        );
    }
    if let Some(error) = results.iter().find_map(|r| r.first_error.as_deref()) {
        eprintln!(
            "bench: {} {}: {errors} calls failed; the first: {error}",
            system.label,
            op.name()
        );
    }
    if misses > 0 && !op.is_rate_limit() {
        eprintln!(
            "bench: {} {}: {misses} calls found or stored nothing although the key space was \
             preloaded",
            system.label,
            op.name()
        );
    }
    // The cache's counters, as a check that reads were hits (they say nothing of the rest).
    if matches!(op, Op::Get | Op::GetMany)
        && let (Some(before), Some(after)) = (stats_before, sut.stats().await)
    {
        eprintln!(
            "bench: {} {}: over warmup and run the server counted {} cache hits ({} from \
             memory), {} misses",
            system.label,
            op.name(),
            after.hits.saturating_sub(before.hits),
            after.memory_hits.saturating_sub(before.memory_hits),
            after.misses.saturating_sub(before.misses),
        );
    }
    Ok(RunReport::new(&Measured {
        system: system.label.clone(),
        op,
        concurrency: plan.concurrency,
        // Redis callers hold a connection each.
        connections: match sut {
            Sut::Grpc { channels, .. } => channels.len(),
            Sut::Redis { .. } => plan.concurrency,
        },
        pipeline_depth: match sut {
            Sut::Redis { depth, .. } if system.pipelined => Some(*depth),
            _ => None,
        },
        hist: &hist,
        ops,
        errors,
        misses,
        window_secs: window.as_secs_f64(),
        server_ns: cpu.server_ns,
        client_ns: cpu.client_ns,
        machine_ns: cpu.machine_ns,
        target_rate: plan.rate,
    }))
}

/// One closed-loop caller of a run.
struct Caller {
    /// Calls per round trip: more than one for Redis pipelining, each batch timed as one.
    depth: usize,
    workload: Arc<Workload>,
    seed: u64,
    /// Calls that start at or after `from` are measured.
    from: Instant,
    /// A timed run: no call starts after this.
    until: Option<Instant>,
    /// A `--requests` run: the measured calls started so far by every caller, and how many
    /// there are to be.
    budget: Option<(Arc<AtomicU64>, u64)>,
    /// Open loop: when each call is due.
    schedule: Option<Schedule>,
    /// Set by the first caller that finds the run's queue empty: every caller stops, since
    /// each further call would only wait out [`QUEUE_WAIT_MS`] for the same answer.
    dry: Arc<AtomicBool>,
}

/// An open-loop caller's timetable: one call every `interval` from a start time.
struct Schedule {
    next: Instant,
    interval: Duration,
}

/// When the next call of a [`Schedule`] starts, and from when it is timed.
#[derive(Debug, PartialEq, Eq)]
enum Due {
    /// It is not due yet: wait until then, and time it from when the wait ended (the timer's
    /// own lateness is the load generator's, not the server's).
    At(Instant),
    /// It was due at this time, which has passed because earlier calls were slow: start it now
    /// and time it from when it was due, so that the stall is counted for every call it
    /// delayed.
    Late(Instant),
}

impl Schedule {
    fn new(first: Instant, interval: Duration) -> Self {
        Self {
            next: first,
            interval,
        }
    }

    /// The next call, as seen at `now`; the schedule moves on by one interval.
    fn take(&mut self, now: Instant) -> Due {
        let due = self.next;
        self.next += self.interval;
        if now < due {
            Due::At(due)
        } else {
            Due::Late(due)
        }
    }
}

impl Caller {
    async fn run(mut self, mut conn: Conn) -> TaskResult {
        let w = &*self.workload;
        let mut rng = XorShift::new(self.seed);
        let mut r = TaskResult {
            hist: report::new_histogram(),
            ops: 0,
            errors: 0,
            misses: 0,
            dry: 0,
            first_error: None,
        };
        // Unique per call of the run: the task in the high bits, its call count in the low ones.
        let mut nonce = self.seed << 40;
        let depth = self.depth.max(1);
        let mut batch = vec![0u64; depth];
        let mut many = vec![[0u64; GETMANY_KEYS]; if w.op == Op::GetMany { depth } else { 0 }];
        loop {
            if self.dry.load(Ordering::Relaxed) {
                break;
            }
            for i in &mut batch {
                *i = rng.below(w.keys);
            }
            for keys in &mut many {
                for k in keys {
                    *k = rng.below(w.keys);
                }
            }
            let t0 = match self.schedule.as_mut().map(|s| s.take(Instant::now())) {
                None => Instant::now(),
                Some(Due::At(due)) => {
                    tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
                    Instant::now()
                }
                Some(Due::Late(due)) => due,
            };
            let measured = t0 >= self.from;
            if measured {
                // A late open-loop caller stops at the end of the run too, however many calls
                // it still owes.
                if self
                    .until
                    .is_some_and(|until| t0 >= until || Instant::now() >= until)
                {
                    break;
                }
                if let Some((started, total)) = &self.budget
                    && started.fetch_add(depth as u64, Ordering::Relaxed) >= *total
                {
                    break;
                }
            }
            nonce += depth as u64;
            let outcome = conn.call_batch(w, &batch, &many, nonce).await;
            let elapsed = t0.elapsed();
            let n = depth as u64;
            // In the warmup too: a fill too small for the warmup is too small for the run.
            if let Err(CallError::QueueEmpty) = outcome {
                r.dry += n;
                self.dry.store(true, Ordering::Relaxed);
            }
            if !measured {
                continue;
            }
            // A fast error would flatter both the rate and the latencies. A batch counts as
            // `depth` calls, each taking the batch's round trip.
            match outcome {
                Ok(answered) => {
                    r.ops += n;
                    r.hist.saturating_record_n(elapsed.as_nanos() as u64, n);
                    r.misses += n.saturating_sub(answered);
                }
                Err(error) => {
                    r.errors += n;
                    r.first_error.get_or_insert_with(|| error.to_string());
                }
            }
        }
        r
    }
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use clap::Parser;

    use bytes::Bytes;

    use super::{BenchArgs, Due, Op, Plan, Schedule, Stop, XorShift, default_label};

    /// `larder bench` flags, as clap parses them.
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn args(flags: &[&str]) -> BenchArgs {
        Cli::try_parse_from(std::iter::once("bench").chain(flags.iter().copied()))
            .expect("valid flags")
            .args
    }

    #[test]
    fn pipelined_systems_are_labelled_by_what_they_pipeline() {
        let plain = args(&[]);
        assert_eq!(default_label(false, &plain), "larder");
        assert_eq!(default_label(true, &plain), "redis");
        let both = args(&["--pipeline", "--redis-pipeline", "16"]);
        assert_eq!(both.redis_pipeline, Some(16));
        assert_eq!(default_label(false, &both), "larder-pipeline");
        assert_eq!(default_label(true, &both), "redis-pipeline");
        // Each flag pipelines its own side only.
        let larder_only = args(&["--pipeline"]);
        assert_eq!(default_label(true, &larder_only), "redis");
        let redis_only = args(&["--redis-pipeline", "4"]);
        assert_eq!(default_label(false, &redis_only), "larder");
    }

    #[test]
    fn an_open_loop_schedule_times_late_calls_from_when_they_were_due() {
        let start = Instant::now();
        let ms = Duration::from_millis;
        let mut s = Schedule::new(start, ms(10));
        // On time or early: wait for the due time.
        assert_eq!(s.take(start - ms(1)), Due::At(start));
        assert_eq!(s.take(start + ms(3)), Due::At(start + ms(10)));
        // A 45 ms stall: the calls due at 20, 30 and 40 ms are late and each is timed from
        // when it was due; the one due at 50 ms is not late yet.
        let after_stall = start + ms(48);
        assert_eq!(s.take(after_stall), Due::Late(start + ms(20)));
        assert_eq!(s.take(after_stall), Due::Late(start + ms(30)));
        assert_eq!(s.take(after_stall), Due::Late(start + ms(40)));
        assert_eq!(s.take(after_stall), Due::At(start + ms(50)));
        // Exactly on time counts as due.
        assert_eq!(s.take(start + ms(60)), Due::Late(start + ms(60)));
    }

    fn plan(stop: Stop, warmup_secs: u64, rate: Option<f64>, queue_jobs: Option<u64>) -> Plan {
        Plan {
            ops: vec![Op::DequeueAck],
            concurrency: 16,
            connections: 4,
            stop,
            warmup: Duration::from_secs(warmup_secs),
            keys: 10,
            value: Bytes::from_static(b"v"),
            rl_limit: 1,
            rl_period_ms: 1,
            rate,
            preload: true,
            queue_jobs,
        }
    }

    #[test]
    fn the_default_fill_covers_every_call_a_run_can_make() {
        let secs = |n| Stop::After(Duration::from_secs(n));
        // Closed loop: warmup and run at 80,000 a second, and one in flight per caller.
        assert_eq!(plan(secs(5), 1, None, None).queue_fill(), 6 * 80_000 + 16);
        // The default run stays under the server's 1,000,000 jobs per queue.
        assert!(plan(secs(10), 2, None, None).queue_fill() < 1_000_000);
        // Open loop: at its rate.
        assert_eq!(plan(secs(5), 1, Some(5000.0), None).queue_fill(), 30_016);
        // A counted run: its calls, and its warmup's.
        assert_eq!(plan(Stop::Requests(200), 0, None, None).queue_fill(), 216);
        assert_eq!(
            plan(Stop::Requests(200), 1, None, None).queue_fill(),
            80_216
        );
        // Given: as given.
        assert_eq!(plan(secs(5), 1, None, Some(7)).queue_fill(), 7);
    }

    #[test]
    fn keys_are_drawn_from_the_whole_key_space_and_no_further() {
        let mut rng = XorShift::new(7);
        let mut seen = [false; 10];
        for _ in 0..1000 {
            let k = rng.below(10);
            assert!(k < 10);
            seen[k as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }
}
