"""Flask adapters on Larder: ``larder_client.flask.LarderCache``, a Flask-Caching backend.

    app.config["CACHE_TYPE"] = "larder_client.flask.LarderCache"
    app.config["CACHE_LARDER_TARGET"] = "unix:/run/larder/larder.sock"

See ``larder_client.flask.cache`` for every setting.
"""

from __future__ import annotations

from .._options import ConfigError
from .cache import LarderCache

__all__ = ["ConfigError", "LarderCache"]
