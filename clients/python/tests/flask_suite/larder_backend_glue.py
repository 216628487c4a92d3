"""Flask-Caching's backend-generic tests (``GenericCacheTests`` of its ``tests/
test_backend_cache.py``) on ``larder_client.flask.LarderCache``, as that file runs them on
``RedisCache``. ``run.py`` copies this module into the sdist's ``tests/`` directory as
``test_larder_backend.py`` for the run; the daemon's addresses are in LARDER_FLASK_TARGET
(host:port) and LARDER_FLASK_UNIX_TARGET (unix:).

Three caches, as the Redis class tests a string prefix, a callable prefix and clients made
differently: made by Flask-Caching from an app's config over TCP with a key prefix; made
directly over the Unix socket with a callable prefix; made from config with no prefix (its
``clear`` empties the namespace).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import flask
import flask_caching
import pytest
from test_backend_cache import GenericCacheTests

from larder_client.flask import LarderCache


def _gen_key_prefix() -> str:
    return "werkzeug-test-case-callable:"


class TestLarderCache(GenericCacheTests):
    # The daemon keeps real time: cachelib's clock cannot be advanced for it.
    _can_use_fast_sleep = False

    @pytest.fixture(params=["config-tcp", "direct-unix-callable-prefix", "config-no-prefix"])
    def make_cache(self, request: pytest.FixtureRequest) -> Iterator[Callable[[], LarderCache]]:
        namespace = f"flask-suite-{request.param}"
        if request.param == "direct-unix-callable-prefix":
            c = LarderCache(
                os.environ["LARDER_FLASK_UNIX_TARGET"],
                namespace=namespace,
                key_prefix=_gen_key_prefix,
            )
        else:
            app = flask.Flask(__name__)
            app.config.update(
                CACHE_TYPE="larder_client.flask.LarderCache",
                CACHE_LARDER_TARGET=os.environ["LARDER_FLASK_TARGET"],
                CACHE_LARDER_NAMESPACE=namespace,
                CACHE_KEY_PREFIX="werkzeug-test-case:" if request.param == "config-tcp" else "",
            )
            cache = flask_caching.Cache(app)
            c = app.extensions["cache"][cache]
            assert isinstance(c, LarderCache)
        yield lambda: c
        c.clear()
