"""larder_client against a real daemon: cache, sessions, rate limits, auth and deadlines."""

from __future__ import annotations

import socket
import uuid

import grpc
import pytest
from conftest import Daemon

from larder_client import Larder, LarderError, RateLimitResult


def fresh(prefix: str) -> str:
    """A key no other test uses (the module shares one daemon)."""
    return f"{prefix}:{uuid.uuid4().hex}"


@pytest.fixture(params=["tcp", "unix"])
def client(request: pytest.FixtureRequest, daemon: Daemon):
    target = daemon.addr if request.param == "tcp" else daemon.unix_target
    with Larder(target, timeout=5.0) as larder:
        yield larder


def test_cache_set_get_delete(client: Larder) -> None:
    key = fresh("greeting")
    assert client.cache.get(key) is None
    assert client.cache.set(key, b"hello", ttl_ms=60_000) is True
    assert client.cache.get(key) == b"hello"
    entry = client.cache.get_entry(key)
    assert entry is not None and entry.value == b"hello"
    assert entry.version > 0 and 0 < entry.ttl_ms <= 60_000
    assert client.cache.delete(key) is True
    assert client.cache.get(key) is None
    assert client.cache.delete(key) is False


def test_cache_namespaces_are_separate(client: Larder) -> None:
    key = fresh("k")
    client.cache.set(key, b"a", namespace="app1")
    assert client.cache.get(key, namespace="app1") == b"a"
    assert client.cache.get(key, namespace="app2") is None


def test_cache_if_absent_is_a_lock(client: Larder) -> None:
    key = fresh("lock")
    assert client.cache.set(key, b"worker-1", ttl_ms=30_000, if_absent=True) is True
    assert client.cache.set(key, b"worker-2", ttl_ms=30_000, if_absent=True) is False
    assert client.cache.get(key) == b"worker-1"


def test_cache_increment(client: Larder) -> None:
    key = fresh("counter")
    assert client.cache.increment(key) == 1
    assert client.cache.increment(key, delta=41) == 42
    assert client.cache.increment(key, delta=-2) == 40


def test_cache_get_many_and_delete_prefix(client: Larder) -> None:
    prefix = fresh("user") + ":"
    client.cache.set(prefix + "a", b"1")
    client.cache.set(prefix + "b", b"2")
    got = client.cache.get_many([prefix + "a", prefix + "b", prefix + "missing"])
    assert got == {prefix + "a": b"1", prefix + "b": b"2", prefix + "missing": None}
    assert client.cache.delete_prefix(prefix) == 2
    assert client.cache.get_many([prefix + "a"]) == {prefix + "a": None}


def test_cache_touch_and_stats(client: Larder) -> None:
    key = fresh("t")
    assert client.cache.touch(key, 1_000) is False
    client.cache.set(key, b"v")
    assert client.cache.touch(key, 60_000) is True
    entry = client.cache.get_entry(key)
    assert entry is not None and 0 < entry.ttl_ms <= 60_000
    stats = client.cache.stats()
    assert stats["entries"] >= 1 and stats["sets"] >= 1


def test_cache_if_present_only_replaces(client: Larder) -> None:
    key = fresh("xx")
    assert client.cache.set(key, b"new", if_present=True) is False
    assert client.cache.get(key) is None  # a missing key is not created
    client.cache.set(key, b"old")
    assert client.cache.set(key, b"new", ttl_ms=60_000, if_present=True) is True
    entry = client.cache.get_entry(key)
    assert entry is not None and entry.value == b"new" and 0 < entry.ttl_ms <= 60_000
    with pytest.raises(ValueError, match="at most one"):
        client.cache.set(key, b"v", if_absent=True, if_present=True)


def test_cache_compare_and_set(client: Larder) -> None:
    key = fresh("cas")
    assert client.cache.compare_and_set(key, b"v", version=1) is None  # absent: no version
    assert client.cache.get(key) is None
    client.cache.set(key, b"1")
    first = client.cache.get_entry(key)
    assert first is not None

    second = client.cache.compare_and_set(key, b"2", first.version, ttl_ms=60_000)
    assert second is not None and second > first.version
    entry = client.cache.get_entry(key)
    assert entry is not None and entry.value == b"2" and entry.version == second
    assert 0 < entry.ttl_ms <= 60_000

    # The version read first is stale now: the write is refused and changes nothing.
    assert client.cache.compare_and_set(key, b"lost update", first.version) is None
    assert client.cache.get(key) == b"2"
    # Deleted and written again: a new version, so the old one cannot match (no ABA).
    client.cache.delete(key)
    client.cache.set(key, b"2")
    assert client.cache.compare_and_set(key, b"3", second) is None

    with pytest.raises(LarderError, match="^expected_version: "):
        client.cache.compare_and_set(key, b"v", version=0)


def test_cache_set_many_and_delete_many(client: Larder) -> None:
    prefix = fresh("many") + ":"
    entries = {prefix + "a": b"1", prefix + "b": b"", prefix + "c": b"3"}
    versions = client.cache.set_many(entries, ttl_ms=60_000, namespace="batch")
    assert list(versions) == list(entries)
    assert len(set(versions.values())) == 3 and all(v > 0 for v in versions.values())
    assert client.cache.get_many(list(entries), namespace="batch") == entries
    for key, version in versions.items():
        entry = client.cache.get_entry(key, namespace="batch")
        assert entry is not None and entry.version == version and 0 < entry.ttl_ms <= 60_000
    assert client.cache.get(prefix + "a") is None  # another namespace

    keys = [prefix + "a", prefix + "c", prefix + "missing"]
    assert client.cache.delete_many(keys, namespace="batch") == 2
    assert client.cache.get_many(list(entries), namespace="batch") == {
        prefix + "a": None,
        prefix + "b": b"",
        prefix + "c": None,
    }
    assert client.cache.delete_many(keys, namespace="batch") == 0


def test_cache_set_many_is_all_or_nothing(client: Larder) -> None:
    good = fresh("good")
    with pytest.raises(LarderError) as err:
        client.cache.set_many({good: b"1", "": b"2"})
    assert err.value.details.startswith("entries[1].key: ")
    assert client.cache.get(good) is None
    with pytest.raises(LarderError, match="^keys: "):
        client.cache.delete_many([])


def test_cache_clear_empties_one_namespace(client: Larder) -> None:
    ns, other = fresh("ns"), fresh("other")
    client.cache.set_many({"a": b"1", "b": b"2"}, namespace=ns)
    client.cache.set("a", b"kept", namespace=other)
    assert client.cache.clear(ns) == 2
    assert client.cache.get_many(["a", "b"], namespace=ns) == {"a": None, "b": None}
    assert client.cache.get("a", namespace=other) == b"kept"
    assert client.cache.clear(ns) == 0


def test_invalid_argument_is_larder_error(client: Larder) -> None:
    with pytest.raises(LarderError) as err:
        client.cache.set("", b"empty key")
    assert isinstance(err.value, ValueError)
    assert isinstance(err.value.__cause__, grpc.RpcError)
    assert err.value.__cause__.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_sessions_lifecycle(client: Larder) -> None:
    user = fresh("user")
    token, session = client.sessions.create(user, {"csrf": "abc"}, device_info="pytest")
    assert token.startswith("lds_")
    assert session.user_id == user and session.data == {"csrf": "abc"}
    assert session.device_info == "pytest"

    got = client.sessions.get(token)
    assert got is not None and got.session_id == session.session_id

    updated = client.sessions.update(token, set={"theme": "dark"}, remove=["csrf"])
    assert updated is not None and updated.data == {"theme": "dark"}

    listed = client.sessions.list(user)
    assert [s.session_id for s in listed.sessions] == [session.session_id]
    assert listed.truncated is False

    rotated = client.sessions.rotate(token)
    assert rotated is not None
    new_token, rotated_session = rotated
    assert new_token != token and rotated_session.data == {"theme": "dark"}
    assert client.sessions.get(token) is None
    assert client.sessions.get(new_token) is not None

    assert client.sessions.revoke(new_token) is True
    assert client.sessions.get(new_token) is None
    assert client.sessions.revoke(new_token) is False
    assert client.sessions.rotate(new_token) is None
    assert client.sessions.update(new_token, set={"x": "y"}) is None


def test_sessions_revoke_user_and_by_id(client: Larder) -> None:
    user = fresh("user")
    _, keep = client.sessions.create(user)
    t2, s2 = client.sessions.create(user)
    t3, _ = client.sessions.create(user)
    assert client.sessions.revoke(session_id=s2.session_id) is True
    assert client.sessions.get(t2) is None
    assert client.sessions.revoke_user(user, except_session_id=keep.session_id) == 1
    assert client.sessions.get(t3) is None
    assert [s.session_id for s in client.sessions.list(user).sessions] == [keep.session_id]
    with pytest.raises(ValueError):
        client.sessions.revoke()


def test_sessions_are_listed_a_page_at_a_time(client: Larder) -> None:
    user = fresh("user")
    created = [client.sessions.create(user)[1].session_id for _ in range(5)]
    seen: list[str] = []
    page_token = ""
    pages = 0
    while True:
        page = client.sessions.list(user, page_size=2, page_token=page_token)
        assert len(page.sessions) <= 2
        seen += [s.session_id for s in page.sessions]
        pages += 1
        if not page.next_page_token:
            assert page.truncated is False
            break
        assert page.truncated is True
        page_token = page.next_page_token
    assert pages == 3
    assert sorted(seen) == sorted(created) and len(seen) == len(set(seen))


def test_ratelimit_until_denied_with_headers(client: Larder) -> None:
    key = fresh("ip")
    seen = []
    for _ in range(3):
        r = client.ratelimit.check(key, limit=3, period_ms=60_000)
        assert r.allowed and r.limit == 3
        seen.append(r.remaining)
        headers = r.headers()
        assert headers["X-RateLimit-Limit"] == "3"
        assert headers["X-RateLimit-Remaining"] == str(r.remaining)
        assert int(headers["X-RateLimit-Reset"]) >= 1
        assert "Retry-After" not in headers
    assert seen == [2, 1, 0]

    denied = client.ratelimit.check(key, limit=3, period_ms=60_000)
    assert denied.allowed is False and denied.remaining == 0
    assert denied.retry_after_ms > 0
    headers = denied.headers()
    assert headers["Retry-After"] == str(-(-denied.retry_after_ms // 1000))
    assert int(headers["Retry-After"]) >= 1
    assert headers["X-RateLimit-Remaining"] == "0"

    peek = client.ratelimit.peek(key, limit=3, period_ms=60_000)
    assert peek.allowed is False
    assert client.ratelimit.reset(key) is True
    assert client.ratelimit.check(key, limit=3, period_ms=60_000).allowed is True


def test_headers_round_up_to_seconds() -> None:
    r = RateLimitResult(allowed=False, limit=10, remaining=0, reset_after_ms=1001, retry_after_ms=1)
    assert r.headers() == {
        "X-RateLimit-Limit": "10",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": "2",
        "Retry-After": "1",
    }


def test_health(client: Larder) -> None:
    assert client.health() is True
    assert client.health("larder.v1.CacheService") is True


def test_token_required(token_daemon) -> None:
    daemon, token = token_daemon
    for target in (daemon.addr, daemon.unix_target):
        with Larder(target, timeout=5.0) as anonymous:
            with pytest.raises(grpc.RpcError) as err:
                anonymous.cache.get("k")
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with Larder(target, token="wrong-token-0123456789", timeout=5.0) as wrong:
            with pytest.raises(grpc.RpcError) as err:
                wrong.cache.set("k", b"v")
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with Larder(target, token=token, timeout=5.0) as authed:
            assert authed.cache.set("k", b"v") is True
            assert authed.cache.get("k") == b"v"


def test_stopped_daemon_fails_unavailable() -> None:
    stopped = Daemon()
    try:
        addr = stopped.addr
        assert stopped.stop() == 0
    finally:
        stopped.cleanup()
    host, port = addr.rsplit(":", 1)
    # The port is held, bound but not listening, so that no other process on the machine can
    # take it and answer meanwhile: a connection to it is refused.
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind((host, int(port)))
        with Larder(addr, timeout=2.0) as larder:
            with pytest.raises(grpc.RpcError) as err:
                larder.cache.get("k")
            assert err.value.code() in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            )


def test_deadline_applies_to_a_server_that_never_answers() -> None:
    # Accepts TCP connections but never speaks HTTP/2: only the deadline can end the call.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        host, port = silent.getsockname()
        with Larder(f"{host}:{port}", timeout=0.3) as larder:
            with pytest.raises(grpc.RpcError) as err:
                larder.cache.get("k")
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            with pytest.raises(grpc.RpcError) as err:
                larder.cache.set("k", b"v", timeout=0.2)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_values_past_grpcs_default_4_mib_come_back(client: Larder) -> None:
    # grpc-core refuses answers over 4 MiB unless told otherwise; the daemon takes 16 MiB.
    key = fresh("big")
    value = bytes(range(256)) * (5 * 4096)  # 5 MiB
    assert client.cache.set(key, value, timeout=30.0) is True
    assert client.cache.get(key, timeout=30.0) == value
    assert client.cache.get_many([key], timeout=30.0) == {key: value}
    client.cache.delete(key)
