"""The WSGI app of test_prefork.py: one ``larder_client.Larder``, made at import and shared by
every request, so that under ``gunicorn --preload`` the master makes it (and a call with it)
before it forks its workers.

Environment: ``PREFORK_TARGET`` (the daemon), ``PREFORK_KEY`` (the counter every request
increments), ``PREFORK_CORE`` (the client's ``core=``; empty: its default, which reads
``LARDER_CLIENT_CORE``).

Each request increments the counter and answers JSON: this process's pid, the new value, the
core, and what the import saw: the pid that made the client, the counter then, and how many
threads that process had after its first call (None where /proc does not tell). ``?hold=SECONDS`` keeps the worker busy that
long after the call, so concurrent requests have to go to other workers.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from larder_client import Larder

KEY = os.environ["PREFORK_KEY"]
LARDER = Larder(
    os.environ["PREFORK_TARGET"], timeout=5.0, core=os.environ.get("PREFORK_CORE") or None
)
IMPORT_PID = os.getpid()
IMPORT_VALUE = LARDER.cache.increment(KEY, 0)  # a call in the process that will fork
IMPORT_THREADS = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else None


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    value = LARDER.cache.increment(KEY)
    hold = float(parse_qs(environ.get("QUERY_STRING", "")).get("hold", ["0"])[0])
    if hold > 0:
        time.sleep(min(hold, 1.0))
    body = json.dumps(
        {
            "pid": os.getpid(),
            "value": value,
            "core": LARDER.core,
            "import_pid": IMPORT_PID,
            "import_value": IMPORT_VALUE,
            "import_threads": IMPORT_THREADS,
        }
    ).encode()
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]
