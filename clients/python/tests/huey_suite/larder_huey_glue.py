"""Huey's own tests on ``larder_client.huey.LarderHuey``, run by ``run.py`` with
``python -m unittest`` (the daemon's address is in LARDER_HUEY_TARGET, its Unix socket in
LARDER_HUEY_UNIX_TARGET).

What runs, from the pinned sdist's ``huey/tests``, none of its files edited:

- ``test_storage.py``'s storage-generic ``StorageTests``, in ``TestLarderStorage`` below, as
  the sdist runs them on Postgres in ``test_postgres.py``: a class with its own ``get_huey``;
- the modules that run tasks through a Huey's storage (``MODULES``): every Huey they build as
  ``MemoryHuey(...)`` (``BaseTestCase.get_huey``'s, the few a test class or test builds for
  itself, and the ``HUEY`` setting of ``test_django_tasks.py``, djhuey's backend for Django's
  task framework; ``test_stats.py`` runs the stats add-on over them) is a ``LarderHuey`` with the same arguments instead. That is one swap of
  the name ``MemoryHuey``, in those modules and in the ``huey`` package they import it from
  (``SuiteHuey``), nothing else.

A ``SuiteHuey`` keeps its storage in immediate mode too (``immediate_use_memory=False``):
``MemoryHuey``'s immediate mode uses its MemoryStorage as well, and this way the immediate
and asyncio tests run on Larder rather than on a MemoryStorage of Huey's choosing. Each one
starts empty (``flush_all``), so a test sees no task or result of the one before.

The tests skipped here, each with its reason, are in ``EXCLUDED``.
"""

from __future__ import annotations

import importlib
import os
import unittest
from types import ModuleType
from typing import Any

import huey

from larder_client import Larder
from larder_client.huey import LarderHuey

#: The sdist's test modules whose tests run tasks through a Huey's storage.
MODULES = (
    "huey.tests.test_api",
    "huey.tests.test_consumer",
    "huey.tests.test_priority",
    "huey.tests.test_signals",
    "huey.tests.test_immediate",
    "huey.tests.test_asyncio",
    # Django's task framework through djhuey's HueyBackend (needs django.tasks, or the
    # django-tasks backport before Django 6; requirements.txt pins it).
    "huey.tests.test_django_tasks",
    # The stats add-on (huey.contrib.stats, on peewee): task events of a Huey's signals.
    "huey.tests.test_stats",
)

#: Tests left out, by ``module.Class.test``, with the reason (unittest shows it as the skip's).
EXCLUDED = {
    "huey.tests.test_api.TestChordPrimitive.test_chord_bookkeeping_cleared": (
        "asserts MemoryStorage's private _counters dict is empty; tests/test_huey.py checks "
        "the same on Larder (no chord counter is left in the counters namespace)"
    ),
    "huey.tests.test_consumer.TestProcessWorkers.test_process_worker_integration": (
        "builds a SqliteHuey of its own and asserts its private _conn; tests/test_huey.py "
        "runs the same process-worker check on LarderHuey"
    ),
}

# One client for the whole run, as an application shares one per process; a longer deadline
# than the default 1 s, since two cores also run the daemon and the consumers' threads.
_LARDER = Larder(os.environ["LARDER_HUEY_TARGET"], timeout=10.0)


class SuiteHuey(LarderHuey):
    """What the suite gets where it asks for ``MemoryHuey(...)``: a ``LarderHuey`` of the same
    name and options on the run's daemon, emptied first. ``read_timeout`` is short (0.1 s)
    because many tests dequeue from a queue they expect empty, and a blocking read waits that
    long there."""

    def __init__(self, name: str = "huey", **kwargs: Any) -> None:
        kwargs.setdefault("larder", _LARDER)
        kwargs.setdefault("read_timeout", 0.1)
        kwargs.setdefault("immediate_use_memory", False)
        super().__init__(name, **kwargs)
        self.storage.flush_all()


def _swap_memory_huey(module: ModuleType) -> None:
    if hasattr(module, "MemoryHuey"):
        module.MemoryHuey = SuiteHuey


# Before anything imports huey.tests: its __init__ imports every test module, and
# test_django_tasks.py makes its HUEY setting (``from huey import MemoryHuey``) at import.
_swap_memory_huey(huey)
base = importlib.import_module("huey.tests.base")
_swap_memory_huey(base)
StorageTests = importlib.import_module("huey.tests.test_storage").StorageTests


class TestLarderStorage(StorageTests, base.BaseTestCase):
    """``StorageTests`` on ``LarderStorage``: ``supports_ttl`` (put_if_empty with a TTL is a
    Set-if-absent with ``ttl_ms``) and ``destructive_reads`` keep their defaults (True)."""

    def get_huey(self) -> LarderHuey:
        return SuiteHuey("test-larder", utc=False)


class TestTheSwap(unittest.TestCase):
    """The suite runs on Larder: every module's ``MemoryHuey`` is ``SuiteHuey``, and so is
    djhuey's ``HUEY`` of ``test_django_tasks.py`` (when Django's task framework is there)."""

    def test_memory_huey_is_larder_huey(self) -> None:
        for name in ("huey", "huey.tests.base", *MODULES):
            module = importlib.import_module(name)
            if hasattr(module, "MemoryHuey"):
                self.assertIs(module.MemoryHuey, SuiteHuey, name)
        django_tasks = importlib.import_module("huey.tests.test_django_tasks")
        if django_tasks.django_tasks_available:
            self.assertIsInstance(django_tasks.HUEY, SuiteHuey)


def _exclude(module: ModuleType) -> None:
    for name, reason in EXCLUDED.items():
        module_name, class_name, test = name.rsplit(".", 2)
        if module_name == module.__name__:
            cls = getattr(module, class_name)
            setattr(cls, test, unittest.skip(reason)(getattr(cls, test)))


def load_tests(
    loader: unittest.TestLoader, standard_tests: unittest.TestSuite, pattern: str | None
) -> unittest.TestSuite:
    """unittest's hook: this module's own tests, then the swapped modules' tests."""
    suite = unittest.TestSuite([standard_tests])
    for name in MODULES:
        module = importlib.import_module(name)
        _swap_memory_huey(module)
        _exclude(module)
        suite.addTests(loader.loadTestsFromModule(module))
    return suite
