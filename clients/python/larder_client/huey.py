"""Huey on Larder: ``LarderHuey``, and ``LarderStorage``, the storage it runs on.

    from larder_client.huey import LarderHuey

    huey = LarderHuey("shop", target="unix:/run/larder/larder.sock")

    @huey.task()
    def send_welcome(user_id: int) -> None: ...

``huey_consumer shop.tasks.huey`` then runs the tasks, as with any other Huey storage; so does
``manage.py run_huey`` with ``HUEY = {"huey_class": "larder_client.huey.LarderHuey", ...}`` in
Django's settings (see the client README's "Huey" section).

Huey's storage interface maps onto two Larder services. With ``name`` the Huey instance's
name:

=====================  ==========================================================================
queue                  QueueService queue ``huey.<name>``: ``enqueue`` is Enqueue with Huey's
                       priority, ``dequeue`` a Dequeue of one job with ``auto_ack`` (Huey's
                       consumer never acknowledges a task, so delivery is at most once, as on
                       Huey's Redis storage: a worker killed mid-task loses that task), waiting
                       up to ``read_timeout`` for one when ``blocking``
schedule               QueueService queue ``huey.<name>.schedule``: each task is a job whose
                       ``run_at_ms`` is its time; ``read_schedule(ts)`` takes the jobs due by
                       ``ts`` (Dequeue's ``due_by_ms``), soonest first. A task due more than
                       ``QUEUE_HORIZON`` ahead (past the daemon's 365-day bound on a job's
                       delay) waits in the CacheService namespace ``huey.<name>.later``
                       instead, keyed by its time, until it is due
results, locks,        CacheService namespace ``huey.<name>.results`` (Set, Get, GetMany, a
revocations            compare-and-delete for ``pop_data``, Set-if-absent with a TTL for
                       ``put_if_empty``, Scan, Clear)
counters               CacheService namespace ``huey.<name>.counters`` (Increment)
=====================  ==========================================================================

Times: Huey passes naive datetimes, in UTC when the Huey instance has ``utc=True`` (its
default) and in local time otherwise; ``LarderHuey`` tells its storage which, and the storage
turns them into milliseconds since the epoch (an aware datetime is taken as it is). Schedule
times have millisecond resolution.
"""

from __future__ import annotations

import datetime as dt
import heapq
import itertools
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from huey.api import Huey
from huey.constants import EmptyData
from huey.exceptions import ConfigurationError
from huey.storage import BaseStorage

from ._channel import is_local
from ._client import Larder
from ._options import ConfigError, client_kwargs, sync_client

__all__ = ["DEFAULT_TARGET", "LarderHuey", "LarderStorage"]

DEFAULT_TARGET = "127.0.0.1:7379"
#: The longest queue name and namespace the daemon accepts, in bytes.
MAX_NAME_BYTES = 128
#: The longest Dequeue wait the daemon accepts, in seconds.
MAX_READ_TIMEOUT = 30.0
#: Jobs per Dequeue of ``read_schedule``, and per page of the listings: the daemon's batch limit.
PAGE = 1000
#: Keys per GetMany of ``peek_many``: the daemon's default batch limit.
BATCH_KEYS = 1000
#: How far ahead a schedule task may be a job: a day short of the daemon's 365-day bound on
#: a job's delay, so that a clock a little ahead of this process's cannot refuse it.
QUEUE_HORIZON = dt.timedelta(days=364)
#: Digits of a ``later`` key's time: milliseconds since the epoch up to the year 9999.
_LATER_DIGITS = 15
#: Priorities the daemon takes (an int32).
_PRIORITY_MIN, _PRIORITY_MAX = -(2**31), 2**31 - 1

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_MS = dt.timedelta(milliseconds=1)


def _key(key: str | bytes) -> str:
    """A Huey key as a Larder key: Huey writes str keys, and some callers pass bytes."""
    return key.decode("utf-8") if isinstance(key, bytes) else key


class LarderStorage(BaseStorage):
    """Huey's storage interface on a Larder daemon (the mapping is in the module's docstring).

    - ``name``: the Huey instance's name (Huey passes it); at most 114 bytes of UTF-8, so that
      every queue and namespace made from it fits the daemon's 128-byte bound.
    - ``target``: ``host:port`` or ``unix:/path`` (default ``127.0.0.1:7379``); ``token``: the
      bearer token; ``options``: the other connection options, as the framework adapters take
      them (``TOKEN_FILE``, ``TLS``, ``TLS_CA_FILE``, ``SOCKET_TIMEOUT``, ``RETRIES``,
      ``CORE``, ...; see ``larder_client._options``). One client is shared per process and
      configuration, and a process forked by Huey's consumer gets its own.
    - ``larder``: an existing ``larder_client.Larder`` to use instead (then give no target,
      token or options); the storage never closes it, and uses it in every process, so with
      the consumer's process workers (``-k process``) give a target instead (a grpcio
      channel does not survive a fork; see the client README's Cores).
    - ``blocking`` (default True) and ``read_timeout`` (seconds, default 1, at most 30): an
      empty queue makes ``dequeue`` wait that long for a task (Dequeue's long-poll: an
      enqueue wakes it at once), so the consumer needs no polling backoff. False answers at
      once, and the consumer polls with its own backoff.
    - ``utc``: whether naive datetimes are UTC (True, Huey's default) or local time;
      ``LarderHuey`` passes its own ``utc``.
    """

    priority = True

    def __init__(
        self,
        name: str = "huey",
        target: str | None = None,
        token: str | None = None,
        *,
        options: Mapping[str, Any] | None = None,
        larder: Larder | None = None,
        blocking: bool = True,
        read_timeout: float = 1.0,
        utc: bool = True,
    ) -> None:
        super().__init__(name)
        self.queue = f"huey.{name}"
        self.schedule = f"huey.{name}.schedule"
        self.later = f"huey.{name}.later"
        self.results = f"huey.{name}.results"
        self.counters = f"huey.{name}.counters"
        for derived in (self.queue, self.schedule, self.later, self.results, self.counters):
            if not name or len(derived.encode("utf-8")) > MAX_NAME_BYTES:
                raise ConfigurationError(
                    f"LarderStorage: the name must be 1 to "
                    f"{MAX_NAME_BYTES - len('huey..schedule')} bytes of UTF-8, not {name!r}"
                )
        if not 0 < read_timeout <= MAX_READ_TIMEOUT:
            raise ConfigurationError(
                f"LarderStorage: read_timeout must be more than 0 and at most "
                f"{MAX_READ_TIMEOUT:g} seconds, not {read_timeout!r}"
            )
        self.blocking = blocking
        self.read_timeout = read_timeout
        self.utc = utc
        self._larder = larder
        if larder is not None:
            if target is not None or token is not None or options:
                raise ConfigurationError(
                    "LarderStorage: give either larder= (a client) or target/token/options"
                )
            return
        self._target = target or DEFAULT_TARGET
        self._options = dict(options or {})
        if token is not None:
            if "TOKEN" in self._options or "TOKEN_FILE" in self._options:
                raise ConfigurationError("LarderStorage: give token= or options['TOKEN'], not both")
            self._options["TOKEN"] = token
        # A bad setting fails now, when the Huey is made, rather than at the first task.
        try:
            kwargs = client_kwargs(self._target, self._options, "LarderStorage")
        except ConfigError as err:
            raise ConfigurationError(str(err)) from err
        if kwargs["tls"] and self._target.startswith("unix:"):
            raise ConfigurationError("LarderStorage: TLS is not supported over a Unix socket")
        insecure = kwargs["token"] and not kwargs["tls"] and not kwargs["allow_insecure_token"]
        if insecure and not is_local(self._target):
            raise ConfigurationError(
                f"LarderStorage: refusing to send the token in cleartext to {self._target!r}, "
                f"which is not a loopback address or a Unix socket: set options['TLS'] (the "
                f"daemon's [tls] section), or options['ALLOW_INSECURE_TOKEN'] if the network "
                f"to it is trusted"
            )

    @property
    def larder(self) -> Larder:
        """The client the storage calls through."""
        if self._larder is not None:
            return self._larder
        # Looked up on each use: the shared client is per process, so a worker process that
        # Huey's consumer forks makes its own instead of using its parent's channel.
        return sync_client(self._target, self._options, "LarderStorage")

    def close(self) -> None:
        """Nothing to release: the client is shared (or the caller's), never this storage's."""

    # --- times ----------------------------------------------------------------------------

    def epoch_ms(self, ts: dt.datetime) -> int:
        """``ts`` in milliseconds since the epoch (rounded down), for ``run_at_ms`` and
        ``due_by_ms``; at least 1, since 0 means "now" there (a time before 1970 is long due
        either way)."""
        if ts.tzinfo is None:
            # Naive: UTC under utc=True, else local time (what astimezone() assumes, like the
            # time.mktime of Huey's Redis storage).
            ts = ts.replace(tzinfo=dt.timezone.utc) if self.utc else ts.astimezone()
        return max(1, (ts - _EPOCH) // _MS)

    # --- queue ----------------------------------------------------------------------------

    def enqueue(self, data: bytes, priority: float | None = None) -> None:
        # Larder's priorities are integers: a fractional Huey priority is truncated, as Huey's
        # file storage does.
        level = int(priority or 0)
        if not _PRIORITY_MIN <= level <= _PRIORITY_MAX:
            raise ValueError(f"priority must fit in 32 bits (a signed int), not {priority!r}")
        self.larder.queue.enqueue(self.queue, data, priority=level)

    def dequeue(self) -> bytes | None:
        client = self.larder
        if not self.blocking:
            jobs = client.queue.dequeue([self.queue], max_jobs=1, auto_ack=True)
        else:
            wait_ms = int(self.read_timeout * 1000)
            jobs = client.queue.dequeue([self.queue], max_jobs=1, auto_ack=True, wait_ms=wait_ms)
        return jobs[0].payload if jobs else None

    def queue_size(self) -> int:
        stats = self.larder.queue.stats(self.queue)
        return int(stats.ready + stats.delayed)

    def enqueued_items(self, limit: int | None = None) -> list[bytes]:
        return _first(self.larder.queue.list_jobs(self.queue, page_size=_page(limit)), limit)

    def flush_queue(self) -> None:
        self.larder.queue.purge(self.queue)

    # --- schedule -------------------------------------------------------------------------

    def add_to_schedule(self, data: bytes, ts: dt.datetime) -> None:
        run_at_ms = self.epoch_ms(ts)
        if run_at_ms <= _now_ms() + QUEUE_HORIZON // _MS:
            self.larder.queue.enqueue(self.schedule, data, run_at_ms=run_at_ms)
            return
        # Too far ahead for a job: kept under its time (keys sort as the times do), then the
        # time it was added (tasks of one millisecond go first in, first out) and a random
        # part, so that no two tasks share a key.
        key = f"{run_at_ms:0{_LATER_DIGITS}d}.{time.time_ns():020d}.{uuid.uuid4().hex[:12]}"
        self.larder.cache.set(key, data, namespace=self.later)

    def read_schedule(self, ts: dt.datetime) -> list[bytes]:
        due_by_ms = self.epoch_ms(ts)
        queue = self.larder.queue
        due: list[tuple[int, bytes]] = []
        while True:
            jobs = queue.dequeue([self.schedule], max_jobs=PAGE, auto_ack=True, due_by_ms=due_by_ms)
            due.extend((job.ready_at_ms, job.payload) for job in jobs)
            if len(jobs) < PAGE:
                break
        cache = self.larder.cache
        for entry in cache.scan(self.later, page_size=100):
            at = _later_ms(entry.key)
            if at > due_by_ms:
                break
            # Taken only if still the entry read: of two schedulers, one gets it.
            if cache.delete(entry.key, self.later, version=entry.version):
                due.append((at, entry.value))
        due.sort(key=lambda task: task[0])  # stable: the jobs keep Dequeue's order
        return [payload for _, payload in due]

    def schedule_size(self) -> int:
        stats = self.larder.queue.stats(self.schedule)
        later = self.larder.cache.stats(self.later)["entries"]
        return int(stats.ready + stats.delayed + later)

    def scheduled_items(self, limit: int | None = None) -> list[bytes]:
        # Every schedule job has priority 0, so ListJobs' order is the time order; the later
        # ones are in time order too, and the two are merged.
        jobs = self.larder.queue.list_jobs(self.schedule, page_size=_page(limit))
        later = self.larder.cache.scan(self.later, page_size=_page(limit))
        tasks = heapq.merge(
            ((job.ready_at_ms, job.payload) for job in jobs),
            ((_later_ms(entry.key), entry.value) for entry in later),
            key=lambda task: task[0],
        )
        return [payload for _, payload in itertools.islice(tasks, limit or None)]

    def flush_schedule(self) -> None:
        self.larder.queue.purge(self.schedule)
        self.larder.cache.clear(self.later)

    # --- result store ---------------------------------------------------------------------

    def put_data(self, key: str | bytes, value: bytes, is_result: bool = False) -> None:
        self.larder.cache.set(_key(key), value, namespace=self.results)

    def peek_data(self, key: str | bytes) -> Any:
        value = self.larder.cache.get(_key(key), self.results)
        return EmptyData if value is None else value

    def peek_many(self, keys: Iterable[str | bytes]) -> dict[Any, bytes]:
        wanted = list(keys)
        found: dict[Any, bytes] = {}
        cache = self.larder.cache
        for start in range(0, len(wanted), BATCH_KEYS):
            batch = wanted[start : start + BATCH_KEYS]
            values = cache.get_many([_key(k) for k in batch], self.results)
            for key in batch:
                value = values.get(_key(key))
                if value is not None:
                    found[key] = value
        return found

    def pop_data(self, key: str | bytes) -> Any:
        cache = self.larder.cache
        name = _key(key)
        while True:
            entry = cache.get_entry(name, self.results)
            if entry is None:
                return EmptyData
            # Deleted only if it is still the value read: of two poppers, one gets it and the
            # other finds it gone; a value rewritten in between is read again.
            if cache.delete(name, self.results, version=entry.version):
                return entry.value

    def delete_data(self, key: str | bytes) -> bool:
        return self.larder.cache.delete(_key(key), self.results)

    def has_data_for_key(self, key: str | bytes) -> bool:
        return self.larder.cache.get_entry(_key(key), self.results) is not None

    def put_if_empty(self, key: str | bytes, value: bytes, ttl: float | None = None) -> bool:
        ttl_ms = 0
        if ttl is not None:
            if ttl <= 0:
                raise ValueError(f"ttl must be a positive number of seconds, not {ttl!r}")
            ttl_ms = max(1, round(ttl * 1000))
        return self.larder.cache.set(
            _key(key), value, ttl_ms=ttl_ms, if_absent=True, namespace=self.results
        )

    def result_store_size(self) -> int:
        return int(self.larder.cache.stats(self.results)["entries"])

    def result_items(self) -> dict[str, bytes]:
        entries = self.larder.cache.scan(self.results, page_size=PAGE)
        return {entry.key: entry.value for entry in entries}

    def flush_results(self) -> None:
        self.larder.cache.clear(self.results)

    # --- counters -------------------------------------------------------------------------

    def incr(self, key: str | bytes, amount: int = 1) -> int:
        return self.larder.cache.increment(_key(key), amount, namespace=self.counters)

    def delete_counter(self, key: str | bytes) -> None:
        self.larder.cache.delete(_key(key), self.counters)

    def flush_counters(self) -> None:
        self.larder.cache.clear(self.counters)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _later_ms(key: str) -> int:
    """The time of a ``later`` entry, from its key."""
    return int(key[:_LATER_DIGITS])


def _page(limit: int | None) -> int:
    return min(limit, PAGE) if limit else PAGE


def _first(jobs: Iterator[Any], limit: int | None) -> list[bytes]:
    """The payloads of the first ``limit`` jobs (all of them when ``limit`` is None or 0, as
    Huey's own storages read it)."""
    items: list[bytes] = []
    for job in jobs:
        if limit and len(items) >= limit:
            break
        items.append(job.payload)
    return items


class LarderHuey(Huey):
    """A ``huey.Huey`` whose storage is ``LarderStorage``: ``LarderHuey("shop",
    target="unix:/run/larder/larder.sock")``. Every keyword argument that Huey does not take
    (``target``, ``token``, ``options``, ``larder``, ``blocking``, ``read_timeout``) goes to
    the storage, which also gets this instance's ``utc``."""

    storage_class = LarderStorage

    def get_storage(self, **kwargs: Any) -> Any:
        kwargs.setdefault("utc", self.utc)
        return super().get_storage(**kwargs)
