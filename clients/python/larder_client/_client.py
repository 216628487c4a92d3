"""The blocking Larder client: one channel, and the cache, sessions, ratelimit and queue
sub-APIs.

Each method builds its call in ``_calls`` (shared with ``larder_client.aio``) and runs it
through the ``Invoker`` on the core's binding (``_channel``: native or grpcio); nothing here
validates or maps by itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, ClassVar, TypeVar

from google.protobuf import wrappers_pb2

from . import _calls, _queue
from ._calls import Call
from ._channel import GrpcBinding, Transport
from ._gen.larder.v1 import cache_pb2_grpc, queue_pb2_grpc, ratelimit_pb2_grpc, session_pb2_grpc
from ._invoke import Invoker
from ._nativecore import NativeBinding
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


Binding = GrpcBinding | NativeBinding


class ApiBase:
    """What a sub-API of either client holds: one service's methods on the binding (made on
    first use), and the invoker that runs its calls. ``_service`` is the service's full
    name, ``_stub`` grpcio's stub class for it."""

    _service: ClassVar[str]
    _stub: ClassVar[type]

    def __init__(self, binding: Any, call: Any) -> None:
        self._binding = binding
        self._request = binding.request
        self._call = call
        self._methods: dict[str, Any] = {}

    def _method(self, name: str) -> Any:
        method = self._methods.get(name)
        if method is None:
            method = self._methods[name] = self._binding.method(self._service, self._stub, name)
        return method


class _Api(ApiBase):
    """A sub-API of the blocking client."""

    def _run(self, call: Call[T], timeout: float | None) -> T:
        response = self._call(
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

    def get(self, key: str, namespace: str = "", *, timeout: float | None = None) -> bytes | None:
        """The value of ``key``, or None when it is absent or expired."""
        return self._run(_calls.cache_get(key, namespace), timeout)

    def get_entry(
        self, key: str, namespace: str = "", *, timeout: float | None = None
    ) -> Entry | None:
        """Value, version and remaining TTL of ``key``, or None when it is absent."""
        return self._run(_calls.cache_get_entry(key, namespace), timeout)

    def set(
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
        """Stores ``value``; ``ttl_ms`` replaces any previous TTL (0 = never expires).

        With ``if_absent`` only when the key holds no live value (a lock: SET NX with
        expiry); with ``if_present`` only when it does (SET XX). Returns whether it was stored.
        For compare-and-set, see ``compare_and_set``.
        """
        call = _calls.cache_set(key, value, ttl_ms, if_absent, if_present, namespace)
        return self._run(call, timeout)

    def set_version(
        self,
        key: str,
        value: bytes,
        ttl_ms: int = 0,
        if_absent: bool = False,
        namespace: str = "",
        *,
        timeout: float | None = None,
    ) -> int | None:
        """``set`` (always, or with ``if_absent`` only when absent) answering the entry's new
        version, or None when it was not stored: what a lock keeps to release only its own."""
        call = _calls.cache_set_versioned(key, value, ttl_ms, if_absent, namespace)
        return self._run(call, timeout)

    def compare_and_set(
        self,
        key: str,
        value: bytes,
        version: int,
        ttl_ms: int = 0,
        namespace: str = "",
        *,
        timeout: float | None = None,
    ) -> int | None:
        """Stores ``value`` only if the entry's version is still ``version`` (from
        ``get_entry`` or an earlier write): compare-and-set.

        Returns the entry's new version, or None when it was not stored because the entry
        changed, was deleted or expired since (read it again and retry). ``version`` 0 is
        invalid (LarderError naming ``expected_version``).
        """
        call = _calls.cache_compare_and_set(key, value, version, ttl_ms, namespace)
        return self._run(call, timeout)

    def set_many(
        self,
        entries: Mapping[str, bytes],
        ttl_ms: int = 0,
        namespace: str = "",
        *,
        timeout: float | None = None,
    ) -> dict[str, int]:
        """Stores every key -> value of ``entries`` in one transaction (all or none), each with
        ``ttl_ms`` (0 = never expires); returns key -> new version.

        If one entry is invalid, nothing is written and LarderError names it
        (``entries[3].key: ...``, counted in the mapping's order).
        """
        return self._run(_calls.cache_set_many(entries, ttl_ms, namespace), timeout)

    def delete(
        self,
        key: str,
        namespace: str = "",
        *,
        version: int | None = None,
        timeout: float | None = None,
    ) -> bool:
        """Removes ``key``; returns whether it held a live value. With ``version`` (from
        ``get_entry`` or a write's answer) only while the entry still has that version: a
        compare-and-delete, so a lock's holder releases only its own lock."""
        return self._run(_calls.cache_delete(key, namespace, version), timeout)

    def delete_many(
        self, keys: Iterable[str], namespace: str = "", *, timeout: float | None = None
    ) -> int:
        """Removes ``keys`` in one transaction; returns how many held a live value."""
        return self._run(_calls.cache_delete_many(keys, namespace), timeout)

    def increment(
        self,
        key: str,
        delta: int = 1,
        ttl_ms: int = 0,
        namespace: str = "",
        *,
        timeout: float | None = None,
    ) -> int:
        """Adds ``delta`` to the counter at ``key`` (absent = 0) and returns the new value."""
        return self._run(_calls.cache_increment(key, delta, ttl_ms, namespace), timeout)

    def increment_if_present(
        self, key: str, delta: int = 1, namespace: str = "", *, timeout: float | None = None
    ) -> int | None:
        """Adds ``delta`` to the counter at ``key`` only if it exists (a live entry); returns
        the new value, or None when there was no counter (nothing is created)."""
        return self._run(_calls.cache_increment_if_present(key, delta, namespace), timeout)

    def get_many(
        self, keys: Iterable[str], namespace: str = "", *, timeout: float | None = None
    ) -> dict[str, bytes | None]:
        """The values of ``keys`` in one round trip: key -> value, or None when absent."""
        return self._run(_calls.cache_get_many(keys, namespace), timeout)

    def touch(
        self, key: str, ttl_ms: int, namespace: str = "", *, timeout: float | None = None
    ) -> bool:
        """Sets a new TTL on ``key`` without changing its value; returns whether it exists."""
        return self._run(_calls.cache_touch(key, ttl_ms, namespace), timeout)

    def delete_prefix(
        self, prefix: str, namespace: str = "", *, timeout: float | None = None
    ) -> int:
        """Removes every key of ``namespace`` that starts with ``prefix``; returns how many."""
        return self._run(_calls.cache_delete_prefix(prefix, namespace), timeout)

    def clear(self, namespace: str = "", *, timeout: float | None = None) -> int:
        """Removes every entry of ``namespace`` ("" = "default"); returns how many."""
        return self._run(_calls.cache_clear(namespace), timeout)

    def stats(self, namespace: str = "", *, timeout: float | None = None) -> dict[str, int]:
        """The server's counters (entries, bytes, hits, misses, ...) as a dict."""
        return self._run(_calls.cache_stats(namespace), timeout)

    def scan(
        self,
        namespace: str = "",
        *,
        prefix: str = "",
        page_size: int = 100,
        timeout: float | None = None,
    ) -> Iterator[Entry]:
        """The live entries of ``namespace`` ("" = "default") in key order (each ``Entry``
        with its ``key``), only keys starting with ``prefix`` when given.

        Fetched ``page_size`` (1..=1000) at a time as the iteration goes, one call per page
        (``timeout`` is each call's); each page is read as of one commit, so an entry written
        or deleted while the iteration runs may or may not be seen, but no key is seen twice.
        """
        token = ""
        while True:
            call = _calls.cache_scan(namespace, prefix, page_size, token)
            entries, token = self._run(call, timeout)
            yield from entries
            if not token:
                return


class Sessions(_Api):
    """SessionService: opaque login-session tokens and the data they carry."""

    _service = "larder.v1.SessionService"
    _stub = session_pb2_grpc.SessionServiceStub

    def create(
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
        return self._run(call, timeout)

    def get(self, token: str, *, timeout: float | None = None) -> Session | None:
        """The session of ``token`` (and it counts as activity), or None when it is gone."""
        return self._run(_calls.session_get(token), timeout)

    def update(
        self,
        token: str,
        set: Mapping[str, str] | None = None,  # the proto's field name
        remove: Sequence[str] = (),
        *,
        timeout: float | None = None,
    ) -> Session | None:
        """Sets and removes data keys; returns the updated session, or None when it is gone."""
        return self._run(_calls.session_update(token, set, remove), timeout)

    def rotate(self, token: str, *, timeout: float | None = None) -> tuple[str, Session] | None:
        """Replaces ``token`` by a new one (the old one stops working); None when it is gone."""
        return self._run(_calls.session_rotate(token), timeout)

    def revoke(
        self,
        token: str | None = None,
        *,
        session_id: str | None = None,
        timeout: float | None = None,
    ) -> bool:
        """Ends one session, named by its token or its session_id; returns whether it existed."""
        return self._run(_calls.session_revoke(token, session_id), timeout)

    def revoke_user(
        self, user_id: str, except_session_id: str = "", *, timeout: float | None = None
    ) -> int:
        """Ends every session of ``user_id`` (but ``except_session_id``); returns how many."""
        return self._run(_calls.session_revoke_user(user_id, except_session_id), timeout)

    def list(
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
        return self._run(_calls.session_list(user_id, page_size, page_token), timeout)


class RateLimit(_Api):
    """RateLimitService: named policies (config file) or inline limits per key."""

    _service = "larder.v1.RateLimitService"
    _stub = ratelimit_pb2_grpc.RateLimitServiceStub

    def check(
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
        """Consumes ``cost`` units of ``key`` if allowed. ``result.headers()`` gives the HTTP
        headers. Either name a ``policy`` or give ``limit`` and ``period_ms`` inline;
        ``algorithm`` is "gcra" (default), "sliding_window" or "fixed_window"."""
        call = _calls.ratelimit_check(key, policy, limit, period_ms, cost, burst, algorithm)
        return self._run(call, timeout)

    def peek(
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
        return self._run(call, timeout)

    def reset(self, key: str, policy: str = "", *, timeout: float | None = None) -> bool:
        """Forgets what ``key`` consumed; returns whether it had any state."""
        return self._run(_calls.ratelimit_reset(key, policy), timeout)


class Queue(_Api):
    """QueueService: durable jobs with leases, retries, delays and a dead-letter list.

    A job is a payload of bytes in a named queue (1..=128 bytes of UTF-8). ``dequeue`` leases
    ready jobs, higher ``priority`` first, then in the order they became ready; the worker
    then ``ack``s a job when done, ``nack``s it to have it retried, or ``extend``s its lease.
    A job whose lease runs out is ready again at once (delivery is at least once), and after
    ``max_attempts`` deliveries that ended in a nack or an expired lease it moves to the
    queue's dead-letter list. ``jobs`` is the worker loop that does all of this.
    """

    _service = "larder.v1.QueueService"
    _stub = queue_pb2_grpc.QueueServiceStub

    def enqueue(
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
        """Adds a job; it is on disk when this returns.

        Ready now, or ``delay_ms`` from now, or at ``run_at_ms`` (Unix milliseconds; not
        both). ``max_attempts`` 0 is the daemon's ``queue.max_attempts`` (5). With a
        ``dedup_key`` that a job of the queue still holds, adds nothing and answers that
        job's id with ``duplicate=True``. A full queue (``queue.max_jobs``) raises the
        RESOURCE_EXHAUSTED ``grpc.RpcError``. Never retried after an UNAVAILABLE that may
        have reached the daemon (the job could be added twice).
        """
        job = NewJob(queue, payload, delay_ms, run_at_ms, priority, max_attempts, dedup_key)
        return self._run(_queue.enqueue(job), timeout)

    def enqueue_many(
        self, jobs: Iterable[NewJob], *, timeout: float | None = None
    ) -> list[Enqueued]:
        """Adds ``jobs`` (up to 1000, to any queues) in one transaction, all or none; the
        answers are in the order of ``jobs``."""
        return self._run(_queue.enqueue_many(jobs), timeout)

    def dequeue(
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
        """Leases up to ``max_jobs`` ready jobs of ``queues`` (one name, or up to 16).

        ``lease_ms`` 0 is the daemon's ``queue.lease`` (30 s). With ``wait_ms`` (at most
        30,000) it waits that long for a job when none is ready (an enqueue wakes it at
        once) and answers ``[]`` if none came; the call's deadline is ``timeout`` on top of
        the wait. ``auto_ack`` removes the jobs as they are handed out (at most once, no
        lease). ``due_by_ms`` takes the jobs ready by that time instead of now.
        """
        deadline = _queue.dequeue_deadline(self._call.deadline(timeout), wait_ms)
        call = _queue.dequeue(queues, max_jobs, lease_ms, wait_ms, auto_ack, due_by_ms)
        return self._run(call, deadline)

    def ack(self, lease: str, *, timeout: float | None = None) -> None:
        """Marks the job of ``lease`` done and removes it. FAILED_PRECONDITION (a
        ``grpc.RpcError``) when the lease is no longer held: it ran out (the job may be with
        another worker), or the job was acked, nacked or purged; the job then stays."""
        self._run(_queue.ack(lease), timeout)

    def nack(
        self,
        lease: str,
        *,
        retry_after_ms: int | None = None,
        error: str = "",
        timeout: float | None = None,
    ) -> Nacked:
        """Gives the job of ``lease`` back to be retried ``retry_after_ms`` from now (None:
        the daemon's exponential backoff with jitter), recording ``error`` (at most 4 KiB),
        or moves it to the dead-letter list when it has had its ``max_attempts``.
        FAILED_PRECONDITION as for ``ack``."""
        return self._run(_queue.nack(lease, retry_after_ms, error), timeout)

    def extend(self, lease: str, lease_ms: int, *, timeout: float | None = None) -> int:
        """Moves the expiry of ``lease`` to ``lease_ms`` from now; returns the new expiry
        (Unix milliseconds). FAILED_PRECONDITION as for ``ack``."""
        return self._run(_queue.extend(lease, lease_ms), timeout)

    def stats(self, queue: str, *, timeout: float | None = None) -> QueueStats:
        """``queue``'s jobs by state (ready, delayed, leased, dead) and the age of its
        oldest ready job."""
        return self._run(_queue.stats(queue), timeout)

    def purge(self, queue: str, *, timeout: float | None = None) -> int:
        """Removes every ready and delayed job of ``queue`` (leased and dead ones stay);
        returns how many."""
        return self._run(_queue.purge(queue), timeout)

    def list_jobs(
        self, queue: str, *, page_size: int = 100, timeout: float | None = None
    ) -> Iterator[Job]:
        """``queue``'s waiting jobs (ready and delayed), in the order ``dequeue`` would hand
        them out once all are due, without leasing them; fetched ``page_size`` at a time
        (1..=1000), each page one call with its own ``timeout``."""
        token = ""
        while True:
            jobs, token = self._run(_queue.list_jobs(queue, page_size, token), timeout)
            yield from jobs
            if not token:
                return

    def list_dead(
        self, queue: str, *, page_size: int = 100, timeout: float | None = None
    ) -> Iterator[Job]:
        """``queue``'s dead jobs, oldest death first, with their ``last_error``; fetched
        ``page_size`` at a time, as ``list_jobs``."""
        token = ""
        while True:
            jobs, token = self._run(_queue.list_dead(queue, page_size, token), timeout)
            yield from jobs
            if not token:
                return

    def retry_dead(
        self, queue: str, ids: Sequence[int] | None = None, *, timeout: float | None = None
    ) -> int:
        """Makes dead jobs of ``queue`` ready again with their attempts reset: those of
        ``ids`` (at most 1000), or every one when ``ids`` is None. Returns how many."""
        named = _queue.dead_ids(ids)
        if named == []:
            return 0
        return self._run(_queue.retry_dead(queue, named), timeout)

    def purge_dead(
        self, queue: str, ids: Sequence[int] | None = None, *, timeout: float | None = None
    ) -> int:
        """Removes dead jobs of ``queue``: those of ``ids``, or every one when ``ids`` is
        None. Returns how many."""
        named = _queue.dead_ids(ids)
        if named == []:
            return 0
        return self._run(_queue.purge_dead(queue, named), timeout)

    def jobs(
        self,
        queues: str | Sequence[str],
        *,
        lease_ms: int = 30_000,
        wait_ms: int = 20_000,
        extend: bool = True,
        timeout: float | None = None,
    ) -> Iterator[LeasedJob]:
        """The worker loop: leases one job of ``queues`` at a time and yields it, forever.

        ::

            for job in larder.queue.jobs("email", lease_ms=60_000):
                with job:  # acked when the block ends, nacked with the error if it raises
                    send_email(job.payload)

        Each Dequeue waits up to ``wait_ms`` for a job. While the body runs, a thread
        extends the job's lease every ``lease_ms / 3`` (``extend=False``: never), so a job
        longer than its lease keeps it. ``with job:`` reports the outcome exactly: ack when
        the block ends normally; nack with the exception's text when it raises, and then
        an ``Exception`` is logged and swallowed so the loop goes on (anything else
        propagates). Without ``with``, a job is acked when the loop asks for the next one,
        and a job left unfinished when the loop is left (``break``, an exception, the
        iterator dropped: the loop cannot tell which) is nacked with the error ``LOOP_LEFT``
        and comes back after the retry backoff. An ack refused with FAILED_PRECONDITION (the
        lease ran out and the job went to another worker) is logged and the loop goes on.
        A Dequeue that finds the daemon unreachable is logged and tried again.
        """
        return _queue.run_jobs(self, queues, lease_ms, wait_ms, extend, timeout)


class HealthStub:
    """``grpc.health.v1.Health/Check`` on a channel (sync or asyncio), without health stubs.

    HealthCheckRequest {string service = 1} and HealthCheckResponse {ServingStatus status = 1}
    have the wire form of protobuf's StringValue and Int32Value, so the well-known wrappers
    stand in for the generated health messages.
    """

    def __init__(self, channel: Any) -> None:
        self.Check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=wrappers_pb2.StringValue.SerializeToString,
            response_deserializer=wrappers_pb2.Int32Value.FromString,
        )


class Health(_Api):
    """``grpc.health.v1.Health``: whether the daemon serves."""

    _service = "grpc.health.v1.Health"
    _stub = HealthStub


def health_call(service: str) -> Call[bool]:
    """Whether the daemon (or one ``larder.v1`` service) reports SERVING (status 1)."""
    return Call("Check", wrappers_pb2.StringValue, {"value": service}, True, lambda r: r.value == 1)


class Connection:
    """What both clients' ``Larder`` share: the constructor's arguments, checked once, and the
    transport they describe; each client opens its own channel and sub-APIs in ``_open``."""

    def __init__(
        self,
        target: str = "127.0.0.1:7379",
        token: str | None = None,
        timeout: float = 1.0,
        *,
        retries: int = 2,
        options: Sequence[tuple[str, object]] = (),
        tls: bool = False,
        root_certificates: bytes | None = None,
        certificate_chain: bytes | None = None,
        private_key: bytes | None = None,
        allow_insecure_token: bool = False,
        reconnect_wait: float = 0.5,
        wait_for_ready: bool = False,
        core: str | None = None,
    ) -> None:
        transport = Transport.make(
            target,
            token,
            options,
            tls=tls,
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
            allow_insecure_token=allow_insecure_token,
            core=core,
        )
        self.target = target
        self.core = transport.core
        self._open(transport, {"token": token, "timeout": timeout, "retries": retries,
                               "reconnect_wait": reconnect_wait,
                               "wait_for_ready": wait_for_ready})  # fmt: skip

    def _open(self, transport: Transport, invoker: dict[str, Any]) -> None:
        raise NotImplementedError  # each client's Larder opens its own kind of channel


class Larder(Connection):
    """A connection to a Larder daemon.

    ``target`` is ``host:port`` or ``unix:/path/to/socket``. ``token`` is sent as
    ``authorization: Bearer <token>`` on every call. ``timeout`` (seconds) is the deadline of
    every call unless the call passes its own ``timeout=``. Idempotent calls are retried
    ``retries`` times on UNAVAILABLE; others only when they never reached the daemon (see
    ``Invoker``).

    TLS: ``tls=True`` connects over TLS, checking the server's certificate against
    ``root_certificates`` (PEM bytes; default: the bundled Mozilla roots); ``certificate_chain`` and
    ``private_key`` (PEM bytes) present a client certificate. A token is never sent in
    cleartext to a host that is not loopback or a Unix socket: that raises
    ``InsecureTokenError`` here, unless ``allow_insecure_token=True``.

    Restarts: a call that fails with UNAVAILABLE and may be tried again (an idempotent one,
    or any call that never reached the daemon) waits up to ``reconnect_wait`` seconds
    (default 0.5; 0 fails at once) for the channel to connect again, so a restart of the
    daemon costs no errors; a daemon that stays down fails it with UNAVAILABLE after that
    wait. ``wait_for_ready=True`` is grpc's own alternative: every call waits for the
    connection within its deadline (DEADLINE_EXCEEDED, naming no cause, if it never comes).

    Core: ``core="native"`` carries the calls on the Rust extension built with the package
    (tonic, with the GIL released during a call), ``core="grpc"`` on grpcio; ``"auto"`` (the
    default, or the ``LARDER_CLIENT_CORE`` environment variable) takes the native core where
    it is installed and can carry the connection (not with channel ``options`` that only
    grpcio knows), grpcio otherwise. ``larder.core`` says which one was taken. Both behave
    the same: same answers, errors, retries and deadlines.

    Errors: INVALID_ARGUMENT raises ``LarderError`` (a ValueError); every other failure
    raises the ``grpc.RpcError`` (``.code()``, ``.details()``). Use it as a context manager,
    or call ``close()``, to close the channel. Create one per process and share it.
    """

    cache: Cache
    sessions: Sessions
    ratelimit: RateLimit
    queue: Queue

    def _open(self, transport: Transport, invoker: dict[str, Any]) -> None:
        self._binding: Binding = transport.binding()
        self._call = Invoker(**invoker, ready=self._binding.ready)
        self.cache = Cache(self._binding, self._call)
        self.sessions = Sessions(self._binding, self._call)
        self.ratelimit = RateLimit(self._binding, self._call)
        self.queue = Queue(self._binding, self._call)
        self._health = Health(self._binding, self._call)

    def health(self, service: str = "", *, timeout: float | None = None) -> bool:
        """Whether the daemon (or one ``larder.v1`` service) reports SERVING."""
        return self._health._run(health_call(service), timeout)

    def close(self) -> None:
        """Closes the channel; calls after this fail."""
        self._binding.close()

    def __enter__(self) -> Larder:  # noqa: PYI034  (typing.Self needs Python 3.11)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


__all__: list[str] = ["Cache", "Connection", "Larder", "Queue", "RateLimit", "Sessions"]
