"""bench-django-cache.py: Django's cache.get and cache.set through larder_client's LarderCache
and through django-redis, one caller, over TCP and over a Unix socket, in the same process and
run; LarderCache on each of the client's cores (native and grpcio).

Run by scripts/bench-django-cache.sh (and scripts/bench-python-client.sh), which start the
servers and pass their addresses:

    python scripts/bench-django-cache.py --larder-tcp 127.0.0.1:P --larder-unix unix:/path \
        --redis-tcp redis://127.0.0.1:Q/0 --redis-unix 'unix:///path?db=0'

The backends of the Python layers are Larder on each core of --cores (larder-native: the
Rust extension larder_client._native; larder-grpc: grpcio) and Redis. Every cell (layer ×
transport × op × backend) runs once in each of --rounds rounds, taking --calls / --rounds
calls each time; the order of the backends turns from one round to the next (rotated every
other round, reversed in odd rounds, so that with three backends six rounds see every
order), so that the drift of a shared machine falls on all of them alike. Each call is timed
alone with time.perf_counter_ns; the percentiles pool every round's calls, and each round's
own p50 is printed beside them. Before each timed stretch the cell makes --warmup untimed
calls. Python's cyclic garbage collector is off while the rounds run (it is run between
rounds), so that a collection does not land on whichever call happens to be running. Keys
come from one seeded sequence over --keys keys, the same for every cell; every key is
written before the first timed get, so every timed get is a hit (misses are counted and
reported all the same).

Layers:

- "django": Django's cache API, LarderCache against django-redis. LarderCache is told its
  core by the LARDER_CLIENT_CORE environment variable, read when its shared client is made:
  the script sets it before making each core's client, and checks the core it got.
- "client": the bare clients with no Django in between, larder_client.Larder(core=...).cache
  get/set against redis-py's GET/SET (with the same TTL as Django's default TIMEOUT, 300 s).
- "rust": Larder's own Rust load generator (`larder bench`, given by --larder-bin) making the
  same calls with one caller on one connection, against Larder and against Redis, in the same
  rounds, right after the Python cells of the same transport and op. It reports percentiles
  per run, not each call, so its p50 and p99 are the medians of its rounds' own. What the
  native core adds over a Rust client is, in each round, the Python cell's p50 less the Rust
  client's, the median over the rounds.

Prints Markdown tables: latencies in µs, the ratio of each Larder core's p50 to Redis's
(above 1: Larder takes longer), what the Django layer adds to each bare client's p50, and
what each Python client adds to the Rust client's. --json PATH also writes one JSON object
per cell.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import bench_common as common

OPS = ("set", "get")
LAYERS = ("django", "client", "rust")
RUST_BACKENDS = ("larder", "redis")
MAX_CALLS = 1_000_000
TIMEOUT_S = 300  # Django's default TIMEOUT, used by every layer

Calls = dict[str, Callable[[str], object]]
Cell = tuple[str, str, str, str]  # layer, backend, transport, op


def comma_list(
    p: argparse.ArgumentParser, text: str, known: Sequence[str], what: str
) -> list[str]:
    """The items of a comma list, in the order of known; an error for any other item."""
    items = [x for x in text.split(",") if x]
    if not items or any(x not in known for x in items):
        p.error(f"{what} takes a comma list of {', '.join(known)}, got {text!r}")
    return [x for x in known if x in items]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_server_args(p)
    p.add_argument(
        "--larder-bin",
        help="the larder binary whose `larder bench` the rust layer runs",
    )
    p.add_argument(
        "--calls",
        type=common.positive_int(MAX_CALLS),
        default=20_000,
        help="timed calls per cell, over all rounds (default 20000)",
    )
    common.add_workload_args(
        p, rounds=10, value_size_help="bytes per value before pickling (100)"
    )
    p.add_argument(
        "--warmup",
        type=common.whole_number(0, MAX_CALLS),
        default=200,
        help="untimed calls per cell before each timed stretch (200)",
    )
    p.add_argument(
        "--layers",
        default="django,client",
        help="comma list of django, client and rust (default django,client)",
    )
    p.add_argument(
        "--cores",
        default="native,grpc",
        help="the Larder client's cores to run, comma list of native and grpc (both)",
    )
    p.add_argument(
        "--json", metavar="PATH", help="also write one JSON line per cell here"
    )
    args = p.parse_args()
    if args.rounds > args.calls:
        p.error(f"--rounds ({args.rounds}) cannot exceed --calls ({args.calls})")
    args.layers = comma_list(p, args.layers, LAYERS, "--layers")
    args.cores = comma_list(p, args.cores, common.CORES, "--cores")
    if "rust" in args.layers and not args.larder_bin:
        p.error("the rust layer needs --larder-bin")
    return args


def backends_of(layer: str, cores: Sequence[str]) -> list[str]:
    if layer == "rust":
        return list(RUST_BACKENDS)
    return [f"larder-{c}" for c in cores] + ["redis"]


def redis_client_kwargs(url: str) -> dict[str, object]:
    """redis.Redis(...) arguments for the same URL django-redis is given."""
    import redis

    pool = redis.ConnectionPool.from_url(url)
    kwargs = dict(pool.connection_kwargs)
    pool.disconnect()
    if url.startswith("unix:"):
        return {"unix_socket_path": kwargs["path"], "db": kwargs.get("db", 0)}
    return {"host": kwargs["host"], "port": kwargs["port"], "db": kwargs.get("db", 0)}


def rust_targets(args: argparse.Namespace) -> dict[tuple[str, str], str]:
    """`larder bench --target` of each (backend, transport)."""
    out = {}
    for t in common.TRANSPORTS:
        larder = getattr(args, f"larder_{t}")
        out[("larder", t)] = larder if t == "unix" else f"http://{larder}"
        kw = redis_client_kwargs(getattr(args, f"redis_{t}"))
        out[("redis", t)] = (
            f"unix+redis:{kw['unix_socket_path']}"
            if t == "unix"
            else f"redis://{kw['host']}:{kw['port']}"
        )
    return out


# LarderCache shares one client per process, location and OPTIONS, whichever core the
# environment names, so each core's caches spell the same settings differently (1.0 s is the
# default SOCKET_TIMEOUT): each core then gets a client of its own.
CORE_OPTIONS: dict[str, dict[str, object]] = {
    "native": {},
    "grpc": {"SOCKET_TIMEOUT": 1.0},
}


def configure_django(args: argparse.Namespace) -> dict[tuple[str, str], object]:
    import django
    from django.conf import settings

    # Identical settings for every backend: Django's defaults (TIMEOUT 300 s, KEY_PREFIX "",
    # VERSION 1) and each backend's default serializer (pickle) with no compression.
    caches: dict[str, dict[str, object]] = {
        "default": {"BACKEND": "django.core.cache.backends.dummy.DummyCache"}
    }
    for t in common.TRANSPORTS:
        for c in args.cores:
            caches[f"larder-{c}-{t}"] = {
                "BACKEND": "larder_client.django.LarderCache",
                "LOCATION": getattr(args, f"larder_{t}"),
                "OPTIONS": CORE_OPTIONS[c],
            }
        caches[f"redis-{t}"] = {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": getattr(args, f"redis_{t}"),
        }
    settings.configure(CACHES=caches, USE_TZ=True)
    django.setup()
    from django.core.cache import caches as django_caches

    out: dict[tuple[str, str], object] = {}
    before = os.environ.get("LARDER_CLIENT_CORE")
    try:
        for t in common.TRANSPORTS:
            for c in args.cores:
                cache = django_caches[f"larder-{c}-{t}"]
                os.environ["LARDER_CLIENT_CORE"] = c
                got = cache._client().core  # made now, with this core
                if got != c:
                    raise SystemExit(
                        f"bench-django-cache: LarderCache larder-{c}-{t} runs on the {got} "
                        f"core, not {c}"
                    )
                out[(f"larder-{c}", t)] = cache
            out[("redis", t)] = django_caches[f"redis-{t}"]
    finally:
        if before is None:
            os.environ.pop("LARDER_CLIENT_CORE", None)
        else:
            os.environ["LARDER_CLIENT_CORE"] = before
    return out


def django_calls(cache: Any, value: bytes) -> Calls:
    return {"set": lambda k: cache.set(k, value), "get": cache.get}


def client_calls(
    args: argparse.Namespace, value: bytes
) -> dict[tuple[str, str], Calls]:
    import redis
    from larder_client import Larder

    out: dict[tuple[str, str], Calls] = {}
    ttl_ms = TIMEOUT_S * 1000
    for t in common.TRANSPORTS:
        for c in args.cores:
            client = Larder(getattr(args, f"larder_{t}"), core=c)
            if client.core != c:
                raise SystemExit(
                    f"bench-django-cache: Larder(core={c!r}) ran on {client.core}"
                )
            lc = client.cache
            out[(f"larder-{c}", t)] = {
                "set": lambda k, lc=lc: lc.set(k, value, ttl_ms),
                "get": lc.get,
            }
        r = redis.Redis(**redis_client_kwargs(getattr(args, f"redis_{t}")))
        out[("redis", t)] = {
            "set": lambda k, r=r: r.set(k, value, px=ttl_ms),
            "get": r.get,
        }
    return out


def larder_bench(
    args: argparse.Namespace,
    target: str,
    op: str,
    requests: int,
    extra: Sequence[str],
    one_line: bool,
) -> list[str]:
    """Runs `larder bench` on target: op with one caller on one connection, requests calls
    over --keys keys of --value-size bytes, and the extra arguments; its JSON lines. Exits
    if it fails, or (one_line) if it does not print exactly one."""
    cmd = [
        args.larder_bin,
        "bench",
        "--target",
        target,
        "--ops",
        op,
        "--concurrency",
        "1",
        "--connections",
        "1",
        "--requests",
        str(requests),
        "--keys",
        str(args.keys),
        "--value-size",
        str(args.value_size),
        *extra,
        "--json",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    lines = [x for x in done.stdout.splitlines() if x.startswith("{")]
    if done.returncode != 0 or (one_line and len(lines) != 1):
        raise SystemExit(
            f"bench-django-cache: `{' '.join(cmd)}` failed ({done.returncode}):\n"
            f"{done.stdout}{done.stderr}"
        )
    return lines


def rust_bench(
    args: argparse.Namespace,
    target: str,
    op: str,
    calls: int,
    pid: int | None,
    warm: bool,
) -> dict[str, Any]:
    """One `larder bench` run: op with one caller on one connection; its JSON line."""
    extra = ["--warmup", "0.1s" if warm else "0s", "--no-preload"]
    if pid is not None:
        extra += ["--server-pid", str(pid)]
    lines = larder_bench(args, target, op, calls, extra, one_line=True)
    return json.loads(lines[0])


def rust_preload(args: argparse.Namespace, target: str) -> None:
    """Writes the Rust client's key space (key:0 ..) once, before the rounds."""
    larder_bench(args, target, "get", 1, [], one_line=False)


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


def load_mark(pids: dict[str, int | None]) -> tuple[float, int, int]:
    """Now: the monotonic clock, the machine's busy ns, and this benchmark's own CPU ns
    (its children's, `larder bench`, included once they are reaped)."""
    kids = os.times()
    children = int((kids.children_user + kids.children_system) * 1e9)
    own = (
        time.process_time_ns()
        + children
        + sum(common.cpu_ns(p) for p in set(pids.values()))
    )
    return time.monotonic(), common.machine_busy_ns(), own


def other_cores(a: tuple[float, int, int], b: tuple[float, int, int]) -> float:
    """Cores busy with work other than this benchmark's (client and servers) from a to b."""
    wall = b[0] - a[0]
    if wall <= 0:
        return 0.0
    return max(0.0, ((b[1] - a[1]) - (b[2] - a[2])) / 1e9 / wall)


def server_of(backend: str) -> str:
    return "redis" if backend == "redis" else "larder"


NAMES = {
    ("django", "larder-native"): "LarderCache, native core",
    ("django", "larder-grpc"): "LarderCache, grpcio core",
    ("django", "redis"): "django-redis",
    ("client", "larder-native"): "larder_client, native core",
    ("client", "larder-grpc"): "larder_client, grpcio core",
    ("client", "redis"): "redis-py",
    ("rust", "larder"): "Rust client → Larder",
    ("rust", "redis"): "Rust client → Redis",
}


def op_named(layer: str, op: str) -> str:
    """The op as the layer spells it: Django's cache.get and cache.set, else get and set."""
    return f"cache.{op}" if layer == "django" else op


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
    py_layers = [x for x in args.layers if x != "rust"]

    cells: dict[tuple[str, str, str], Calls] = {}
    if "django" in py_layers:
        for (b, t), cache in configure_django(args).items():
            cells[("django", b, t)] = django_calls(cache, value)
    if "client" in py_layers:
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
    targets = rust_targets(args) if "rust" in args.layers else {}
    for target in targets.values():
        rust_preload(args, target)

    pids = {"larder": args.larder_pid, "redis": args.redis_pid}
    # Per cell: CPU ns of this process (every thread, the cores' own included) and of the
    # server.
    cpu_used: dict[Cell, list[int]] = {}
    # Each Python cell's timings, one list per round; each Rust cell's JSON, one per round.
    samples: dict[Cell, list[list[int]]] = {}
    rust_runs: dict[Cell, list[dict[str, Any]]] = {}
    misses: dict[Cell, int] = {}
    other_load: list[float] = []
    started = time.monotonic()
    gc.disable()  # a collection would land on whichever call is running
    try:
        for r, seq in enumerate(sequences):
            mark = load_mark(pids)
            # The cells of one transport and op run back to back (Django, then the bare
            # clients, then the Rust client, each on every backend), so that their
            # differences see the same moment.
            for t in common.TRANSPORTS:
                for op in OPS:
                    for layer in args.layers:
                        for b in common.round_order(backends_of(layer, args.cores), r):
                            key = (layer, b, t, op)
                            server = pids[server_of(b)]
                            if layer == "rust":
                                target = targets[(b, t)]
                                warm_up = args.warmup > 0
                                run = rust_bench(
                                    args, target, op, len(seq), server, warm_up
                                )
                                rust_runs.setdefault(key, []).append(run)
                                if op == "get":
                                    misses[key] = misses.get(key, 0) + run["misses"]
                                continue
                            fn = cells[(layer, b, t)][op]
                            for k in warm:
                                fn(k)
                            stretch: list[int] = []
                            c0, s0 = time.process_time_ns(), common.cpu_ns(server)
                            m = timed(fn, seq, stretch)
                            c1, s1 = time.process_time_ns(), common.cpu_ns(server)
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

    rows = summarize(args, samples, rust_runs, cpu_used, misses, pids)
    report(args, rows, other_load, pids)
    return common.finish(
        rows,
        args.json,
        "bench-django-cache:",
        ("layer", "backend", "transport", "op"),
    )


def summarize(
    args: argparse.Namespace,
    samples: dict[Cell, list[list[int]]],
    rust_runs: dict[Cell, list[dict[str, Any]]],
    cpu_used: dict[Cell, list[int]],
    misses: dict[Cell, int],
    pids: dict[str, int | None],
) -> list[dict[str, Any]]:
    """One dict per cell, in the order of the tables."""
    rows: list[dict[str, Any]] = []
    for layer in args.layers:
        for t in common.TRANSPORTS:
            for op in OPS:
                stats: dict[str, dict[str, Any]] = {}
                for b in backends_of(layer, args.cores):
                    key = (layer, b, t, op)
                    pid = pids[server_of(b)]
                    s: dict[str, Any] = {
                        "layer": layer,
                        "backend": b,
                        "core": b.removeprefix("larder-")
                        if b.startswith("larder-")
                        else None,
                        "transport": t,
                        "op": op,
                        "misses": misses.get(key, 0),
                    }
                    if layer == "rust":
                        runs = rust_runs[key]
                        s["calls"] = sum(x["ops"] for x in runs)
                        # Each run's percentiles; the medians over the rounds stand for them.
                        s["round_p50_us"] = [x["p50_us"] for x in runs]
                        s["round_p99_us"] = [x["p99_us"] for x in runs]
                        s["p50_us"] = statistics.median(s["round_p50_us"])
                        s["p99_us"] = statistics.median(s["round_p99_us"])
                        s["p50_p99_are_medians_of_rounds"] = True
                        # One caller: the run's time over its calls is the mean call.
                        busy_s = sum(x["ops"] / x["ops_per_sec"] for x in runs)
                        s["mean_us"] = 1e6 * busy_s / s["calls"]
                        cpu = [x["server_cpu_us_per_op"] for x in runs]
                        s["client_cpu_us"] = None
                        s["server_cpu_us"] = (
                            statistics.median(cpu)
                            if all(c is not None for c in cpu)
                            else None
                        )
                    else:
                        by_round = samples[key]
                        ns = sorted(x for stretch in by_round for x in stretch)
                        s["calls"] = len(ns)
                        s["p50_us"] = common.pct(ns, 50)
                        s["p99_us"] = common.pct(ns, 99)
                        s["mean_us"] = statistics.fmean(ns) / 1000
                        s["round_p50_us"] = [
                            common.pct(sorted(x), 50) for x in by_round
                        ]
                        s["client_cpu_us"] = cpu_used[key][0] / 1000 / len(ns)
                        s["server_cpu_us"] = (
                            cpu_used[key][1] / 1000 / len(ns)
                            if pid is not None
                            else None
                        )
                    stats[b] = s
                redis = stats["redis"]
                for s in stats.values():
                    if s["backend"] == "redis":
                        continue
                    s["redis_p50_ratio"] = s["p50_us"] / redis["p50_us"]
                    # The same ratio within each round, where both ran a moment apart.
                    s["redis_p50_ratio_round_median"] = statistics.median(
                        x / y for x, y in zip(s["round_p50_us"], redis["round_p50_us"])
                    )
                rows.extend(stats.values())
    return rows


def round_diffs(rows: list[dict[str, Any]], a: Cell, b: Cell) -> list[float] | None:
    """Per round, cell a's p50 less cell b's (None if either did not run)."""
    p50s = {(s["layer"], s["backend"], s["transport"], s["op"]): s for s in rows}
    if a not in p50s or b not in p50s:
        return None
    return [x - y for x, y in zip(p50s[a]["round_p50_us"], p50s[b]["round_p50_us"])]


def report(
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
    other_load: list[float],
    pids: dict[str, int | None],
) -> None:
    import grpc
    import larder_client  # noqa: F401
    import redis

    versions = [f"python {platform.python_version()}"]
    if "django" in args.layers:
        import django
        import django_redis

        versions += [
            f"Django {django.get_version()}",
            f"django-redis {django_redis.__version__}",
        ]
    versions += [f"redis-py {redis.__version__}", f"grpcio {grpc.__version__}"]
    print(", ".join(versions))
    print(
        f"{args.calls} timed calls per cell in {args.rounds} rounds "
        f"(backend order turned each round), {args.warmup} untimed calls per cell before "
        f"each, {args.keys} keys, {args.value_size}-byte values, one caller; Larder client "
        f"cores: {', '.join(args.cores)}"
    )
    which = (
        "the machine less this client and the two servers"
        if any(p is not None for p in pids.values())
        else "the machine less this client; servers' CPU not excluded without their pids"
    )
    print(
        f"cores busy with other work in each round ({which}): "
        + " ".join(f"{x:.2f}" for x in other_load)
    )

    titles = {
        "django": "Django cache API",
        "client": "bare clients, no Django: larder_client.Larder(core=...).cache vs redis-py",
        "rust": (
            "Rust client (`larder bench --concurrency 1 --connections 1`), same rounds; "
            "p50 and p99 are the medians of the rounds' own"
        ),
    }
    for layer in args.layers:
        print(f"\n{titles[layer]}\n")
        print(
            "| backend | transport | op | calls | p50 µs | p99 µs | mean µs "
            "| /Redis p50 | the same, median of rounds | p50 of each round µs |"
        )
        print("|---|---|---|---:|---:|---:|---:|---:|---:|---|")
        for s in rows:
            if s["layer"] != layer:
                continue
            ratio = (
                f"{s['redis_p50_ratio']:.2f}× | {s['redis_p50_ratio_round_median']:.2f}×"
                if s["backend"] != "redis"
                else " | "
            )
            print(
                f"| {NAMES[(layer, s['backend'])]} | {s['transport']} "
                f"| {op_named(layer, s['op'])} | {s['calls']:,} | {s['p50_us']:,.0f} "
                f"| {s['p99_us']:,.0f} | {s['mean_us']:,.0f} | {ratio} "
                f"| {' '.join(f'{x:.0f}' for x in s['round_p50_us'])} |"
            )

    if "client" in args.layers:
        print(
            "\nThe Python client's targets, bare clients, one caller: p50 µs, and each Larder "
            "core's p50 over redis-py's (pooled; median of the rounds' own)\n"
        )
        head = "| transport | op | redis-py p50 |"
        line = "|---|---|---:|"
        for c in args.cores:
            head += f" {c} p50 | {c} p99 | {c} / redis-py | median of rounds |"
            line += "---:|---:|---:|---:|"
        print(head + "\n" + line)
        by = {(s["layer"], s["backend"], s["transport"], s["op"]): s for s in rows}
        for t in common.TRANSPORTS:
            for op in OPS:
                redis_s = by[("client", "redis", t, op)]
                out = f"| {t} | {op} | {redis_s['p50_us']:,.0f} |"
                for c in args.cores:
                    s = by[("client", f"larder-{c}", t, op)]
                    out += (
                        f" {s['p50_us']:,.0f} | {s['p99_us']:,.0f} "
                        f"| {s['redis_p50_ratio']:.2f}× "
                        f"| {s['redis_p50_ratio_round_median']:.2f}× |"
                    )
                print(out)

    if "client" in args.layers and "rust" in args.layers:
        print(
            "\nWhat each Python client adds to the Rust client's p50, same server, same op: in "
            "each round, the Python cell's p50 less the Rust client's; the median and the "
            f"range over rounds, µs (the native core's target: ≤ {common.NATIVE_OVER_RUST_TARGET_US:.0f}"
            " µs)\n"
        )
        print(
            "| Python client | transport | op | Python p50 | Rust client p50 "
            "| added, median µs | range over rounds µs | verdict |"
        )
        print("|---|---|---|---:|---:|---:|---|---|")
        by = {(s["layer"], s["backend"], s["transport"], s["op"]): s for s in rows}
        for b in backends_of("client", args.cores):
            rust_b = "redis" if b == "redis" else "larder"
            for t in common.TRANSPORTS:
                for op in OPS:
                    d = round_diffs(rows, ("client", b, t, op), ("rust", rust_b, t, op))
                    if d is None:
                        continue
                    med = statistics.median(d)
                    verdict = ""
                    if b == "larder-native":
                        verdict = (
                            "met"
                            if med <= common.NATIVE_OVER_RUST_TARGET_US
                            else f"**missed** by {med - common.NATIVE_OVER_RUST_TARGET_US:,.0f} µs"
                        )
                    print(
                        f"| {NAMES[('client', b)]} | {t} | {op} "
                        f"| {by[('client', b, t, op)]['p50_us']:,.0f} "
                        f"| {by[('rust', rust_b, t, op)]['p50_us']:,.0f} | {med:,.1f} "
                        f"| {min(d):,.0f} to {max(d):,.0f} | {verdict} |"
                    )

    if "django" in args.layers and "client" in args.layers:
        print(
            "\nWhat the Django layer adds: in each round, the Django cell's p50 less the bare "
            "client's p50 (run just before or after it); the median and the range over rounds, "
            "µs:\n"
        )
        print(
            "| backend | transport | op | Django layer, median µs | range over rounds µs |"
        )
        print("|---|---|---|---:|---|")
        for b in backends_of("django", args.cores):
            for t in common.TRANSPORTS:
                for op in OPS:
                    d = round_diffs(rows, ("django", b, t, op), ("client", b, t, op))
                    assert d is not None
                    print(
                        f"| {NAMES[('django', b)]} | {t} | {op} | {statistics.median(d):,.0f} "
                        f"| {min(d):,.0f} to {max(d):,.0f} |"
                    )
    print(
        "\nCPU time per call, µs: this Python process (all its threads) and the server "
        "(all its threads), over the timed calls (the Rust client: the server's, the median "
        "of its rounds):\n"
    )
    print("| layer | backend | transport | op | client CPU µs | server CPU µs |")
    print("|---|---|---|---|---:|---:|")
    for s in rows:
        client = "–" if s["client_cpu_us"] is None else f"{s['client_cpu_us']:.0f}"
        server = "–" if s["server_cpu_us"] is None else f"{s['server_cpu_us']:.0f}"
        print(
            f"| {s['layer']} | {NAMES[(s['layer'], s['backend'])]} | {s['transport']} "
            f"| {op_named(s['layer'], s['op'])} | {client} | {server} |"
        )


if __name__ == "__main__":
    sys.exit(main())
