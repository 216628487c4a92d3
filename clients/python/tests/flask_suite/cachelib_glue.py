"""cachelib's backend-generic tests (the mixins of its ``tests/``: ``CommonTests``,
``ClearTests``, ``HasTests``, ``DeleteManyWithPrefixTests`` and ``SerializerTests``) on
``larder_client.flask.LarderCache``, combined as cachelib's ``tests/test_redis_cache.py``
combines them for ``RedisCache``, with the same fixture shape: every test runs with and
without a key prefix (the suite's ``key_prefix`` fixture), for the cache and for a subclass
with a non-default serializer (the suite's own ``SillySerializer``, as ``CustomCache``
there). ``run.py`` copies this module into the sdist's ``tests/`` as
``test_larder_cachelib.py`` for the run; the daemon's addresses are in LARDER_FLASK_TARGET
and LARDER_FLASK_UNIX_TARGET.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from clear import ClearTests
from common import CommonTests
from delete_many_with_prefix import DeleteManyWithPrefixTests
from has import HasTests
from serializer import SerializerTests
from test_redis_cache import SillySerializer

from larder_client.flask import LarderCache

NAMESPACE = "cachelib-suite"


class CustomCache(LarderCache):
    """The cache with a non-default serializer, as the suite's CustomCache for Redis."""

    serializer = SillySerializer()


@pytest.fixture(autouse=True, params=["tcp", "unix-custom-serializer"])
def cache_factory(request: pytest.FixtureRequest, key_prefix: str | None) -> None:
    unix = request.param == "unix-custom-serializer"
    target = os.environ["LARDER_FLASK_UNIX_TARGET" if unix else "LARDER_FLASK_TARGET"]
    cls = CustomCache if unix else LarderCache

    def _factory(self: Any, *args: Any, **kwargs: Any) -> LarderCache:
        kwargs.setdefault("key_prefix", key_prefix)
        cache = cls(target, *args, namespace=NAMESPACE, **kwargs)
        LarderCache(target, namespace=NAMESPACE).clear()  # the namespace, as FLUSHDB
        return cache

    factory: Callable[..., LarderCache] = _factory
    request.cls.cache_factory = factory


class TestLarderCache(
    CommonTests, ClearTests, HasTests, DeleteManyWithPrefixTests, SerializerTests
):
    pass
