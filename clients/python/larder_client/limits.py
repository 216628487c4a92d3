"""Storages for the ``limits`` package (and so Flask-Limiter, slowapi and others built on it).

Importing this module registers four storage schemes with ``limits``::

    import larder_client.limits  # noqa: F401  (registers the schemes)

    larder://HOST:PORT               LarderStorage, blocking (default port 7379)
    larder+unix:///path/to.sock      LarderStorage over the daemon's Unix socket
    async+larder://HOST:PORT         LarderAsyncStorage, for limits.aio
    async+larder+unix:///path.sock   LarderAsyncStorage over the Unix socket

Query parameters (or the same names as keyword arguments, e.g. Flask-Limiter's
``RATELIMIT_STORAGE_OPTIONS``): ``token`` or ``token_file``, ``tls``, ``tls_ca_file``,
``tls_cert_file``, ``tls_key_file``, ``allow_insecure_token``, ``timeout`` (seconds per call),
``retries`` (of idempotent calls) and ``namespace`` (the cache namespace holding the counters,
default ``limits``). A bad value raises ``limits.errors.ConfigurationError`` naming it.

Every primitive is backed by atomic CacheService calls, because ``limits``' strategies decide
in Python from counters and logs the storage keeps, which RateLimitService does not expose:

- fixed window: ``incr`` is Increment with the window's TTL given at creation (Redis INCR with
  EXPIRE on a new key), ``get`` is Get, ``get_expiry`` is Get's remaining TTL, ``clear`` is
  Delete;
- moving window: each key holds the exact log of the timestamps inside the window (at most
  ``limit``, newest first, little-endian doubles; older ones are dropped at each write) in
  the namespace ``NAMESPACE:moving-window``; ``acquire_entry``
  reads it with its version and writes the new log by compare-and-set (SET IF_ABSENT for a
  new key), retrying when another caller wrote first, so callers in any number of processes
  never admit more than ``limit`` in ``expiry`` seconds;
- sliding window counter: a counter per window aligned to the period (``key/N``, created with
  twice the period as TTL), read two at a time with GetMany; an acquisition Increments the
  current one and, when that took the weighted count over the limit, takes it back with
  Increment -amount only while the counter still exists.

``clear`` deletes a key's counter and log; ``reset`` is Clear of both namespaces (every limit
kept there, so give each application its own ``namespace``); ``check`` is the gRPC health check.
"""

from __future__ import annotations

import struct
import time
import urllib.parse
from collections.abc import Callable
from math import floor
from typing import Any, NamedTuple, TypeVar

import grpc
from limits.aio.storage import base as aio_base
from limits.errors import ConfigurationError
from limits.storage import base

from . import aio
from ._channel import Transport
from ._client import Larder
from ._invoke import LarderError
from ._ops import Op, arun, rpc, run
from ._options import ConfigError, async_client, client_kwargs, sync_client

T = TypeVar("T")

DEFAULT_PORT = 7379
DEFAULT_NAMESPACE = "limits"
# The moving window's logs live in their own namespace, beside the counters', so that a
# strategy's key never meets another strategy's value (as in limits' memory storage).
LOGS_SUFFIX = ":moving-window"
NAMESPACE_BYTES = 128  # the daemon's default bound on a namespace

# Query parameter (and keyword argument) -> connection option of ``larder_client._options``.
_OPTIONS = {
    "token": "TOKEN",
    "token_file": "TOKEN_FILE",
    "tls": "TLS",
    "tls_ca_file": "TLS_CA_FILE",
    "tls_cert_file": "TLS_CERT_FILE",
    "tls_key_file": "TLS_KEY_FILE",
    "allow_insecure_token": "ALLOW_INSECURE_TOKEN",
    "timeout": "SOCKET_TIMEOUT",
    "retries": "RETRIES",
}
_BOOLEANS = {"TLS", "ALLOW_INSECURE_TOKEN"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
PARAMETERS = frozenset([*_OPTIONS, "namespace"])


class Config(NamedTuple):
    """Where a storage URI points: a client target, its connection options, the namespace,
    and the URI without its query (which may hold a token) for messages."""

    location: str
    options: dict[str, Any]
    namespace: str
    setting: str


def parse_uri(uri: str, schemes: tuple[str, str], **kwargs: Any) -> Config:
    """The configuration of a ``larder://`` or ``larder+unix://`` URI (with ``async+`` for
    the asyncio storage), its query parameters and ``kwargs`` (which win over the query).

    Raises ``ConfigurationError`` naming the URI and the parameter at fault.
    """
    parsed = urllib.parse.urlsplit(uri)
    tcp, unix = schemes
    # Neither the query nor a user:password@ part: either may hold a token.
    setting = f"{parsed.scheme}://{parsed.netloc.rpartition('@')[2]}{parsed.path}"

    def bad(what: str) -> ConfigurationError:
        return ConfigurationError(f"larder storage {setting}: {what}")

    if parsed.scheme == tcp:
        if parsed.path not in ("", "/"):
            raise bad(f"{tcp}:// takes HOST:PORT and no path (a socket is {unix}:///path)")
        try:
            host, port = parsed.hostname, parsed.port
        except ValueError as err:
            raise bad(f"invalid port: {err}") from err
        if not host:
            raise bad(f"no host: write {tcp}://HOST:PORT")
        if parsed.username is not None:
            raise bad("give the token as ?token=... (or token_file), not as user:password@")
        host = f"[{host}]" if ":" in host else host
        location = f"{host}:{port or DEFAULT_PORT}"
    elif parsed.scheme == unix:
        if parsed.netloc or not parsed.path.startswith("/"):
            raise bad(f"write {unix}:///absolute/path/to/larder.sock (three slashes)")
        location = f"unix:{urllib.parse.unquote(parsed.path)}"
    else:
        raise bad(f"the scheme must be {tcp} or {unix}")
    params: dict[str, Any] = {}
    try:
        query = urllib.parse.parse_qsl(
            parsed.query, keep_blank_values=True, strict_parsing=bool(parsed.query)
        )
    except ValueError as err:
        raise bad(f"cannot parse the query: {err}") from err
    for name, value in query:
        if name in params:
            raise bad(f"query parameter {name!r} is given twice")
        params[name] = value
    params.update(kwargs)
    unknown = sorted(set(params) - PARAMETERS)
    if unknown:
        raise bad(f"unknown parameter(s) {unknown}; known: {sorted(PARAMETERS)}")
    namespace = params.pop("namespace", DEFAULT_NAMESPACE)
    room = NAMESPACE_BYTES - len(LOGS_SUFFIX)
    if not isinstance(namespace, str) or not 0 < len(namespace.encode()) <= room:
        raise bad(f"namespace must be 1 to {room} bytes of text, not {namespace!r}")
    options: dict[str, Any] = {}
    for name, value in params.items():
        option = _OPTIONS[name]
        if isinstance(value, str):
            value = _from_text(name, option, value, bad)
        options[option] = value
    try:
        client = client_kwargs(location, options, setting)  # reads the token and PEM files
    except ConfigError as err:
        raise bad(_names(str(err).split(": ", 1)[-1])) from err
    try:  # what the client's constructor checks: a token in cleartext off this machine, ...
        Transport.make(
            client["target"],
            client["token"],
            (),
            tls=client["tls"],
            root_certificates=client.get("root_certificates"),
            private_key=client.get("private_key"),
            certificate_chain=client.get("certificate_chain"),
            allow_insecure_token=client["allow_insecure_token"],
        )
    except ValueError as err:
        raise bad(str(err)) from err
    return Config(location, options, namespace, setting)


def _from_text(name: str, option: str, value: str, bad: Callable[[str], Exception]) -> Any:
    """A query parameter's text as the type its connection option takes."""
    if option in _BOOLEANS:
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise bad(f"{name} must be true or false, not {value!r}")
    if option == "SOCKET_TIMEOUT":
        try:
            return float(value)
        except ValueError:
            raise bad(f"{name} must be a number of seconds, not {value!r}") from None
    if option == "RETRIES":
        try:
            return int(value)
        except ValueError:
            raise bad(f"{name} must be a whole number, not {value!r}") from None
    return value


def _names(message: str) -> str:
    """A connection-option message with the options under this storage's parameter names."""
    for name, option in sorted(_OPTIONS.items(), key=lambda item: -len(item[1])):
        message = message.replace(option, name)
    return message


# --- the operations, written once (larder_client._ops runs them on either client) ----------


def _ms(seconds: float) -> int:
    """A TTL in whole milliseconds, at least 1 (0 would mean "never expires")."""
    return max(1, round(seconds * 1000))


def _count(value: bytes | None) -> int:
    return int(value) if value else 0


def _decode_log(value: bytes) -> list[float]:
    return list(struct.unpack(f"<{len(value) // 8}d", value))


def _encode_log(log: list[float]) -> bytes:
    return struct.pack(f"<{len(log)}d", *log)


def _incr(key: str, expiry: float, amount: int) -> Op[int]:
    return (yield rpc("increment", key, amount, _ms(expiry)))


def _get(key: str) -> Op[int]:
    return _count((yield rpc("get", key)))


def _get_expiry(key: str) -> Op[float]:
    entry = yield rpc("get_entry", key)
    now = time.time()
    return now + entry.ttl_ms / 1000 if entry is not None else now


def _clear(key: str, logs: str) -> Op[None]:
    yield rpc("delete", key)
    yield rpc("delete", key, namespace=logs)


def _reset(logs: str) -> Op[int]:
    return (yield rpc("clear")) + (yield rpc("clear", namespace=logs))


def _acquire_entry(key: str, limit: int, expiry: float, amount: int, logs: str) -> Op[bool]:
    if amount > limit:
        return False
    while True:
        entry = yield rpc("get_entry", key, namespace=logs)
        now = time.time()
        # Only the entries still inside the window are kept (newest first): with a limit far
        # above the traffic, older ones would make the log grow with every hit.
        log = [t for t in _decode_log(entry.value) if t >= now - expiry] if entry else []
        # The window holds ``limit`` entries already, counting this one's ``amount``.
        if len(log) > limit - amount:
            return False
        value = _encode_log([now] * amount + log)
        if entry is None:
            if (yield rpc("set", key, value, _ms(expiry), if_absent=True, namespace=logs)):
                return True
        elif (
            yield rpc("compare_and_set", key, value, entry.version, _ms(expiry), namespace=logs)
        ) is not None:
            return True


def _get_moving_window(key: str, expiry: float, logs: str) -> Op[tuple[float, int]]:
    value = yield rpc("get", key, namespace=logs)
    now = time.time()
    inside = [t for t in _decode_log(value) if t >= now - expiry] if value else []
    return (inside[-1], len(inside)) if inside else (now, 0)


def _window(previous: int, current: int, expiry: int, now: float) -> tuple[int, float, int, float]:
    previous_ttl = (1 - (((now - expiry) / expiry) % 1)) * expiry if previous else 0.0
    current_ttl = (1 - ((now / expiry) % 1)) * expiry + expiry
    return previous, previous_ttl, current, current_ttl


def _get_sliding_window(key: str, expiry: int) -> Op[tuple[int, float, int, float]]:
    now = time.time()
    previous_key, current_key = base.TimestampedSlidingWindow.sliding_window_keys(key, expiry, now)
    found = yield rpc("get_many", [previous_key, current_key])
    # The TTLs as of the answer (the caller adds them to its clock next), unless the window
    # turned over during the call.
    answered = time.time()
    if int(answered / expiry) == int(now / expiry):
        now = answered
    return _window(_count(found[previous_key]), _count(found[current_key]), expiry, now)


def _acquire_sliding_window_entry(key: str, limit: int, expiry: int, amount: int) -> Op[bool]:
    if amount > limit:
        return False
    now = time.time()
    previous_key, current_key = base.TimestampedSlidingWindow.sliding_window_keys(key, expiry, now)
    found = yield rpc("get_many", [previous_key, current_key])
    previous, previous_ttl, current, _ = _window(
        _count(found[previous_key]), _count(found[current_key]), expiry, now
    )
    weighted = previous * previous_ttl / expiry
    if floor(weighted + current) + amount > limit:
        return False
    current = yield rpc("increment", current_key, amount, _ms(2 * expiry))
    if floor(weighted + current) > limit:
        # Others acquired meanwhile: give this one back, unless the counter is already gone.
        yield rpc("increment_if_present", current_key, -amount)
        return False
    return True


def _clear_sliding_window(key: str, expiry: int) -> Op[None]:
    keys = base.TimestampedSlidingWindow.sliding_window_keys(key, expiry, time.time())
    yield rpc("delete_many", list(keys))


# --- the storages ----------------------------------------------------------------------------


class _Common:
    """What both storages share: the parsed URI and the exceptions ``limits`` may wrap."""

    _schemes: tuple[str, str]

    def _configure(self, uri: str | None, options: dict[str, Any]) -> None:
        if uri is None:
            raise ConfigurationError(f"larder storage: give a {self._schemes[0]}:// URI")
        self.config = parse_uri(uri, self._schemes, **options)
        self.namespace = self.config.namespace
        self.logs = f"{self.namespace}{LOGS_SUFFIX}"

    @property
    def base_exceptions(self) -> tuple[type[Exception], ...]:
        return (grpc.RpcError, LarderError)


class LarderStorage(
    _Common,
    base.Storage,
    base.MovingWindowSupport,
    base.SlidingWindowCounterSupport,
    base.TimestampedSlidingWindow,
):
    """``limits`` storage on a Larder daemon (blocking): fixed window, moving window and
    sliding window counter. One client is shared per process (``sync_client``)."""

    STORAGE_SCHEME = ["larder", "larder+unix"]  # noqa: RUF012  (the type limits declares)
    _schemes = ("larder", "larder+unix")

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options: Any):
        self._configure(uri, options)
        super().__init__(uri, wrap_exceptions=wrap_exceptions)

    def client(self) -> Larder:
        """The process's shared client for this storage's daemon."""
        config = self.config
        return sync_client(config.location, config.options, config.setting)

    def _run(self, op: Op[T]) -> T:
        return run(op, self.client().cache, namespace=self.namespace)

    def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        return self._run(_incr(key, expiry, amount))

    def get(self, key: str) -> int:
        return self._run(_get(key))

    def get_expiry(self, key: str) -> float:
        return self._run(_get_expiry(key))

    def check(self) -> bool:
        try:
            return self.client().health()
        except (grpc.RpcError, ValueError):
            return False

    def reset(self) -> int | None:
        return self._run(_reset(self.logs))

    def clear(self, key: str) -> None:
        self._run(_clear(key, self.logs))

    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        return self._run(_acquire_entry(key, limit, expiry, amount, self.logs))

    def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        return self._run(_get_moving_window(key, expiry, self.logs))

    def acquire_sliding_window_entry(
        self, key: str, limit: int, expiry: int, amount: int = 1
    ) -> bool:
        return self._run(_acquire_sliding_window_entry(key, limit, expiry, amount))

    def get_sliding_window(self, key: str, expiry: int) -> tuple[int, float, int, float]:
        return self._run(_get_sliding_window(key, expiry))

    def clear_sliding_window(self, key: str, expiry: int) -> None:
        self._run(_clear_sliding_window(key, expiry))


class LarderAsyncStorage(
    _Common,
    aio_base.Storage,
    aio_base.MovingWindowSupport,
    aio_base.SlidingWindowCounterSupport,
    base.TimestampedSlidingWindow,
):
    """The same storage for ``limits.aio``, on ``larder_client.aio`` (one client per event
    loop, shared by the storages of one configuration)."""

    STORAGE_SCHEME = ["async+larder", "async+larder+unix"]  # noqa: RUF012
    _schemes = ("async+larder", "async+larder+unix")

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options: Any):
        self._configure(uri, options)
        super().__init__(uri, wrap_exceptions=wrap_exceptions)

    def client(self) -> aio.Larder:
        """The running event loop's shared client for this storage's daemon."""
        config = self.config
        return async_client(config.location, config.options, config.setting)

    async def _run(self, op: Op[T]) -> T:
        return await arun(op, self.client().cache, namespace=self.namespace)

    async def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        return await self._run(_incr(key, expiry, amount))

    async def get(self, key: str) -> int:
        return await self._run(_get(key))

    async def get_expiry(self, key: str) -> float:
        return await self._run(_get_expiry(key))

    async def check(self) -> bool:
        try:
            return await self.client().health()
        except (grpc.RpcError, ValueError):
            return False

    async def reset(self) -> int | None:
        return await self._run(_reset(self.logs))

    async def clear(self, key: str) -> None:
        await self._run(_clear(key, self.logs))

    async def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        return await self._run(_acquire_entry(key, limit, expiry, amount, self.logs))

    async def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        return await self._run(_get_moving_window(key, expiry, self.logs))

    async def acquire_sliding_window_entry(
        self, key: str, limit: int, expiry: int, amount: int = 1
    ) -> bool:
        return await self._run(_acquire_sliding_window_entry(key, limit, expiry, amount))

    async def get_sliding_window(self, key: str, expiry: int) -> tuple[int, float, int, float]:
        return await self._run(_get_sliding_window(key, expiry))

    async def clear_sliding_window(self, key: str, expiry: int) -> None:
        await self._run(_clear_sliding_window(key, expiry))


__all__ = ["LarderAsyncStorage", "LarderStorage", "parse_uri"]
