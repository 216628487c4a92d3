"""The retry policy and metadata of larder_client._invoke.Invoker, with a stand-in stub method."""

from __future__ import annotations

from types import SimpleNamespace

import grpc
import pytest

from larder_client import Cache, LarderError
from larder_client._invoke import _RECONNECT, Invoker, channel_options


class FakeError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        self._code = code
        self._details = details or f"fake {code.name}"

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


# grpc-core's words when it could not connect, so the call was never sent.
NOT_CONNECTED = "failed to connect to all addresses; last error: UNAVAILABLE: connect failed"


class Method:
    """Fails with the given codes in turn, then answers "ok"; records every call."""

    def __init__(self, *codes: grpc.StatusCode | FakeError) -> None:
        self.codes = list(codes)
        self.calls: list[dict] = []

    def __call__(self, request, *, timeout, metadata, wait_for_ready):
        self.calls.append(
            {
                "request": request,
                "timeout": timeout,
                "metadata": metadata,
                "wait_for_ready": wait_for_ready,
            }
        )
        if self.codes:
            failure = self.codes.pop(0)
            raise failure if isinstance(failure, FakeError) else FakeError(failure)
        return "ok"


def invoker(**kw) -> tuple:
    slept: list[float] = []
    return Invoker(kw.pop("token", None), kw.pop("timeout", 1.0), sleep=slept.append, **kw), slept


def test_idempotent_calls_retry_unavailable() -> None:
    call, slept = invoker()
    method = Method(grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE)
    assert call(method, "req", idempotent=True) == "ok"
    assert len(method.calls) == 3
    assert slept == [0.05, 0.1]


def test_idempotent_calls_give_up_after_the_retries() -> None:
    call, _ = invoker(retries=2)
    method = Method(*[grpc.StatusCode.UNAVAILABLE] * 3)
    with pytest.raises(grpc.RpcError) as err:
        call(method, "req", idempotent=True)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(method.calls) == 3


def test_non_idempotent_calls_are_not_retried_once_they_may_have_been_sent() -> None:
    call, slept = invoker()
    method = Method(grpc.StatusCode.UNAVAILABLE)
    with pytest.raises(grpc.RpcError):
        call(method, "req", idempotent=False)
    assert len(method.calls) == 1 and slept == []


def test_every_call_is_retried_when_it_never_reached_the_daemon() -> None:
    call, slept = invoker()
    not_sent = FakeError(grpc.StatusCode.UNAVAILABLE, NOT_CONNECTED)
    method = Method(not_sent, not_sent)
    assert call(method, "req", idempotent=False) == "ok"
    assert len(method.calls) == 3 and slept == [0.05, 0.1]


def test_a_retry_waits_for_the_channel_and_gives_up_when_it_does_not_connect() -> None:
    waits: list[float] = []
    connects = [True, False]

    def ready(seconds: float) -> bool:
        waits.append(seconds)
        return connects.pop(0)

    call, _ = invoker(ready=ready, reconnect_wait=0.25)
    method = Method(grpc.StatusCode.UNAVAILABLE)
    assert call(method, "req", idempotent=True) == "ok"
    method = Method(*[grpc.StatusCode.UNAVAILABLE] * 3)
    with pytest.raises(grpc.RpcError) as err:
        call(method, "req", idempotent=True)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(method.calls) == 1, "not tried again: the channel did not connect"
    assert waits == [0.25, 0.25]


def test_other_codes_are_not_retried() -> None:
    call, _ = invoker()
    method = Method(grpc.StatusCode.DEADLINE_EXCEEDED)
    with pytest.raises(grpc.RpcError):
        call(method, "req", idempotent=True)
    assert len(method.calls) == 1


def test_invalid_argument_becomes_larder_error() -> None:
    call, _ = invoker()
    with pytest.raises(LarderError, match="fake INVALID_ARGUMENT"):
        call(Method(grpc.StatusCode.INVALID_ARGUMENT), "req", idempotent=True)


def test_token_and_deadlines_are_sent() -> None:
    call, _ = invoker(token="s3cret-token-value", timeout=0.7)
    method = Method()
    call(method, "req", idempotent=True)
    call(method, "req", idempotent=False, timeout=2.5)
    assert method.calls[0]["metadata"] == (("authorization", "Bearer s3cret-token-value"),)
    assert [c["timeout"] for c in method.calls] == [0.7, 2.5]
    anonymous, _ = invoker()
    method = Method()
    anonymous(method, "req", idempotent=True)
    assert method.calls[0]["metadata"] == ()


def test_channel_options() -> None:
    defaults = [("grpc.max_receive_message_length", -1), *_RECONNECT]
    assert channel_options("unix:/run/larder.sock", []) == [
        ("grpc.default_authority", "localhost"),
        *defaults,
    ]
    assert channel_options("127.0.0.1:7379", []) == defaults
    own = [
        ("grpc.default_authority", "larder"),
        ("grpc.max_receive_message_length", 1 << 20),
        ("grpc.max_reconnect_backoff_ms", 5000),
    ]
    assert channel_options("unix:/x", own) == own + [o for o in _RECONNECT if o[0] != own[2][0]]


def test_calls_fail_fast_unless_told_to_wait_for_ready() -> None:
    call, _ = invoker()
    method = Method()
    call(method, "req", idempotent=True)
    waiting, _ = invoker(wait_for_ready=True)
    waiting(method, "req", idempotent=False)
    assert [c["wait_for_ready"] for c in method.calls] == [False, True]


class Recorder:
    """Stands in for the Invoker: records whether each stub method was called as idempotent."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, bool]] = []

    def __call__(self, method, request, *, idempotent, timeout=None):
        self.calls.append((method, idempotent))
        return SimpleNamespace(stored=True, version=1, versions=[1], deleted=0, found=True, value=1)


class Names:
    """Stands in for a core's binding: each method is its name, each request its fields."""

    @staticmethod
    def request(call):
        return call.fields

    def method(self, service, stub, name):
        return name


def test_which_cache_writes_may_be_retried() -> None:
    recorder = Recorder()
    cache = Cache(Names(), recorder)
    cache.set("k", b"v", if_present=True)
    cache.compare_and_set("k", b"v", 7)
    cache.set_many({"k": b"v"})
    cache.delete("k", version=7)
    cache.delete_many(["k"])
    cache.increment_if_present("k")
    cache.clear()
    assert recorder.calls == [
        ("Set", False),
        ("Set", False),
        ("SetMany", False),
        ("Delete", True),
        ("DeleteMany", True),
        ("Increment", False),
        ("Clear", False),
    ]
