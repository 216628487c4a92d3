"""Huey's Django integration (``huey.contrib.djhuey``) on ``LarderHuey``, configured from
Django settings both ways Huey documents: ``HUEY`` a dict naming the class
(``"huey_class": "larder_client.huey.LarderHuey"``, the connection under ``"connection"``),
and ``HUEY`` a ``LarderHuey`` instance. ``manage.py run_huey`` (as ``python -m django
run_huey``) consumes; another process enqueues with the app's ``@task``/``@db_task`` and
waits for the results; SIGINT stops the consumer with status 0. Both run in processes of their
own, since djhuey reads the settings once, at import.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from conftest import Daemon
from larder_daemon import terminate

pytest.importorskip("huey", reason="huey is in tests/requirements.txt")
pytest.importorskip("django", reason="Django is the client's django extra")

SETTINGS = """
import os

SECRET_KEY = "test-only"
INSTALLED_APPS = ["huey.contrib.djhuey", "hueyapp"]
DATABASES = {}
USE_TZ = True

if os.environ["HUEY_TEST_FORM"] == "dict":
    HUEY = {
        "huey_class": "larder_client.huey.LarderHuey",
        "name": os.environ["HUEY_TEST_NAME"],
        "immediate": False,
        "connection": {"target": os.environ["HUEY_TEST_TARGET"], "read_timeout": 0.5},
        "consumer": {"workers": 2, "worker_type": "thread", "scheduler_interval": 1},
    }
else:
    from larder_client.huey import LarderHuey

    HUEY = LarderHuey(os.environ["HUEY_TEST_NAME"], target=os.environ["HUEY_TEST_TARGET"])
"""

TASKS = """
from huey.contrib.djhuey import db_task, task


@task()
def add(a, b):
    return a + b


@db_task()
def shout(text):
    return text.upper()
"""

CLIENT = """
import django

django.setup()
from huey.contrib.djhuey import HUEY
from hueyapp.tasks import add, shout

assert type(HUEY).__name__ == "LarderHuey", HUEY
print(add(2, 3).get(blocking=True, timeout=60))
print(shout.schedule(("hi",), delay=1).get(blocking=True, timeout=60))
"""


def site(root: Path) -> None:
    (root / "hueysite").mkdir()
    (root / "hueysite" / "__init__.py").write_text("")
    (root / "hueysite" / "settings.py").write_text(textwrap.dedent(SETTINGS))
    (root / "hueyapp").mkdir()
    (root / "hueyapp" / "__init__.py").write_text("")
    (root / "hueyapp" / "tasks.py").write_text(textwrap.dedent(TASKS))


@pytest.mark.parametrize("form", ["dict", "instance"])
def test_run_huey_runs_tasks_from_settings(daemon: Daemon, tmp_path: Path, form: str) -> None:
    site(tmp_path)
    name = f"dj-{form}-{uuid.uuid4().hex[:8]}"
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="hueysite.settings",
        HUEY_TEST_FORM=form,
        HUEY_TEST_NAME=name,
        HUEY_TEST_TARGET=daemon.addr,
        PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path]),
    )
    log = tmp_path / "run_huey.log"
    with open(log, "wb") as out:
        consumer = subprocess.Popen(
            [sys.executable, "-m", "django", "run_huey"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        client = subprocess.run(
            [sys.executable, "-c", CLIENT],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert client.returncode == 0, client.stderr + log.read_text(errors="replace")
        assert client.stdout.split() == ["5", "HI"]
        consumer.send_signal(signal.SIGINT)
        assert consumer.wait(timeout=60) == 0, log.read_text(errors="replace")
    finally:
        terminate(consumer, 20)
