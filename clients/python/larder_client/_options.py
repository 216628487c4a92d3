"""Connection settings as frameworks write them, and one shared client per configuration.

The framework adapters (Django, Flask, ``limits``, Starlette) take a location (``host:port``
or ``unix:/path``) and these options, under the names each framework's settings use:

=======================  ===================================================================
``TOKEN``                bearer token (or ``TOKEN_FILE``: its first line that is not empty
                         or a ``#`` comment, the daemon's own token-file format)
``TLS``                  connect over TLS (default False)
``TLS_CA_FILE``          PEM file of the CA that signed the daemon's certificate (default:
                         the bundled Mozilla roots)
``TLS_CERT_FILE``,       PEM client certificate and key, for a proxy in front of the daemon
``TLS_KEY_FILE``         that asks for one
``ALLOW_INSECURE_TOKEN`` send the token without TLS to a host that is not loopback
``SOCKET_TIMEOUT``       deadline of each call, in seconds (default 1.0)
``RETRIES``              retries of idempotent calls on UNAVAILABLE (default 2)
``CORE``                 which core carries the calls: ``"native"``, ``"grpc"`` or
                         ``"auto"`` (default: ``LARDER_CLIENT_CORE``, else ``"auto"``)
=======================  ===================================================================

One client is shared per process and configuration (a fork, as gunicorn's preload does, gets
a new one: a gRPC channel must not cross a fork), and one asyncio client per event loop.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import Mapping
from typing import Any

from . import aio
from ._channel import CORES
from ._client import Larder

CONNECTION_OPTIONS = frozenset(
    {
        "TOKEN",
        "TOKEN_FILE",
        "TLS",
        "TLS_CA_FILE",
        "TLS_CERT_FILE",
        "TLS_KEY_FILE",
        "ALLOW_INSECURE_TOKEN",
        "SOCKET_TIMEOUT",
        "RETRIES",
        "CORE",
    }
)

_lock = threading.Lock()
_sync: dict[tuple[int, str], Larder] = {}
_async: weakref.WeakKeyDictionary[Any, dict[str, aio.Larder]] = weakref.WeakKeyDictionary()


class ConfigError(ValueError):
    """A connection setting is wrong; the message names the setting and the option."""


def client_kwargs(location: Any, options: Mapping[str, Any], setting: str) -> dict[str, Any]:
    """The ``Larder(...)`` arguments for ``location`` and the connection ``options``.

    Raises ConfigError naming ``setting`` (e.g. ``CACHES['default']``) and the option.
    """

    def bad(what: str) -> ConfigError:
        return ConfigError(f"{setting}: {what}")

    if not isinstance(location, str) or not location:
        raise bad("LOCATION must be 'host:port' or 'unix:/path/to/socket'")
    unknown = sorted(set(options) - CONNECTION_OPTIONS)
    if unknown:
        raise bad(f"unknown connection option(s) {unknown}; known: {sorted(CONNECTION_OPTIONS)}")
    kwargs: dict[str, Any] = {"target": location}
    token, token_file = options.get("TOKEN"), options.get("TOKEN_FILE")
    if token and token_file:
        raise bad("give TOKEN or TOKEN_FILE, not both")
    if token_file:
        token = _read_token(token_file, bad)
    if token is not None and not isinstance(token, str):
        raise bad("TOKEN must be a string")
    kwargs["token"] = token or None
    kwargs["tls"] = bool(options.get("TLS", False))
    for option, arg in (
        ("TLS_CA_FILE", "root_certificates"),
        ("TLS_CERT_FILE", "certificate_chain"),
        ("TLS_KEY_FILE", "private_key"),
    ):
        path = options.get(option)
        if path:
            if not kwargs["tls"]:
                raise bad(f"{option} is a TLS setting: set TLS to True with it")
            kwargs[arg] = _read(path, option, bad)
    kwargs["allow_insecure_token"] = bool(options.get("ALLOW_INSECURE_TOKEN", False))
    timeout = options.get("SOCKET_TIMEOUT", 1.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise bad(f"SOCKET_TIMEOUT must be a positive number of seconds, not {timeout!r}")
    kwargs["timeout"] = float(timeout)
    retries = options.get("RETRIES", 2)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise bad(f"RETRIES must be a whole number, 0 or more, not {retries!r}")
    kwargs["retries"] = retries
    core = options.get("CORE")
    if core is not None:
        if core not in CORES:
            raise bad(f"CORE must be one of {', '.join(CORES)}, not {core!r}")
        kwargs["core"] = core
    return kwargs


def _read(path: Any, option: str, bad: Any) -> bytes:
    try:
        with open(os.fspath(path), "rb") as f:
            return f.read()
    except OSError as err:
        raise bad(f"{option}: cannot read {path}: {err.strerror}") from err


def _read_token(path: Any, bad: Any) -> str:
    text = _read(path, "TOKEN_FILE", bad).decode("utf-8", "replace")
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return line
    raise bad(f"TOKEN_FILE {path} holds no token (only empty or # lines)")


def _key(location: Any, options: Mapping[str, Any]) -> str:
    return repr((location, sorted((k, repr(v)) for k, v in options.items())))


def sync_client(location: Any, options: Mapping[str, Any], setting: str) -> Larder:
    """The process's shared blocking client for this configuration (ConfigError if bad)."""
    key = (os.getpid(), _key(location, options))
    client = _sync.get(key)
    if client is None:
        kwargs = client_kwargs(location, options, setting)
        with _lock:
            client = _sync.get(key)
            if client is None:
                # A client of the parent process (before a fork) is left alone: closing it here
                # would act on channel state the child shares with the parent.
                for stale in [k for k in _sync if k[0] != key[0]]:
                    del _sync[stale]
                client = _sync[key] = Larder(**kwargs)
    return client


def async_client(location: Any, options: Mapping[str, Any], setting: str) -> aio.Larder:
    """The running event loop's shared asyncio client for this configuration."""
    loop = asyncio.get_running_loop()
    key = _key(location, options)
    clients = _async.get(loop)
    if clients is None:
        clients = _async.setdefault(loop, {})
    client = clients.get(key)
    if client is None:
        client = clients[key] = aio.Larder(**client_kwargs(location, options, setting))
    return client
