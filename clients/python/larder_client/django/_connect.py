"""The Django adapters' connection settings: ``larder_client._options`` with its errors as
Django's ``ImproperlyConfigured``.

The cache backend (its ``LOCATION`` and ``OPTIONS``) and the session engine
(``LARDER_SESSIONS["LOCATION"]`` and ``["OPTIONS"]``) take the options listed in
``larder_client._options``: ``TOKEN``/``TOKEN_FILE``, ``TLS``, ``TLS_CA_FILE``,
``TLS_CERT_FILE``, ``TLS_KEY_FILE``, ``ALLOW_INSECURE_TOKEN``, ``SOCKET_TIMEOUT`` and ``RETRIES``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from .. import _options, aio
from .._client import Larder
from .._options import CONNECTION_OPTIONS

__all__ = ["CONNECTION_OPTIONS", "async_client", "client_kwargs", "sync_client"]


def client_kwargs(location: Any, options: Mapping[str, Any], setting: str) -> dict[str, Any]:
    """``_options.client_kwargs``, raising ImproperlyConfigured naming ``setting``."""
    try:
        return _options.client_kwargs(location, options, setting)
    except _options.ConfigError as err:
        raise ImproperlyConfigured(str(err)) from err


def sync_client(location: Any, options: Mapping[str, Any], setting: str) -> Larder:
    """The process's shared blocking client for this configuration."""
    try:
        return _options.sync_client(location, options, setting)
    except _options.ConfigError as err:
        raise ImproperlyConfigured(str(err)) from err


def async_client(location: Any, options: Mapping[str, Any], setting: str) -> aio.Larder:
    """The running event loop's shared asyncio client for this configuration."""
    try:
        return _options.async_client(location, options, setting)
    except _options.ConfigError as err:
        raise ImproperlyConfigured(str(err)) from err
