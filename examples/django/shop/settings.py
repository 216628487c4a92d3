"""Settings of the example shop: everything Redis would have done is Larder.

Larder's address comes from LARDER_LOCATION (default: the systemd unit's Unix socket); the
SQLite file holding users from SHOP_DB (default: db.sqlite3 here).
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
LARDER_LOCATION = os.environ.get("LARDER_LOCATION", "unix:/run/larder/larder.sock")

SECRET_KEY = os.environ.get("SHOP_SECRET_KEY", "example-only-not-a-secret-change-me")
DEBUG = os.environ.get("SHOP_DEBUG") == "1"
ALLOWED_HOSTS = os.environ.get("SHOP_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "larder_client.django",  # the larder_sessions management command
    "shop",
]
MIDDLEWARE = [
    "larder_client.django.sessions.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "shop.urls"
WSGI_APPLICATION = "shop.wsgi.application"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("SHOP_DB", str(BASE_DIR / "db.sqlite3")),
    }
}
USE_TZ = True

# The cache: shared by every worker, kept across restarts. IGNORE_EXCEPTIONS keeps pages up
# (uncached) while the daemon restarts.
CACHES = {
    "default": {
        "BACKEND": "larder_client.django.LarderCache",
        "LOCATION": LARDER_LOCATION,
        "TIMEOUT": 300,
        "KEY_PREFIX": "shop",
        "OPTIONS": {"NAMESPACE": "shop", "IGNORE_EXCEPTIONS": True},
    }
}

# Login sessions in Larder's SessionService.
SESSION_ENGINE = "larder_client.django.sessions"
LARDER_SESSIONS = {"LOCATION": LARDER_LOCATION}
SESSION_COOKIE_AGE = 14 * 24 * 3600

# The chat endpoint's limit: 60 a minute per user, or per IP before login.
CHAT_LIMIT = int(os.environ.get("SHOP_CHAT_LIMIT", "60"))
CHAT_PERIOD_MS = 60_000

# Errors (with their tracebacks) to stderr, where gunicorn and systemd's journal keep them.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"django.request": {"handlers": ["stderr"], "level": "ERROR"}},
}
