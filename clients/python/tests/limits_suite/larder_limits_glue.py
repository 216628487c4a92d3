"""A pytest plugin that adds Larder to the ``limits`` sdist's storage parametrisation.

Loaded by ``run.py`` with ``-p larder_limits_glue``; the suite's files are not edited. The
daemon's addresses come from LARDER_LIMITS_TARGET (host:port) and LARDER_LIMITS_SOCKET (path).

The suite parametrises its tests over storages with ``pytest.mark.parametrize("uri, args,
fixture", ...)`` marks built in ``tests/utils.py`` (from the dicts ``ALL_STORAGES`` and
``ALL_STORAGES_ASYNC``, or lists filtered from them) and, in ``tests/test_storage.py`` and
``tests/aio/test_storage.py``, with an inline list for ``TestConcreteStorages``. This plugin
adds two parameters beside the in-memory one, ``larder`` (``larder://HOST:PORT``) and
``larder-unix`` (``larder+unix:///path``), to the dicts before collection and to each such
list when pytest collects the class or function that carries it. The ``fixture`` of each is
``larder_limits`` below, which empties the storage's namespaces before the test, as the
suite's Redis fixtures flush Redis.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

import larder_client.limits as larder_limits_storage
from larder_client import Larder

ARGNAMES = {"uri, args, fixture", "uri, args, expected_instance, fixture"}
IDS = ("larder", "larder-unix")


def _uris(prefix: str) -> list[tuple[str, str]]:
    target = os.environ["LARDER_LIMITS_TARGET"]
    socket = os.environ["LARDER_LIMITS_SOCKET"]
    return [
        (IDS[0], f"{prefix}larder://{target}"),
        (IDS[1], f"{prefix}larder+unix://{socket}"),
    ]


def _params(is_async: bool, with_instance: bool) -> list[Any]:
    # Imported here: a pytest plugin imported before pytest loads it could not be rewritten.
    from pytest_lazy_fixtures import lf

    storage = (
        larder_limits_storage.LarderAsyncStorage
        if is_async
        else larder_limits_storage.LarderStorage
    )
    params = []
    for id_, uri in _uris("async+" if is_async else ""):
        values = (
            (uri, {}, storage, lf("larder_limits"))
            if with_instance
            else (
                uri,
                {},
                lf("larder_limits"),
            )
        )
        params.append(pytest.param(*values, marks=pytest.mark.larder, id=id_))
    return params


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "larder: the Larder storage (larder_client.limits)")
    from tests import utils  # the suite's own module, importable from its root

    for is_async, storages in ((False, utils.ALL_STORAGES), (True, utils.ALL_STORAGES_ASYNC)):
        for param in _params(is_async, with_instance=False):
            storages[param.id] = param


def _add_to(mark: pytest.Mark) -> None:
    if mark.name != "parametrize" or len(mark.args) < 2 or mark.args[0] not in ARGNAMES:
        return
    argvalues = mark.args[1]
    if not isinstance(argvalues, list):  # a view of ALL_STORAGES(_ASYNC): already there
        return
    ids = {getattr(p, "id", None) for p in argvalues}
    if "in-memory" not in ids or IDS[0] in ids:
        return
    memory = next(p for p in argvalues if getattr(p, "id", None) == "in-memory")
    is_async = str(memory.values[0]).startswith("async+")
    with_instance = mark.args[0] == "uri, args, expected_instance, fixture"
    argvalues.extend(_params(is_async, with_instance))


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> None:
    for mark in getattr(obj, "pytestmark", []):
        if isinstance(mark, pytest.Mark):
            _add_to(mark)


@pytest.fixture
def larder_limits() -> None:
    """Empties the namespaces the Larder storages of this run use."""
    with Larder(os.environ["LARDER_LIMITS_TARGET"]) as client:
        namespace = larder_limits_storage.DEFAULT_NAMESPACE
        client.cache.clear(namespace)
        client.cache.clear(namespace + larder_limits_storage.LOGS_SUFFIX)
