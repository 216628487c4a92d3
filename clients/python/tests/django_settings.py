"""Django settings for the pytest tests of ``larder_client.django``, shared by every test module
of one pytest process: ``configure()`` sets them up once (``settings.configure`` and
``django.setup``), whichever module calls it first; each module then points the backend it
tests at its own daemon with ``override_settings``.
"""

from __future__ import annotations

import django
from django.apps import apps
from django.conf import settings

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "larder_client.django",
]


def configure() -> None:
    """Configures Django for the tests unless it already is, and loads the apps."""
    if not settings.configured:
        settings.configure(
            SECRET_KEY="larder-client-tests",
            INSTALLED_APPS=INSTALLED_APPS,
            DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
            CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
            USE_TZ=True,
        )
    if not apps.ready:
        django.setup()
