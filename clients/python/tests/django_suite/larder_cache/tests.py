"""Django's backend-generic cache tests (``cache.tests.BaseCacheTests``) against LarderCache.

Configured as Django configures its own Redis backend in the same file
(``RedisCacheTests``): ``caches_setting_for_tests(base=<params>, exclude={"cull",
"zero_cull"})``. Those two caches test ``MAX_ENTRIES``/``CULL_FREQUENCY``, options of Django's
local-memory, file and database backends; Larder bounds its size on the daemon, and
LarderCache refuses those options. The three culling tests therefore skip themselves, as they
do for Redis. Nothing of BaseCacheTests is overridden here.

The suite runs twice: over TCP with the default settings, and over the Unix socket with every
value compressed that zlib makes smaller (COMPRESS_MIN_BYTES 0). The runner passes the
daemon's addresses in LARDER_DJANGO_TARGET and LARDER_DJANGO_UNIX_TARGET.
"""

import os

from cache.tests import BaseCacheTests, caches_setting_for_tests
from django.test import TestCase, override_settings

TCP_TARGET = os.environ["LARDER_DJANGO_TARGET"]
UNIX_TARGET = os.environ["LARDER_DJANGO_UNIX_TARGET"]

# As Django's redis_excluded_caches: the culling caches do not apply to this backend.
larder_excluded_caches = {"cull", "zero_cull"}


def larder_params(location: str, **options: object) -> dict[str, object]:
    return {
        "BACKEND": "larder_client.django.LarderCache",
        "LOCATION": location,
        "OPTIONS": options,
    }


@override_settings(
    CACHES=caches_setting_for_tests(
        base=larder_params(TCP_TARGET, NAMESPACE="django-suite-tcp"),
        exclude=larder_excluded_caches,
    )
)
class LarderCacheTests(BaseCacheTests, TestCase):
    pass


@override_settings(
    CACHES=caches_setting_for_tests(
        base=larder_params(
            UNIX_TARGET,
            NAMESPACE="django-suite-unix",
            COMPRESSOR="zlib",
            COMPRESS_MIN_BYTES=0,
        ),
        exclude=larder_excluded_caches,
    )
)
class LarderUnixCompressedCacheTests(BaseCacheTests, TestCase):
    pass
