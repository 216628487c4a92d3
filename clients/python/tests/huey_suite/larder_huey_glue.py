"""Huey's own tests on ``larder_client.huey.LarderHuey``, run by ``run.py`` with
``python -m unittest`` (the daemon's address is in LARDER_HUEY_TARGET, its Unix socket in
LARDER_HUEY_UNIX_TARGET).

What runs, from the pinned sdist's ``huey/tests``, none of its files edited:

- ``test_storage.py``'s storage-generic ``StorageTests``, in ``TestLarderStorage`` below, as
  the sdist runs them on Postgres in ``test_postgres.py``: a class with its own ``get_huey``;
- the modules that run tasks through a Huey's storage (``MODULES``): every Huey they build as
  ``MemoryHuey(...)`` (``BaseTestCase.get_huey``'s, and the few a test class or test builds
  for itself) is a ``LarderHuey`` with the same arguments instead. That is one swap of the
  name ``MemoryHuey`` in those modules (``SuiteHuey``), nothing else.

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

from huey.tests import base
from huey.tests.test_storage import StorageTests

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


_swap_memory_huey(base)


class TestLarderStorage(StorageTests, base.BaseTestCase):
    """``StorageTests`` on ``LarderStorage``: ``supports_ttl`` (put_if_empty with a TTL is a
    Set-if-absent with ``ttl_ms``) and ``destructive_reads`` keep their defaults (True)."""

    def get_huey(self) -> LarderHuey:
        return SuiteHuey("test-larder", utc=False)


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
