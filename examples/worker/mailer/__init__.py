"""The mailer: a Flask app that enqueues welcome emails in Larder's job queue, and the worker
processes that send them (``mailer.app`` and ``mailer.worker``).

Settings come from the environment, shared by the app and the workers:
``LARDER_LOCATION`` (default the systemd unit's socket, ``unix:/run/larder/larder.sock``) and
``MAILER_OUTBOX`` (the directory the "emails" are written to, default ``./outbox``); the
workers' own are in ``mailer.worker``.
"""

from __future__ import annotations

import os
from pathlib import Path

# The queue the app fills and the workers drain.
QUEUE = "email"


def location() -> str:
    return os.environ.get("LARDER_LOCATION", "unix:/run/larder/larder.sock")


def outbox() -> Path:
    return Path(os.environ.get("MAILER_OUTBOX", "outbox"))
