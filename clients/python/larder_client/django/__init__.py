"""Django integration of larder_client.

The cache backend is ``larder_client.django.LarderCache`` (``CACHES``; its module is
``larder_client.django.cache``). The session engine is ``larder_client.django.sessions``
(``SESSION_ENGINE``). This module stays light to import (Django imports it when
``larder_client.django`` is in ``INSTALLED_APPS``): what it exports loads its module on first
use.
"""

from __future__ import annotations

from typing import Any


def revoke_user_sessions(user: Any, except_current: Any = None) -> int:
    """Ends every Larder session of ``user`` (a user object or its id) but ``except_current``
    (``request.session`` or a session id), and returns how many ended: "log out everywhere".
    See ``larder_client.django.sessions.revoke_user_sessions``."""
    from .sessions import revoke_user_sessions as revoke

    return revoke(user, except_current)


_CACHE_EXPORTS = frozenset({"LarderCache", "LockError", "LockNotOwnedError"})


def __getattr__(name: str) -> Any:
    if name in _CACHE_EXPORTS:
        from . import cache

        return getattr(cache, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["LarderCache", "LockError", "LockNotOwnedError", "revoke_user_sessions"]
