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

    def __init__(self, token: str | None, timeout: float, retries: int, backoff: float) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive (seconds)")
        if retries < 0:
            raise ValueError("retries must be 0 or more")
        self.metadata: Metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff

    def deadline(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout

    def attempts(self, idempotent: bool) -> int:
        return 1 + (self.retries if idempotent else 0)

    def failed(self, err: grpc.RpcError, attempt: int, attempts: int) -> float:
        """The pause before trying again after ``err``; raises when the call is over."""
        code = _code(err)
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            raise LarderError(_details(err)) from err
        if code == grpc.StatusCode.UNAVAILABLE and attempt + 1 < attempts:
            return self.backoff * (2**attempt)
        raise err


class Invoker(_Policy):
    """Calls one stub method with the client's token, a deadline and the retry policy.

    An idempotent call that fails with UNAVAILABLE (the daemon is restarting, or the
    connection dropped) is tried again up to ``retries`` more times, sleeping ``backoff``,
    then twice that, between tries. A call that changes state in a way that must not happen
    twice (set, increment, create_session, check, ...) is tried exactly once: after an
    UNAVAILABLE the client cannot know whether the server applied it.
    """

    def __init__(
        self,
        token: str | None,
        timeout: float,
        retries: int = 2,
        backoff: float = 0.05,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(token, timeout, retries, backoff)
        self._sleep = sleep

    def __call__(
        self,
        method: Callable[..., Resp],
        request: object,
        *,
        idempotent: bool,
        timeout: float | None = None,
    ) -> Resp:
        deadline = self.deadline(timeout)
        attempts = self.attempts(idempotent)
        for attempt in range(attempts):
            try:
                return method(request, timeout=deadline, metadata=self.metadata)
            except grpc.RpcError as err:
                self._sleep(self.failed(err, attempt, attempts))
        raise AssertionError("unreachable: the loop returns or raises on its last attempt")


class AsyncInvoker(_Policy):
    """``Invoker`` for ``grpc.aio`` stubs: the same policy, awaiting instead of blocking."""

    def __init__(
        self,
        token: str | None,
        timeout: float,
        retries: int = 2,
        backoff: float = 0.05,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        super().__init__(token, timeout, retries, backoff)
        self._sleep = sleep

    async def __call__(
        self,
        method: Callable[..., Awaitable[Resp]],
        request: object,
        *,
        idempotent: bool,
        timeout: float | None = None,
    ) -> Resp:
        deadline = self.deadline(timeout)
        attempts = self.attempts(idempotent)
        for attempt in range(attempts):
            try:
                return await method(request, timeout=deadline, metadata=self.metadata)
            except grpc.RpcError as err:
                await self._sleep(self.failed(err, attempt, attempts))
        raise AssertionError("unreachable: the loop returns or raises on its last attempt")


def _code(err: grpc.RpcError) -> grpc.StatusCode | None:
    code = getattr(err, "code", None)
    return code() if callable(code) else None


def _details(err: grpc.RpcError) -> str:
    details = getattr(err, "details", None)
    text = details() if callable(details) else None
    return text or "invalid argument"


def channel_options(target: str, extra: Sequence[tuple[str, object]]) -> list:
    """Channel options for ``target``, after the caller's own ``extra`` ones.

    - A ``unix:`` target gets ``localhost`` as authority: grpc-core sends a Unix socket's path
      as HTTP/2 ``:authority``, which is not a valid authority, and the server rejects every
      call.
    - Answers of any size are received (grpc-core stops at 4 MiB by default): the daemon bounds
      its own answers (a value is at most ``--max-value``, 16 MiB by default).
    """
    options = list(extra)
    named = {k for k, _ in options}
    if target.startswith("unix:") and "grpc.default_authority" not in named:
        options.append(("grpc.default_authority", "localhost"))
    if "grpc.max_receive_message_length" not in named:
        options.append(("grpc.max_receive_message_length", -1))
    return options
