"""The Django cache backend (larder_client.django.LarderCache) against a real daemon: how values
are stored, serializers, compression, OPTIONS checks, IGNORE_EXCEPTIONS with the daemon
stopped, django-redis's extras (ttl, expire, persist, delete_pattern, lock) and the async
methods. Django's own backend-generic tests run in tests/django_suite (larder_cache).

The backend is made directly (``LarderCache(location, params)``), as Django's cache handler
does, so these tests need no CACHES setting; each test gets its own namespace.
"""

from __future__ import annotations

import json
import logging
import pickle
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

import grpc
import pytest
from conftest import Daemon
from django.core.exceptions import ImproperlyConfigured

from larder_client import Larder
from larder_client.django import LarderCache, LockError, LockNotOwnedError
from larder_client.django.cache import MAX_TTL_MS
from larder_client.django.compressors import ZSTD_MAGIC, _zstd, is_zlib

Factory = Callable[..., LarderCache]


def backend(location: str, namespace: str | None = None, **params: Any) -> LarderCache:
    """A LarderCache on ``location`` in a namespace of its own; OPTIONS go in ``options``."""
    options = {"NAMESPACE": namespace or f"t-{uuid.uuid4().hex}", **params.pop("options", {})}
    return LarderCache(location, {**params, "OPTIONS": options})


@pytest.fixture(params=["tcp", "unix"])
def target(request: pytest.FixtureRequest, daemon: Daemon) -> str:
    return daemon.addr if request.param == "tcp" else daemon.unix_target


@pytest.fixture
def make(daemon: Daemon) -> Factory:
    """Makes backends on the module's daemon (TCP)."""
    return lambda **params: backend(daemon.addr, **params)


@pytest.fixture
def raw(daemon: Daemon) -> Iterator[Larder]:
    """A plain client, to look at the stored bytes."""
    with Larder(daemon.addr, timeout=5.0) as client:
        yield client


def stored(raw: Larder, cache: LarderCache, key: str) -> bytes | None:
    return raw.cache.get(cache.make_key(key), cache._namespace)


# --- storage, Django semantics ---------------------------------------------------------------


def test_round_trip_over_tcp_and_unix(target: str) -> None:
    cache = backend(target)
    cache.set("k", {"a": [1, 2]})
    assert cache.get("k") == {"a": [1, 2]}
    assert cache.add("k", "other") is False
    assert cache.delete("k") is True
    assert cache.get("k", "missing") == "missing"


def test_ints_are_stored_as_ascii_decimal_and_incr_is_atomic(make: Factory, raw: Larder) -> None:
    cache = make()
    cache.set("n", 42)
    assert stored(raw, cache, "n") == b"42"
    assert cache.incr("n", 8) == 50
    assert cache.decr("n") == 49
    assert cache.get("n") == 49
    # A value another client increments is an int to the backend.
    raw.cache.increment(cache.make_key("n"), 1, namespace=cache._namespace)
    assert cache.get("n") == 50
    cache.set("neg", -7)
    assert stored(raw, cache, "neg") == b"-7"
    assert cache.get("neg") == -7


def test_bools_and_big_ints_are_serialized(make: Factory, raw: Larder) -> None:
    cache = make()
    cache.set("b", True)
    assert stored(raw, cache, "b") == pickle.dumps(True, pickle.HIGHEST_PROTOCOL)
    assert cache.get("b") is True
    with pytest.raises(TypeError):
        cache.incr("b")
    big = 2**64 + 1
    cache.set("big", big)
    assert stored(raw, cache, "big") == pickle.dumps(big, pickle.HIGHEST_PROTOCOL)
    assert cache.get("big") == big


def test_incr_on_a_missing_key_raises_value_error_and_creates_nothing(make: Factory) -> None:
    cache = make()
    with pytest.raises(ValueError, match="not found"):
        cache.incr("absent")
    with pytest.raises(ValueError, match="not found"):
        cache.decr("absent", 5)
    assert cache.has_key("absent") is False


def test_incr_keeps_the_ttl_and_refuses_overflow(make: Factory) -> None:
    cache = make()
    cache.set("n", 1, timeout=100)
    assert cache.incr("n") == 2
    assert 99 <= cache.ttl("n") <= 100
    cache.set("forever", 1, timeout=None)
    cache.incr("forever")
    assert cache.ttl("forever") is None
    cache.set("max", 2**63 - 1)
    with pytest.raises(TypeError, match="overflow"):  # as Django's Redis backend: one error type
        cache.incr("max")
    assert cache.get("max") == 2**63 - 1
    with pytest.raises(OverflowError):
        cache.incr("max", -(2**64))


def test_timeouts(make: Factory) -> None:
    cache = make(TIMEOUT=None)
    cache.set("default", "v")
    assert cache.ttl("default") is None  # TIMEOUT None: never expires
    cache.set("zero", "v", timeout=0)
    assert cache.has_key("zero") is False
    cache.set("gone", "v")
    cache.set("gone", "w", timeout=-1)  # 0 or less deletes an existing value
    assert cache.has_key("gone") is False
    cache.set("far", "v", timeout=10**12)  # past the daemon's 100-year limit: capped
    assert cache.ttl("far") == MAX_TTL_MS // 1000
    cache.set("short", "v", timeout=0.3)
    assert cache.ttl("short") == 1
    time.sleep(0.5)
    assert cache.has_key("short") is False
    assert make(TIMEOUT=60).add("a", 1) is True


def test_batches_span_the_daemon_limits(make: Factory) -> None:
    cache = make()
    data = {f"k{i}": i for i in range(2500)}  # more than one GetMany/SetMany of 1000 keys
    assert cache.set_many(data) == []
    assert cache.get_many(list(data) + ["nope"]) == data
    cache.delete_many(list(data)[:1500])
    assert len(cache.get_many(list(data))) == 1000


def test_get_many_splits_when_the_values_exceed_one_response() -> None:
    # A daemon whose largest value is 64 KiB answers at most 64 KiB of values per GetMany.
    daemon = Daemon(["--max-value", "64KiB"])
    try:
        cache = backend(daemon.addr)
        data = {f"k{i}": bytes([i]) * 30_000 for i in range(6)}
        cache.set_many(data)
        assert cache.get_many(list(data)) == data
    finally:
        assert daemon.stop() == 0
        daemon.cleanup()


# --- serializers and compression -------------------------------------------------------------


def test_json_serializer(make: Factory, raw: Larder) -> None:
    cache = make(options={"SERIALIZER": "json"})
    cache.set("doc", {"name": "Ada", "tags": ["x"], "n": 1.5})
    assert json.loads(stored(raw, cache, "doc") or b"") == {"name": "Ada", "tags": ["x"], "n": 1.5}
    assert cache.get("doc") == {"name": "Ada", "tags": ["x"], "n": 1.5}
    when = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    cache.set("when", when)
    assert cache.get("when") == "2024-05-01T12:00:00Z"  # DjangoJSONEncoder's form
    cache.set("count", 3)
    assert stored(raw, cache, "count") == b"3"
    assert cache.incr("count") == 4


class Reversed:
    """A custom serializer: a dotted path to a class with dumps/loads."""

    def dumps(self, value: Any) -> bytes:
        return b"R" + str(value)[::-1].encode()

    def loads(self, data: bytes) -> Any:
        return data[1:].decode()[::-1]


def test_custom_serializer_by_dotted_path(make: Factory, raw: Larder) -> None:
    cache = make(options={"SERIALIZER": "test_django_cache.Reversed"})
    cache.set("s", "hello")
    assert stored(raw, cache, "s") == b"Rolleh"
    assert cache.get("s") == "hello"


def test_zlib_compression_above_the_threshold_only(make: Factory, raw: Larder) -> None:
    namespace = f"t-{uuid.uuid4().hex}"
    cache = make(namespace=namespace, options={"COMPRESS_MIN_BYTES": 200})
    big = "abc" * 1000
    small = "abc"
    cache.set_many({"big": big, "small": small})
    big_raw = stored(raw, cache, "big") or b""
    assert is_zlib(big_raw) and len(big_raw) < len(pickle.dumps(big))
    assert stored(raw, cache, "small") == pickle.dumps(small, pickle.HIGHEST_PROTOCOL)
    assert cache.get_many(["big", "small"]) == {"big": big, "small": small}
    # Read back by the header, by a cache that does not compress.
    assert make(namespace=namespace).get("big") == big


@pytest.mark.skipif(_zstd() is None, reason="no zstd module (pip install zstandard)")
def test_zstd_compression(make: Factory, raw: Larder) -> None:
    namespace = f"t-{uuid.uuid4().hex}"
    cache = make(namespace=namespace, options={"COMPRESSOR": "zstd"})  # threshold 1024
    big = {"rows": list(range(2000))}
    cache.set("big", big)
    assert (stored(raw, cache, "big") or b"").startswith(ZSTD_MAGIC)
    assert cache.get("big") == big
    cache.set("small", [1, 2])
    assert stored(raw, cache, "small") == pickle.dumps([1, 2], pickle.HIGHEST_PROTOCOL)
    assert make(namespace=namespace, options={"COMPRESSOR": "zlib"}).get("big") == big


def test_compressed_incr_values_stay_plain(make: Factory, raw: Larder) -> None:
    cache = make(options={"COMPRESS_MIN_BYTES": 0})
    cache.set("n", 1234567890123)
    assert stored(raw, cache, "n") == b"1234567890123"


# --- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"SERIALISER": "json"}, "'SERIALISER'"),
        ({"MAX_ENTRIES": 100}, "'MAX_ENTRIES'"),
        ({"SERIALIZER": "no.such.Serializer"}, "SERIALIZER"),
        ({"COMPRESSOR": "lz4"}, "COMPRESSOR"),
        ({"COMPRESS_MIN_BYTES": -1}, "COMPRESS_MIN_BYTES"),
        ({"IGNORE_EXCEPTIONS": "yes"}, "IGNORE_EXCEPTIONS"),
        ({"SOCKET_TIMEOUT": 0}, "SOCKET_TIMEOUT"),
        ({"NAMESPACE": ""}, "NAMESPACE"),
        ({"CORE": "fast"}, "CORE"),
    ],
)
def test_bad_options_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=message):
        LarderCache("127.0.0.1:7379", {"OPTIONS": options})


# --- IGNORE_EXCEPTIONS -----------------------------------------------------------------------


def test_ignore_exceptions_when_the_daemon_is_down(caplog: pytest.LogCaptureFixture) -> None:
    daemon = Daemon()
    options = {"IGNORE_EXCEPTIONS": True, "SOCKET_TIMEOUT": 0.5, "RETRIES": 0}
    try:
        cache = backend(daemon.addr, options=options)
        strict = backend(daemon.addr, options={"SOCKET_TIMEOUT": 0.5, "RETRIES": 0})
        cache.set("k", "v")
        assert cache.get("k") == "v"
    finally:
        assert daemon.stop() == 0
        daemon.cleanup()
    with caplog.at_level(logging.WARNING, logger="larder_client.django"):
        assert cache.get("k", "fallback") == "fallback"
        cache.set("k", "w")  # no exception
        assert cache.add("k", "w") is False
        assert cache.has_key("k") is False
        assert cache.delete("k") is False
        assert cache.get_many(["k", "j"]) == {}
        assert cache.set_many({"k": 1, "j": 2}) == ["k", "j"]  # the keys not stored
        assert cache.get_or_set("k", "computed") == "computed"
        assert cache.ttl("k") == 0
        with pytest.raises(ValueError, match="not found"):
            cache.incr("k")  # a miss, as Django's incr answers one
        with pytest.raises(pickle.PickleError):
            cache.set("k", Unpicklable())  # the caller's own errors still raise
    assert any("LarderCache.get failed (UNAVAILABLE" in r.getMessage() for r in caplog.records)
    with pytest.raises(grpc.RpcError):
        strict.get("k")
    with pytest.raises(grpc.RpcError):
        cache.lock("l").acquire()  # a lock never fails open


async def test_ignore_exceptions_async_when_the_daemon_is_down() -> None:
    daemon = Daemon()
    cache = backend(daemon.addr, options={"IGNORE_EXCEPTIONS": True, "SOCKET_TIMEOUT": 0.5})
    assert daemon.stop() == 0
    daemon.cleanup()
    assert await cache.aget("k", "fallback") == "fallback"
    assert await cache.aset("k", "v") is None
    assert await cache.aget_many(["k"]) == {}


class Unpicklable:
    def __getstate__(self) -> Any:
        raise pickle.PickleError("no")


# --- django-redis extras ---------------------------------------------------------------------


def test_ttl_expire_persist(make: Factory) -> None:
    cache = make()
    assert cache.ttl("absent") == 0
    cache.set("k", "v", timeout=None)
    assert cache.ttl("k") is None
    assert cache.expire("k", 50) is True
    assert 49 <= cache.ttl("k") <= 50
    assert cache.persist("k") is True
    assert cache.ttl("k") is None
    assert cache.expire("absent", 10) is False
    assert cache.persist("absent") is False
    assert cache.expire("k", 0) is True  # expires now
    assert cache.has_key("k") is False


def test_delete_pattern_is_a_prefix_delete_of_made_keys(make: Factory) -> None:
    namespace = f"t-{uuid.uuid4().hex}"
    cache = make(namespace=namespace, KEY_PREFIX="site", VERSION=2)
    other_version = make(namespace=namespace, KEY_PREFIX="site", VERSION=3)
    other_prefix = make(namespace=namespace, KEY_PREFIX="other", VERSION=2)
    cache.set_many({"user:42:a": 1, "user:42:b": 2, "user:420": 3, "user:43:a": 4})
    other_version.set("user:42:a", 5)
    other_prefix.set("user:42:a", 6)
    assert cache.make_key("user:42:a").startswith(cache.make_key("user:42:"))
    assert cache.delete_pattern("user:42:*") == 2
    assert cache.get_many(["user:42:a", "user:42:b", "user:420", "user:43:a"]) == {
        "user:420": 3,
        "user:43:a": 4,
    }
    assert other_version.get("user:42:a") == 5
    assert other_prefix.get("user:42:a") == 6
    assert cache.delete_pattern("user:43:a") == 1  # no '*': that one key
    assert cache.delete_pattern("user:42:a", version=3) == 1
    assert cache.delete_pattern("*") == 1  # every key of this prefix and version
    assert other_prefix.get("user:42:a") == 6


@pytest.mark.parametrize("pattern", ["user:?", "user:[ab]*", "*:42", "user:**", "a\\*b*"])
def test_delete_pattern_refuses_other_globs(make: Factory, pattern: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        make().delete_pattern(pattern)


def test_delete_pattern_needs_the_default_key_function(make: Factory) -> None:
    cache = make(KEY_FUNCTION=lambda key, prefix, version: f"{key}|{prefix}|{version}")
    with pytest.raises(ValueError, match="KEY_FUNCTION"):
        cache.delete_pattern("user:*")


# --- lock ------------------------------------------------------------------------------------


def test_lock_excludes_and_releases(make: Factory) -> None:
    cache = make()
    first = cache.lock("job", timeout=10)
    assert first.acquire() is True
    assert first.owned() and first.locked()
    second = cache.lock("job", timeout=10)
    assert second.acquire(blocking=False) is False
    started = time.monotonic()
    assert second.acquire(blocking_timeout=0.3) is False
    assert time.monotonic() - started >= 0.3, "it waited out its blocking_timeout"
    first.release()
    assert first.locked() is False
    assert second.acquire(blocking=False) is True  # free at once
    second.release()
    with cache.lock("job", timeout=10) as held:
        assert held.owned()
    assert cache.lock("job").acquire(blocking=False) is True
    with pytest.raises(LockError, match="not acquired"):
        cache.lock("other").release()


def test_lock_that_expired_and_was_taken_is_not_released_by_its_first_holder(
    make: Factory,
) -> None:
    cache = make()
    first = cache.lock("job", timeout=0.2)
    assert first.acquire()
    time.sleep(0.4)  # first's lock expires
    second = cache.lock("job", timeout=10)
    assert second.acquire(blocking=False) is True
    stale = first.version
    with pytest.raises(LockNotOwnedError):
        first.release()
    assert second.owned() and second.locked()
    first.version = stale  # as if first had not tried to release: it cannot extend either
    with pytest.raises(LockNotOwnedError):
        first.reacquire()
    assert cache.lock("job").acquire(blocking=False) is False  # still second's
    second.reacquire()
    assert second.owned()
    second.release()
    assert cache.lock("job").acquire(blocking=False) is True


def test_lock_excludes_between_threads(make: Factory) -> None:
    cache = make()
    inside: list[int] = []
    overlaps: list[int] = []
    done: list[int] = []

    def worker(n: int) -> None:
        for _ in range(15):
            with cache.lock("shared", timeout=10, sleep=0.001, blocking_timeout=20):
                inside.append(n)
                if len(inside) > 1:
                    overlaps.append(n)
                time.sleep(0.001)
                inside.remove(n)
        done.append(n)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(done) == [0, 1, 2, 3]
    assert overlaps == []


def test_lock_context_manager_raises_when_not_acquired(make: Factory) -> None:
    cache = make()
    busy = cache.lock("busy", blocking_timeout=0.1)
    with cache.lock("busy", timeout=10), pytest.raises(LockError, match="could not acquire"):
        busy.__enter__()


# --- async -----------------------------------------------------------------------------------


async def test_async_methods_use_the_asyncio_client(
    make: Factory, raw: Larder, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = make()

    def no_blocking_client() -> None:
        raise AssertionError("an async method used the blocking client")

    monkeypatch.setattr(cache, "_client", no_blocking_client)
    assert await cache.aadd("a", {"x": 1}) is True
    assert await cache.aadd("a", "other") is False
    assert await cache.aget("a") == {"x": 1}
    assert await cache.aget("missing", "d") == "d"
    assert await cache.ahas_key("a") is True
    await cache.aset("n", 10, timeout=100)
    assert await cache.aincr("n", 5) == 15
    assert await cache.adecr("n") == 14
    with pytest.raises(ValueError, match="not found"):
        await cache.aincr("missing")
    assert await cache.attl("n") in (99, 100)
    assert await cache.atouch("n", None) is True
    assert await cache.attl("n") is None
    assert await cache.aexpire("n", 30) is True
    assert await cache.apersist("n") is True
    assert await cache.aset_many({"b": 2, "c": [3]}) == []
    assert await cache.aget_many(["a", "b", "c", "d"]) == {"a": {"x": 1}, "b": 2, "c": [3]}
    assert await cache.aget_or_set("e", lambda: "made") == "made"
    await cache.adelete_many(["b", "c"])
    assert await cache.aget_many(["b", "c"]) == {}
    assert await cache.adelete("a") is True
    await cache.aset("user:1:x", 1)
    await cache.aset("user:1:y", 1)
    assert await cache.adelete_pattern("user:1:*") == 2
    await cache.aclear()
    assert await cache.aget("e") is None
    assert stored(raw, cache, "n") is None
