"""bench_common.py: what the Python client's two benchmark drivers, scripts/bench-django-cache.py
and scripts/bench-python-client.py, share.

It owns: the cores, transports and native-over-Rust target both report on; the arguments both
take alike (the servers' addresses and pids, --rounds, --keys, --value-size) and the
whole-number argument parsers; the order of the backends in each round; the CPU clocks (the
on-CPU time of a process's threads, the machine's busy time); the nearest-rank percentile;
and the end of a run (missed gets reported to stderr, one JSON line per row, the exit
status).

Not a script: both drivers are run as `python scripts/<name>.py`, which puts this directory
first on sys.path, and import it as `import bench_common as common`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

CORES = ("native", "grpc")
TRANSPORTS = ("tcp", "unix")
# What the native core may add to the Rust client's p50, µs (the client's target).
NATIVE_OVER_RUST_TARGET_US = 15.0


def whole_number(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from low to high."""

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if not low <= n <= high:
            raise argparse.ArgumentTypeError(f"must be {low} to {high}, got {n}")
        return n

    return parse


def positive_int(limit: int) -> Callable[[str], int]:
    """An argparse type: a whole number from 1 to limit."""
    return whole_number(1, limit)


def add_server_args(p: argparse.ArgumentParser) -> None:
    """--larder-tcp, --larder-unix, --redis-tcp, --redis-unix, --larder-pid, --redis-pid."""
    p.add_argument("--larder-tcp", required=True, help="host:port of a Larder daemon")
    p.add_argument("--larder-unix", required=True, help="unix:/path of the same daemon")
    p.add_argument("--redis-tcp", required=True, help="redis://127.0.0.1:PORT/0")
    p.add_argument("--redis-unix", required=True, help="unix:///path?db=0")
    p.add_argument(
        "--larder-pid", type=int, help="the daemon's pid, for its CPU per call"
    )
    p.add_argument(
        "--redis-pid", type=int, help="redis-server's pid, for its CPU per call"
    )


def add_workload_args(
    p: argparse.ArgumentParser, rounds: int, value_size_help: str
) -> None:
    """--rounds (default rounds), --keys and --value-size."""
    p.add_argument(
        "--rounds", type=positive_int(100), default=rounds, help=f"rounds ({rounds})"
    )
    p.add_argument(
        "--keys", type=positive_int(1_000_000), default=1000, help="keys (1000)"
    )
    p.add_argument(
        "--value-size", type=positive_int(1 << 20), default=100, help=value_size_help
    )


def round_order(items: Sequence[str], r: int) -> list[str]:
    """items rotated by r // 2 and reversed in odd rounds: every order once in 6 rounds
    with three items, each of two first in every other round."""
    k = (r // 2) % len(items)
    turned = list(items[k:]) + list(items[:k])
    return turned[::-1] if r % 2 else turned


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


def pct(sorted_ns: list[int], q: float) -> float:
    """Nearest-rank percentile, in µs."""
    i = max(0, min(len(sorted_ns) - 1, -(-len(sorted_ns) * q // 100) - 1))
    return sorted_ns[int(i)] / 1000


def finish(
    rows: list[dict[str, Any]],
    json_path: str | None,
    prefix: str,
    named_by: Sequence[str],
) -> int:
    """Reports each row with misses to stderr ("prefix field field: M of N gets missed", the
    fields named_by), writes the rows as JSON lines to json_path if given; 1 if any missed."""
    bad = [s for s in rows if s["misses"]]
    for s in bad:
        print(
            f"{prefix} {' '.join(str(s[k]) for k in named_by)}: "
            f"{s['misses']} of {s['calls']} gets missed",
            file=sys.stderr,
        )
    if json_path:
        with open(json_path, "w") as f:
            for s in rows:
                f.write(json.dumps(s) + "\n")
    return 1 if bad else 0
