"""Django integration of larder_client.

The cache backend is ``larder_client.django.LarderCache`` (``CACHES``; its module is
``larder_client.django.cache``). The session engine is ``larder_client.django.sessions``
(``SESSION_ENGINE``); its ``revoke_user_sessions`` ("log out everywhere") is exported here
too. This module stays light to import (Django imports it when ``larder_client.django`` is in
``INSTALLED_APPS``): what it exports loads its module on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# What this package exports, and the module each comes from.
_EXPORTS = {
    "LarderCache": "cache",
    "LockError": "cache",
    "LockNotOwnedError": "cache",
    "revoke_user_sessions": "sessions",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{module}", __name__), name)


__all__ = ["LarderCache", "LockError", "LockNotOwnedError", "revoke_user_sessions"]
