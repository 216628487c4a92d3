"""larder_client.aio against a real daemon: the same calls, answers and errors as the blocking
client, awaited."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from conftest import Daemon
from test_invoke import FakeError

from larder_client import Entry, Larder, LarderError, aio
from larder_client._invoke import AsyncInvoker


def fresh(prefix: str) -> str:
    return f"{prefix}:{uuid.uuid4().hex}"


@pytest.fixture(params=["tcp", "unix"])
async def client(request: pytest.FixtureRequest, daemon: Daemon) -> AsyncIterator[aio.Larder]:
    target = daemon.addr if request.param == "tcp" else daemon.unix_target
    async with aio.Larder(target, timeout=5.0) as larder:
        yield larder


async def test_cache_calls(client: aio.Larder) -> None:
    key = fresh("greeting")
    assert await client.cache.get(key) is None
    assert await client.cache.set(key, b"hello", ttl_ms=60_000) is True
    entry = await client.cache.get_entry(key)
    assert isinstance(entry, Entry) and entry.value == b"hello" and 0 < entry.ttl_ms <= 60_000
    assert await client.cache.set(key, b"other", if_absent=True) is False
    assert await client.cache.compare_and_set(key, b"v2", entry.version) is not None
    assert await client.cache.compare_and_set(key, b"v3", entry.version) is None
    assert await client.cache.set_version(key, b"x", if_absent=True) is None
    counter = fresh("counter")
    assert await client.cache.increment(counter, 5) == 5
    assert await client.cache.increment(counter, -2) == 3
    assert await client.cache.get(counter) == b"3"
    a, b = fresh("a"), fresh("b")
    versions = await client.cache.set_many({a: b"1", b: b"2"}, ttl_ms=60_000)
    assert set(versions) == {a, b}
    missing = fresh("none")
    assert await client.cache.get_many([a, b, missing]) == {a: b"1", b: b"2", missing: None}
    assert await client.cache.touch(a, 1_000) is True
    assert await client.cache.delete_many([a, b]) == 2
    assert await client.cache.delete(key) is True
    prefix = fresh("user")
    await client.cache.set_many({f"{prefix}:1": b"x", f"{prefix}:2": b"y"})
    assert await client.cache.delete_prefix(f"{prefix}:") == 2
    namespace = fresh("ns").replace(":", "-")
    await client.cache.set("k", b"v", namespace=namespace)
    assert (await client.cache.stats(namespace))["entries"] == 1
    assert await client.cache.clear(namespace) == 1


async def test_sessions_and_rate_limits(client: aio.Larder) -> None:
    user = fresh("user")
    token, session = await client.sessions.create(user, {"csrf": "abc"}, device_info="phone")
    assert token.startswith("lds_") and session.user_id == user
    got = await client.sessions.get(token)
    assert got is not None and got.data == {"csrf": "abc"}
    updated = await client.sessions.update(token, set={"cart": "7"}, remove=["csrf"])
    assert updated is not None and updated.data == {"cart": "7"}
    rotated = await client.sessions.rotate(token)
    assert rotated is not None
    new_token, _ = rotated
    assert await client.sessions.get(token) is None
    listed = await client.sessions.list(user)
    assert [s.session_id for s in listed.sessions] == [session.session_id]
    first = await client.sessions.list(user, page_size=1)
    assert first.next_page_token == "" and not first.truncated
    assert await client.sessions.revoke(new_token) is True
    assert await client.sessions.revoke_user(user) == 0

    key = fresh("ip")
    answers = [await client.ratelimit.check(key, limit=2, period_ms=60_000) for _ in range(3)]
    assert [r.allowed for r in answers] == [True, True, False]
    assert answers[2].headers()["Retry-After"] != "0"
    assert (await client.ratelimit.peek(key, limit=2, period_ms=60_000)).allowed is False
    assert await client.ratelimit.reset(key) is True
    assert await client.health() is True


async def test_same_answers_as_the_blocking_client(daemon: Daemon) -> None:
    key = fresh("same")
    with Larder(daemon.addr, timeout=5.0) as sync:
        sync.cache.set(key, b"v", ttl_ms=60_000)
        expected = (sync.cache.get(key), sync.cache.get_many([key]), sync.cache.stats("default"))
    async with aio.Larder(daemon.addr, timeout=5.0) as larder:
        got = (
            await larder.cache.get(key),
            await larder.cache.get_many([key]),
            await larder.cache.stats("default"),
        )
    assert got[:2] == expected[:2]
    assert set(got[2]) == set(expected[2])


async def test_invalid_argument_is_larder_error(client: aio.Larder) -> None:
    with pytest.raises(LarderError, match="key"):
        await client.cache.set("", b"v")
    with pytest.raises(ValueError, match="at most one"):
        await client.cache.set("k", b"v", if_absent=True, if_present=True)


async def test_token_required(token_daemon: tuple[Daemon, str]) -> None:
    daemon, token = token_daemon
    async with aio.Larder(daemon.unix_target, timeout=5.0) as anonymous:
        with pytest.raises(grpc.RpcError) as err:
            await anonymous.cache.get("k")
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    async with aio.Larder(daemon.addr, token=token, timeout=5.0) as authed:
        assert await authed.cache.set("k", b"v") is True


async def test_concurrent_calls_share_one_channel(client: aio.Larder) -> None:
    keys = [fresh("many") for _ in range(50)]
    await asyncio.gather(*(client.cache.set(k, k.encode()) for k in keys))
    values = await asyncio.gather(*(client.cache.get(k) for k in keys))
    assert values == [k.encode() for k in keys]


async def test_async_retry_policy_matches_the_blocking_one() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    failures = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE]
    calls: list[object] = []

    async def method(
        request: object, *, timeout: float, metadata: object, wait_for_ready: bool
    ) -> str:
        calls.append(metadata)
        if failures:
            raise FakeError(failures.pop(0))
        return "ok"

    invoker = AsyncInvoker("t0ken-value", 1.0, sleep=sleep)
    assert await invoker(method, "req", idempotent=True) == "ok"
    assert slept == [0.05, 0.1] and len(calls) == 3
    assert calls[0] == (("authorization", "Bearer t0ken-value"),)
    failures.append(grpc.StatusCode.UNAVAILABLE)
    with pytest.raises(grpc.RpcError):
        await invoker(method, "req", idempotent=False)
    failures.append(grpc.StatusCode.INVALID_ARGUMENT)
    with pytest.raises(LarderError, match="fake INVALID_ARGUMENT"):
        await invoker(method, "req", idempotent=True)
