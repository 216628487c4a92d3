"""The native core's side of the client: how a call goes through ``larder_client._native``
(the Rust extension: tonic and prost, the GIL released while a call is in flight) for the
blocking and the asyncio client, and the error its failed calls raise.

A failed call raises ``NativeRpcError``, a ``grpc.RpcError`` with the same ``code()`` and
``details()`` as grpcio's, so the retry policy (``_invoke``), the adapters and the callers see
one kind of error whichever core carries the call.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from ._calls import Call

try:
    from . import _native
except ImportError:  # built without a Rust toolchain: grpcio carries every call
    _native = None  # type: ignore[assignment]

_CODES = {code.value[0]: code for code in grpc.StatusCode}


def available() -> bool:
    """Whether the native core is installed (the extension was built with the package)."""
    return _native is not None


class NativeRpcError(grpc.RpcError):
    """A call of the native core that failed: its gRPC status, as grpcio's errors give it.

    ``never_sent`` tells that no connection to the daemon could be made, so the request
    was never written: any call may then be tried again (see ``_invoke``)."""

    def __init__(self, code: int, details: str, never_sent: bool) -> None:
        self._code = _CODES.get(code, grpc.StatusCode.UNKNOWN)
        self._details = details
        self.never_sent = never_sent
        super().__init__(f"{self._code.name}: {details}")

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def initial_metadata(self) -> tuple[()]:
        return ()

    def trailing_metadata(self) -> tuple[()]:
        return ()

    def debug_error_string(self) -> str:
        return str(self)


def open_core(
    target: str,
    token: str | None,
    *,
    tls: bool,
    root_certificates: bytes | None,
    certificate_chain: bytes | None,
    private_key: bytes | None,
    authority: str | None,
    server_name: str | None,
) -> Any:
    """A ``_native.Core`` for these settings; ValueError when it cannot carry them."""
    if _native is None:
        raise ValueError("larder_client._native is not installed")
    return _native.Core(
        target,
        token,
        NativeRpcError,
        tls=tls,
        root_certificates=root_certificates,
        certificate_chain=certificate_chain,
        private_key=private_key,
        authority=authority,
        server_name=server_name,
    )


class _Binding:
    """A native core, and what its calls take for a ``Call``: the request's fields."""

    kind = "native"

    def __init__(self, core: Any) -> None:
        self._core = core

    @staticmethod
    def request(call: Call[Any]) -> dict[str, Any]:
        return call.fields


class NativeBinding(_Binding):
    """Runs the blocking client's calls on a native core."""

    def method(self, service: str, stub: type, name: str) -> Callable[..., Any]:
        path = f"/{service}/{name}"
        core_call = self._core.call

        def invoke(
            request: dict[str, Any], *, timeout: float, metadata: object, wait_for_ready: bool
        ) -> Any:
            # The token is the core's own (given when it was made); ``metadata`` carries it too.
            return core_call(path, request, timeout, wait_for_ready)

        return invoke

    def ready(self, seconds: float) -> bool:
        return bool(self._core.ready(seconds))

    def close(self) -> None:
        self._core.close()


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():  # the awaiting task was cancelled
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def _cancel_with(pending: Any, future: asyncio.Future[Any]) -> None:
    # A cancelled task drops its call in the core: a pipelined call not yet written is then
    # never written (it must not run after its caller gave up on it).
    if future.cancelled():
        pending.cancel()


class AsyncNativeBinding(_Binding):
    """Runs the asyncio client's calls on a native core: each call is an asyncio future
    that the core's thread settles through the loop's ``call_soon_threadsafe``, so the
    event loop never blocks. With ``pipeline``, the core sends the calls that a
    ``PipelineService/Run`` stream carries on one such stream (``native/src/pipeline.rs``)."""

    def __init__(self, core: Any, pipeline: bool = False) -> None:
        super().__init__(core)
        self.pipeline = pipeline

    def method(self, service: str, stub: type, name: str) -> Callable[..., Awaitable[Any]]:
        path = f"/{service}/{name}"
        start = self._core.start
        pipelined = self.pipeline

        async def invoke(
            request: dict[str, Any], *, timeout: float, metadata: object, wait_for_ready: bool
        ) -> Any:
            loop = asyncio.get_running_loop()
            future = loop.create_future()
            settle = functools.partial(_settle, future)
            pending = start(
                path, request, timeout, wait_for_ready, loop.call_soon_threadsafe, settle, pipelined
            )
            future.add_done_callback(functools.partial(_cancel_with, pending))
            return await future

        return invoke

    async def ready(self, seconds: float) -> bool:
        loop = asyncio.get_running_loop()
        return bool(await loop.run_in_executor(None, self._core.ready, seconds))

    async def close(self) -> None:
        self._core.close()
