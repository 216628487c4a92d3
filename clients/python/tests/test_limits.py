"""larder_client.limits: the ``limits`` storages against a real daemon.

Each strategy on both URI forms, the primitives, the query parameters and their errors, one
limit shared by callers in several processes, and the asyncio storage.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("limits", reason="the limits storages need limits (pip install limits)")

import grpc
from limits import (
    RateLimitItem,
    RateLimitItemPerDay,
    RateLimitItemPerMinute,
    RateLimitItemPerSecond,
    strategies,
)
from limits.aio import strategies as aio_strategies
from limits.errors import ConfigurationError, StorageError
from limits.storage import storage_from_string

import larder_client.limits
from larder_client import Larder
from larder_client.limits import LarderAsyncStorage, LarderStorage

STRATEGIES = {
    "fixed-window": strategies.FixedWindowRateLimiter,
    "moving-window": strategies.MovingWindowRateLimiter,
    "sliding-window-counter": strategies.SlidingWindowCounterRateLimiter,
}
AIO_STRATEGIES = {
    "fixed-window": aio_strategies.FixedWindowRateLimiter,
    "moving-window": aio_strategies.MovingWindowRateLimiter,
    "sliding-window-counter": aio_strategies.SlidingWindowCounterRateLimiter,
}


def _namespace() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["tcp", "unix"])
def uri(request: pytest.FixtureRequest, daemon: Any) -> str:
    """A storage URI of each form, in a namespace of its own."""
    if request.param == "tcp":
        return f"larder://{daemon.addr}?namespace={_namespace()}"
    return f"larder+unix://{daemon.socket}?namespace={_namespace()}"


# --- the strategies --------------------------------------------------------------------------


@pytest.mark.parametrize("name", STRATEGIES)
def test_strategy_admits_the_limit_then_refuses(uri: str, name: str) -> None:
    storage = storage_from_string(uri)
    assert isinstance(storage, LarderStorage)
    assert storage.check()
    limiter = STRATEGIES[name](storage)
    item = RateLimitItemPerMinute(3)
    assert [limiter.hit(item, "ip", "203.0.113.9") for _ in range(4)] == [True] * 3 + [False]
    assert not limiter.test(item, "ip", "203.0.113.9")
    stats = limiter.get_window_stats(item, "ip", "203.0.113.9")
    assert stats.remaining == 0
    assert time.time() < stats.reset_time <= time.time() + 120
    # Another identity has its own budget; clear gives the first one its full limit back.
    assert limiter.hit(item, "ip", "198.51.100.7")
    limiter.clear(item, "ip", "203.0.113.9")
    assert limiter.get_window_stats(item, "ip", "203.0.113.9").remaining == 3
    assert limiter.hit(item, "ip", "203.0.113.9")


@pytest.mark.parametrize("name", STRATEGIES)
def test_strategy_cost(uri: str, name: str) -> None:
    limiter = STRATEGIES[name](storage_from_string(uri))
    item = RateLimitItemPerMinute(10)
    assert limiter.hit(item, "k", cost=7)
    assert limiter.test(item, "k", cost=3)
    assert not limiter.test(item, "k", cost=4)
    assert limiter.hit(item, "k", cost=3)
    assert not limiter.hit(item, "k")


def test_fixed_window_primitives(uri: str) -> None:
    storage = storage_from_string(uri)
    assert storage.get("absent") == 0
    assert storage.incr("k", 60) == 1
    assert storage.incr("k", 60, amount=5) == 6
    assert storage.get("k") == 6
    expiry = storage.get_expiry("k")
    assert time.time() + 50 < expiry <= time.time() + 60
    storage.clear("k")
    assert storage.get("k") == 0


def test_a_counter_expires_with_its_window(uri: str) -> None:
    storage = storage_from_string(uri)
    storage.incr("short", 1)
    assert storage.get("short") == 1
    deadline = time.monotonic() + 10
    while storage.get("short") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert storage.get("short") == 0


def test_moving_window_primitives(uri: str) -> None:
    storage = storage_from_string(uri)
    assert storage.get_moving_window("k", 3, 60)[1] == 0
    before = time.time()
    assert storage.acquire_entry("k", 3, 60)
    assert storage.acquire_entry("k", 3, 60, amount=2)
    assert not storage.acquire_entry("k", 3, 60)
    assert not storage.acquire_entry("k", 5, 60, amount=6)  # more than the limit at once
    start, count = storage.get_moving_window("k", 3, 60)
    assert count == 3
    assert before <= start <= time.time()
    # The log is not the fixed window's counter of the same key.
    assert storage.get("k") == 0
    storage.clear("k")
    assert storage.get_moving_window("k", 3, 60)[1] == 0


def test_moving_window_is_exact(uri: str) -> None:
    """An entry leaves the window exactly ``expiry`` after it was acquired (no buckets)."""
    storage = storage_from_string(uri)
    limiter = strategies.MovingWindowRateLimiter(storage)
    item = RateLimitItemPerSecond(2, 1)
    assert limiter.hit(item, "k")
    time.sleep(0.5)
    assert limiter.hit(item, "k")
    assert not limiter.hit(item, "k")
    start, count = storage.get_moving_window(item.key_for("k"), 2, 1)
    assert count == 2
    time.sleep(max(0.0, start + 1.05 - time.time()))  # the first entry has left
    assert limiter.get_window_stats(item, "k").remaining == 1
    assert limiter.hit(item, "k")
    assert not limiter.hit(item, "k")


def test_the_moving_window_log_keeps_only_the_entries_inside_the_window(
    daemon: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1_000_000.0]
    monkeypatch.setattr(larder_client.limits, "time", SimpleNamespace(time=lambda: clock[0]))
    namespace = _namespace()
    storage = storage_from_string(f"larder://{daemon.addr}?namespace={namespace}")
    for _ in range(5):
        assert storage.acquire_entry("k", 1000, 60)
        clock[0] += 20.0  # 5 hits, 20 s apart: a 60 s window holds at most 4 of them
    with Larder(daemon.addr) as client:
        raw = client.cache.get("k", f"{namespace}:moving-window")
    # The last hit kept the 4 entries inside its window (its own and 20, 40, 60 s before).
    assert raw is not None and len(raw) == 8 * 4, "entries older than the window were kept"
    assert storage.get_moving_window("k", 1000, 60)[1] == 3  # 20, 40 and 60 s ago


def test_sliding_window_primitives(uri: str) -> None:
    storage = storage_from_string(uri)
    assert storage.get_sliding_window("k", 60)[::2] == (0, 0)
    assert storage.acquire_sliding_window_entry("k", 5, 60, amount=4)
    assert not storage.acquire_sliding_window_entry("k", 5, 60, amount=2)
    previous, previous_ttl, current, current_ttl = storage.get_sliding_window("k", 60)
    assert (previous, previous_ttl, current) == (0, 0.0, 4)
    assert 60 < current_ttl <= 120
    storage.clear_sliding_window("k", 60)
    assert storage.get_sliding_window("k", 60)[2] == 0


def test_reset_empties_only_its_namespace(daemon: Any) -> None:
    mine = storage_from_string(f"larder://{daemon.addr}?namespace={_namespace()}")
    other = storage_from_string(f"larder://{daemon.addr}?namespace={_namespace()}")
    for i in range(3):
        mine.incr(f"k{i}", 60)
    mine.acquire_entry("log", 5, 60)
    other.incr("k0", 60)
    assert mine.reset() == 4
    assert mine.get("k0") == 0
    assert mine.get_moving_window("log", 5, 60)[1] == 0
    assert other.get("k0") == 1


# --- across processes ------------------------------------------------------------------------


def _hit_many(
    uri: str,
    name: str,
    item: RateLimitItem,
    key: str,
    threads: int,
    hits: int,
    start: Any,
    results: Any,
) -> None:
    """Hits ``key`` ``threads`` x ``hits`` times from this process; puts how many passed."""
    limiter = STRATEGIES[name](storage_from_string(uri))
    admitted = []
    lock = threading.Lock()

    def run() -> None:
        for _ in range(hits):
            if limiter.hit(item, key):
                with lock:
                    admitted.append(1)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    start.wait()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    results.put(len(admitted))


@pytest.mark.parametrize("name", STRATEGIES)
def test_a_limit_of_n_admits_exactly_n_across_processes(daemon: Any, name: str) -> None:
    """Four processes of eight threads hit one key 160 times: exactly 20 pass."""
    uri = f"larder://{daemon.addr}?namespace={_namespace()}&timeout=10"
    item = RateLimitItemPerDay(20)
    context = multiprocessing.get_context("spawn")  # a gRPC channel must not cross a fork
    start, results = context.Barrier(4), context.Queue()
    processes = [
        context.Process(target=_hit_many, args=(uri, name, item, "shared", 8, 5, start, results))
        for _ in range(4)
    ]
    for process in processes:
        process.start()
    admitted = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0
    assert sum(admitted) == 20, admitted
    assert not STRATEGIES[name](storage_from_string(uri)).hit(item, "shared")


# --- query parameters ------------------------------------------------------------------------


def test_token_from_the_query_and_from_a_file(token_daemon: Any, tmp_path: Path) -> None:
    d, token = token_daemon
    item = RateLimitItemPerMinute(1)
    without = storage_from_string(f"larder://{d.addr}?retries=0")
    with pytest.raises(grpc.RpcError) as err:
        strategies.FixedWindowRateLimiter(without).hit(item, "k")
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    wrapped = storage_from_string(f"larder://{d.addr}", wrap_exceptions=True)
    with pytest.raises(StorageError):
        wrapped.incr("k", 60)
    with_token = storage_from_string(f"larder://{d.addr}?token={token.replace('+', '%2B')}")
    assert with_token.check()
    assert strategies.FixedWindowRateLimiter(with_token).hit(item, "k")
    token_file = tmp_path / "token"
    token_file.write_text(f"# larder\n{token}\n")
    from_file = storage_from_string(f"larder+unix://{d.socket}?token_file={token_file}")
    assert not strategies.FixedWindowRateLimiter(from_file).hit(item, "k")  # the same counter


def test_keyword_options_override_the_query(daemon: Any) -> None:
    storage = storage_from_string(
        f"larder://{daemon.addr}?timeout=1&namespace=a", timeout=2.5, namespace="b"
    )
    assert storage.config.options == {"SOCKET_TIMEOUT": 2.5}
    assert storage.namespace == "b"
    assert storage.config.location == daemon.addr


def test_uri_forms() -> None:
    assert storage_from_string("larder://db.internal").config.location == "db.internal:7379"
    assert storage_from_string("larder://[::1]:7000").config.location == "[::1]:7000"
    unix = storage_from_string("larder+unix:///run/larder/larder.sock")
    assert unix.config.location == "unix:/run/larder/larder.sock"
    tls = storage_from_string("larder://h:1?tls=true&allow_insecure_token=no")
    assert tls.config.options == {"TLS": True, "ALLOW_INSECURE_TOKEN": False}
    trusted = storage_from_string("larder://10.1.2.3:7379?token=t&allow_insecure_token=true")
    assert trusted.config.options == {"TOKEN": "t", "ALLOW_INSECURE_TOKEN": True}


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("larder://h:1?color=red", "unknown parameter(s) ['color']"),
        ("larder://h:1?timeout=soon", "timeout must be a number of seconds, not 'soon'"),
        ("larder://h:1?timeout=0", "timeout must be a positive number of seconds"),
        ("larder://h:1?retries=two", "retries must be a whole number, not 'two'"),
        ("larder://h:1?tls=maybe", "tls must be true or false, not 'maybe'"),
        ("larder://h:1?tls_ca_file=/etc/hosts", "tls_ca_file is a tls setting"),
        ("larder://h:1?token=a&token_file=/x", "give token or token_file, not both"),
        ("larder://h:1?token_file=/no/such/file", "token_file: cannot read /no/such/file"),
        ("larder://h:1?timeout=1&timeout=2", "query parameter 'timeout' is given twice"),
        ("larder://h:1?namespace=", "namespace must be 1 to 114 bytes"),
        ("larder://h:1?namespace=" + "n" * 115, "namespace must be 1 to 114 bytes"),
        ("larder://h:1/db", "takes HOST:PORT and no path"),
        ("larder://h:99999", "invalid port"),
        ("larder://user:secret@h:1", "give the token as ?token="),
        ("larder+unix://run/larder.sock", "(three slashes)"),
        ("larder://10.1.2.3:7379?token=t", "refusing to send the token in cleartext"),
        ("larder+unix:///run/l.sock?tls=1", "tls=True over a Unix socket is not supported"),
    ],
)
def test_bad_configuration_names_the_parameter(uri: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        storage_from_string(uri)
    assert message in str(err.value)
    assert "secret" not in str(err.value)


def test_a_token_in_the_query_is_not_in_messages() -> None:
    with pytest.raises(ConfigurationError) as err:
        storage_from_string("larder://h:1?token=s3cr3t&timeout=x")
    assert "s3cr3t" not in str(err.value)


def test_unreachable_daemon(tmp_path: Path) -> None:
    storage = storage_from_string(
        f"larder+unix://{tmp_path}/none.sock?timeout=0.5&retries=0", wrap_exceptions=True
    )
    assert not storage.check()
    with pytest.raises(StorageError) as err:
        storage.incr("k", 60)
    assert isinstance(err.value.storage_error, grpc.RpcError)


# --- asyncio ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", AIO_STRATEGIES)
async def test_async_strategy(uri: str, name: str) -> None:
    storage = storage_from_string(f"async+{uri}")
    assert isinstance(storage, LarderAsyncStorage)
    assert await storage.check()
    limiter = AIO_STRATEGIES[name](storage)
    item = RateLimitItemPerMinute(3)
    assert [await limiter.hit(item, "k") for _ in range(4)] == [True] * 3 + [False]
    assert (await limiter.get_window_stats(item, "k")).remaining == 0
    await limiter.clear(item, "k")
    assert await limiter.hit(item, "k")


@pytest.mark.parametrize("name", AIO_STRATEGIES)
async def test_async_concurrent_hits_admit_exactly_the_limit(daemon: Any, name: str) -> None:
    storage = storage_from_string(f"async+larder://{daemon.addr}?namespace={_namespace()}")
    limiter = AIO_STRATEGIES[name](storage)
    item = RateLimitItemPerDay(10)
    results = await asyncio.gather(*(limiter.hit(item, "k") for _ in range(60)))
    assert results.count(True) == 10


async def test_async_primitives_and_reset(daemon: Any) -> None:
    storage = storage_from_string(f"async+larder://{daemon.addr}?namespace={_namespace()}")
    assert await storage.incr("k", 60, amount=2) == 2
    assert await storage.get("k") == 2
    assert time.time() < await storage.get_expiry("k") <= time.time() + 60
    assert await storage.acquire_entry("log", 2, 60, amount=2)
    assert not await storage.acquire_entry("log", 2, 60)
    assert (await storage.get_moving_window("log", 2, 60))[1] == 2
    assert await storage.acquire_sliding_window_entry("s", 2, 60)
    assert (await storage.get_sliding_window("s", 60))[2] == 1
    await storage.clear_sliding_window("s", 60)
    await storage.clear("k")
    assert await storage.get("k") == 0
    assert await storage.reset() == 1  # the log


def test_the_counters_are_plain_cache_entries(daemon: Any) -> None:
    """What the storage writes is readable with the client: a decimal counter per key."""
    namespace = _namespace()
    storage = storage_from_string(f"larder://{daemon.addr}?namespace={namespace}")
    limiter: Callable[..., bool] = strategies.FixedWindowRateLimiter(storage).hit
    item = RateLimitItemPerMinute(5)
    limiter(item, "user", "42")
    limiter(item, "user", "42")
    with Larder(daemon.addr) as client:
        assert client.cache.get(item.key_for("user", "42"), namespace) == b"2"
