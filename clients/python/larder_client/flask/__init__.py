"""Flask adapters on Larder: ``larder_client.flask.LarderCache``, a Flask-Caching backend,
and ``LarderSessionInterface``, server-side sessions.

    app.config["CACHE_TYPE"] = "larder_client.flask.LarderCache"
    app.config["CACHE_LARDER_TARGET"] = "unix:/run/larder/larder.sock"
    LarderSessionInterface().init_app(app)  # LARDER_SESSION_TARGET, ...

See ``larder_client.flask.cache`` and ``larder_client.flask.sessions`` for every setting.
"""

from __future__ import annotations

from .._options import ConfigError
from .cache import LarderCache
from .sessions import (
    LarderSessionInterface,
    SessionUnavailable,
    login_session,
    logout_session,
    revoke_user_sessions,
    rotate_session,
)

__all__ = [
    "ConfigError",
    "LarderCache",
    "LarderSessionInterface",
    "SessionUnavailable",
    "login_session",
    "logout_session",
    "revoke_user_sessions",
    "rotate_session",
]
