"""larder_client.flask.LarderCache (a Flask-Caching backend) against a real daemon."""

from __future__ import annotations

import datetime as dt
import logging
import pickle
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

flask = pytest.importorskip("flask")
flask_caching = pytest.importorskip("flask_caching")

from cachelib.serializers import JSONSerializer
from conftest import Daemon

from larder_client import Larder
from larder_client.flask import ConfigError, LarderCache

MakeCache = Callable[..., LarderCache]


def app_cache(**config: Any) -> LarderCache:
    """The backend Flask-Caching makes from ``config`` (CACHE_TYPE is LarderCache)."""
    app = flask.Flask(__name__)
    app.config["CACHE_TYPE"] = "larder_client.flask.LarderCache"
    app.config.update(config)
    cache = flask_caching.Cache(app)
    backend = app.extensions["cache"][cache]
    assert isinstance(backend, LarderCache)
    return backend


@pytest.fixture(params=["tcp", "unix"])
def target(request: pytest.FixtureRequest, daemon: Daemon) -> str:
    return daemon.addr if request.param == "tcp" else daemon.unix_target


@pytest.fixture
def namespace() -> str:
    return f"flask-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make(target: str, namespace: str) -> MakeCache:
    def make(**config: Any) -> LarderCache:
        return app_cache(CACHE_LARDER_TARGET=target, CACHE_LARDER_NAMESPACE=namespace, **config)

    return make


@pytest.fixture
def raw(daemon: Daemon) -> Iterator[Larder]:
    with Larder(daemon.addr) as client:
        yield client


# --- the Flask config ------------------------------------------------------------------------


def test_config_reaches_the_backend(make: MakeCache, namespace: str, raw: Larder) -> None:
    c = make(CACHE_KEY_PREFIX="shop:", CACHE_DEFAULT_TIMEOUT=120)
    assert c.namespace == namespace
    assert c.default_timeout == 120
    assert c.set("greeting", "hello")
    entry = raw.cache.get_entry("shop:greeting", namespace=namespace)
    assert entry is not None
    assert pickle.loads(entry.value) == "hello"
    assert 0 < entry.ttl_ms <= 120_000
    assert raw.cache.get("shop:greeting") is None  # not in the default namespace


def test_flask_cachings_default_prefix_and_timeout(make: MakeCache, namespace: str) -> None:
    c = make()  # Flask-Caching's own defaults: "flask_cache_" and 300 s
    assert c.key_prefix == "flask_cache_"
    assert c.default_timeout == 300


def test_memoize_through_flask_caching(target: str, namespace: str) -> None:
    app = flask.Flask(__name__)
    app.config.update(
        CACHE_TYPE="larder_client.flask.LarderCache",
        CACHE_LARDER_TARGET=target,
        CACHE_LARDER_NAMESPACE=namespace,
    )
    cache = flask_caching.Cache(app)
    calls: list[int] = []

    @cache.memoize(60)
    def square(x: int) -> int:
        calls.append(x)
        return x * x

    with app.app_context():
        assert square(7) == 49
        assert square(7) == 49
        assert calls == [7]
        cache.delete_memoized(square, 7)
        assert square(7) == 49
        assert calls == [7, 7]


@pytest.mark.parametrize(
    ("config", "names"),
    [
        ({"CACHE_LARDER_TOKNE": "x"}, ["CACHE_LARDER_TOKNE", "CACHE_LARDER_TOKEN"]),
        ({"CACHE_LARDER_TARGET": ""}, ["CACHE_LARDER_TARGET"]),
        ({"CACHE_LARDER_SOCKET_TIMEOUT": -1}, ["CACHE_LARDER_SOCKET_TIMEOUT"]),
        ({"CACHE_LARDER_RETRIES": "3"}, ["CACHE_LARDER_RETRIES"]),
        (
            {"CACHE_LARDER_TOKEN": "t", "CACHE_LARDER_TOKEN_FILE": "/nonexistent"},
            ["CACHE_LARDER_TOKEN", "CACHE_LARDER_TOKEN_FILE"],
        ),
        ({"CACHE_LARDER_TOKEN_FILE": "/nonexistent/token"}, ["CACHE_LARDER_TOKEN_FILE"]),
        (
            {"CACHE_LARDER_TLS_CA_FILE": "/etc/ca.pem"},
            ["CACHE_LARDER_TLS_CA_FILE", "CACHE_LARDER_TLS to True"],
        ),
        ({"CACHE_LARDER_NAMESPACE": ""}, ["CACHE_LARDER_NAMESPACE"]),
        ({"CACHE_LARDER_IGNORE_EXCEPTIONS": "yes"}, ["CACHE_LARDER_IGNORE_EXCEPTIONS"]),
        ({"CACHE_OPTIONS": {"socket_timeout": 1}}, ["CACHE_OPTIONS", "'socket_timeout'"]),
        ({"CACHE_OPTIONS": {"target": "127.0.0.1:1"}}, ["CACHE_OPTIONS", "'target'"]),
        ({"CACHE_ARGS": ["127.0.0.1:7379"]}, ["CACHE_ARGS", "CACHE_LARDER_TARGET"]),
    ],
)
def test_config_errors_name_the_key(config: dict[str, Any], names: list[str]) -> None:
    with pytest.raises(ConfigError) as raised:
        app_cache(**config)
    for name in names:
        assert name in str(raised.value)


def test_a_token_is_refused_in_cleartext_to_another_host() -> None:
    with pytest.raises(ConfigError, match="CACHE_LARDER_ALLOW_INSECURE_TOKEN"):
        app_cache(CACHE_LARDER_TARGET="192.0.2.1:7379", CACHE_LARDER_TOKEN="secret")
    with pytest.raises(ConfigError, match=r"options\['ALLOW_INSECURE_TOKEN'\]"):
        LarderCache("192.0.2.1:7379", options={"TOKEN": "secret"})
    with pytest.raises(ConfigError, match="CACHE_LARDER_TLS is not supported over a Unix"):
        app_cache(CACHE_LARDER_TARGET="unix:/run/larder.sock", CACHE_LARDER_TLS=True)
    c = app_cache(
        CACHE_LARDER_TARGET="192.0.2.1:7379",
        CACHE_LARDER_TOKEN="secret",
        CACHE_LARDER_ALLOW_INSECURE_TOKEN=True,
    )
    assert c.namespace == "default"


def test_token_file(token_daemon: tuple[Daemon, str], tmp_path: Path) -> None:
    d, token = token_daemon
    token_file = tmp_path / "token"
    token_file.write_text(f"# the web app\n{token}\n")
    c = app_cache(CACHE_LARDER_TARGET=d.unix_target, CACHE_LARDER_TOKEN_FILE=str(token_file))
    assert c.set("k", 1)
    assert c.get("k") == 1
    anonymous = app_cache(CACHE_LARDER_TARGET=d.unix_target, CACHE_LARDER_RETRIES=0)
    with pytest.raises(grpc.RpcError) as raised:
        anonymous.get("k")
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


# --- values ------------------------------------------------------------------------------------


def test_ints_are_ascii_decimal_for_every_client(
    make: MakeCache, namespace: str, raw: Larder
) -> None:
    c = make(CACHE_KEY_PREFIX="p:")
    assert c.set("hits", 42)
    assert raw.cache.get("p:hits", namespace=namespace) == b"42"
    assert raw.cache.increment("p:hits", 8, namespace=namespace) == 50
    assert c.get("hits") == 50
    assert c.set("neg", -7)
    assert raw.cache.get("p:neg", namespace=namespace) == b"-7"
    # bool and ints past 64 bits are pickled, and come back as they were
    assert c.set("flag", True)
    assert c.get("flag") is True
    assert c.set("big", 2**70)
    assert c.get("big") == 2**70
    assert raw.cache.get("p:big", namespace=namespace)[:1] == b"\x80"


def test_values_other_clients_wrote(make: MakeCache, namespace: str, raw: Larder) -> None:
    c = make(CACHE_KEY_PREFIX="")
    raw.cache.set("profile", b'{"name": "Ada"}', namespace=namespace)
    assert c.get("profile") == b'{"name": "Ada"}'
    raw.cache.set("pickled", pickle.dumps({"a": [1, 2]}), namespace=namespace)
    assert c.get("pickled") == {"a": [1, 2]}
    assert c.set("b", b"\x80raw")  # bytes are pickled, so they never pass for a pickle
    assert c.get("b") == b"\x80raw"


def test_cache_serializer(make: MakeCache, namespace: str, raw: Larder) -> None:
    c = make(CACHE_KEY_PREFIX="", CACHE_SERIALIZER=JSONSerializer)
    assert isinstance(c.serializer, JSONSerializer)
    assert c.set("doc", {"a": [1, 2]})
    assert raw.cache.get("doc", namespace=namespace) == b'{"a": [1, 2]}'
    assert c.get("doc") == {"a": [1, 2]}
    assert c.set("n", 5)
    assert raw.cache.get("n", namespace=namespace) == b"5"
    assert c.inc("n") == 6
    assert c.set("bytes", b"x") is False  # JSON has no bytes: not stored, as cachelib's
    assert c.get("bytes") is None


def test_pickle_errors_raise(make: MakeCache) -> None:
    c = make()
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        c.set("lock", threading.Lock())


# --- inc and dec -------------------------------------------------------------------------------


def test_inc_dec(make: MakeCache, namespace: str, raw: Larder) -> None:
    c = make(CACHE_KEY_PREFIX="", CACHE_DEFAULT_TIMEOUT=60)
    assert c.inc("new", 5) == 5  # created, as Redis's INCRBY creates
    entry = raw.cache.get_entry("new", namespace=namespace)
    assert entry is not None and entry.value == b"5"
    assert 0 < entry.ttl_ms <= 60_000  # a created counter gets the default timeout
    assert c.dec("down") == -1
    assert c.dec("down", 4) == -5
    assert c.set("kept", 1, timeout=0)
    assert c.inc("kept") == 2
    entry = raw.cache.get_entry("kept", namespace=namespace)
    assert entry is not None and entry.ttl_ms == 0  # an existing counter keeps its TTL
    assert c.set("word", "not a number")
    with pytest.raises(TypeError, match="'word'"):
        c.inc("word")
    assert c.set("max", 2**63 - 1)
    with pytest.raises(TypeError, match="'max'"):
        c.inc("max")
    assert c.get("max") == 2**63 - 1
    with pytest.raises(OverflowError):
        c.inc("max", 2**64)


def test_inc_is_atomic(make: MakeCache) -> None:
    c = make()
    threads, each = 8, 50

    def work() -> None:
        for _ in range(each):
            c.inc("counter")
            c.dec("other", 2)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert c.get("counter") == threads * each
    assert c.get("other") == -2 * threads * each


# --- timeouts ----------------------------------------------------------------------------------


def test_timeouts(make: MakeCache, namespace: str, raw: Larder) -> None:
    c = make(CACHE_KEY_PREFIX="", CACHE_DEFAULT_TIMEOUT=0)

    def ttl(key: str) -> int | None:
        entry = raw.cache.get_entry(key, namespace=namespace)
        return None if entry is None else entry.ttl_ms

    assert c.set("forever", 1)
    assert ttl("forever") == 0  # CACHE_DEFAULT_TIMEOUT 0: never expires
    assert c.set("minute", 1, timeout=60)
    assert 0 < ttl("minute") <= 60_000
    assert c.set("delta", 1, timeout=dt.timedelta(minutes=2))
    assert 60_000 < ttl("delta") <= 120_000
    assert c.set("century", 1, timeout=1000 * 365 * 24 * 3600)
    assert ttl("century") <= 100 * 365 * 24 * 3600 * 1000  # capped to the daemon's limit
    assert c.set("minute", 2, timeout=-1)  # expired at once: the old value goes too
    assert c.get("minute") is None
    assert c.add("absent", 1, timeout=-1) is True
    assert c.get("absent") is None
    assert c.add("forever", 2, timeout=-1) is False
    assert c.set_many({"a": 1, "b": 2}, timeout=30) == ["a", "b"]
    assert 0 < ttl("a") <= 30_000
    assert c.set_many({"a": 1, "forever": 2}, timeout=-1) == ["a", "forever"]
    assert c.get_many("a", "b", "forever") == [None, 2, None]


def test_add_keeps_the_first_value(make: MakeCache) -> None:
    c = make()
    assert c.add("k", "first", timeout=30)
    assert not c.add("k", "second")
    assert c.get("k") == "first"


# --- many keys, clear -----------------------------------------------------------------------


def test_many_keys_in_batches(make: MakeCache) -> None:
    c = make()
    data = {f"k{i}": i for i in range(2500)}
    assert c.set_many(data) == list(data)
    keys = [*data, "missing"]
    assert c.get_many(*keys) == [*data.values(), None]
    assert c.get_dict("k0", "k2499", "missing") == {"k0": 0, "k2499": 2499, "missing": None}
    assert c.delete_many(*keys) == keys
    assert c.get_many("k0", "k1999") == [None, None]
    assert c.delete_many() == []


def test_delete_and_has(make: MakeCache) -> None:
    c = make()
    assert not c.has("k")
    assert c.set("k", None)
    assert c.has("k")  # a stored None is there, though get cannot tell
    assert c.delete("k")
    assert not c.delete("k")
    assert not c.has("k")


def test_clear_with_and_without_prefix(make: MakeCache, namespace: str, raw: Larder) -> None:
    prefixed = make(CACHE_KEY_PREFIX="app1:")
    bare = make(CACHE_KEY_PREFIX="")
    assert prefixed.set("k", 1)
    assert bare.set("other", 2)
    assert prefixed.clear()
    assert prefixed.get("k") is None
    assert bare.get("other") == 2  # only app1:'s keys went
    raw.cache.set("kept-elsewhere", b"x")  # the default namespace
    assert prefixed.set("k", 1)
    assert bare.clear()  # no prefix: the whole namespace
    assert prefixed.get("k") is None and bare.get("other") is None
    assert raw.cache.get("kept-elsewhere") == b"x"


def test_callable_key_prefix(target: str, namespace: str, raw: Larder) -> None:
    tenant = ["a"]
    c = LarderCache(target, namespace=namespace, key_prefix=lambda: f"{tenant[0]}:")
    assert c.set("k", 1)
    tenant[0] = "b"
    assert c.get("k") is None
    assert c.set("k", 2)
    assert raw.cache.get_many(["a:k", "b:k"], namespace=namespace) == {"a:k": b"1", "b:k": b"2"}


def test_a_function_as_the_key(make: MakeCache) -> None:
    # cachelib's Redis tests use one: the key is made as RedisCache makes it, f"{prefix}{key}"
    def bacon() -> str:
        return "bacon"

    c = make()
    assert c.set(bacon, "sausages")
    assert c.get(bacon) == "sausages"
    assert c.get("bacon") is None


# --- when the daemon is down -------------------------------------------------------------


def test_a_stopped_daemon_raises_or_fails_open(caplog: pytest.LogCaptureFixture) -> None:
    d = Daemon()
    try:
        # its socket, which goes with it (a TCP port could be reused by another daemon)
        config = {"CACHE_LARDER_TARGET": d.unix_target, "CACHE_LARDER_RETRIES": 0}
        strict = app_cache(**config)
        lenient = app_cache(**config, CACHE_LARDER_IGNORE_EXCEPTIONS=True)
        assert lenient.set("there", 1)
        assert d.stop() == 0
    finally:
        d.cleanup()
    down = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    with pytest.raises(grpc.RpcError) as raised:
        strict.get("there")
    assert raised.value.code() in down  # refused, or (on a loaded machine) not in time
    with pytest.raises(grpc.RpcError):
        strict.inc("n")
    with caplog.at_level(logging.WARNING, logger="larder_client.flask"):
        assert lenient.get("there") is None
        assert lenient.get_many("a", "b") == [None, None]
        assert lenient.get_dict("a") == {"a": None}
        assert lenient.set("k", 1) is False
        assert lenient.add("k", 1) is False
        assert lenient.set_many({"a": 1}) == []
        assert lenient.delete("k") is False
        assert lenient.delete_many("a", "b") == []
        assert lenient.has("k") is False
        assert lenient.clear() is False
        assert lenient.inc("n") is None
        assert lenient.dec("n") is None
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 12
    names = [code.name for code in down]
    assert all(any(n in m for n in names) and "ignore_exceptions" in m for m in messages)
    # the caller's own errors still raise
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        lenient.set("lock", threading.Lock())
