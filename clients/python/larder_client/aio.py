"""The asyncio Larder client, on the native core or ``grpc.aio``: ``larder_client.aio.Larder``.

    from larder_client.aio import Larder

    async with Larder("unix:/run/larder/larder.sock") as larder:
        await larder.cache.set("greeting", b"hello", ttl_ms=60_000)
        await larder.cache.get("greeting")          # b"hello"

The same constructor, sub-APIs (``cache``, ``sessions``, ``ratelimit``, ``queue``), method names,
arguments, retries and errors as the blocking ``larder_client.Larder``: every call is built and
its answer mapped by the same code (``larder_client._calls``), and each method's full
description is on its blocking namesake. A channel belongs to the event loop it was made in:
make the client inside the loop that uses it (one per loop, shared by its tasks).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

from . import _calls, _queue
from ._calls import Call
from ._channel import AsyncGrpcBinding, Transport
from ._client import ApiBase, Connection, HealthStub, health_call
from ._gen.larder.v1 import cache_pb2_grpc, queue_pb2_grpc, ratelimit_pb2_grpc, session_pb2_grpc
from ._invoke import AsyncInvoker, LarderError
from ._nativecore import AsyncNativeBinding
from ._queue import LeasedJob
from ._types import (
    Enqueued,
    Entry,
    Job,
    Nacked,
    NewJob,
    QueueStats,
    RateLimitResult,
    Session,
    SessionList,
)

T = TypeVar("T")


Binding = AsyncGrpcBinding | AsyncNativeBinding

# Whether an asyncio client pipelines its calls unless told (``Larder(pipeline=...)``): on,
# because the native core's pipelined calls cost less client and daemon CPU (docs/clients.md).
PIPELINE = True


class _Api(ApiBase):
    """A sub-API of the asyncio client."""

    async def _run(self, call: Call[T], timeout: float | None) -> T:
        response = await self._call(
            self._method(call.method),
            self._request(call),
            idempotent=call.idempotent,
            timeout=timeout,
        )
        return call.parse(response)


class Cache(_Api):
    """CacheService: namespaced keys with byte values, versions and TTLs (milliseconds)."""

    _service = "larder.v1.CacheService"
    _stub = cache_pb2_grpc.CacheServiceStub

    async def get(
        self, key: str, namespace: str = "", *, timeout: float | None = None
    ) -> bytes | None:
        """The value of ``key``, or None when it is absent or expired."""
        return await self._run(_calls.cache_get(key, namespace), timeout)

    async def get_entry(
        self, key: str, namespace: str = "", *, timeout: float | None = None
    ) -> Entry | None:
        """Value, version and remaining TTL of ``key``, or None when it is absent."""
        return await self._run(_calls.cache_get_entry(key, namespace), timeout)

    async def set(
        self,
        key: str,
        value: bytes,
        ttl_ms: int = 0,
        if_absent: bool = False,
        namespace: str = "",
        *,
        if_present: bool = False,
        timeout: float | None = None,
    ) -> bool:
        """Stores ``value``; ``ttl_ms`` replaces any previous TTL (0 = never expires)."""
        call = _calls.cache_set(key, value, ttl_ms, if_absent, if_present, namespace)
        return await self._run(call, timeout)

    async def set_version(
        self,
        key: str,
        value: bytes,
        ttl_ms: int = 0,
        if_absent: bool = False,
        namespace: str = "",
        *,
        timeout: float | None = None,
    ) -> int | None:
        """``set`` (always, or with ``if_absent`` only when absent) answering the entry's new"""
        call = _calls.cache_set_versioned(key, value, ttl_ms, if_absent, namespace)
        return await self._run(call, timeout)

    async def compare_and_set(
        self,
        key: str,
        value: bytes,
        version: int,
        ttl_ms: int = 0,
        namespace: str = "",
        *,
        timeout: float | None = None,
    ) -> int | None:
        """Stores ``value`` only if the entry's version is still ``version`` (from"""
        call = _calls.cache_compare_and_set(key, value, version, ttl_ms, namespace)
        return await self._run(call, timeout)

    async def set_many(
        self,
        entries: Mapping[str, bytes],
        ttl_ms: int = 0,
        namespace: str = "",
        *,
        timeout: float | None = None,
    ) -> dict[str, int]:
        """Stores every key -> value of ``entries`` in one transaction (all or none), each with"""
        return await self._run(_calls.cache_set_many(entries, ttl_ms, namespace), timeout)

    async def delete(
        self,
        key: str,
        namespace: str = "",
        *,
        version: int | None = None,
        timeout: float | None = None,
    ) -> bool:
        """Removes ``key`` (with ``version``, only while it has that version)."""
        return await self._run(_calls.cache_delete(key, namespace, version), timeout)

    async def delete_many(
        self, keys: Iterable[str], namespace: str = "", *, timeout: float | None = None
    ) -> int:
        """Removes ``keys`` in one transaction; returns how many held a live value."""
        return await self._run(_calls.cache_delete_many(keys, namespace), timeout)

    async def increment(
        self,
        key: str,
        delta: int = 1,
        ttl_ms: int = 0,
        namespace: str = "",
        *,
        timeout: float | None = None,
    ) -> int:
        """Adds ``delta`` to the counter at ``key`` (absent = 0) and returns the new value."""
        return await self._run(_calls.cache_increment(key, delta, ttl_ms, namespace), timeout)

    async def increment_if_present(
        self, key: str, delta: int = 1, namespace: str = "", *, timeout: float | None = None
    ) -> int | None:
        """Adds ``delta`` to an existing counter; None when there is none (nothing created)."""
        return await self._run(_calls.cache_increment_if_present(key, delta, namespace), timeout)

    async def get_many(
        self, keys: Iterable[str], namespace: str = "", *, timeout: float | None = None
    ) -> dict[str, bytes | None]:
        """The values of ``keys`` in one round trip: key -> value, or None when absent."""
        return await self._run(_calls.cache_get_many(keys, namespace), timeout)

    async def touch(
        self, key: str, ttl_ms: int, namespace: str = "", *, timeout: float | None = None
    ) -> bool:
        """Sets a new TTL on ``key`` without changing its value; returns whether it exists."""
        return await self._run(_calls.cache_touch(key, ttl_ms, namespace), timeout)

    async def delete_prefix(
        self, prefix: str, namespace: str = "", *, timeout: float | None = None
    ) -> int:
        """Removes every key of ``namespace`` that starts with ``prefix``; returns how many."""
        return await self._run(_calls.cache_delete_prefix(prefix, namespace), timeout)

    async def clear(self, namespace: str = "", *, timeout: float | None = None) -> int:
        """Removes every entry of ``namespace`` ("" = "default"); returns how many."""
        return await self._run(_calls.cache_clear(namespace), timeout)

    async def stats(self, namespace: str = "", *, timeout: float | None = None) -> dict[str, int]:
        """The server's counters (entries, bytes, hits, misses, ...) as a dict."""
        return await self._run(_calls.cache_stats(namespace), timeout)

    async def scan(
        self,
        namespace: str = "",
        *,
        prefix: str = "",
        page_size: int = 100,
        timeout: float | None = None,
    ) -> AsyncIterator[Entry]:
        """The live entries of ``namespace`` in key order, a page per call (``async for``)."""
        token = ""
        while True:
            call = _calls.cache_scan(namespace, prefix, page_size, token)
            entries, token = await self._run(call, timeout)
            for entry in entries:
                yield entry
            if not token:
                return


class Sessions(_Api):
    """SessionService: opaque login-session tokens and the data they carry."""

    _service = "larder.v1.SessionService"
    _stub = session_pb2_grpc.SessionServiceStub

    async def create(
        self,
        user_id: str,
        data: Mapping[str, str] | None = None,
        idle_ttl_ms: int = 0,
        absolute_ttl_ms: int = 0,
        device_info: str = "",
        ip: str = "",
        *,
        timeout: float | None = None,
    ) -> tuple[str, Session]:
        """Starts a session for ``user_id``; returns (token, session). TTL 0 = server default."""
        call = _calls.session_create(user_id, data, idle_ttl_ms, absolute_ttl_ms, device_info, ip)
        return await self._run(call, timeout)

    async def get(self, token: str, *, timeout: float | None = None) -> Session | None:
        """The session of ``token`` (and it counts as activity), or None when it is gone."""
        return await self._run(_calls.session_get(token), timeout)

    async def update(
        self,
        token: str,
        set: Mapping[str, str] | None = None,  # the proto's field name
        remove: Sequence[str] = (),
        *,
        timeout: float | None = None,
    ) -> Session | None:
        """Sets and removes data keys; returns the updated session, or None when it is gone."""
        return await self._run(_calls.session_update(token, set, remove), timeout)

    async def rotate(
        self, token: str, *, timeout: float | None = None
    ) -> tuple[str, Session] | None:
        """Replaces ``token`` by a new one (the old one stops working); None when it is gone."""
        return await self._run(_calls.session_rotate(token), timeout)

    async def revoke(
        self,
        token: str | None = None,
        *,
        session_id: str | None = None,
        timeout: float | None = None,
    ) -> bool:
        """Ends one session, named by its token or its session_id; returns whether it existed."""
        return await self._run(_calls.session_revoke(token, session_id), timeout)

    async def revoke_user(
        self, user_id: str, except_session_id: str = "", *, timeout: float | None = None
    ) -> int:
        """Ends every session of ``user_id`` (but ``except_session_id``); returns how many."""
        return await self._run(_calls.session_revoke_user(user_id, except_session_id), timeout)

    async def list(
        self,
        user_id: str,
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> SessionList:
        """One page of the live sessions of ``user_id``, newest first.

        ``page_size`` 0 is the server's maximum; ``page_token`` is the ``next_page_token`` of
        the page before (empty for the first page).
        """
        return await self._run(_calls.session_list(user_id, page_size, page_token), timeout)


class RateLimit(_Api):
    """RateLimitService: named policies (config file) or inline limits per key."""

    _service = "larder.v1.RateLimitService"
    _stub = ratelimit_pb2_grpc.RateLimitServiceStub

    async def check(
        self,
        key: str,
        policy: str = "",
        limit: int = 0,
        period_ms: int = 0,
        cost: int = 1,
        burst: int = 0,
        algorithm: str = "",
        *,
        timeout: float | None = None,
    ) -> RateLimitResult:
        """Consumes ``cost`` units of ``key`` if allowed. ``result.headers()`` gives the HTTP"""
        call = _calls.ratelimit_check(key, policy, limit, period_ms, cost, burst, algorithm)
        return await self._run(call, timeout)

    async def peek(
        self,
        key: str,
        policy: str = "",
        limit: int = 0,
        period_ms: int = 0,
        cost: int = 1,
        burst: int = 0,
        algorithm: str = "",
        *,
        timeout: float | None = None,
    ) -> RateLimitResult:
        """What ``check`` would answer, without consuming anything."""
        call = _calls.ratelimit_peek(key, policy, limit, period_ms, cost, burst, algorithm)
        return await self._run(call, timeout)

    async def reset(self, key: str, policy: str = "", *, timeout: float | None = None) -> bool:
        """Forgets what ``key`` consumed; returns whether it had any state."""
        return await self._run(_calls.ratelimit_reset(key, policy), timeout)


class Queue(_Api):
    """QueueService: durable jobs with leases, retries, delays and a dead-letter list; each
    method is described on its namesake of ``larder_client.Queue``."""

    _service = "larder.v1.QueueService"
    _stub = queue_pb2_grpc.QueueServiceStub

    async def enqueue(
        self,
        queue: str,
        payload: bytes,
        *,
        delay_ms: int = 0,
        run_at_ms: int = 0,
        priority: int = 0,
        max_attempts: int = 0,
        dedup_key: str = "",
        timeout: float | None = None,
    ) -> Enqueued:
        """Adds a job; it is on disk when this returns."""
        job = NewJob(queue, payload, delay_ms, run_at_ms, priority, max_attempts, dedup_key)
        return await self._run(_queue.enqueue(job), timeout)

    async def enqueue_many(
        self, jobs: Iterable[NewJob], *, timeout: float | None = None
    ) -> list[Enqueued]:
        """Adds ``jobs`` in one transaction, all or none."""
        return await self._run(_queue.enqueue_many(jobs), timeout)

    async def dequeue(
        self,
        queues: str | Sequence[str],
        *,
        max_jobs: int = 1,
        lease_ms: int = 0,
        wait_ms: int = 0,
        auto_ack: bool = False,
        due_by_ms: int = 0,
        timeout: float | None = None,
    ) -> list[Job]:
        """Leases up to ``max_jobs`` ready jobs, waiting up to ``wait_ms`` for one (the
        call's deadline is ``timeout`` on top of the wait)."""
        deadline = _queue.dequeue_deadline(self._call.deadline(timeout), wait_ms)
        call = _queue.dequeue(queues, max_jobs, lease_ms, wait_ms, auto_ack, due_by_ms)
        return await self._run(call, deadline)

    async def ack(self, lease: str, *, timeout: float | None = None) -> None:
        """Marks the job of ``lease`` done (FAILED_PRECONDITION when the lease is lost)."""
        await self._run(_queue.ack(lease), timeout)

    async def nack(
        self,
        lease: str,
        *,
        retry_after_ms: int | None = None,
        error: str = "",
        timeout: float | None = None,
    ) -> Nacked:
        """Gives the job of ``lease`` back to be retried, or moves it to the dead letters."""
        return await self._run(_queue.nack(lease, retry_after_ms, error), timeout)

    async def extend(self, lease: str, lease_ms: int, *, timeout: float | None = None) -> int:
        """Moves the expiry of ``lease`` to ``lease_ms`` from now; returns it."""
        return await self._run(_queue.extend(lease, lease_ms), timeout)

    async def stats(self, queue: str, *, timeout: float | None = None) -> QueueStats:
        """``queue``'s jobs by state and the age of its oldest ready job."""
        return await self._run(_queue.stats(queue), timeout)

    async def purge(self, queue: str, *, timeout: float | None = None) -> int:
        """Removes every ready and delayed job of ``queue``; returns how many."""
        return await self._run(_queue.purge(queue), timeout)

    async def list_jobs(
        self, queue: str, *, page_size: int = 100, timeout: float | None = None
    ) -> AsyncIterator[Job]:
        """``queue``'s waiting jobs, fetched a page at a time (``async for``)."""
        token = ""
        while True:
            jobs, token = await self._run(_queue.list_jobs(queue, page_size, token), timeout)
            for job in jobs:
                yield job
            if not token:
                return

    async def list_dead(
        self, queue: str, *, page_size: int = 100, timeout: float | None = None
    ) -> AsyncIterator[Job]:
        """``queue``'s dead jobs, oldest death first, a page at a time (``async for``)."""
        token = ""
        while True:
            jobs, token = await self._run(_queue.list_dead(queue, page_size, token), timeout)
            for job in jobs:
                yield job
            if not token:
                return

    async def retry_dead(
        self, queue: str, ids: Sequence[int] | None = None, *, timeout: float | None = None
    ) -> int:
        """Makes the dead jobs of ``ids`` (None: every one) ready again; returns how many."""
        named = _queue.dead_ids(ids)
        if named == []:
            return 0
        return await self._run(_queue.retry_dead(queue, named), timeout)

    async def purge_dead(
        self, queue: str, ids: Sequence[int] | None = None, *, timeout: float | None = None
    ) -> int:
        """Removes the dead jobs of ``ids`` (None: every one); returns how many."""
        named = _queue.dead_ids(ids)
        if named == []:
            return 0
        return await self._run(_queue.purge_dead(queue, named), timeout)

    def jobs(
        self,
        queues: str | Sequence[str],
        *,
        lease_ms: int = 30_000,
        wait_ms: int = 20_000,
        extend: bool = True,
        timeout: float | None = None,
    ) -> AsyncIterator[LeasedJob]:
        """The worker loop, for ``async for``; ``async with job:`` reports each job's
        outcome, and a task extends the lease while the body runs. As
        ``larder_client.Queue.jobs``, except that a job left unfinished when the loop is left
        without ``async with`` is nacked when the loop's generator is closed: at once with
        ``contextlib.aclosing``, else when asyncio finalizes it."""
        return _queue.arun_jobs(self, queues, lease_ms, wait_ms, extend, timeout)


class _Health(_Api):
    _service = "grpc.health.v1.Health"
    _stub = HealthStub


class Larder(Connection):
    """An asyncio connection to a Larder daemon; see ``larder_client.Larder`` for the
    arguments (``target``, ``token``, ``timeout``, ``retries``, ``options``, ``core`` and the
    TLS ones), which mean the same here. On the native core a call is an asyncio future that
    the core settles from its own thread: the event loop never blocks. Close it with ``await close()`` or ``async with``.

    ``pipeline`` (default ``PIPELINE``, on) is auto-pipelining, on the native core: the calls
    of all the tasks that share this client go on one ``larder.v1.PipelineService/Run``
    stream, each tagged with an id and matched back to its awaiting task, instead of one
    HTTP/2 stream per call (less client and daemon CPU per call, measured: see
    docs/clients.md). Each call answers and fails exactly as it would unary (same results,
    exceptions, deadlines and retries); a call that waits for ready (``wait_for_ready=True``)
    and the health check go unary, and so does every call to a daemon older than the service.
    ``pipeline=False`` makes every call unary. On grpcio (``core="grpc"``) calls are always
    unary: multiplexing them in Python cost more CPU per call than it saved.
    ``larder.pipeline`` says whether this client's calls are pipelined."""

    cache: Cache
    sessions: Sessions
    ratelimit: RateLimit
    queue: Queue

    def __init__(
        self,
        target: str = "127.0.0.1:7379",
        token: str | None = None,
        timeout: float = 1.0,
        *,
        pipeline: bool | None = None,
        **kwargs: Any,
    ) -> None:
        self.pipeline = PIPELINE if pipeline is None else pipeline
        super().__init__(target, token, timeout, **kwargs)

    def _open(self, transport: Transport, invoker: dict[str, Any]) -> None:
        self.pipeline = self.pipeline and transport.core == "native"
        self._binding: Binding = transport.aio_binding(self.pipeline)
        self._call = AsyncInvoker(**invoker, ready=self._binding.ready)
        self.cache = Cache(self._binding, self._call)
        self.sessions = Sessions(self._binding, self._call)
        self.ratelimit = RateLimit(self._binding, self._call)
        self.queue = Queue(self._binding, self._call)
        self._health = _Health(self._binding, self._call)

    async def health(self, service: str = "", *, timeout: float | None = None) -> bool:
        """Whether the daemon (or one ``larder.v1`` service) reports SERVING."""
        return await self._health._run(health_call(service), timeout)

    async def close(self) -> None:
        """Closes the channel; calls after this fail."""
        await self._binding.close()

    async def __aenter__(self) -> Larder:  # noqa: PYI034  (typing.Self needs Python 3.11)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


__all__ = ["Cache", "Larder", "LarderError", "Queue", "RateLimit", "Sessions"]
