"""Auto-pipelining against unary calls, in one run: ``larder_client.aio.Larder`` with
``pipeline=True`` and ``pipeline=False`` take turns (A/B/A/B...) on one daemon, each round
``--tasks`` asyncio tasks calling Get or Set for ``--seconds``, and the figures of each mode are
printed per core: calls per second (wall clock, load-dependent) and the client's and the
daemon's CPU time per call (less so).

Usage: python clients/python/bench/aio_pipeline.py [--core native|grpc] [--op get|set]
       [--tasks 64] [--seconds 3] [--rounds 3] [--target unix|tcp]
The daemon is $LARDER_BIN (else the debug build), started on a fresh data directory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import larder_daemon

from larder_client import aio

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def round_of(larder: aio.Larder, op: str, tasks: int, seconds: float) -> int:
    value = b"x" * 100
    stop = time.monotonic() + seconds
    done = 0

    async def caller(n: int) -> None:
        nonlocal done
        key = f"bench:{n}"
        while time.monotonic() < stop:
            if op == "get":
                await larder.cache.get(key)
            else:
                await larder.cache.set(key, value)
            done += 1

    await asyncio.gather(*(caller(n) for n in range(tasks)))
    return done


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--core", default="native", choices=["native", "grpc"])
    parser.add_argument("--op", default="get", choices=["get", "set"])
    parser.add_argument("--tasks", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--target", default="unix", choices=["unix", "tcp"])
    args = parser.parse_args()
    daemon = larder_daemon.Daemon(str(larder_daemon.larder_bin()), prefix="larder-bench-")
    try:
        target = daemon.unix_target if args.target == "unix" else daemon.addr
        server_pid = daemon.proc.pid
        results: dict[bool, list[tuple[float, float, float]]] = {True: [], False: []}
        clients = {
            mode: aio.Larder(target, timeout=10.0, core=args.core, pipeline=mode)
            for mode in (True, False)
        }
        for larder in clients.values():  # warm up: connect, open the stream, fill the keys
            await asyncio.gather(
                *(larder.cache.set(f"bench:{n}", b"x" * 100) for n in range(args.tasks))
            )
        for _ in range(args.rounds):
            for mode in (True, False):
                client_cpu, server_cpu = time.process_time(), cpu_seconds(server_pid)
                start = time.monotonic()
                calls = await round_of(clients[mode], args.op, args.tasks, args.seconds)
                wall = time.monotonic() - start
                client_us = (time.process_time() - client_cpu) / calls * 1e6
                server_us = (cpu_seconds(server_pid) - server_cpu) / calls * 1e6
                results[mode].append((calls / wall, client_us, server_us))
        for larder in clients.values():
            await larder.close()
    finally:
        daemon.stop()
        daemon.cleanup()
    print(f"core={args.core} op={args.op} tasks={args.tasks} target={args.target}")
    for mode in (True, False):
        rows = results[mode]
        name = "pipelined" if mode else "unary"
        rate = [r[0] for r in rows]
        print(
            f"  {name:9} calls/s {statistics.median(rate):8.0f} (runs {', '.join(f'{r:.0f}' for r in rate)})"
            f"  client CPU/call {statistics.median(r[1] for r in rows):6.1f} us"
            f"  daemon CPU/call {statistics.median(r[2] for r in rows):6.1f} us"
        )
    ratios = [p[0] / u[0] for p, u in zip(results[True], results[False])]
    print(f"  pipelined/unary calls/s per round: {', '.join(f'{r:.2f}' for r in ratios)}")


if __name__ == "__main__":
    asyncio.run(main())
