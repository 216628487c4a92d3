#!/usr/bin/env bash
# bench-python-client.sh: the Python client's targets, measured side by side in one run on
# fresh servers (a release larder and a Redis with appendonly yes, appendfsync everysec, each
# on a free loopback port and a Unix socket, stopped at the end):
#   1. one caller, 100-byte values, get and set over the Unix socket and over TCP: Larder
#      through larder_client on its native core and on grpcio, and redis-py on Redis (bare
#      clients, and Django's cache API through LarderCache on each core and django-redis);
#      p50 and p99, and each core's p50 over redis-py's;
#   2. in the same rounds, Larder's Rust client (`larder bench --concurrency 1 --connections 1`)
#      making the same calls against Larder and against Redis: what the native core adds to
#      a Rust client's p50 (target: at most 15 µs);
#   3. asyncio: 64 tasks on one event loop calling get back to back on one shared client
#      (larder_client.aio on each core, redis.asyncio on a pool of 64 connections), calls/s
#      over a fixed time, and each core's calls/s over redis.asyncio's.
# Ratios within the run are what count: absolute figures drift by ±20% on a shared machine.
# Writes report.md (the targets first, then every table), results.jsonl (one caller),
# asyncio.jsonl and machine.txt. Not run by CI: about 5 minutes once the venv and the release
# build exist.
#
# This runs scripts/bench-django-cache.sh with these defaults, which its own environment
# variables override (see its header for all of them): BENCH_LAYERS=django,client,rust,
# BENCH_CORES=native,grpc, BENCH_CALLS=10000 (timed calls per cell over all rounds),
# BENCH_ROUNDS=10, BENCH_ASYNC_TASKS=64, BENCH_ASYNC_SECONDS=2 (timed seconds per asyncio
# cell and round), BENCH_ASYNC_ROUNDS=5, BENCH_OUT_DIR (default a new directory under /tmp),
# BENCH_DJANGO_VENV (the venv), BENCH_PIN, LARDER_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."

export BENCH_LAYERS="${BENCH_LAYERS:-django,client,rust}"
export BENCH_CORES="${BENCH_CORES:-native,grpc}"
export BENCH_CALLS="${BENCH_CALLS:-10000}"
export BENCH_ROUNDS="${BENCH_ROUNDS:-10}"
export BENCH_ASYNC_TASKS="${BENCH_ASYNC_TASKS:-64}"
export BENCH_ASYNC_SECONDS="${BENCH_ASYNC_SECONDS:-2}"
export BENCH_ASYNC_ROUNDS="${BENCH_ASYNC_ROUNDS:-5}"
if [ -z "${BENCH_OUT_DIR:-}" ]; then
  BENCH_OUT_DIR="$(mktemp -d "${TMPDIR:-/tmp}/larder-python-client-report.XXXXXX")"
  export BENCH_OUT_DIR
fi
exec bash scripts/bench-django-cache.sh
