"""Django cache backend on Larder: ``larder_client.django.LarderCache``.

    CACHES = {
        "default": {
            "BACKEND": "larder_client.django.LarderCache",
            "LOCATION": "unix:/run/larder/larder.sock",  # or "127.0.0.1:7379"
            "TIMEOUT": 300,  # seconds; None = never expires, 0 = do not cache
            "KEY_PREFIX": "shop",
            "OPTIONS": {"NAMESPACE": "shop", "TOKEN_FILE": "/etc/larder/token"},
        }
    }

``TIMEOUT``, ``KEY_PREFIX``, ``VERSION`` and ``KEY_FUNCTION`` behave as Django documents them
(key making, validation and versioning are Django's own ``BaseCache``). OPTIONS are listed on
``LarderCache``.

How a value is stored, and so read back
---------------------------------------
Writing:

- an ``int`` (exactly ``int``: ``bool`` and other subclasses are not) from -2**63 to 2**63-1 is
  stored as its ASCII decimal digits (``42`` is ``b"42"``), so that Larder's atomic Increment
  works on values written by ``cache.set(key, 42)`` and every other client reads "42";
- anything else is serialized (``SERIALIZER``: pickle by default) and then, when compression
  is on and the serialized bytes are at least ``COMPRESS_MIN_BYTES`` long, compressed
  (``COMPRESSOR``), keeping the compressed form only when it is smaller.

Reading decides from the bytes alone, whatever the settings are now, in this order:

1. an optional ``-`` followed by ASCII digits, and nothing else: an ``int``;
2. a Zstandard frame (it starts with ``28 B5 2F FD``) or a zlib stream (a valid zlib header)
   that decompresses: the decompressed bytes are deserialized;
3. anything else: deserialized as it is.

This is unambiguous for pickle (its output starts with byte 0x80) and JSON (never a bare
integer here, since ints are not serialized, and never starting with ``(`` or ``x``); see
``larder_client.django.serializers`` for what a custom serializer must avoid.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, TypeVar

import grpc
from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache, default_key_func
from django.core.exceptions import ImproperlyConfigured

from .. import aio
from .._client import Larder
from .._invoke import status_code, status_details
from .._ops import Op, arun, rpc, run
from ._connect import CONNECTION_OPTIONS, async_client, client_kwargs, sync_client
from .compressors import Compressor, decompressed, load_compressor
from .serializers import Serializer, load_serializer

logger = logging.getLogger("larder_client.django")

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

#: The longest TTL the daemon accepts (100 years); longer Django timeouts are capped to it.
MAX_TTL_MS = 100 * 365 * 24 * 3600 * 1000
#: Keys per GetMany/SetMany/DeleteMany call: the daemon's default batch limit.
BATCH_KEYS = 1000
#: Value bytes per SetMany call, below the daemon's message limit (one maximal value + 64 KiB).
BATCH_BYTES = 16 << 20
#: Bytes a value must reach to be compressed, when COMPRESSOR is given without a threshold.
DEFAULT_COMPRESS_MIN_BYTES = 1024

_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
_DECIMAL = re.compile(rb"-?[0-9]+")

_OWN_OPTIONS = frozenset(
    {
        "NAMESPACE",
        "SERIALIZER",
        "COMPRESSOR",
        "COMPRESS_MIN_BYTES",
        "IGNORE_EXCEPTIONS",
    }
)
# What Django's local-memory, file and database backends read; Larder bounds its own size.
_CULL_OPTIONS = frozenset({"MAX_ENTRIES", "CULL_FREQUENCY"})


class LockError(Exception):
    """A lock was not acquired in time, or ``release`` was called on a lock not acquired."""


class LockNotOwnedError(LockError):
    """``release`` (or ``reacquire``) of a lock that is no longer this holder's: it expired,
    and may since have been taken by another worker, whose lock is left alone."""


class _Codec:
    """Values to stored bytes and back: the rule in this module's docstring."""

    def __init__(
        self, serializer: Serializer, compressor: Compressor | None, min_bytes: int
    ) -> None:
        self.serializer = serializer
        self.compressor = compressor
        self.min_bytes = min_bytes

    def encode(self, value: Any) -> bytes:
        if type(value) is int and _I64_MIN <= value <= _I64_MAX:
            return str(value).encode("ascii")
        data = self.serializer.dumps(value)
        if self.compressor is not None and len(data) >= self.min_bytes:
            packed = self.compressor.compress(data)
            if len(packed) < len(data):
                return packed
        return data

    def decode(self, data: bytes) -> Any:
        if _DECIMAL.fullmatch(data):
            return int(data)
        plain = decompressed(data)
        return self.serializer.loads(data if plain is None else plain)


def _fails_open(fallback: Callable[[Mapping[str, Any]], Any]) -> Callable[[F], F]:
    """With ``IGNORE_EXCEPTIONS``, a method whose call to the daemon fails (any gRPC error:
    unreachable, deadline exceeded, refused token, ...) logs a warning and returns
    ``fallback(arguments)`` instead, a miss or a no-op. Errors of the caller's own making
    (a value that cannot be pickled, an invalid key, ``incr`` of a missing key) still raise.
    """

    def decorate(method: F) -> F:
        signature = inspect.signature(method)
        name = method.__name__

        def recover(cache: LarderCache, err: grpc.RpcError, args: Any, kwargs: Any) -> Any:
            code = status_code(err)
            logger.warning(
                "LarderCache.%s failed (%s: %s); IGNORE_EXCEPTIONS is set, so it acts as a miss",
                name,
                code.name if code is not None else type(err).__name__,
                status_details(err),
            )
            bound = signature.bind(cache, *args, **kwargs)
            bound.apply_defaults()
            return fallback(bound.arguments)

        if inspect.iscoroutinefunction(method):

            @functools.wraps(method)
            async def async_wrapper(self: LarderCache, *args: Any, **kwargs: Any) -> Any:
                try:
                    return await method(self, *args, **kwargs)
                except grpc.RpcError as err:
                    if not self._ignore_exceptions:
                        raise
                    return recover(self, err, args, kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(method)
        def wrapper(self: LarderCache, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except grpc.RpcError as err:
                if not self._ignore_exceptions:
                    raise
                return recover(self, err, args, kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def _returns(value: Any) -> Callable[[Mapping[str, Any]], Any]:
    return lambda arguments: value


def _missing_key(arguments: Mapping[str, Any]) -> Any:
    raise ValueError(f"Key '{arguments['key']}' not found (the cache is unreachable)")


_DEFAULT = _returns(None)
_FALSE = _returns(False)
_ZERO = _returns(0)


class LarderCache(BaseCache):
    """A Django cache on a Larder daemon; see the module docstring for settings and encoding.

    OPTIONS (any other key raises ImproperlyConfigured naming it):

    - ``NAMESPACE`` (default ``"default"``): the Larder namespace; ``clear()`` empties it.
    - ``SERIALIZER``: ``"pickle"`` (default), ``"json"``, or a dotted path to a class with
      ``dumps``/``loads`` (see ``larder_client.django.serializers``).
    - ``COMPRESSOR`` (``"zlib"`` or ``"zstd"``) and ``COMPRESS_MIN_BYTES``: compression is on
      when either is given; the compressor defaults to zlib and the threshold to 1024 bytes.
    - ``IGNORE_EXCEPTIONS`` (default False): a call that fails to reach the daemon logs a
      warning on the ``larder_client.django`` logger and acts as a miss or a no-op (see
      ``_fails_open``), as django-redis's option of that name does. Locks never fail open.
    - The connection options of ``larder_client.django._connect``: ``TOKEN``/``TOKEN_FILE``,
      ``TLS``, ``TLS_CA_FILE``, ``TLS_CERT_FILE``, ``TLS_KEY_FILE``, ``ALLOW_INSECURE_TOKEN``,
      ``SOCKET_TIMEOUT`` (seconds: each call's deadline, default 1.0) and ``RETRIES``.

    Timeouts (seconds) become Larder TTLs in milliseconds: ``None`` never expires, 0 or less
    means "do not store" (``set`` deletes any existing value, as Django's backends do), and
    anything over 100 years (the daemon's limit) is capped to 100 years.

    Besides Django's API: ``ttl``, ``expire``, ``persist``, ``delete_pattern`` and ``lock``,
    as in django-redis, and async ``a*`` methods that run on the asyncio client.
    """

    def __init__(self, server: str, params: dict[str, Any]) -> None:
        super().__init__(params)
        options = dict(params.get("OPTIONS") or {})
        setting = f"CACHES (LarderCache at {server!r})"
        for key in options:
            if key in _CULL_OPTIONS:
                raise ImproperlyConfigured(
                    f"{setting}: OPTIONS {key!r} is not a LarderCache option: Larder bounds "
                    "its size on the daemon (its disk and memory limits), not per cache"
                )
            if key not in _OWN_OPTIONS and key not in CONNECTION_OPTIONS:
                known = sorted(_OWN_OPTIONS | CONNECTION_OPTIONS)
                raise ImproperlyConfigured(
                    f"{setting}: unknown OPTIONS key {key!r}; LarderCache knows {known}"
                )
        self._location = server
        self._setting = setting
        self._client_pid = -1  # the process _sync belongs to; -1: none yet
        self._sync: Larder | None = None
        self._connection = {k: v for k, v in options.items() if k in CONNECTION_OPTIONS}
        client_kwargs(server, self._connection, setting)  # refuses bad settings now

        namespace = options.get("NAMESPACE", "default")
        if not isinstance(namespace, str) or not namespace:
            raise ImproperlyConfigured(f"{setting}: NAMESPACE must be a non-empty string")
        self._namespace = namespace
        ignore = options.get("IGNORE_EXCEPTIONS", False)
        if not isinstance(ignore, bool):
            raise ImproperlyConfigured(f"{setting}: IGNORE_EXCEPTIONS must be True or False")
        self._ignore_exceptions = ignore

        compressor = None
        min_bytes = options.get("COMPRESS_MIN_BYTES")
        if "COMPRESSOR" in options or min_bytes is not None:
            compressor = load_compressor(options.get("COMPRESSOR", "zlib"), setting)
            if min_bytes is None:
                min_bytes = DEFAULT_COMPRESS_MIN_BYTES
            if isinstance(min_bytes, bool) or not isinstance(min_bytes, int) or min_bytes < 0:
                raise ImproperlyConfigured(
                    f"{setting}: COMPRESS_MIN_BYTES must be a whole number of bytes, 0 or "
                    f"more, not {min_bytes!r}"
                )
        serializer = load_serializer(options.get("SERIALIZER", "pickle"), setting)
        self._codec = _Codec(serializer, compressor, min_bytes or 0)

    # --- running operations --------------------------------------------------------------

    def _client(self) -> Larder:
        """The process's shared blocking client (made on first use, again after a fork).

        Kept on the backend with the pid it belongs to, so that a call does not rebuild the
        shared-client lookup's key (a few microseconds) every time."""
        pid = os.getpid()
        client = self._sync
        if client is None or self._client_pid != pid:
            client = self._sync = sync_client(self._location, self._connection, self._setting)
            self._client_pid = pid
        return client

    def _aclient(self) -> aio.Larder:
        """The running event loop's shared asyncio client."""
        return async_client(self._location, self._connection, self._setting)

    def _run(self, op: Op[T]) -> T:
        return run(op, self._client().cache, namespace=self._namespace)

    async def _arun(self, op: Op[T]) -> T:
        return await arun(op, self._aclient().cache, namespace=self._namespace)

    def _ttl_ms(self, timeout: Any) -> int | None:
        """The Larder TTL of a Django timeout: 0 never expires (``None``); None means do not
        store (0 or less); else milliseconds, at least 1 and at most ``MAX_TTL_MS``."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        if timeout is None:
            return 0
        if timeout <= 0:
            return None
        return max(1, round(min(timeout * 1000, MAX_TTL_MS)))

    def _key(self, key: str, version: int | None) -> str:
        return self.make_and_validate_key(key, version=version)

    # --- the operations ------------------------------------------------------------------

    def _add(self, key: str, value: Any, timeout: Any, version: int | None) -> Op[bool]:
        k = self._key(key, version)
        data = self._codec.encode(value)  # first: an unpicklable value raises, as Django's
        ttl_ms = self._ttl_ms(timeout)
        if ttl_ms is None:
            # Stored and expired at once: it would have been stored if the key was absent.
            # Nothing is written, so no other reader can see the value meanwhile.
            return (yield rpc("get", k)) is None
        return (yield rpc("set", k, data, ttl_ms, if_absent=True))

    def _get(self, key: str, default: Any, version: int | None) -> Op[Any]:
        data = yield rpc("get", self._key(key, version))
        return default if data is None else self._codec.decode(data)

    def _set(self, key: str, value: Any, timeout: Any, version: int | None) -> Op[None]:
        k = self._key(key, version)
        data = self._codec.encode(value)
        ttl_ms = self._ttl_ms(timeout)
        if ttl_ms is None:
            yield rpc("delete", k)
        else:
            yield rpc("set", k, data, ttl_ms)

    def _touch(self, key: str, timeout: Any, version: int | None) -> Op[bool]:
        k = self._key(key, version)
        ttl_ms = self._ttl_ms(timeout)
        if ttl_ms is None:  # expires now: whether it existed, as Django's backends answer
            return (yield rpc("delete", k))
        return (yield rpc("touch", k, ttl_ms))

    def _delete(self, key: str, version: int | None) -> Op[bool]:
        return (yield rpc("delete", self._key(key, version)))

    def _get_many(self, keys: Iterable[str], version: int | None) -> Op[dict[str, Any]]:
        made = {self._key(key, version): key for key in keys}
        found: dict[str, Any] = {}
        pending = [list(made)[i : i + BATCH_KEYS] for i in range(0, len(made), BATCH_KEYS)]
        while pending:
            batch = pending.pop()
            try:
                answers = yield rpc("get_many", batch)
            except ValueError:
                # INVALID_ARGUMENT: the values found add up to more than one response may
                # carry (one maximal value), or one key is invalid. Halves until it fits; a
                # single key's error is the real one and is raised.
                if len(batch) == 1:
                    raise
                pending += [batch[: len(batch) // 2], batch[len(batch) // 2 :]]
                continue
            for k, data in answers.items():
                if data is not None:
                    found[made[k]] = self._codec.decode(data)
        return found

    def _has_key(self, key: str, version: int | None) -> Op[bool]:
        return (yield rpc("get", self._key(key, version))) is not None

    def _incr(self, key: str, delta: int, version: int | None) -> Op[int]:
        k = self._key(key, version)
        if not _I64_MIN <= delta <= _I64_MAX:
            raise OverflowError(f"incr of key '{key}' by {delta}: outside the signed 64-bit range")
        # One atomic Increment that leaves a missing key missing (if_present), so Django's
        # ValueError for a missing key needs no read first and has no race.
        try:
            value = yield rpc("increment_if_present", k, delta)
        except grpc.RpcError as err:
            if status_code(err) == grpc.StatusCode.FAILED_PRECONDITION:
                # Not an integer (as None + 1 is a TypeError), or past the signed 64-bit range.
                raise TypeError(status_details(err)) from err
            raise
        if value is None:
            raise ValueError(f"Key '{key}' not found")
        return value

    def _set_many(self, data: Mapping[str, Any], timeout: Any, version: int | None) -> Op[list]:
        entries = {self._key(key, version): self._codec.encode(v) for key, v in data.items()}
        ttl_ms = self._ttl_ms(timeout)
        keys = list(entries)
        if ttl_ms is None:
            for i in range(0, len(keys), BATCH_KEYS):
                yield rpc("delete_many", keys[i : i + BATCH_KEYS])
            return []
        batch: dict[str, bytes] = {}
        size = 0
        for k in keys:
            if batch and (len(batch) == BATCH_KEYS or size + len(entries[k]) > BATCH_BYTES):
                yield rpc("set_many", batch, ttl_ms)
                batch, size = {}, 0
            batch[k] = entries[k]
            size += len(entries[k])
        if batch:
            yield rpc("set_many", batch, ttl_ms)
        return []

    def _delete_many(self, keys: Iterable[str], version: int | None) -> Op[None]:
        made = [self._key(key, version) for key in keys]
        for i in range(0, len(made), BATCH_KEYS):
            yield rpc("delete_many", made[i : i + BATCH_KEYS])

    def _clear(self) -> Op[None]:
        yield rpc("clear")

    def _ttl(self, key: str, version: int | None) -> Op[int | None]:
        entry = yield rpc("get_entry", self._key(key, version))
        if entry is None:
            return 0
        if entry.ttl_ms == 0:
            return None
        return -(-entry.ttl_ms // 1000)

    def _persist(self, key: str, version: int | None) -> Op[bool]:
        return (yield rpc("touch", self._key(key, version), 0))

    def _delete_pattern(self, pattern: str, version: int | None) -> Op[int]:
        prefix = self._pattern_prefix(pattern)
        if prefix is None:  # no wildcard: the one key it names, as a glob would match
            return int((yield rpc("delete", self._key(pattern, version))))
        return (yield rpc("delete_prefix", self.make_key(prefix, version=version)))

    def _pattern_prefix(self, pattern: str) -> str | None:
        """The key prefix a ``prefix*`` pattern stands for (None: no ``*``, an exact key)."""
        wildcard = pattern.endswith("*")
        stem = pattern[:-1] if wildcard else pattern
        for char in ("*", "?", "[", "]", "\\"):
            if char in stem:
                raise ValueError(
                    f"delete_pattern({pattern!r}): Larder deletes by key prefix (an indexed "
                    f"range delete, not a scan of every key), so a pattern may only end in "
                    f"one '*'; {char!r} is not supported"
                )
        if not wildcard:
            return None
        if self.key_func is not default_key_func:
            raise ValueError(
                f"delete_pattern({pattern!r}) needs Django's default KEY_FUNCTION "
                "('prefix:version:key'), which keeps a key's prefix at the front of the made "
                "key; this cache has a custom KEY_FUNCTION"
            )
        return stem

    # --- Django's cache API --------------------------------------------------------------

    @_fails_open(_FALSE)
    def add(
        self, key: str, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        """Stores ``value`` only if ``key`` is absent (Set IF_ABSENT); whether it did."""
        return self._run(self._add(key, value, timeout, version))

    @_fails_open(lambda a: a["default"])
    def get(self, key: str, default: Any = None, version: int | None = None) -> Any:
        return self._run(self._get(key, default, version))

    @_fails_open(_DEFAULT)
    def set(
        self, key: str, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> None:
        self._run(self._set(key, value, timeout, version))

    @_fails_open(_FALSE)
    def touch(self, key: str, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        return self._run(self._touch(key, timeout, version))

    @_fails_open(_FALSE)
    def delete(self, key: str, version: int | None = None) -> bool:
        return self._run(self._delete(key, version))

    @_fails_open(_returns({}))
    def get_many(self, keys: Iterable[str], version: int | None = None) -> dict[str, Any]:
        """The values found, in as few GetMany round trips as the batch limits allow."""
        return self._run(self._get_many(keys, version))

    @_fails_open(_FALSE)
    def has_key(self, key: str, version: int | None = None) -> bool:
        return self._run(self._has_key(key, version))

    @_fails_open(_missing_key)
    def incr(self, key: str, delta: int = 1, version: int | None = None) -> int:
        """Atomically adds ``delta`` (Larder's Increment); ValueError if ``key`` is missing,
        TypeError if its value is not an int (see ``_incr`` for the one race window)."""
        return self._run(self._incr(key, delta, version))

    @_fails_open(lambda a: list(a["data"]))
    def set_many(
        self, data: Mapping[str, Any], timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> list:
        """Stores ``data`` with SetMany (one round trip per 1000 keys or 16 MiB of values);
        returns [] (with IGNORE_EXCEPTIONS, the keys not stored when the call failed)."""
        return self._run(self._set_many(data, timeout, version))

    @_fails_open(_DEFAULT)
    def delete_many(self, keys: Iterable[str], version: int | None = None) -> None:
        self._run(self._delete_many(keys, version))

    @_fails_open(_DEFAULT)
    def clear(self) -> None:
        """Empties this cache's NAMESPACE (every KEY_PREFIX and VERSION in it), like Redis's
        FLUSHDB for django-redis."""
        self._run(self._clear())

    def close(self, **kwargs: Any) -> None:
        """Nothing to do: the client is shared by the process and lives as long as it."""

    # --- async, on the asyncio client ----------------------------------------------------

    @_fails_open(_FALSE)
    async def aadd(
        self, key: str, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        return await self._arun(self._add(key, value, timeout, version))

    @_fails_open(lambda a: a["default"])
    async def aget(self, key: str, default: Any = None, version: int | None = None) -> Any:
        return await self._arun(self._get(key, default, version))

    @_fails_open(_DEFAULT)
    async def aset(
        self, key: str, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> None:
        await self._arun(self._set(key, value, timeout, version))

    @_fails_open(_FALSE)
    async def atouch(
        self, key: str, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        return await self._arun(self._touch(key, timeout, version))

    @_fails_open(_FALSE)
    async def adelete(self, key: str, version: int | None = None) -> bool:
        return await self._arun(self._delete(key, version))

    @_fails_open(_returns({}))
    async def aget_many(self, keys: Iterable[str], version: int | None = None) -> dict[str, Any]:
        return await self._arun(self._get_many(keys, version))

    @_fails_open(_FALSE)
    async def ahas_key(self, key: str, version: int | None = None) -> bool:
        return await self._arun(self._has_key(key, version))

    @_fails_open(_missing_key)
    async def aincr(self, key: str, delta: int = 1, version: int | None = None) -> int:
        return await self._arun(self._incr(key, delta, version))

    @_fails_open(lambda a: list(a["data"]))
    async def aset_many(
        self, data: Mapping[str, Any], timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> list:
        return await self._arun(self._set_many(data, timeout, version))

    @_fails_open(_DEFAULT)
    async def adelete_many(self, keys: Iterable[str], version: int | None = None) -> None:
        await self._arun(self._delete_many(keys, version))

    @_fails_open(_DEFAULT)
    async def aclear(self) -> None:
        await self._arun(self._clear())

    async def aclose(self, **kwargs: Any) -> None:
        """Nothing to do, as ``close``."""

    # --- django-redis's extras -----------------------------------------------------------

    @_fails_open(_ZERO)
    def ttl(self, key: str, version: int | None = None) -> int | None:
        """Seconds until ``key`` expires, rounded up; None when it never expires; 0 when it
        does not exist (django-redis's documented answers)."""
        return self._run(self._ttl(key, version))

    @_fails_open(_FALSE)
    def expire(self, key: str, timeout: Any, version: int | None = None) -> bool:
        """Gives ``key`` a new timeout (as ``touch``: None never expires, 0 or less deletes it);
        whether it exists."""
        return self._run(self._touch(key, timeout, version))

    @_fails_open(_FALSE)
    def persist(self, key: str, version: int | None = None) -> bool:
        """Removes ``key``'s expiry; whether it exists."""
        return self._run(self._persist(key, version))

    @_fails_open(_ZERO)
    def delete_pattern(self, pattern: str, version: int | None = None) -> int:
        """Deletes the keys matching ``pattern``, a user key ending in ``*`` (``"user:42:*"``),
        with one DeletePrefix of the made key of the part before the ``*`` (so KEY_PREFIX and
        VERSION apply). Any other glob (``?``, ``[``, a ``*`` not at the end) raises
        ValueError: Larder deletes an indexed key range, it does not scan keys. A pattern
        without ``*`` deletes that one key. Needs the default KEY_FUNCTION. Returns how many
        live keys were deleted."""
        return self._run(self._delete_pattern(pattern, version))

    @_fails_open(_ZERO)
    async def attl(self, key: str, version: int | None = None) -> int | None:
        return await self._arun(self._ttl(key, version))

    @_fails_open(_FALSE)
    async def aexpire(self, key: str, timeout: Any, version: int | None = None) -> bool:
        return await self._arun(self._touch(key, timeout, version))

    @_fails_open(_FALSE)
    async def apersist(self, key: str, version: int | None = None) -> bool:
        return await self._arun(self._persist(key, version))

    @_fails_open(_ZERO)
    async def adelete_pattern(self, pattern: str, version: int | None = None) -> int:
        return await self._arun(self._delete_pattern(pattern, version))

    def lock(
        self,
        key: str,
        version: int | None = None,
        timeout: float | None = None,
        sleep: float = 0.1,
        blocking: bool = True,
        blocking_timeout: float | None = None,
    ) -> LarderLock:
        """A lock named ``key`` (made like a cache key), as django-redis's ``lock``.

        ``timeout`` (seconds; None = held until released) bounds how long it is held;
        ``blocking``/``blocking_timeout`` and ``sleep`` govern ``acquire``. Use it as
        ``with cache.lock("report", timeout=30): ...`` or call ``acquire()``/``release()``.
        """
        return LarderLock(self, self._key(key, version), timeout, sleep, blocking, blocking_timeout)


class LarderLock:
    """A lock on one Larder key: acquired with Set IF_ABSENT, released only if still ours.

    Acquiring stores a fresh token with Set IF_ABSENT (and the lock's TTL), which answers the
    entry's new version; versions are unique across the daemon and never reused. Releasing is
    a Delete that names that version (a compare-and-delete): if the lock expired and another
    worker took it, the version differs, nothing is deleted and ``LockNotOwnedError`` is
    raised, so a stale holder never releases another's lock.

    Not for sharing between threads: each holder makes its own ``cache.lock(...)``. Locks
    ignore IGNORE_EXCEPTIONS: a daemon that cannot be reached raises ``grpc.RpcError``.
    """

    def __init__(
        self,
        cache: LarderCache,
        key: str,
        timeout: float | None,
        sleep: float,
        blocking: bool,
        blocking_timeout: float | None,
    ) -> None:
        if timeout is not None and timeout <= 0:
            raise ValueError("a lock's timeout must be positive seconds, or None (no expiry)")
        self._cache = cache
        self.key = key
        self.timeout = timeout
        self.sleep = sleep
        self.blocking = blocking
        self.blocking_timeout = blocking_timeout
        self._ttl_ms = 0 if timeout is None else max(1, math.ceil(min(timeout * 1000, MAX_TTL_MS)))
        self._token = ""
        self.version: int | None = None

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        cache = self._cache._client().cache
        return getattr(cache, method)(*args, namespace=self._cache._namespace, **kwargs)

    def acquire(self, blocking: bool | None = None, blocking_timeout: float | None = None) -> bool:
        """Takes the lock; waits (``sleep`` between tries) unless not ``blocking``, at most
        ``blocking_timeout`` seconds if given. Whether it was acquired."""
        blocking = self.blocking if blocking is None else blocking
        if blocking_timeout is None:
            blocking_timeout = self.blocking_timeout
        give_up = None if blocking_timeout is None else time.monotonic() + blocking_timeout
        token = f"{os.getpid()}:{uuid.uuid4().hex}"
        data = self._cache._codec.encode(token)
        while True:
            version = self._try_acquire(data)
            if version is not None:
                self._token, self.version = token, version
                return True
            if not blocking or (give_up is not None and time.monotonic() >= give_up):
                return False
            time.sleep(self.sleep)

    def _try_acquire(self, data: bytes) -> int | None:
        """One attempt: the new version if this holder now has the lock, else None."""
        return self._call("set_version", self.key, data, self._ttl_ms, True)

    def release(self) -> None:
        """Releases the lock if it is still this holder's; else ``LockNotOwnedError``."""
        version, self.version = self.version, None
        if version is None:
            raise LockError(f"cannot release lock {self.key!r}: it is not acquired")
        if not self._call("delete", self.key, version=version):
            raise LockNotOwnedError(
                f"lock {self.key!r} is no longer held by this holder (it expired, and may "
                "have been taken by another); it was left as it is"
            )

    def reacquire(self) -> None:
        """Restarts the lock's timeout while it is still this holder's, else
        ``LockNotOwnedError``."""
        if self.version is None:
            raise LockError(f"cannot reacquire lock {self.key!r}: it is not acquired")
        data = self._cache._codec.encode(self._token)
        version = self._call("compare_and_set", self.key, data, self.version, self._ttl_ms)
        if version is None:
            self.version = None
            raise LockNotOwnedError(f"lock {self.key!r} is no longer held by this holder")
        self.version = version

    def owned(self) -> bool:
        """Whether the lock is held, by this holder."""
        entry = self._call("get_entry", self.key)
        return entry is not None and self.version is not None and entry.version == self.version

    def locked(self) -> bool:
        """Whether the lock is held, by anyone."""
        entry = self._call("get_entry", self.key)
        return entry is not None

    def __enter__(self) -> LarderLock:  # noqa: PYI034  (typing.Self needs Python 3.11)
        if not self.acquire():
            raise LockError(f"could not acquire lock {self.key!r} in {self.blocking_timeout} s")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
