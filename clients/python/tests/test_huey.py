"""``larder_client.huey`` against the real daemon: what Huey's own suite (tests/huey_suite)
does not check, because it is Larder's: ``Cache.scan`` (sync and asyncio), under the result
store's ``result_items``; names, connection settings and their errors; times in UTC and local
time; concurrent poppers, lockers and consumers; the blocking read; and Huey's consumer, with
process workers, as ``huey_consumer`` runs it.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Daemon
from larder_daemon import terminate

from larder_client import Larder, aio

huey = pytest.importorskip("huey", reason="huey is in tests/requirements.txt")

from huey import chord
from huey.constants import EmptyData
from huey.exceptions import ConfigurationError

from larder_client.huey import LarderHuey, LarderStorage


@pytest.fixture
def client(daemon: Daemon) -> Iterator[Larder]:
    with Larder(daemon.addr, timeout=10.0) as c:
        yield c


@pytest.fixture
def app(client: Larder) -> Iterator[LarderHuey]:
    """A LarderHuey of its own name, emptied after the test."""
    h = LarderHuey(f"t-{uuid.uuid4().hex[:12]}", larder=client, read_timeout=0.2)
    yield h
    h.storage.flush_all()


# --- Cache.scan -------------------------------------------------------------------------


def test_scan_lists_a_namespace_in_key_order_a_page_at_a_time(client: Larder) -> None:
    ns = f"scan-{uuid.uuid4().hex[:8]}"
    values = {f"k{i:03d}": b"v%d" % i for i in range(250)}
    client.cache.set_many(values, namespace=ns)
    client.cache.set("other", b"x", namespace=ns + "-2")
    entries = list(client.cache.scan(ns, page_size=100))
    assert [e.key for e in entries] == sorted(values)
    assert {e.key: e.value for e in entries} == values
    assert all(e.version > 0 and e.ttl_ms == 0 for e in entries)
    assert [e.key for e in client.cache.scan(ns, prefix="k24")] == [f"k24{i}" for i in range(10)]
    assert list(client.cache.scan(f"empty-{uuid.uuid4().hex[:8]}")) == []


def test_scan_skips_expired_and_shows_ttl(client: Larder) -> None:
    ns = f"scan-{uuid.uuid4().hex[:8]}"
    client.cache.set("a", b"1", ttl_ms=60_000, namespace=ns)
    client.cache.set("b", b"2", ttl_ms=1, namespace=ns)
    deadline = time.monotonic() + 10
    while client.cache.get("b", ns) is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    [entry] = client.cache.scan(ns)
    assert entry.key == "a" and 0 < entry.ttl_ms <= 60_000


def test_scan_bad_page_size_names_the_field(client: Larder) -> None:
    from larder_client import LarderError

    with pytest.raises(LarderError, match="page_size"):
        list(client.cache.scan("default", page_size=100_000))


async def test_aio_scan(daemon: Daemon) -> None:
    ns = f"scan-{uuid.uuid4().hex[:8]}"
    async with aio.Larder(daemon.addr, timeout=10.0) as c:
        await c.cache.set_many({f"k{i:02d}": b"%d" % i for i in range(30)}, namespace=ns)
        keys = [e.key async for e in c.cache.scan(ns, page_size=7)]
        assert keys == [f"k{i:02d}" for i in range(30)]
        assert [e.value async for e in c.cache.scan(ns, prefix="k2")] == [
            b"%d" % i for i in range(20, 30)
        ]


# --- names and settings -----------------------------------------------------------------


def test_names_of_queues_and_namespaces(client: Larder) -> None:
    s = LarderHuey("shop-v1", larder=client).storage
    assert (s.queue, s.schedule) == ("huey.shop-v1", "huey.shop-v1.schedule")
    assert (s.results, s.counters) == ("huey.shop-v1.results", "huey.shop-v1.counters")
    assert s.later == "huey.shop-v1.later"


def test_two_names_do_not_share_anything(client: Larder) -> None:
    a = LarderHuey("app-v1", larder=client, blocking=False).storage
    b = LarderHuey("appv1", larder=client, blocking=False).storage
    try:
        a.enqueue(b"i1")
        a.put_data("k", b"v")
        a.incr("c")
        assert (b.queue_size(), b.result_store_size(), b.incr("c")) == (0, 0, 1)
        assert b.dequeue() is None
        assert a.dequeue() == b"i1"
    finally:
        a.flush_all()
        b.flush_all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "x" * 115}, "name must be 1 to 114 bytes"),
        ({"name": ""}, "name must be 1 to 114 bytes"),
        ({"read_timeout": 0}, "read_timeout"),
        ({"read_timeout": 31}, "read_timeout"),
        ({"target": "127.0.0.1:1", "larder": "client"}, "either larder="),
        ({"options": {"RETRIES": -1}}, "RETRIES"),
        ({"options": {"NOPE": 1}}, "unknown connection option"),
        ({"token": "t", "options": {"TOKEN": "u"}}, "not both"),
        ({"target": "10.1.2.3:7379", "token": "t"}, "refusing to send the token in cleartext"),
        ({"target": "unix:/x.sock", "options": {"TLS": True}}, "not supported over a Unix"),
    ],
)
def test_bad_settings_fail_at_construction(client: Larder, kwargs: dict, message: str) -> None:
    if kwargs.get("larder") == "client":
        kwargs["larder"] = client
    with pytest.raises(ConfigurationError, match=message):
        LarderHuey(**kwargs)


def test_a_remote_token_is_allowed_when_said() -> None:
    options = {"ALLOW_INSECURE_TOKEN": True}
    s = LarderHuey("remote", target="10.1.2.3:7379", token="t", options=options).storage
    assert s.queue == "huey.remote"  # made; nothing is sent until the first call


def test_unix_socket_and_a_token(token_daemon: tuple[Daemon, str]) -> None:
    d, token = token_daemon
    h = LarderHuey("tok", target=d.unix_target, token=token, blocking=False)
    h.storage.enqueue(b"job")
    assert h.storage.dequeue() == b"job"
    with pytest.raises(Exception) as err:
        LarderHuey("tok", target=d.unix_target, blocking=False).storage.queue_size()
    assert "UNAUTHENTICATED" in str(err.value.code())


# --- queue and schedule -------------------------------------------------------------------


def test_priority_truncates_fractions_and_must_fit_32_bits(app: LarderHuey) -> None:
    s = app.storage
    s.enqueue(b"low", priority=1.5)
    s.enqueue(b"high", priority=2.5)
    s.enqueue(b"neg", priority=-3)
    assert s.enqueued_items() == [b"high", b"low", b"neg"]
    assert [s.dequeue() for _ in range(3)] == [b"high", b"low", b"neg"]
    with pytest.raises(ValueError, match="priority"):
        s.enqueue(b"x", priority=2**31)


def test_enqueued_and_scheduled_items_page_past_one_listing(app: LarderHuey) -> None:
    s = app.storage
    base = dt.datetime.now().replace(microsecond=0) + dt.timedelta(days=30)
    for i in range(1203):
        s.enqueue(b"%d" % i)
    for i in reversed(range(1203)):
        s.add_to_schedule(b"%d" % i, base + dt.timedelta(seconds=i))
    assert s.queue_size() == s.schedule_size() == 1203
    assert s.enqueued_items() == [b"%d" % i for i in range(1203)]
    assert s.enqueued_items(1001) == [b"%d" % i for i in range(1001)]
    assert s.scheduled_items() == [b"%d" % i for i in range(1203)]
    assert s.scheduled_items(3) == [b"0", b"1", b"2"]
    # read_schedule drains every due task, in time order, across Dequeue pages of 1000.
    assert s.read_schedule(base + dt.timedelta(seconds=1100)) == [b"%d" % i for i in range(1101)]
    assert s.schedule_size() == 102


@pytest.fixture
def new_york(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time is New York's (UTC-5 or -4), so that local and UTC times differ."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("new_york")
def test_naive_times_are_utc_or_local_as_the_huey_says(client: Larder) -> None:
    ts = dt.datetime.now().replace(microsecond=123456) + dt.timedelta(days=10)
    utc_ms = int(ts.replace(tzinfo=dt.timezone.utc).timestamp() * 1000)
    local_ms = int(ts.timestamp() * 1000)
    aware = ts.replace(tzinfo=dt.timezone(dt.timedelta(hours=2)))
    aware_ms = int(aware.timestamp() * 1000)
    assert utc_ms - local_ms in (-5 * 3600_000, -4 * 3600_000)
    for utc, expected in ((True, utc_ms), (False, local_ms)):
        s = LarderHuey(f"tz-{utc}-{uuid.uuid4().hex[:6]}", larder=client, utc=utc).storage
        try:
            s.add_to_schedule(b"naive", ts)
            s.add_to_schedule(b"aware", aware)
            jobs = {j.payload: j.ready_at_ms for j in client.queue.list_jobs(s.schedule)}
            assert jobs == {b"naive": expected, b"aware": aware_ms}
            assert s.read_schedule(ts - dt.timedelta(milliseconds=1)) == (
                [b"aware"] if aware_ms < expected else []
            )
        finally:
            s.flush_all()


def test_blocking_dequeue_is_woken_by_an_enqueue(client: Larder) -> None:
    h = LarderHuey(f"wake-{uuid.uuid4().hex[:8]}", larder=client, read_timeout=20)
    try:
        timer = threading.Timer(0.2, h.storage.enqueue, (b"woken",))
        timer.start()
        try:
            assert h.storage.dequeue() == b"woken"
        finally:
            timer.join()
    finally:
        h.storage.flush_all()


def test_concurrent_dequeues_take_each_task_once(app: LarderHuey) -> None:
    n = 400
    for i in range(n):
        app.storage.enqueue(b"task-%03d" % i)
    taken: list[list[bytes]] = [[] for _ in range(4)]

    def drain(k: int) -> None:
        while (data := app.storage.dequeue()) is not None:
            taken[k].append(data)

    threads = [threading.Thread(target=drain, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(d for ds in taken for d in ds) == [b"task-%03d" % i for i in range(n)]


# --- result store and counters ------------------------------------------------------------


def test_pop_data_goes_to_one_popper(app: LarderHuey) -> None:
    s = app.storage
    for round_ in range(20):
        s.put_data("r", b"v%d" % round_)
        got: list[object] = []
        barrier = threading.Barrier(4)

        def pop(got: list[object] = got, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            got.append(s.pop_data("r"))

        threads = [threading.Thread(target=pop) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert sorted(got, key=lambda v: v is EmptyData) == [b"v%d" % round_] + [EmptyData] * 3


def test_put_if_empty_has_one_winner_per_key(app: LarderHuey) -> None:
    s = app.storage
    winners: list[int] = []
    barrier = threading.Barrier(6)

    def lock(n: int) -> None:
        barrier.wait()
        winners.extend(i for i in range(20) if s.put_if_empty(b"k-%d" % i, b"%d" % n))

    threads = [threading.Thread(target=lock, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(winners) == list(range(20))
    with pytest.raises(ValueError, match="ttl"):
        s.put_if_empty(b"k-x", b"v", ttl=0)


def test_keys_may_be_bytes_and_values_empty(app: LarderHuey) -> None:
    s = app.storage
    s.put_data(b"k1", b"")
    assert s.peek_data("k1") == b"" and s.has_data_for_key(b"k1")
    assert s.peek_many([b"k1", "kx"]) == {b"k1": b""}
    assert s.result_items() == {"k1": b""}
    assert s.pop_data(b"k1") == b"" and s.peek_data(b"k1") is EmptyData


def test_a_chord_leaves_no_counter_behind(app: LarderHuey, client: Larder) -> None:
    # What Huey's test_chord_bookkeeping_cleared asserts of MemoryStorage._counters.
    @app.task()
    def prod(n: int) -> int:
        return n

    @app.task()
    def agg(ns: list[int]) -> list[int]:
        return ns

    r = app.enqueue(chord([prod.s(1), prod.s(2)], agg.s()))
    for _ in range(3):
        app.execute(app.dequeue())
    assert r() == [1, 2]
    assert r.results() == [1, 2]
    assert list(client.cache.scan(app.storage.counters)) == []
    assert app.result_count() == 0


# --- Huey's consumer, as huey_consumer runs it ----------------------------------------------

TASKS = '''
"""Tasks of the process-worker test."""
import os

from larder_client.huey import LarderHuey

huey = LarderHuey(os.environ["HUEY_TEST_NAME"], target=os.environ["HUEY_TEST_TARGET"])


@huey.task()
def add_pid(a, b):
    return a + b, os.getpid()


@huey.task()
def later(n):
    return n * 2
'''


def test_huey_consumer_with_process_workers(daemon: Daemon, tmp_path: Path) -> None:
    """``huey_consumer tasks.huey -k process -w 2``: tasks run in its forked workers (each
    makes its own client), a delayed task goes through its scheduler process, and SIGINT
    stops it with status 0."""
    (tmp_path / "hueytasks.py").write_text(textwrap.dedent(TASKS))
    name = f"proc-{uuid.uuid4().hex[:8]}"
    env = dict(
        os.environ,
        HUEY_TEST_NAME=name,
        HUEY_TEST_TARGET=daemon.addr,
        PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path]),
    )
    log = tmp_path / "consumer.log"
    with open(log, "wb") as out:
        consumer = subprocess.Popen(
            [sys.executable, "-m", "huey.bin.huey_consumer", "hueytasks.huey", "-k", "process",
             "-w", "2", "-s", "1", "-q"],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        sys.path.insert(0, str(tmp_path))
        os.environ["HUEY_TEST_NAME"], os.environ["HUEY_TEST_TARGET"] = name, daemon.addr
        import hueytasks

        results = [hueytasks.add_pid(i, i) for i in range(6)]
        delayed = hueytasks.later.schedule((21,), delay=1)
        answers = [r.get(blocking=True, timeout=60) for r in results]
        assert [a for a, _ in answers] == [2 * i for i in range(6)]
        pids = {pid for _, pid in answers}
        assert os.getpid() not in pids and consumer.pid not in pids
        assert delayed.get(blocking=True, timeout=60) == 42
        consumer.send_signal(signal.SIGINT)
        assert consumer.wait(timeout=60) == 0
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("hueytasks", None)
        os.environ.pop("HUEY_TEST_NAME", None)
        os.environ.pop("HUEY_TEST_TARGET", None)
        status = terminate(consumer, 20)
        LarderHuey(name, target=daemon.addr).storage.flush_all()
    assert status == 0, log.read_text(errors="replace")


def test_storage_is_importable_as_huey_storage_class(client: Larder) -> None:
    h = huey.Huey("plain", storage_class=LarderStorage, larder=client, blocking=False)
    assert isinstance(h.storage, LarderStorage) and h.storage.utc is True
    h.storage.enqueue(b"x")
    assert h.storage.dequeue() == b"x"


def test_tasks_more_than_a_year_ahead_wait_in_the_later_namespace(
    app: LarderHuey, client: Larder
) -> None:
    # Past the daemon's 365-day bound on a job's delay, a task is a cache entry until due.
    s = app.storage
    now = dt.datetime.now(dt.timezone.utc)
    days = {b"d800": 800, b"d10": 10, b"d400": 400, b"d400b": 400, b"d2": 2}
    for payload, n in days.items():
        s.add_to_schedule(payload, now + dt.timedelta(days=n))
    assert [e.key[:15].isdigit() for e in client.cache.scan(s.later)] == [True] * 3
    assert s.schedule_size() == 5
    assert s.scheduled_items() == [b"d2", b"d10", b"d400", b"d400b", b"d800"]
    assert s.scheduled_items(3) == [b"d2", b"d10", b"d400"]
    assert s.read_schedule(now + dt.timedelta(days=1)) == []
    assert s.read_schedule(now + dt.timedelta(days=500)) == [b"d2", b"d10", b"d400", b"d400b"]
    assert (s.schedule_size(), s.scheduled_items()) == (1, [b"d800"])
    assert s.read_schedule(now + dt.timedelta(days=900)) == [b"d800"]
    s.add_to_schedule(b"x", now + dt.timedelta(days=1000))
    s.flush_schedule()
    assert s.schedule_size() == 0 and list(client.cache.scan(s.later)) == []
