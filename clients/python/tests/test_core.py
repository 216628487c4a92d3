"""The two cores (native and grpcio): how one is chosen, and that they behave alike.

The rest of the suite runs on whichever core ``LARDER_CLIENT_CORE`` names (CI runs it once per
core); the tests here that name a core themselves compare the two in one run, and skip when
the native core is not installed (a package built without a Rust toolchain).
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

from larder_client import Larder, LarderError, aio
from larder_client._nativecore import NativeRpcError, available

needs_native = pytest.mark.skipif(
    not available(), reason="larder_client._native is not installed (built without Rust)"
)
CORES = ["grpc", pytest.param("native", marks=needs_native)]


def test_the_core_is_chosen_by_argument_then_environment(monkeypatch: Any) -> None:
    monkeypatch.setenv("LARDER_CLIENT_CORE", "grpc")
    with Larder("127.0.0.1:1") as larder:
        assert larder.core == "grpc"
    if available():
        with Larder("127.0.0.1:1", core="native") as larder:
            assert larder.core == "native"
        monkeypatch.setenv("LARDER_CLIENT_CORE", "auto")
        with Larder("127.0.0.1:1") as larder:
            assert larder.core == "native"
    with pytest.raises(ValueError, match="core must be one of"):
        Larder("127.0.0.1:1", core="fast")


@needs_native
def test_auto_leaves_grpcio_options_to_grpcio_and_native_refuses_them() -> None:
    options = [("grpc.keepalive_time_ms", 10_000)]
    with Larder("127.0.0.1:1", core="auto", options=options) as larder:
        assert larder.core == "grpc"
    with pytest.raises(ValueError, match="grpc.keepalive_time_ms"):
        Larder("127.0.0.1:1", core="native", options=options)
    # What the native core carries out itself, or has no need of, is accepted.
    with Larder("127.0.0.1:1", core="native", options=[("grpc.default_authority", "x")]) as n:
        assert n.core == "native"


@needs_native
def test_both_cores_answer_alike(daemon: Any) -> None:
    def run(larder: Larder, prefix: str) -> list[Any]:
        cache, sessions, ratelimit = larder.cache, larder.sessions, larder.ratelimit
        out: list[Any] = [
            cache.set(f"{prefix}a", b"\x00\xff" * 10, ttl_ms=60_000),
            cache.get(f"{prefix}a"),
            cache.get(f"{prefix}missing"),
            cache.set_many({f"{prefix}b": b"1", f"{prefix}c": b""}) != {},
            {
                k.removeprefix(prefix): v
                for k, v in cache.get_many([f"{prefix}b", f"{prefix}c", f"{prefix}nope"]).items()
            },
            cache.increment(f"{prefix}n", 5),
            cache.increment_if_present(f"{prefix}none"),
            cache.delete_many([f"{prefix}b", f"{prefix}c"]),
            cache.touch(f"{prefix}a", 1000),
            sorted(cache.stats()),
        ]
        entry = cache.get_entry(f"{prefix}a")
        assert entry is not None
        out.append((entry.value, entry.version > 0, 0 < entry.ttl_ms <= 1000))
        token, session = sessions.create(f"{prefix}user", {"k": "v"}, device_info="ua", ip="::1")
        got = sessions.get(token)
        assert got is not None
        out.append(
            (
                got.user_id.removeprefix(prefix),
                got.data,
                got.device_info,
                got.ip,
                got.session_id == session.session_id,
            )
        )
        updated = sessions.update(token, {"x": "1"}, ["k"])
        assert updated is not None
        out.append(updated.data)
        listed = sessions.list(f"{prefix}user")
        out.append((len(listed.sessions), listed.truncated))
        out.append(sessions.revoke(session_id=session.session_id))
        out.append(sessions.get(token))
        r = ratelimit.check(f"{prefix}ip", limit=2, period_ms=60_000)
        out.append((r.allowed, r.limit, r.remaining))
        out.append(larder.health())
        return out

    with Larder(daemon.addr, core="grpc") as g, Larder(daemon.addr, core="native") as n:
        assert run(g, "g-") == run(n, "n-")


@pytest.mark.parametrize("core", CORES)
def test_wrong_types_fail_before_sending_as_protobuf_fails_them(daemon: Any, core: str) -> None:
    with Larder(daemon.addr, core=core) as larder:
        with pytest.raises(TypeError):
            larder.cache.set("k", "text, not bytes")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            larder.cache.increment("k", 1.5)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            larder.cache.increment("k", 1 << 64)
        with pytest.raises(LarderError, match="key"):
            larder.cache.set("", b"v")


@pytest.mark.parametrize("core", CORES)
def test_a_closed_client_refuses_calls(daemon: Any, core: str) -> None:
    larder = Larder(daemon.addr, core=core)
    assert larder.cache.set("closed", b"v")
    larder.close()
    with pytest.raises(ValueError):
        larder.cache.get("closed")


@needs_native
def test_native_errors_are_grpc_errors() -> None:
    larder = Larder("127.0.0.1:1", core="native", retries=0, reconnect_wait=0)
    with larder, pytest.raises(grpc.RpcError) as err:
        larder.cache.get("k")
    assert isinstance(err.value, NativeRpcError)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert err.value.never_sent is True


@pytest.mark.parametrize("core", CORES)
def test_a_write_after_the_daemon_restarted_while_the_client_was_idle(
    daemon: Any, core: str
) -> None:
    # The daemon goes away while the client holds an idle connection to it; a write made
    # later (not retried if it may have reached the daemon) must go out on a new connection
    # instead of failing on the dead one.
    with Larder(daemon.unix_target, core=core, reconnect_wait=2.0) as larder:
        assert larder.cache.set("idle", b"1")
        daemon.restart()
        time.sleep(2.5)  # idle: the client is not calling while the old connection closes
        assert larder.cache.set("idle", b"2")
        assert larder.cache.get("idle") == b"2"


@pytest.mark.parametrize("core", CORES)
async def test_a_cancelled_call_leaves_the_client_working(daemon: Any, core: str) -> None:
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        host, port = silent.getsockname()
        async with aio.Larder(f"{host}:{port}", core=core, timeout=30.0) as stuck:
            task = asyncio.ensure_future(stuck.cache.get("k"))
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    async with aio.Larder(daemon.addr, core=core) as larder:
        assert await larder.cache.set("after-cancel", b"v")
        assert await larder.cache.get("after-cancel") == b"v"


@needs_native
async def test_the_native_asyncio_client_does_not_block_the_loop(daemon: Any) -> None:
    # Calls that the daemon never answers are in flight for their whole deadline; a ticker
    # started after them must run many times before the first one ends. (A call that
    # blocked the loop would hold it for that whole second, and the ticker would not run.)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        host, port = silent.getsockname()
        async with aio.Larder(f"{host}:{port}", core="native", timeout=1.0, retries=0) as stuck:
            calls = [asyncio.ensure_future(stuck.cache.get("k")) for _ in range(8)]
            tick = asyncio.ensure_future(ticker())
            await asyncio.wait(calls, return_when=asyncio.FIRST_COMPLETED)
            ticks_before_the_first_ended = ticks
            tick.cancel()
            await asyncio.gather(*calls, return_exceptions=True)
    assert ticks_before_the_first_ended > 100
    async with aio.Larder(daemon.addr, core="native") as larder:
        await larder.cache.set("loop", b"v")
        values = await asyncio.gather(*(larder.cache.get("loop") for _ in range(64)))
    assert values == [b"v"] * 64


def test_the_environment_names_the_core_under_test() -> None:
    # CI runs the suite once per core: a typo in LARDER_CLIENT_CORE must not pass silently.
    wanted = os.environ.get("LARDER_CLIENT_CORE")
    if wanted in (None, "", "auto"):
        pytest.skip("LARDER_CLIENT_CORE names no core: the suite runs on the default")
    with Larder("127.0.0.1:1") as larder:
        assert larder.core == wanted


@pytest.mark.parametrize("core", CORES)
def test_threads_share_one_client(daemon: Any, core: str) -> None:
    # A threaded server (gunicorn's gthread workers, Django's runserver) calls one client from
    # many threads at once.
    with Larder(daemon.addr, core=core) as larder:

        def work(n: int) -> int:
            for i in range(100):
                assert larder.cache.set(f"t{n}", str(i).encode())
                assert larder.cache.get(f"t{n}") == str(i).encode()
            return larder.cache.increment("threads-total", 1)

        with ThreadPoolExecutor(8) as pool:
            totals = sorted(pool.map(work, range(8)))
    assert totals[-1] - totals[0] == 7


@needs_native
def test_a_child_that_drops_the_inherited_client_leaves_the_parents_working(
    daemon: Any,
) -> None:
    larder = Larder(daemon.addr, core="native", timeout=5.0)
    assert larder.cache.set("fork-drop", b"1")
    pid = os.fork()
    if pid == 0:  # the child: drop the parent's client without using it, then leave
        code = 1
        try:
            del larder
            gc.collect()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # A write on the parent's connection, which the child must not have taken apart.
    assert larder.cache.set("fork-drop", b"2")
    assert larder.cache.get("fork-drop") == b"2"
    larder.close()


@pytest.mark.parametrize("core", CORES)
def test_strings_may_be_given_as_utf8_bytes(daemon: Any, core: str) -> None:
    with Larder(daemon.addr, core=core) as larder:
        assert larder.cache.set("bytes-key", b"v")
        assert larder.cache.get(b"bytes-key") == b"v"  # type: ignore[arg-type]


@needs_native
def test_a_deadline_of_no_limit_is_taken_as_a_long_one(daemon: Any) -> None:
    # grpcio ends such a call at once with DEADLINE_EXCEEDED; the native core waits a year.
    with Larder(daemon.addr, core="native") as larder:
        assert larder.cache.set("no-limit", b"v", timeout=float(sys.maxsize))
        assert larder.cache.get("no-limit", timeout=float(sys.maxsize)) == b"v"


@needs_native
async def test_closing_the_asyncio_client_ends_no_call_in_flight(daemon: Any) -> None:
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        host, port = silent.getsockname()
        larder = aio.Larder(f"{host}:{port}", core="native", timeout=0.5, retries=0)
        call = asyncio.ensure_future(larder.cache.get("k"))
        await asyncio.sleep(0.1)
        await larder.close()
        with pytest.raises(grpc.RpcError) as err:
            await asyncio.wait_for(call, 10)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


@pytest.mark.parametrize("core", CORES)
def test_wait_for_ready_waits_for_the_daemon_to_come_back(daemon: Any, core: str) -> None:
    with Larder(daemon.unix_target, core=core, timeout=15.0, wait_for_ready=True) as larder:
        assert larder.cache.set("wait-for-ready", b"1")
        assert daemon.stop() == 0
        time.sleep(1.5)  # the client has seen its connection close, and the daemon is down
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(larder.cache.set, "wait-for-ready", b"2")
            time.sleep(0.5)
            assert not pending.done()  # waiting, not failed
            daemon.start()
            assert pending.result(timeout=30)
        assert larder.cache.get("wait-for-ready") == b"2"
