"""How every call is made: metadata, deadline, retries on UNAVAILABLE, error mapping."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
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


class Invoker:
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
        if timeout <= 0:
            raise ValueError("timeout must be positive (seconds)")
        if retries < 0:
            raise ValueError("retries must be 0 or more")
        self.metadata: Metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._sleep = sleep

    def __call__(
        self,
        method: Callable[..., Resp],
        request: object,
        *,
        idempotent: bool,
        timeout: float | None = None,
    ) -> Resp:
        deadline = self.timeout if timeout is None else timeout
        attempts = 1 + (self.retries if idempotent else 0)
        for attempt in range(attempts):
            try:
                return method(request, timeout=deadline, metadata=self.metadata)
            except grpc.RpcError as err:
                code = _code(err)
                if code == grpc.StatusCode.INVALID_ARGUMENT:
                    raise LarderError(_details(err)) from err
                if code == grpc.StatusCode.UNAVAILABLE and attempt + 1 < attempts:
                    self._sleep(self.backoff * (2**attempt))
                    continue
                raise
        raise AssertionError("unreachable: the loop returns or raises on its last attempt")


def _code(err: grpc.RpcError) -> grpc.StatusCode | None:
    code = getattr(err, "code", None)
    return code() if callable(code) else None


def _details(err: grpc.RpcError) -> str:
    details = getattr(err, "details", None)
    text = details() if callable(details) else None
    return text or "invalid argument"


def channel_options(target: str, extra: Sequence[tuple[str, object]]) -> list:
    """Channel options for ``target``; a ``unix:`` target gets ``localhost`` as authority.

    grpc-core sends a Unix socket's path as HTTP/2 ``:authority``, which is not a valid
    authority, and the server rejects every call; naming ``localhost`` avoids that.
    """
    options = list(extra)
    if target.startswith("unix:") and not any(k == "grpc.default_authority" for k, _ in options):
        options.append(("grpc.default_authority", "localhost"))
    return options
