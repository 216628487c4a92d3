"""How every call is made: metadata, deadline, retries on UNAVAILABLE, error mapping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import grpc

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Metadata = tuple[tuple[str, str], ...]


class LarderError(ValueError):
    """The server rejected the request as invalid (gRPC status INVALID_ARGUMENT).

    ``details`` is the server's message; the original ``grpc.RpcError`` is ``__cause__``.
    Every other failure (UNAVAILABLE, DEADLINE_EXCEEDED, UNAUTHENTICATED, ...) propagates as
    the ``grpc.RpcError`` itself: call ``.code()`` and ``.details()`` on it.
    """

    def __init__(self, details: str) -> None:
        super().__init__(details)
        self.details = details


class _Policy:
    """What the sync and the asyncio invoker share: metadata, deadlines, retries, errors."""

    def __init__(
        self,
        token: str | None,
        timeout: float,
        retries: int,
        backoff: float,
        wait_for_ready: bool,
        reconnect_wait: float,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive (seconds)")
        if retries < 0:
            raise ValueError("retries must be 0 or more")
        if reconnect_wait < 0:
            raise ValueError("reconnect_wait must be 0 or more (seconds)")
        self.metadata: Metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.wait_for_ready = wait_for_ready
        self.reconnect_wait = reconnect_wait

    def deadline(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout

    def failed(self, err: grpc.RpcError, attempt: int, idempotent: bool) -> float:
        """The pause before trying again after ``err``; raises when the call is over.

        Tried again: UNAVAILABLE, while retries are left, for an idempotent call, or for any
        call that never reached the daemon (no connection could be made, so nothing was sent).
        """
        code = status_code(err)
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            raise LarderError(status_details(err, "invalid argument")) from err
        if (
            code == grpc.StatusCode.UNAVAILABLE
            and attempt < self.retries
            and (idempotent or _never_sent(err))
        ):
            return self.backoff * (2**attempt)
        raise err


class Invoker(_Policy):
    """Calls one stub method with the client's token, a deadline and the retry policy.

    An idempotent call that fails with UNAVAILABLE (the daemon is restarting, or the
    connection dropped) is tried again up to ``retries`` more times, pausing ``backoff``,
    then twice that, between tries. A call that changes state in a way that must not happen
    twice (set, increment, create_session, check, ...) is tried again only when it never
    reached the daemon (grpc-core could not connect, so nothing was sent): after any other
    UNAVAILABLE the client cannot know whether the server applied it.

    With ``ready`` (the client passes one that watches its channel), a retry also waits, up
    to ``reconnect_wait`` seconds, for the channel to connect again: a restart of the daemon
    is ridden through, while a daemon that stays down fails the call with its UNAVAILABLE
    error after that wait. ``wait_for_ready`` (off by default) makes every call wait for the
    connection within its deadline instead (grpc's own option; a daemon that stays down then
    ends calls with DEADLINE_EXCEEDED, which names no cause).
    """

    def __init__(
        self,
        token: str | None,
        timeout: float,
        retries: int = 2,
        backoff: float = 0.05,
        wait_for_ready: bool = False,
        reconnect_wait: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
        ready: Callable[[float], bool] | None = None,
    ) -> None:
        super().__init__(token, timeout, retries, backoff, wait_for_ready, reconnect_wait)
        self._sleep = sleep
        self._ready = ready

    def __call__(
        self,
        method: Callable[..., Resp],
        request: object,
        *,
        idempotent: bool,
        timeout: float | None = None,
    ) -> Resp:
        deadline = self.deadline(timeout)
        attempt = 0
        while True:
            try:
                return method(
                    request,
                    timeout=deadline,
                    metadata=self.metadata,
                    wait_for_ready=self.wait_for_ready,
                )
            except grpc.RpcError as err:
                self._sleep(self.failed(err, attempt, idempotent))
                if self._ready is not None and not self._ready(self.reconnect_wait):
                    raise
            attempt += 1


class AsyncInvoker(_Policy):
    """``Invoker`` for ``grpc.aio`` stubs: the same policy, awaiting instead of blocking."""

    def __init__(
        self,
        token: str | None,
        timeout: float,
        retries: int = 2,
        backoff: float = 0.05,
        wait_for_ready: bool = False,
        reconnect_wait: float = 0.5,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        ready: Callable[[float], Awaitable[bool]] | None = None,
    ) -> None:
        super().__init__(token, timeout, retries, backoff, wait_for_ready, reconnect_wait)
        self._sleep = sleep
        self._ready = ready

    async def __call__(
        self,
        method: Callable[..., Awaitable[Resp]],
        request: object,
        *,
        idempotent: bool,
        timeout: float | None = None,
    ) -> Resp:
        deadline = self.deadline(timeout)
        attempt = 0
        while True:
            try:
                return await method(
                    request,
                    timeout=deadline,
                    metadata=self.metadata,
                    wait_for_ready=self.wait_for_ready,
                )
            except grpc.RpcError as err:
                await self._sleep(self.failed(err, attempt, idempotent))
                if self._ready is not None and not await self._ready(self.reconnect_wait):
                    raise
            attempt += 1


def _never_sent(err: grpc.RpcError) -> bool:
    """Whether grpc-core failed ``err``'s call before sending it: it could not connect.

    The native core says so itself (``never_sent``). grpc-core's words for that have been the
    same for years; if they change, such calls are only not retried, which is the safe side."""
    never_sent = getattr(err, "never_sent", None)
    if never_sent is not None:
        return bool(never_sent)
    return "failed to connect to all addresses" in status_details(err, "").lower()


def status_code(err: BaseException) -> grpc.StatusCode | None:
    """The gRPC status of ``err``, or None when it is not a gRPC error."""
    code = getattr(err, "code", None)
    return code() if callable(code) else None


def status_details(err: BaseException, default: str | None = None) -> str:
    """The server's message of ``err``; ``default`` (else ``str(err)``) when it has none."""
    details = getattr(err, "details", None)
    text = details() if callable(details) else None
    return text or (str(err) if default is None else default)


def describe(err: BaseException) -> str:
    """A gRPC error in one line, ``STATUS: details`` (any other error: its repr)."""
    code = status_code(err)
    if code is None:
        return repr(err)
    return f"{getattr(code, 'name', code)}: {status_details(err, '')}"


def unreachable(err: BaseException) -> bool:
    """Whether ``err`` means the daemon could not answer, not a mistake in the request
    (which is a ``LarderError``)."""
    return isinstance(err, grpc.RpcError) and not isinstance(err, LarderError)


def channel_options(target: str, extra: Sequence[tuple[str, object]]) -> list:
    """Channel options for ``target``, after the caller's own ``extra`` ones.

    - A ``unix:`` target gets ``localhost`` as authority: grpc-core sends a Unix socket's path
      as HTTP/2 ``:authority``, which is not a valid authority, and the server rejects every
      call.
    - Answers of any size are received (grpc-core stops at 4 MiB by default): the daemon bounds
      its own answers (a value is at most ``--max-value``, 16 MiB by default).
    - Reconnects are tried every 100 to 500 ms after a lost connection (``_RECONNECT``).
    """
    options = list(extra)
    named = {k for k, _ in options}
    if target.startswith("unix:") and "grpc.default_authority" not in named:
        options.append(("grpc.default_authority", "localhost"))
    if "grpc.max_receive_message_length" not in named:
        options.append(("grpc.max_receive_message_length", -1))
    for name, value in _RECONNECT:
        if name not in named:
            options.append((name, value))
    return options


# Reconnect soon after a lost connection (grpc-core waits 1 s at first and up to 120 s): the
# daemon is on this machine or near it, and a restart takes it away for a second or less.
# (grpc.min_reconnect_backoff_ms is left alone: grpc-core uses it as the connect timeout.)
_RECONNECT = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
)
