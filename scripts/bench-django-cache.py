"""bench-django-cache.py: Django's cache.get and cache.set through larder_client's LarderCache and
through django-redis, one caller, over TCP and over a Unix socket, in the same process and run.

Run by scripts/bench-django-cache.sh, which starts the servers and passes their addresses:

    python scripts/bench-django-cache.py --larder-tcp 127.0.0.1:P --larder-unix unix:/path \
        --redis-tcp redis://127.0.0.1:Q/0 --redis-unix 'unix:///path?db=0'

Every cell (layer × transport × op × backend) runs once in each of --rounds rounds, taking
--calls / --rounds calls each time, with the order of the two backends swapped from one round
to the next, so that the drift of a shared machine falls on both alike. Each call is timed
alone with time.perf_counter_ns; the percentiles pool every round's calls, and each round's
own p50 is printed beside them. Before each timed stretch the cell makes --warmup untimed
calls. Python's cyclic garbage collector is off while the rounds run (it is run between
rounds), so that a collection does not land on whichever call happens to be running. Keys come from one seeded sequence over --keys keys, the same for every cell;
every key is written before the first timed get, so every timed get is a hit (misses are
counted and reported all the same).

The "client" layer is the bare clients with no Django in between, for context:
larder_client.Larder.cache.get/set against redis-py's GET/SET (with the same TTL as Django's
default TIMEOUT, 300 s).

Prints Markdown tables: latencies in µs, the ratio Larder p50 / Redis p50 (above 1: Larder
takes longer), and what the Django layer adds to each bare client's p50. --json PATH also
writes one JSON object per cell.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable

BACKENDS = ("larder", "redis")
TRANSPORTS = ("tcp", "unix")
OPS = ("set", "get")
LAYERS = ("django", "client")
MAX_CALLS = 1_000_000
TIMEOUT_S = 300  # Django's default TIMEOUT, used by both layers


def positive(limit: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if not 1 <= n <= limit:
            raise argparse.ArgumentTypeError(f"must be 1 to {limit}, got {n}")
        return n

    return parse


def whole(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 0 <= n <= MAX_CALLS:
        raise argparse.ArgumentTypeError(f"must be 0 to {MAX_CALLS}, got {n}")
    return n


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--larder-tcp", required=True, help="host:port of a Larder daemon")
    p.add_argument("--larder-unix", required=True, help="unix:/path of the same daemon")
    p.add_argument("--redis-tcp", required=True, help="redis://127.0.0.1:PORT/0")
    p.add_argument("--redis-unix", required=True, help="unix:///path?db=0")
    p.add_argument("--larder-pid", type=int, help="the daemon's pid, for its CPU time per call")
    p.add_argument("--redis-pid", type=int, help="redis-server's pid, for its CPU time per call")
    p.add_argument(
        "--calls",
        type=positive(MAX_CALLS),
        default=20_000,
        help="timed calls per cell, over all rounds (default 20000)",
    )
    p.add_argument("--rounds", type=positive(100), default=10, help="rounds (default 10)")
    p.add_argument("--keys", type=positive(MAX_CALLS), default=1000, help="key space (1000)")
    p.add_argument(
        "--value-size",
        type=positive(1 << 20),
        default=100,
        help="bytes per value before pickling (100)",
    )
    p.add_argument(
        "--warmup",
        type=whole,
        default=200,
        help="untimed calls per cell before each timed stretch (200)",
    )
    p.add_argument(
        "--layers", default="django,client", help="comma list of django and client (default both)"
    )
    p.add_argument("--json", metavar="PATH", help="also write one JSON line per cell here")
    args = p.parse_args()
    if args.rounds > args.calls:
        p.error(f"--rounds ({args.rounds}) cannot exceed --calls ({args.calls})")
    layers = [x for x in args.layers.split(",") if x]
    if not layers or any(x not in LAYERS for x in layers):
        p.error(f"--layers takes django and client, got {args.layers!r}")
    args.layers = [x for x in LAYERS if x in layers]
    return args


def redis_client_kwargs(url: str) -> dict[str, object]:
    """redis.Redis(...) arguments for the same URL django-redis is given."""
    import redis

    pool = redis.ConnectionPool.from_url(url)
    kwargs = dict(pool.connection_kwargs)
    pool.disconnect()
    if url.startswith("unix:"):
        return {"unix_socket_path": kwargs["path"], "db": kwargs.get("db", 0)}
    return {"host": kwargs["host"], "port": kwargs["port"], "db": kwargs.get("db", 0)}


def configure_django(args: argparse.Namespace) -> dict[tuple[str, str], object]:
    import django
    from django.conf import settings

    # Identical settings for both backends: Django's defaults (TIMEOUT 300 s, KEY_PREFIX "",
    # VERSION 1) and each backend's default serializer (pickle) with no compression.
    caches = {
        "default": {"BACKEND": "django.core.cache.backends.dummy.DummyCache"},
        "larder-tcp": {
            "BACKEND": "larder_client.django.LarderCache",
            "LOCATION": args.larder_tcp,
        },
        "larder-unix": {
            "BACKEND": "larder_client.django.LarderCache",
            "LOCATION": args.larder_unix,
        },
        "redis-tcp": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": args.redis_tcp,
        },
        "redis-unix": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": args.redis_unix,
        },
    }
    settings.configure(CACHES=caches, USE_TZ=True)
    django.setup()
    from django.core.cache import caches as django_caches

    return {(b, t): django_caches[f"{b}-{t}"] for b in BACKENDS for t in TRANSPORTS}


def django_calls(cache: object, value: bytes) -> dict[str, Callable[[str], object]]:
    return {"set": lambda k: cache.set(k, value), "get": cache.get}


def client_calls(args: argparse.Namespace, value: bytes) -> dict[tuple[str, str], dict]:
    import redis
    from larder_client import Larder

    out: dict[tuple[str, str], dict] = {}
    ttl_ms = TIMEOUT_S * 1000
    for t in TRANSPORTS:
        lc = Larder(getattr(args, f"larder_{t}")).cache
        r = redis.Redis(**redis_client_kwargs(getattr(args, f"redis_{t}")))
        out[("larder", t)] = {
            "set": lambda k, lc=lc: lc.set(k, value, ttl_ms),
            "get": lc.get,
        }
        out[("redis", t)] = {
            "set": lambda k, r=r: r.set(k, value, px=ttl_ms),
            "get": r.get,
        }
    return out


def timed(fn: Callable[[str], object], keys: list[str], out: list[int]) -> int:
    """Calls fn(key) for each key, appending each call's ns to out; returns the misses."""
    clock = time.perf_counter_ns
    misses = 0
    append = out.append
    for k in keys:
        t0 = clock()
        v = fn(k)
        t1 = clock()
        append(t1 - t0)
        if v is None:
            misses += 1
    return misses


def cpu_ns(pid: int | None) -> int:
    """On-CPU ns of every thread of pid so far (0 without a pid)."""
    if pid is None:
        return 0
    total = 0
    task = f"/proc/{pid}/task"
    for tid in os.listdir(task):
        try:
            with open(f"{task}/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, IndexError, ValueError):
            pass  # a thread that ended meanwhile
    return total


def machine_busy_ns() -> int:
    """Busy and stolen ns of all CPUs so far (/proc/stat counts 100 ticks a second)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    # user nice system idle iowait irq softirq steal
    return sum(int(fields[i]) for i in (1, 2, 3, 6, 7, 8)) * 10_000_000


def load_mark(pids: dict[str, int | None]) -> tuple[float, int, int]:
    """Now: the monotonic clock, the machine's busy ns, and this benchmark's own CPU ns."""
    own = time.process_time_ns() + sum(cpu_ns(p) for p in pids.values())
    return time.monotonic(), machine_busy_ns(), own


def other_cores(a: tuple[float, int, int], b: tuple[float, int, int]) -> float:
    """Cores busy with work other than this benchmark's (client and servers) from a to b."""
    wall = b[0] - a[0]
    if wall <= 0:
        return 0.0
    return max(0.0, ((b[1] - a[1]) - (b[2] - a[2])) / 1e9 / wall)


def pct(sorted_ns: list[int], q: float) -> float:
    """Nearest-rank percentile, in µs."""
    i = max(0, min(len(sorted_ns) - 1, -(-len(sorted_ns) * q // 100) - 1))
    return sorted_ns[int(i)] / 1000


def main() -> int:
    args = parse_args()
    value = random.Random(1).randbytes(args.value_size)
    key_names = [f"bench:{i}" for i in range(args.keys)]
    rng = random.Random(7)
    per_round = [
        args.calls // args.rounds + (1 if r < args.calls % args.rounds else 0)
        for r in range(args.rounds)
    ]
    # One key sequence per round, shared by every cell, so that all cells see the same keys.
    sequences = [[rng.choice(key_names) for _ in range(n)] for n in per_round]
    warm = [rng.choice(key_names) for _ in range(args.warmup)]

    cells: dict[tuple[str, str, str], dict[str, Callable[[str], object]]] = {}
    if "django" in args.layers:
        for (b, t), cache in configure_django(args).items():
            cells[("django", b, t)] = django_calls(cache, value)
    if "client" in args.layers:
        for (b, t), calls in client_calls(args, value).items():
            cells[("client", b, t)] = calls

    # Every key written once through every cell, and each read back, before any timing: a
    # wrong setting fails here, not as a table of misses.
    for (layer, b, t), calls in cells.items():
        for k in key_names:
            calls["set"](k)
        got = calls["get"](key_names[0])
        if got is None:
            print(
                f"bench-django-cache: {layer} {b} {t}: a key just set reads back as missing",
                file=sys.stderr,
            )
            return 1

    pids = {"larder": args.larder_pid, "redis": args.redis_pid}
    # Per cell: CPU ns of this process (every thread, grpcio's own included) and of the server.
    cpu_used: dict[tuple[str, str, str, str], list[int]] = {}
    # Each cell's timings, one list per round.
    samples: dict[tuple[str, str, str, str], list[list[int]]] = {}
    misses: dict[tuple[str, str, str, str], int] = {}
    other_load: list[float] = []
    started = time.monotonic()
    gc.disable()  # a collection would land on whichever call is running; both allocate alike
    try:
        for r, seq in enumerate(sequences):
            mark = load_mark(pids)
            # Larder first in even rounds, Redis first in odd ones.
            order = BACKENDS if r % 2 == 0 else BACKENDS[::-1]
            # The cells of one transport and op run back to back (Django then bare client,
            # each on both backends), so that their differences see the same moment.
            for t in TRANSPORTS:
                for op in OPS:
                    for layer in args.layers:
                        for b in order:
                            fn = cells[(layer, b, t)][op]
                            for k in warm:
                                fn(k)
                            key = (layer, b, t, op)
                            stretch: list[int] = []
                            server = pids[b]
                            c0, s0 = time.process_time_ns(), cpu_ns(server)
                            m = timed(fn, seq, stretch)
                            c1, s1 = time.process_time_ns(), cpu_ns(server)
                            samples.setdefault(key, []).append(stretch)
                            cpu = cpu_used.setdefault(key, [0, 0])
                            cpu[0] += c1 - c0
                            cpu[1] += s1 - s0
                            misses[key] = misses.get(key, 0) + (m if op == "get" else 0)
            other_load.append(other_cores(mark, load_mark(pids)))
            gc.collect()
            print(
                f"bench-django-cache: round {r + 1}/{args.rounds} done "
                f"({time.monotonic() - started:.0f} s; other work: {other_load[-1]:.2f} cores)",
                file=sys.stderr,
            )
    finally:
        gc.enable()

    import django
    import django_redis
    import grpc
    import larder_client  # noqa: F401
    import redis

    print(
        f"python {platform.python_version()}, Django {django.get_version()}, "
        f"django-redis {django_redis.__version__}, redis-py {redis.__version__}, "
        f"grpcio {grpc.__version__}"
    )
    print(
        f"{args.calls} timed calls per cell in {args.rounds} rounds "
        f"(backend order swapped each round), {args.warmup} untimed calls per cell before "
        f"each, {args.keys} keys, {args.value_size}-byte values, one caller"
    )

    if any(p is not None for p in pids.values()):
        print(
            "cores busy with other work in each round (the machine less this client and the "
            "two servers): " + " ".join(f"{x:.2f}" for x in other_load)
        )
    else:
        print(
            "cores busy with other work in each round (the machine less this client; "
            "servers' CPU not excluded without their pids): "
            + " ".join(f"{x:.2f}" for x in other_load)
        )

    rows = []
    for layer in args.layers:
        for t in TRANSPORTS:
            for op in OPS:
                stats = {}
                for b in BACKENDS:
                    by_round = samples[(layer, b, t, op)]
                    ns = sorted(x for stretch in by_round for x in stretch)
                    round_p50s = [pct(sorted(stretch), 50) for stretch in by_round]
                    stats[b] = {
                        "layer": layer,
                        "backend": b,
                        "transport": t,
                        "op": op,
                        "calls": len(ns),
                        "p50_us": pct(ns, 50),
                        "p99_us": pct(ns, 99),
                        "mean_us": statistics.fmean(ns) / 1000,
                        "round_p50_us": round_p50s,
                        "client_cpu_us": cpu_used[(layer, b, t, op)][0] / 1000 / len(ns),
                        "server_cpu_us": (
                            cpu_used[(layer, b, t, op)][1] / 1000 / len(ns)
                            if pids[b] is not None
                            else None
                        ),
                        "misses": misses.get((layer, b, t, op), 0),
                    }
                ratio = stats["larder"]["p50_us"] / stats["redis"]["p50_us"]
                # The same ratio within each round, where both ran a moment apart.
                per_round = statistics.median(
                    x / y
                    for x, y in zip(stats["larder"]["round_p50_us"], stats["redis"]["round_p50_us"])
                )
                for b in BACKENDS:
                    stats[b]["larder_redis_p50"] = ratio
                    stats[b]["larder_redis_p50_round_median"] = per_round
                    rows.append(stats[b])

    names = {
        ("django", "larder"): "LarderCache",
        ("django", "redis"): "django-redis",
        ("client", "larder"): "larder_client",
        ("client", "redis"): "redis-py",
    }
    ops_named = {
        ("django", "get"): "cache.get",
        ("django", "set"): "cache.set",
        ("client", "get"): "get",
        ("client", "set"): "set",
    }
    for layer in args.layers:
        title = (
            "Django cache API"
            if layer == "django"
            else "bare clients, no Django: larder_client.Larder.cache vs redis-py"
        )
        print(f"\n{title}\n")
        print(
            "| backend | transport | op | calls | p50 µs | p99 µs | mean µs "
            "| Larder/Redis p50 | the same, median of rounds | p50 of each round µs |"
        )
        print("|---|---|---|---:|---:|---:|---:|---:|---:|---|")
        for s in rows:
            if s["layer"] != layer:
                continue
            ratio = (
                f"{s['larder_redis_p50']:.2f}× | {s['larder_redis_p50_round_median']:.2f}×"
                if s["backend"] == "larder"
                else " | "
            )
            print(
                f"| {names[(layer, s['backend'])]} | {s['transport']} "
                f"| {ops_named[(layer, s['op'])]} | {s['calls']:,} | {s['p50_us']:,.0f} "
                f"| {s['p99_us']:,.0f} | {s['mean_us']:,.0f} | {ratio} "
                f"| {' '.join(f'{x:.0f}' for x in s['round_p50_us'])} |"
            )
    if "django" in args.layers and "client" in args.layers:
        print(
            "\nWhat the Django layer adds: in each round, the Django cell's p50 less the bare "
            "client's p50 (run just before or after it); the median and the range over rounds, "
            "µs:\n"
        )
        print("| backend | transport | op | Django layer, median µs | range over rounds µs |")
        print("|---|---|---|---:|---|")
        p50s = {
            (s["layer"], s["backend"], s["transport"], s["op"]): s["round_p50_us"] for s in rows
        }
        for b in BACKENDS:
            for t in TRANSPORTS:
                for op in OPS:
                    d = [
                        x - y
                        for x, y in zip(p50s[("django", b, t, op)], p50s[("client", b, t, op)])
                    ]
                    print(
                        f"| {names[('django', b)]} | {t} | {op} | {statistics.median(d):,.0f} "
                        f"| {min(d):,.0f} to {max(d):,.0f} |"
                    )
    print(
        "\nCPU time per call, µs: this Python process (all its threads) and the server "
        "(all its threads), over the timed calls:\n"
    )
    print("| layer | backend | transport | op | client CPU µs | server CPU µs |")
    print("|---|---|---|---|---:|---:|")
    for s in rows:
        server = "–" if s["server_cpu_us"] is None else f"{s['server_cpu_us']:.0f}"
        print(
            f"| {s['layer']} | {names[(s['layer'], s['backend'])]} | {s['transport']} "
            f"| {ops_named[(s['layer'], s['op'])]} | {s['client_cpu_us']:.0f} | {server} |"
        )
    bad = [s for s in rows if s["misses"]]
    for s in bad:
        print(
            f"bench-django-cache: {s['layer']} {s['backend']} {s['transport']} {s['op']}: "
            f"{s['misses']} of {s['calls']} gets missed",
            file=sys.stderr,
        )
    if args.json:
        with open(args.json, "w") as f:
            for s in rows:
                f.write(json.dumps(s) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
