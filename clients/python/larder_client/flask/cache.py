"""Flask-Caching backend on Larder: ``larder_client.flask.LarderCache``.

    CACHE_TYPE = "larder_client.flask.LarderCache"
    CACHE_LARDER_TARGET = "unix:/run/larder/larder.sock"  # or "127.0.0.1:7379" (the default)
    CACHE_KEY_PREFIX = "shop:"  # Flask-Caching's default is "flask_cache_"
    CACHE_DEFAULT_TIMEOUT = 300  # seconds; 0 = never expires
    CACHE_LARDER_NAMESPACE = "shop"  # default "default"
    CACHE_LARDER_TOKEN_FILE = "/etc/larder/token"

It is cachelib's ``BaseCache`` API (``get``, ``set``, ``add``, ``delete``, ``get_many``,
``get_dict``, ``set_many``, ``delete_many``, ``has``, ``clear``, ``inc``, ``dec``) with the
semantics of cachelib's ``RedisCache`` where they are documented; the differences are listed
on ``LarderCache``.

How a value is stored, and so read back
---------------------------------------
Writing (as cachelib's ``RedisSerializer``, less its ``!`` marker):

- an ``int`` (exactly ``int``: ``bool`` and other subclasses are not) from -2**63 to 2**63-1 is
  stored as its ASCII decimal digits (``42`` is ``b"42"``), so that ``inc``/``dec`` are
  Larder's atomic Increment and every other client reads "42";
- anything else is pickled (``pickle.HIGHEST_PROTOCOL``), or given to ``CACHE_SERIALIZER``
  (a cachelib serializer: Flask-Caching sets it as the backend's ``serializer``) when set.

Reading decides from the bytes:

1. an optional ``-`` followed by ASCII digits, and nothing else: an ``int``;
2. with a ``serializer``: whatever its ``loads`` makes of the bytes (so a serializer must
   never write bare ASCII digits for a value that is not an int: JSON and pickle do not);
3. else bytes starting with 0x80 (every pickle of protocol 2 or later does) are unpickled,
   and any other bytes (a value another client stored, such as ``b'{"name": "Ada"}'``) are
   returned as they are, as cachelib's ``RedisCache`` returns a value it did not write.

The default encoding is the Django backend's without compression, so a Flask and a Django
application reading the same Larder keys understand each other's values.
"""

from __future__ import annotations

import datetime as dt
import functools
import inspect
import logging
import os
import pickle
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import grpc
from flask_caching.backends.base import BaseCache

from .._channel import is_local
from .._client import Larder
from .._invoke import status_code, status_details
from .._options import CONNECTION_OPTIONS, ConfigError, client_kwargs, sync_client

logger = logging.getLogger("larder_client.flask")

F = TypeVar("F", bound=Callable[..., Any])

#: The Flask config keys of the connection options: ``CACHE_LARDER_`` + the option's name.
CONFIG_PREFIX = "CACHE_LARDER_"
#: The longest TTL the daemon accepts (100 years); longer timeouts are capped to it.
MAX_TTL_MS = 100 * 365 * 24 * 3600 * 1000
#: Keys per GetMany/SetMany/DeleteMany call: the daemon's default batch limit.
BATCH_KEYS = 1000
#: Value bytes per SetMany call, below the daemon's message limit (one maximal value + 64 KiB).
BATCH_BYTES = 16 << 20
DEFAULT_TARGET = "127.0.0.1:7379"

_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
_DECIMAL = re.compile(rb"-?[0-9]+")
_PICKLE_START = 0x80
_OPTION_NAME = re.compile(r"\b(" + "|".join(sorted(CONNECTION_OPTIONS | {"LOCATION"})) + r")\b")

# The Flask config keys this backend reads besides CACHE_LARDER_<connection option>.
_OWN_CONFIG = {"TARGET", "NAMESPACE", "IGNORE_EXCEPTIONS"}


def _check_connection(
    target: Any, options: Mapping[str, Any], where: str, name: Callable[[str], str]
) -> None:
    """Refuses bad connection settings now rather than at the first call: ConfigError from
    ``client_kwargs``, with every option called ``name(option)`` (``name("LOCATION")`` for
    the target), and a token that would go in cleartext to another machine."""
    try:
        kwargs = client_kwargs(target, options, where)
    except ConfigError as err:
        message = _OPTION_NAME.sub(lambda m: name(m.group(1)), str(err))
        raise ConfigError(message) from None
    if kwargs["tls"] and target.startswith("unix:"):
        raise ConfigError(f"{where}: {name('TLS')} is not supported over a Unix socket")
    insecure = kwargs["token"] and not kwargs["tls"] and not kwargs["allow_insecure_token"]
    if insecure and not is_local(target):
        raise ConfigError(
            f"{where}: refusing to send the token in cleartext to {target!r}, which is not "
            f"a loopback address or a Unix socket: set {name('TLS')} (the daemon's [tls] "
            f"section), or {name('ALLOW_INSECURE_TOKEN')} if the network to it is trusted"
        )


def _config_key(option: str) -> str:
    """The Flask config key of a connection option (``LOCATION``: the target)."""
    return CONFIG_PREFIX + ("TARGET" if option == "LOCATION" else option)


def _argument(option: str) -> str:
    """The constructor argument of a connection option (``LOCATION``: the target)."""
    return "target" if option == "LOCATION" else f"options[{option!r}]"


def _fails_open(fallback: Callable[[Mapping[str, Any]], Any]) -> Callable[[F], F]:
    """With ``ignore_exceptions``, a method whose call to the daemon fails (any gRPC error:
    unreachable, deadline exceeded, refused token, ...) logs a warning and returns
    ``fallback(arguments)``: the answer cachelib documents for a backend error (``None`` from
    ``get`` and ``inc``, ``False`` from ``set``, ...). Errors of the caller's own making (a
    value pickle refuses, a key over the daemon's limits) still raise."""

    def decorate(method: F) -> F:
        signature = inspect.signature(method)
        name = method.__name__

        @functools.wraps(method)
        def wrapper(self: LarderCache, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except grpc.RpcError as err:
                if not self.ignore_exceptions:
                    raise
                code = status_code(err)
                logger.warning(
                    "LarderCache.%s failed (%s: %s); ignore_exceptions is set, so it acts as "
                    "a miss",
                    name,
                    code.name if code is not None else type(err).__name__,
                    status_details(err),
                )
                bound = signature.bind(self, *args, **kwargs)
                bound.apply_defaults()
                return fallback(bound.arguments)

        return wrapper  # type: ignore[return-value]

    return decorate


def _returns(value: Any) -> Callable[[Mapping[str, Any]], Any]:
    return lambda arguments: value


class LarderCache(BaseCache):
    """A Flask-Caching (and cachelib) cache on a Larder daemon.

    Made by Flask-Caching from ``CACHE_TYPE = "larder_client.flask.LarderCache"`` and these
    config keys (see ``factory``), or directly:

    - ``target`` (``CACHE_LARDER_TARGET``): ``host:port`` or ``unix:/path``, default
      ``127.0.0.1:7379``.
    - ``key_prefix`` (``CACHE_KEY_PREFIX``): a string, or a callable returning one, put before
      every key, as cachelib's ``RedisCache``.
    - ``default_timeout`` (``CACHE_DEFAULT_TIMEOUT``): seconds or a ``timedelta``, the timeout
      of a write that gives none (cachelib's ``None``); 0 never expires.
    - ``namespace`` (``CACHE_LARDER_NAMESPACE``): the Larder namespace, default
      ``"default"``; like a Redis database number it separates applications.
    - ``ignore_exceptions`` (``CACHE_LARDER_IGNORE_EXCEPTIONS``, default False): a call that
      fails to reach the daemon logs a warning on the ``larder_client.flask`` logger and
      returns cachelib's answer for a backend error instead of raising ``grpc.RpcError``.
    - ``options`` (``CACHE_LARDER_TOKEN``, ``CACHE_LARDER_TOKEN_FILE``, ``CACHE_LARDER_TLS``,
      ``CACHE_LARDER_TLS_CA_FILE``, ``CACHE_LARDER_TLS_CERT_FILE``,
      ``CACHE_LARDER_TLS_KEY_FILE``, ``CACHE_LARDER_ALLOW_INSECURE_TOKEN``,
      ``CACHE_LARDER_SOCKET_TIMEOUT``, ``CACHE_LARDER_RETRIES``): the connection options of
      ``larder_client._options``, by their names there (``{"TOKEN_FILE": ...}``).
    - ``ignore_delete_many_errors`` (Flask-Caching's ``CACHE_IGNORE_ERRORS``): accepted as
      cachelib's; Larder's DeleteMany removes every key or fails as a whole, so no key is
      ever left behind by a ``delete_many`` that returned.

    Timeouts become TTLs in milliseconds: 0 never expires, a negative one stores nothing
    (``set`` deletes the key and answers True, as if it had expired at once), and more than
    100 years (the daemon's limit) is capped to 100 years. One client is shared per process
    and configuration (a forked worker makes its own).
    """

    serializer: Any = None

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        namespace: str = "default",
        key_prefix: str | Callable[[], str] | None = None,
        default_timeout: int | dt.timedelta = 300,
        ignore_exceptions: bool = False,
        ignore_delete_many_errors: bool = False,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            default_timeout=default_timeout, ignore_delete_many_errors=ignore_delete_many_errors
        )
        setting = f"LarderCache at {target!r}"
        self._connection = dict(options or {})
        _check_connection(target, self._connection, setting, _argument)
        if not isinstance(namespace, str) or not namespace:
            raise ConfigError(f"{setting}: namespace must be a non-empty string")
        if not (key_prefix is None or isinstance(key_prefix, str) or callable(key_prefix)):
            raise ConfigError(f"{setting}: key_prefix must be a string or a callable")
        if not isinstance(ignore_exceptions, bool):
            raise ConfigError(f"{setting}: ignore_exceptions must be True or False")
        self._target = target
        self._setting = setting
        self.namespace = namespace
        self.key_prefix = key_prefix or ""
        self.ignore_exceptions = ignore_exceptions
        self._client_pid = -1  # the process self._sync belongs to; -1: none yet
        self._sync: Larder | None = None

    @classmethod
    def factory(
        cls, app: Any, config: dict[str, Any], args: list[Any], kwargs: dict[str, Any]
    ) -> LarderCache:
        """Flask-Caching's backend factory: ``kwargs`` holds ``default_timeout`` and
        ``ignore_delete_many_errors`` (from ``CACHE_DEFAULT_TIMEOUT`` and
        ``CACHE_IGNORE_ERRORS``) and the ``CACHE_OPTIONS`` given; ``config`` the app's keys.

        Raises ConfigError naming the config key: an unknown ``CACHE_LARDER_*`` key, a bad
        value, ``CACHE_ARGS``, or a ``CACHE_OPTIONS`` key that is not a keyword argument.
        """
        where = "Flask-Caching LarderCache"
        if args:
            raise ConfigError(
                f"{where}: CACHE_ARGS must be empty; give the address in "
                f"{CONFIG_PREFIX}TARGET ('host:port' or 'unix:/path')"
            )
        # target and options come from the CACHE_LARDER_* keys
        parameters = set(inspect.signature(cls.__init__).parameters) - {
            "self",
            "target",
            "options",
        }
        unknown = sorted(set(kwargs) - parameters)
        if unknown:
            raise ConfigError(
                f"{where}: CACHE_OPTIONS key(s) {unknown} are not LarderCache arguments; it "
                f"takes {sorted(parameters)} (connection options go in {CONFIG_PREFIX}*)"
            )
        known = _OWN_CONFIG | CONNECTION_OPTIONS
        options: dict[str, Any] = {}
        own: dict[str, Any] = {}
        for key, value in config.items():
            if not key.startswith(CONFIG_PREFIX):
                continue
            name = key[len(CONFIG_PREFIX) :]
            if name not in known:
                keys = sorted(CONFIG_PREFIX + k for k in known)
                raise ConfigError(f"{where}: unknown config key {key!r}; LarderCache reads {keys}")
            (own if name in _OWN_CONFIG else options)[name] = value
        target = own.get("TARGET", DEFAULT_TARGET)
        _check_connection(target, options, where, _config_key)
        made = dict(kwargs)
        if config.get("CACHE_KEY_PREFIX"):
            made["key_prefix"] = config["CACHE_KEY_PREFIX"]
        if "NAMESPACE" in own:
            namespace = own["NAMESPACE"]
            if not isinstance(namespace, str) or not namespace:
                raise ConfigError(f"{where}: {CONFIG_PREFIX}NAMESPACE must be a non-empty string")
            made["namespace"] = namespace
        if "IGNORE_EXCEPTIONS" in own:
            ignore = own["IGNORE_EXCEPTIONS"]
            if not isinstance(ignore, bool):
                raise ConfigError(
                    f"{where}: {CONFIG_PREFIX}IGNORE_EXCEPTIONS must be True or False"
                )
            made["ignore_exceptions"] = ignore
        return cls(target, options=options, **made)

    # --- plumbing ------------------------------------------------------------------------

    def _client(self) -> Larder:
        """The process's shared blocking client (made on first use, again after a fork)."""
        pid = os.getpid()
        client = self._sync
        if client is None or self._client_pid != pid:
            client = self._sync = sync_client(self._target, self._connection, self._setting)
            self._client_pid = pid
        return client

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        cache = self._client().cache
        return getattr(cache, method)(*args, namespace=self.namespace, **kwargs)

    def _get_prefix(self) -> str:
        prefix = self.key_prefix
        return prefix if isinstance(prefix, str) else prefix()

    def _key(self, key: str) -> str:
        return f"{self._get_prefix()}{key}"

    def _ttl_ms(self, timeout: int | dt.timedelta | None) -> int | None:
        """The TTL of a cachelib timeout: 0 never expires (0); negative stores nothing (None);
        else milliseconds, at most ``MAX_TTL_MS``."""
        seconds = self._normalize_timeout(timeout)
        if seconds < 0:
            return None
        return min(seconds * 1000, MAX_TTL_MS)

    def _encode(self, value: Any) -> bytes | None:
        """The stored bytes of ``value`` (None: a ``serializer`` refused it and warned)."""
        if type(value) is int and _I64_MIN <= value <= _I64_MAX:
            return str(value).encode("ascii")
        if self.serializer is not None:
            return self.serializer.dumps(value)
        return pickle.dumps(value, pickle.HIGHEST_PROTOCOL)

    def _decode(self, data: bytes | None) -> Any:
        if data is None:
            return None
        if _DECIMAL.fullmatch(data):
            return int(data)
        if self.serializer is not None:
            return self.serializer.loads(data)
        if data[:1] == bytes([_PICKLE_START]):
            return pickle.loads(data)
        return data

    # --- cachelib's API ------------------------------------------------------------------

    @_fails_open(_returns(None))
    def get(self, key: str) -> Any:
        """The value of ``key``, or None when it is absent."""
        return self._decode(self._call("get", self._key(key)))

    @_fails_open(lambda a: [None] * len(a["keys"]))
    def get_many(self, *keys: str) -> list[Any]:
        """The values of ``keys`` in order (None for each absent one), in one GetMany per
        1000 keys."""
        made = [self._key(key) for key in keys]
        found: dict[str, bytes | None] = {}
        pending = [made[i : i + BATCH_KEYS] for i in range(0, len(made), BATCH_KEYS)]
        while pending:
            batch = pending.pop()
            try:
                found.update(self._call("get_many", batch))
            except ValueError:
                # INVALID_ARGUMENT: the values found add up to more than one response may
                # carry (one maximal value), or one key is invalid. Halves until it fits; a
                # single key's error is the real one and is raised.
                if len(batch) == 1:
                    raise
                pending += [batch[: len(batch) // 2], batch[len(batch) // 2 :]]
        return [self._decode(found.get(k)) for k in made]

    @_fails_open(_returns(False))
    def set(self, key: str, value: Any, timeout: int | dt.timedelta | None = None) -> bool:
        """Stores ``value``; True, or False when a ``serializer`` refused the value (pickle's
        own errors raise, as cachelib documents)."""
        k = self._key(key)
        data = self._encode(value)
        if data is None:
            return False
        ttl_ms = self._ttl_ms(timeout)
        if ttl_ms is None:
            self._call("delete", k)
        else:
            self._call("set", k, data, ttl_ms)
        return True

    @_fails_open(_returns(False))
    def add(self, key: str, value: Any, timeout: int | dt.timedelta | None = None) -> bool:
        """Stores ``value`` only if ``key`` is absent (Set IF_ABSENT, with the TTL in the same
        write); whether it did."""
        k = self._key(key)
        data = self._encode(value)
        if data is None:
            return False
        ttl_ms = self._ttl_ms(timeout)
        if ttl_ms is None:
            # Stored and expired at once: it would have been stored if the key was absent.
            return self._call("get", k) is None
        return bool(self._call("set", k, data, ttl_ms, if_absent=True))

    @_fails_open(lambda a: [])
    def set_many(
        self, mapping: Mapping[str, Any], timeout: int | dt.timedelta | None = None
    ) -> list[Any]:
        """Stores ``mapping`` with SetMany (each call one transaction, of up to 1000 keys or
        16 MiB of values); returns the keys stored: all of them, or raises."""
        entries: dict[str, bytes] = {}
        keys = {}
        for key, value in mapping.items():
            data = self._encode(value)
            if data is not None:
                entries[self._key(key)] = data
                keys[self._key(key)] = key
        ttl_ms = self._ttl_ms(timeout)
        made = list(entries)
        if ttl_ms is None:
            for i in range(0, len(made), BATCH_KEYS):
                self._call("delete_many", made[i : i + BATCH_KEYS])
            return [keys[k] for k in made]
        batch: dict[str, bytes] = {}
        size = 0
        for k in made:
            if batch and (len(batch) == BATCH_KEYS or size + len(entries[k]) > BATCH_BYTES):
                self._call("set_many", batch, ttl_ms)
                batch, size = {}, 0
            batch[k] = entries[k]
            size += len(entries[k])
        if batch:
            self._call("set_many", batch, ttl_ms)
        return [keys[k] for k in made]

    @_fails_open(_returns(False))
    def delete(self, key: str) -> bool:
        """Removes ``key``; whether it existed."""
        return bool(self._call("delete", self._key(key)))

    @_fails_open(lambda a: [])
    def delete_many(self, *keys: str) -> list[Any]:
        """Removes ``keys`` (one DeleteMany per 1000 keys); returns them all, since none is
        left afterwards (cachelib counts an absent key as deleted)."""
        made = [self._key(key) for key in keys]
        for i in range(0, len(made), BATCH_KEYS):
            self._call("delete_many", made[i : i + BATCH_KEYS])
        return list(keys)

    @_fails_open(_returns(False))
    def has(self, key: str) -> bool:
        """Whether ``key`` holds a live value."""
        return self._call("get", self._key(key)) is not None

    @_fails_open(_returns(False))
    def clear(self) -> bool:
        """With a key prefix, removes every key that starts with it (one DeletePrefix, as
        cachelib's ``RedisCache`` deletes ``prefix*``); without, empties the namespace (as
        ``FLUSHDB``). True once done."""
        prefix = self._get_prefix()
        if prefix:
            self._call("delete_prefix", prefix)
        else:
            self._call("clear")
        return True

    @_fails_open(_returns(None))
    def inc(self, key: str, delta: int = 1) -> int | None:
        """Atomically adds ``delta`` (Larder's Increment) and returns the new value; a missing
        key is created at ``delta`` with the default timeout (an existing one keeps its TTL).
        TypeError if the value is not an integer or the result leaves the signed 64-bit
        range; OverflowError for a ``delta`` outside it."""
        k = self._key(key)
        if type(delta) is not int:
            raise TypeError(f"inc/dec of key {key!r}: delta must be an int, not {delta!r}")
        if not _I64_MIN <= delta <= _I64_MAX:
            raise OverflowError(f"inc/dec of key {key!r} by {delta}: outside the 64-bit range")
        ttl_ms = self._ttl_ms(None)
        try:
            return self._call("increment", k, delta, ttl_ms or 0)
        except grpc.RpcError as err:
            if status_code(err) == grpc.StatusCode.FAILED_PRECONDITION:
                # Not an integer, or past the signed 64-bit range (Redis: a ResponseError).
                raise TypeError(f"inc/dec of key {key!r}: {status_details(err)}") from err
            raise

    def dec(self, key: str, delta: int = 1) -> int | None:
        """``inc(key, -delta)``: atomic, and a missing key is created at ``-delta``."""
        if type(delta) is not int:
            raise TypeError(f"dec of key {key!r}: delta must be an int, not {delta!r}")
        return self.inc(key, -delta)

    # ``get_dict`` is cachelib's: ``get_many`` zipped with the keys.

    def __repr__(self) -> str:
        return f"<LarderCache {self._target!r} namespace={self.namespace!r}>"

    def close(self) -> None:
        """Nothing to do: the client is shared by the process and lives as long as it."""
