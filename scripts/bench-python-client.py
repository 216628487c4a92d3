"""bench-python-client.py: the asyncio side of the Python client's benchmark, and the table of
its targets.

Run by scripts/bench-python-client.sh, which starts the servers and passes their addresses.
Two subcommands:

    python scripts/bench-python-client.py asyncio --larder-tcp 127.0.0.1:P \
        --larder-unix unix:/path --redis-tcp redis://127.0.0.1:Q/0 \
        --redis-unix 'unix:///path?db=0' [--tasks 64 --seconds 2 --rounds 5 ...]

  From one event loop, --tasks tasks each call get back to back (every key written first, so
  every get is a hit) on one shared client: larder_client.aio.Larder(core=...) for each core
  of --cores, and redis.asyncio.Redis on a BlockingConnectionPool of --tasks connections.
  Each cell (transport × backend) runs in each of --rounds rounds for --warmup-seconds
  untimed and then --seconds timed, the order of the backends turned from one round to the
  next as scripts/bench-django-cache.py turns it (bench_common.round_order). Reports calls/s
  (the calls answered in the timed window over its length), each call's latency (p50, p99),
  the CPU per call of this process and of the server, and each Larder core's calls/s over
  redis.asyncio's.

    python scripts/bench-python-client.py targets --sync results.jsonl --asyncio asyncio.jsonl

  The Python client's targets, from the JSON lines of bench-django-cache.py (run with the
  client and rust layers) and of the asyncio subcommand.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import platform
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import bench_common as common

NAMES = {
    "larder-native": "larder_client.aio, native core",
    "larder-grpc": "larder_client.aio, grpcio core",
    "redis": "redis.asyncio, connection pool",
}


def seconds(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= x <= 600:
        raise argparse.ArgumentTypeError(f"must be 0 to 600 seconds, got {x}")
    return x


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("asyncio", help="concurrent gets from one event loop")
    common.add_server_args(a)
    a.add_argument(
        "--cores", default="native,grpc", help="comma list of native and grpc"
    )
    a.add_argument(
        "--tasks", type=common.positive_int(4096), default=64, help="tasks (64)"
    )
    a.add_argument(
        "--seconds", type=seconds, default=2.0, help="timed s per cell a round (2)"
    )
    a.add_argument(
        "--warmup-seconds", type=seconds, default=0.5, help="untimed s before (0.5)"
    )
    common.add_workload_args(a, rounds=5, value_size_help="bytes (100)")
    a.add_argument(
        "--json", metavar="PATH", help="also write one JSON line per cell here"
    )
    t = sub.add_parser("targets", help="the table of the Python client's targets")
    t.add_argument(
        "--sync", required=True, help="bench-django-cache.py's --json output"
    )
    t.add_argument("--asyncio", help="the asyncio subcommand's --json output")
    args = p.parse_args()
    if args.command == "asyncio":
        cores = [x for x in args.cores.split(",") if x]
        if not cores or any(x not in common.CORES for x in cores):
            p.error(
                f"--cores takes a comma list of native and grpc, got {args.cores!r}"
            )
        args.cores = [x for x in common.CORES if x in cores]
        if args.seconds <= 0:
            p.error("--seconds must be above 0")
    return args


@dataclass
class Window:
    """What the tasks of one timed stretch share: whether to record, whether to stop."""

    timing: bool = False
    stop: bool = False
    latencies: list[int] = field(default_factory=list)
    misses: int = 0


async def caller(
    get: Callable[[str], Awaitable[object]], keys: list[str], start: int, w: Window
) -> None:
    clock = time.perf_counter_ns
    n = len(keys)
    i = start
    while not w.stop:
        k = keys[i % n]
        i += 1
        t0 = clock()
        v = await get(k)
        t1 = clock()
        if w.timing:
            w.latencies.append(t1 - t0)
            if v is None:
                w.misses += 1


async def stretch(
    get: Callable[[str], Awaitable[object]],
    keys: list[str],
    args: argparse.Namespace,
    server: int | None,
) -> dict[str, Any]:
    """--tasks callers for --warmup-seconds, then timed for --seconds."""
    w = Window()
    step = max(1, len(keys) // args.tasks)
    tasks = [
        asyncio.create_task(caller(get, keys, i * step, w)) for i in range(args.tasks)
    ]
    try:
        await asyncio.sleep(args.warmup_seconds)
        c0, s0 = time.process_time_ns(), common.cpu_ns(server)
        t0 = time.perf_counter()
        w.timing = True
        await asyncio.sleep(args.seconds)
        w.timing = False
        t1 = time.perf_counter()
        c1, s1 = time.process_time_ns(), common.cpu_ns(server)
    finally:
        w.stop = True
        await asyncio.gather(*tasks)
    return {
        "calls": len(w.latencies),
        "seconds": t1 - t0,
        "latencies": w.latencies,
        "misses": w.misses,
        "client_cpu_ns": c1 - c0,
        "server_cpu_ns": s1 - s0,
    }


async def run_asyncio(args: argparse.Namespace) -> list[dict[str, Any]]:
    import redis.asyncio as aredis
    from larder_client import aio

    value = random.Random(1).randbytes(args.value_size)
    keys = [f"bench:{i}" for i in range(args.keys)]
    random.Random(7).shuffle(keys)
    backends = [f"larder-{c}" for c in args.cores] + ["redis"]
    gets: dict[tuple[str, str], Callable[[str], Awaitable[object]]] = {}
    closers: list[Callable[[], Awaitable[object]]] = []
    for t in common.TRANSPORTS:
        for c in args.cores:
            client = aio.Larder(getattr(args, f"larder_{t}"), core=c)
            if client.core != c:
                raise SystemExit(
                    f"bench-python-client: aio.Larder(core={c!r}) ran on {client.core}"
                )
            closers.append(client.close)
            for k in keys:
                await client.cache.set(k, value, 300_000)
            gets[(f"larder-{c}", t)] = client.cache.get
        pool = aredis.BlockingConnectionPool.from_url(
            getattr(args, f"redis_{t}"), max_connections=args.tasks
        )
        r = aredis.Redis(connection_pool=pool)
        closers += [r.aclose, pool.disconnect]
        for k in keys:
            await r.set(k, value, px=300_000)
        gets[("redis", t)] = r.get

    pids = {"larder": args.larder_pid, "redis": args.redis_pid}
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    other: list[float] = []
    started = time.monotonic()
    gc.disable()  # a collection would land on whichever cell is running
    try:
        for r in range(args.rounds):
            m0 = (time.monotonic(), common.machine_busy_ns(), own_ns(pids))
            for t in common.TRANSPORTS:
                for b in common.round_order(backends, r):
                    server = pids["redis" if b == "redis" else "larder"]
                    runs.setdefault((b, t), []).append(
                        await stretch(gets[(b, t)], keys, args, server)
                    )
                    gc.collect()
            m1 = (time.monotonic(), common.machine_busy_ns(), own_ns(pids))
            wall = m1[0] - m0[0]
            other.append(max(0.0, ((m1[1] - m0[1]) - (m1[2] - m0[2])) / 1e9 / wall))
            print(
                f"bench-python-client: asyncio round {r + 1}/{args.rounds} done "
                f"({time.monotonic() - started:.0f} s; other work: {other[-1]:.2f} cores)",
                file=sys.stderr,
            )
    finally:
        gc.enable()
        for close in closers:
            await close()

    rows = []
    for t in common.TRANSPORTS:
        stats = {}
        for b in backends:
            rs = runs[(b, t)]
            ns = sorted(x for run in rs for x in run["latencies"])
            calls = sum(run["calls"] for run in rs)
            secs = sum(run["seconds"] for run in rs)
            stats[b] = {
                "backend": b,
                "core": b.removeprefix("larder-") if b != "redis" else None,
                "transport": t,
                "tasks": args.tasks,
                "calls": calls,
                "seconds": secs,
                "calls_per_s": calls / secs,
                "round_calls_per_s": [run["calls"] / run["seconds"] for run in rs],
                "p50_us": common.pct(ns, 50),
                "p99_us": common.pct(ns, 99),
                "client_cpu_us": sum(run["client_cpu_ns"] for run in rs) / 1000 / calls,
                "server_cpu_us": (
                    sum(run["server_cpu_ns"] for run in rs) / 1000 / calls
                    if pids["redis" if b == "redis" else "larder"] is not None
                    else None
                ),
                "misses": sum(run["misses"] for run in rs),
                "other_cores": other,
            }
        for s in stats.values():
            if s["backend"] != "redis":
                s["redis_ratio"] = s["calls_per_s"] / stats["redis"]["calls_per_s"]
                s["redis_ratio_round_median"] = statistics.median(
                    x / y
                    for x, y in zip(
                        s["round_calls_per_s"], stats["redis"]["round_calls_per_s"]
                    )
                )
        rows.extend(stats.values())
    return rows


def own_ns(pids: dict[str, int | None]) -> int:
    return time.process_time_ns() + sum(common.cpu_ns(p) for p in pids.values())


def asyncio_main(args: argparse.Namespace) -> int:
    loop = asyncio.new_event_loop()
    try:
        rows = loop.run_until_complete(run_asyncio(args))
    finally:
        loop.close()
    import grpc
    import redis

    print(
        f"python {platform.python_version()}, redis-py {redis.__version__}, "
        f"grpcio {grpc.__version__}"
    )
    print(
        f"{args.tasks} tasks on one event loop, each calling get back to back on one shared "
        f"client; {args.rounds} rounds of {args.warmup_seconds:g} s untimed and "
        f"{args.seconds:g} s timed per cell (backend order turned each round); "
        f"{args.keys} keys, {args.value_size}-byte values, every get a hit"
    )
    print(
        "cores busy with other work in each round (the machine less this client and the "
        "two servers): " + " ".join(f"{x:.2f}" for x in rows[0]["other_cores"])
    )
    print(f"\nasyncio, {args.tasks} concurrent gets from one event loop\n")
    print(
        "| client | transport | calls/s | /redis.asyncio | the same, median of rounds "
        "| calls/s of each round | p50 µs | p99 µs | client CPU µs/call "
        "| server CPU µs/call |"
    )
    print("|---|---|---:|---:|---:|---|---:|---:|---:|---:|")
    for s in rows:
        ratio = (
            f"{s['redis_ratio']:.2f}× | {s['redis_ratio_round_median']:.2f}×"
            if s["backend"] != "redis"
            else " | "
        )
        server = "–" if s["server_cpu_us"] is None else f"{s['server_cpu_us']:.0f}"
        print(
            f"| {NAMES[s['backend']]} | {s['transport']} | {s['calls_per_s']:,.0f} | {ratio} "
            f"| {' '.join(f'{x:,.0f}' for x in s['round_calls_per_s'])} "
            f"| {s['p50_us']:,.0f} | {s['p99_us']:,.0f} | {s['client_cpu_us']:.0f} "
            f"| {server} |"
        )
    return common.finish(
        rows, args.json, "bench-python-client: asyncio", ("backend", "transport")
    )


def read_jsonl(path: str) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def one_caller_cells(
    rows: list[dict[str, Any]],
) -> Iterator[tuple[str, str, dict[tuple[str, str], dict[str, Any]]]]:
    """Each transport and op of bench-django-cache.py's rows, in the order of the tables,
    with the rows of that transport and op by layer and backend."""
    for t in common.TRANSPORTS:
        for op in ("get", "set"):
            yield (
                t,
                op,
                {
                    (s["layer"], s["backend"]): s
                    for s in rows
                    if (s["transport"], s["op"]) == (t, op)
                },
            )


def targets_main(args: argparse.Namespace) -> int:
    sync = read_jsonl(args.sync)
    print("The Python client's targets, measured in this run (ratios within the run)\n")
    print(
        "One caller, 100-byte values, bare clients: p50 µs and the ratio to redis-py's p50"
    )
    print(
        "(pooled over all rounds; in brackets, the median of the rounds' own ratios)\n"
    )
    print(
        "| transport | op | native p50 | grpcio p50 | redis-py p50 | native / redis-py "
        "| grpcio / redis-py |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for t, op, cell in one_caller_cells(sync):
        n, g = (
            cell.get(("client", "larder-native")),
            cell.get(("client", "larder-grpc")),
        )
        r = cell.get(("client", "redis"))
        if r is None:
            continue

        def cells(s: dict[str, Any] | None) -> tuple[str, str]:
            if s is None:
                return "–", "–"
            return (
                f"{s['p50_us']:,.0f}",
                f"{s['redis_p50_ratio']:.2f}× ({s['redis_p50_ratio_round_median']:.2f}×)",
            )

        (np50, nr), (gp50, gr) = cells(n), cells(g)
        print(f"| {t} | {op} | {np50} | {gp50} | {r['p50_us']:,.0f} | {nr} | {gr} |")

    print(
        "\nThe native core over a Rust client (`larder bench --concurrency 1 --connections 1`),"
        " same server and op, same rounds: in each round the native client's p50 less the "
        f"Rust client's, median over rounds, µs (target ≤ {common.NATIVE_OVER_RUST_TARGET_US:.0f})\n"
    )
    print(
        "| transport | op | native p50 | Rust → Larder p50 | added µs | verdict "
        "| redis-py p50 | Rust → Redis p50 |"
    )
    print("|---|---|---:|---:|---:|---|---:|---:|")
    for t, op, cell in one_caller_cells(sync):
        n, rl = cell.get(("client", "larder-native")), cell.get(("rust", "larder"))
        rr, rp = cell.get(("rust", "redis")), cell.get(("client", "redis"))
        if n is None or rl is None:
            continue
        added = statistics.median(
            x - y for x, y in zip(n["round_p50_us"], rl["round_p50_us"])
        )
        verdict = (
            "met"
            if added <= common.NATIVE_OVER_RUST_TARGET_US
            else f"**missed** by {added - common.NATIVE_OVER_RUST_TARGET_US:,.0f} µs"
        )
        print(
            f"| {t} | {op} | {n['p50_us']:,.0f} | {rl['p50_us']:,.1f} | {added:,.1f} "
            f"| {verdict} | {rp['p50_us'] if rp else float('nan'):,.0f} "
            f"| {rr['p50_us'] if rr else float('nan'):,.1f} |"
        )

    if args.asyncio:
        rows = read_jsonl(args.asyncio)
        tasks = rows[0]["tasks"] if rows else 0
        print(
            f"\nasyncio, {tasks} concurrent gets from one event loop: calls/s and the ratio to "
            "redis.asyncio (pooled; in brackets, the median of the rounds' own)\n"
        )
        print(
            "| transport | native calls/s | grpcio calls/s | redis.asyncio calls/s "
            "| native / redis.asyncio | grpcio / redis.asyncio |"
        )
        print("|---|---:|---:|---:|---:|---:|")
        by = {(s["backend"], s["transport"]): s for s in rows}
        for t in common.TRANSPORTS:
            r = by.get(("redis", t))
            if r is None:
                continue
            out = f"| {t} |"
            ratios = ""
            for c in common.CORES:
                s = by.get((f"larder-{c}", t))
                if s is None:
                    out += " – |"
                    ratios += " – |"
                else:
                    out += f" {s['calls_per_s']:,.0f} |"
                    ratios += f" {s['redis_ratio']:.2f}× ({s['redis_ratio_round_median']:.2f}×) |"
            print(f"{out} {r['calls_per_s']:,.0f} |{ratios}")
    return 0


def main() -> int:
    args = parse_args()
    if args.command == "asyncio":
        return asyncio_main(args)
    return targets_main(args)


if __name__ == "__main__":
    sys.exit(main())
