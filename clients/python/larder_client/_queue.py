"""The job queue's calls, and the worker loop behind ``queue.jobs`` (blocking and asyncio).

The calls (``enqueue`` ... ``purge_dead``) are built here once, as ``_calls`` builds the
cache's, and run by both clients' ``Queue`` sub-API. Which are retried after an UNAVAILABLE
that may have reached the daemon (see ``_invoke``): those whose second try leaves the same
state, ``ack``, ``extend``, the reads, and ``retry_dead``/``purge_dead`` of named ids. Never
``enqueue``, ``enqueue_many`` (a second try would add the jobs twice), ``dequeue`` (it would
lease jobs that nobody works on until their lease runs out), ``nack`` (its answer would be
lost to FAILED_PRECONDITION), ``purge`` or the "every dead job" forms (they would also take
what other workers added in between).

The worker loop leases one job at a time and hands it out as a ``LeasedJob``. While the
body runs, a keeper (a thread, or an asyncio task) extends the lease every third of
``lease_ms``, so a job longer than its lease keeps it. How the job ends:

- ``with job:`` (``async with job:``) around the body reports the outcome exactly: the job is
  acked when the block ends normally, and nacked with the exception's text when it raises.
  An ``Exception`` is then logged and swallowed, so the loop goes on to the next job (as
  Huey's and Celery's consumers do); anything else (KeyboardInterrupt, SystemExit,
  cancellation) propagates after the nack.
- Without ``with``, the job is acked when the loop asks for the next one. When the loop is
  left while a job is unfinished (``break``, ``return``, an exception, or the iterator
  dropped), the loop cannot tell success from failure (a generator only learns that it was
  closed), so the job is nacked with the error ``LOOP_LEFT``: it is delivered again after
  the retry backoff. With the body in ``with job:``, a ``break`` after the block leaves no
  job unfinished.
- An ack or nack that the daemon refuses with FAILED_PRECONDITION means the lease was lost
  (it ran out, say after the process was stopped longer than the lease, and the job went to
  another worker): it is logged and the loop goes on. Any other failure of an ack or nack
  is logged too, and the job comes back when its lease runs out (delivery is at least
  once).
- A Dequeue that fails with UNAVAILABLE or DEADLINE_EXCEEDED (the daemon is restarting) is
  logged and tried again after a pause (up to a second), so a worker rides through restarts.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import grpc

from ._calls import Call
from ._gen.larder.v1 import queue_pb2
from ._invoke import LarderError, describe, status_code
from ._types import Enqueued, Job, Nacked, NewJob, QueueStats

log = logging.getLogger("larder_client.queue")

# The error a job is nacked with when the worker loop was left before the job was finished.
LOOP_LEFT = "the worker loop was left before the job was finished"

# Bytes of an error kept with a nacked job (the daemon's bound on NackRequest.error).
MAX_ERROR_BYTES = 4096

# The longest pause between two Dequeues that failed because the daemon was unreachable.
MAX_DEQUEUE_PAUSE = 1.0

_UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def _unsigned(name: str, value: int) -> int:
    """``value`` of a uint field; a negative one is a LarderError naming ``name`` on both
    cores alike (protobuf would raise its own ValueError, worded by each core)."""
    if value < 0:
        raise LarderError(f"{name}: must be 0 or more, not {value}")
    return value


def _new_job(job: NewJob, prefix: str = "job.") -> dict[str, Any]:
    return {
        "queue": job.queue,
        "payload": job.payload,
        "delay_ms": _unsigned(f"{prefix}delay_ms", job.delay_ms),
        "run_at_ms": job.run_at_ms,
        "priority": job.priority,
        "max_attempts": _unsigned(f"{prefix}max_attempts", job.max_attempts),
        "dedup_key": job.dedup_key,
    }


def _enqueued(r: Any) -> Enqueued:
    return Enqueued(int(r.id), bool(r.duplicate))


def enqueue(job: NewJob) -> Call[Enqueued]:
    return Call("Enqueue", queue_pb2.EnqueueRequest, {"job": _new_job(job)}, False, _enqueued)


def enqueue_many(jobs: Iterable[NewJob]) -> Call[list[Enqueued]]:
    items = [_new_job(job, f"jobs[{i}].") for i, job in enumerate(jobs)]
    return Call(
        "EnqueueMany",
        queue_pb2.EnqueueManyRequest,
        {"jobs": items},
        False,
        lambda r: [_enqueued(e) for e in r.results],
    )


def queue_names(queues: str | Sequence[str]) -> list[str]:
    """One queue name or several, as Dequeue's list of names."""
    return [queues] if isinstance(queues, str) else list(queues)


def dequeue(
    queues: str | Sequence[str],
    max_jobs: int,
    lease_ms: int,
    wait_ms: int,
    auto_ack: bool,
    due_by_ms: int,
) -> Call[list[Job]]:
    fields = {
        "queues": queue_names(queues),
        "max_jobs": _unsigned("max_jobs", max_jobs),
        "lease_ms": _unsigned("lease_ms", lease_ms),
        "wait_ms": _unsigned("wait_ms", wait_ms),
        "auto_ack": auto_ack,
        "due_by_ms": due_by_ms,
    }
    return Call(
        "Dequeue",
        queue_pb2.DequeueRequest,
        fields,
        False,
        lambda r: [Job._from_pb(j) for j in r.jobs],
    )


def dequeue_deadline(timeout: float, wait_ms: int) -> float:
    """A Dequeue's deadline: the call's own ``timeout`` on top of the time it may wait."""
    return timeout + max(wait_ms, 0) / 1000


def ack(lease: str) -> Call[None]:
    return Call("Ack", queue_pb2.AckRequest, {"lease": lease}, True, lambda r: None)


def error_text(error: str) -> str:
    """``error`` cut to ``MAX_ERROR_BYTES`` of UTF-8 (at a character boundary)."""
    return error.encode()[:MAX_ERROR_BYTES].decode("utf-8", "ignore")


def nack(lease: str, retry_after_ms: int | None, error: str) -> Call[Nacked]:
    fields: dict[str, Any] = {"lease": lease, "error": error}
    if retry_after_ms is not None:  # unset = the daemon's backoff; 0 = ready again at once
        fields["retry_after_ms"] = _unsigned("retry_after_ms", retry_after_ms)
    return Call(
        "Nack",
        queue_pb2.NackRequest,
        fields,
        False,
        lambda r: Nacked(bool(r.dead), int(r.ready_at_ms)),
    )


def extend(lease: str, lease_ms: int) -> Call[int]:
    # Retried: a second Extend moves the expiry to the same place, from a moment later.
    return Call(
        "Extend",
        queue_pb2.ExtendRequest,
        {"lease": lease, "lease_ms": _unsigned("lease_ms", lease_ms)},
        True,
        lambda r: int(r.lease_expires_at_ms),
    )


def stats(queue: str) -> Call[QueueStats]:
    return Call(
        "Stats",
        queue_pb2.QueueServiceStatsRequest,
        {"queue": queue},
        True,
        lambda r: QueueStats(
            ready=int(r.ready),
            delayed=int(r.delayed),
            leased=int(r.leased),
            dead=int(r.dead),
            oldest_ready_age_ms=int(r.oldest_ready_age_ms),
        ),
    )


def purge(queue: str) -> Call[int]:
    return Call("Purge", queue_pb2.PurgeRequest, {"queue": queue}, False, lambda r: int(r.deleted))


Page = tuple[list[Job], str]


def _page(r: Any) -> Page:
    return [Job._from_pb(j) for j in r.jobs], str(r.next_page_token)


def list_jobs(queue: str, page_size: int, page_token: str) -> Call[Page]:
    fields = {"queue": queue, "page_size": _unsigned("page_size", page_size)}
    fields["page_token"] = page_token
    return Call("ListJobs", queue_pb2.ListJobsRequest, fields, True, _page)


def list_dead(queue: str, page_size: int, page_token: str) -> Call[Page]:
    fields = {"queue": queue, "page_size": _unsigned("page_size", page_size)}
    fields["page_token"] = page_token
    return Call("ListDead", queue_pb2.ListDeadRequest, fields, True, _page)


def dead_ids(ids: Sequence[int] | None) -> list[int] | None:
    """The ids of ``retry_dead``/``purge_dead``: None = every dead job; an empty sequence
    names none (the caller answers 0 without a call: on the wire, empty means every one)."""
    if ids is None:
        return None
    return [_unsigned("ids", int(i)) for i in ids]


def retry_dead(queue: str, ids: list[int] | None) -> Call[int]:
    return Call(
        "RetryDead",
        queue_pb2.RetryDeadRequest,
        {"queue": queue, "ids": ids or []},
        ids is not None,  # named ids: a second try finds them ready and leaves them
        lambda r: int(r.retried),
    )


def purge_dead(queue: str, ids: list[int] | None) -> Call[int]:
    return Call(
        "PurgeDead",
        queue_pb2.PurgeDeadRequest,
        {"queue": queue, "ids": ids or []},
        ids is not None,
        lambda r: int(r.deleted),
    )


# --- the worker loop ------------------------------------------------------------------------


def describe_exception(exc: BaseException) -> str:
    """What a nack records of ``exc``: its type and message (a gRPC error: its status)."""
    if isinstance(exc, grpc.RpcError):
        return describe(exc)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(frozen=True)
class LeasedJob(Job):
    """A job handed out by ``queue.jobs``: a ``Job``, and its own outcome's reporter.

    ``with job:`` (``async with job:`` from the asyncio client) around the body acks the job
    when the block ends normally and nacks it with the exception's text when it raises; an
    ``Exception`` is logged and swallowed so the loop goes on, anything else propagates.
    """

    _worker: Any = field(default=None, repr=False, compare=False)

    def __enter__(self) -> LeasedJob:  # noqa: PYI034  (typing.Self needs Python 3.11)
        self._worker.check_sync()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        self._worker.settle(self, exc)
        return isinstance(exc, Exception)

    async def __aenter__(self) -> LeasedJob:  # noqa: PYI034  (typing.Self needs Python 3.11)
        self._worker.check_async()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        await self._worker.settle(self, exc)
        return isinstance(exc, Exception)


def _leased(job: Job, worker: Any) -> LeasedJob:
    return LeasedJob(**job.__dict__, _worker=worker)


def _log_outcome(job: Job, exc: BaseException | None) -> None:
    if isinstance(exc, Exception):
        log.error(
            "job %d of queue %r failed (attempt %d of %d); it was nacked",
            job.id,
            job.queue,
            job.attempt,
            job.max_attempts,
            exc_info=exc,
        )


def _log_settle_failure(job: Job, what: str, err: BaseException) -> None:
    if status_code(err) == grpc.StatusCode.FAILED_PRECONDITION:
        log.warning(
            "job %d of queue %r: %s refused, the lease was lost (it ran out and the job went "
            "to another worker): %s",
            job.id,
            job.queue,
            what,
            describe(err),
        )
    else:
        log.error(
            "job %d of queue %r: %s failed; the job is delivered again when its lease runs out: %s",
            job.id,
            job.queue,
            what,
            describe(err),
        )


class _LeaseKeeper:
    """Extends the lease of the job being worked on every ``lease_ms / 3``, on a thread of
    its own (started with the first job, ended by ``close``)."""

    def __init__(self, extend: Callable[[str, int], int], lease_ms: int) -> None:
        self._extend = extend
        self._lease_ms = lease_ms
        self._cond = threading.Condition()
        self._lease: str | None = None
        self._job: Job | None = None
        # Changes on every hold and release, so a tick that started for one job never acts
        # for the next.
        self._generation = 0
        self._closed = False
        self._thread: threading.Thread | None = None

    def hold(self, job: Job) -> None:
        with self._cond:
            self._job, self._lease = job, job.lease
            self._generation += 1
            self._cond.notify()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="larder-lease-keeper", daemon=True
                )
                self._thread.start()

    def release(self) -> None:
        with self._cond:
            self._job, self._lease = None, None
            self._generation += 1
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        interval = self._lease_ms / 3 / 1000
        with self._cond:
            while not self._closed:
                if self._lease is None or self._job is None:
                    self._cond.wait()
                    continue
                generation, lease, job = self._generation, self._lease, self._job
                due = time.monotonic() + interval
                while not self._closed and self._generation == generation:
                    left = due - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                if self._closed or self._generation != generation:
                    continue
                self._cond.release()
                try:
                    self._extend(lease, self._lease_ms)
                    lost = False
                except grpc.RpcError as err:
                    lost = status_code(err) == grpc.StatusCode.FAILED_PRECONDITION
                    failed: BaseException | None = err
                else:
                    failed = None
                finally:
                    self._cond.acquire()
                if failed is not None and self._generation == generation:
                    # (After a release the job was acked or nacked: an Extend that lost
                    # the race to it says nothing.)
                    _log_extend_failure(job, failed, lost)
                    if lost:
                        self._lease = None


def _log_extend_failure(job: Job, err: BaseException, lost: bool) -> None:
    if lost:
        log.warning(
            "job %d of queue %r: its lease was lost (it ran out and the job went to another "
            "worker); no longer extending it: %s",
            job.id,
            job.queue,
            describe(err),
        )
    else:
        log.warning(
            "job %d of queue %r: could not extend its lease, trying again: %s",
            job.id,
            job.queue,
            describe(err),
        )


class Worker:
    """The blocking worker loop's state: the job being worked on and its lease keeper."""

    def __init__(self, api: Any, lease_ms: int, extend: bool) -> None:
        self._api = api
        self._keeper = _LeaseKeeper(api.extend, lease_ms) if extend else None
        self.current: LeasedJob | None = None

    @staticmethod
    def check_sync() -> None:
        pass

    @staticmethod
    def check_async() -> None:
        raise TypeError("a job of the blocking client's queue.jobs is used with `with job:`")

    def start(self, job: LeasedJob) -> None:
        self.current = job
        if self._keeper is not None:
            self._keeper.hold(job)

    def settle(self, job: LeasedJob, exc: BaseException | None, error: str | None = None) -> None:
        """Acks ``job`` (``exc`` None) or nacks it with ``exc``'s text (or ``error``), once:
        a job already settled is left alone."""
        if self.current is not job:
            return
        self.current = None
        if self._keeper is not None:
            self._keeper.release()
        _log_outcome(job, exc)
        try:
            if exc is None and error is None:
                self._api.ack(job.lease)
            else:
                text = error if error is not None else describe_exception(exc)  # type: ignore[arg-type]
                self._api.nack(job.lease, error=error_text(text))
        except grpc.RpcError as err:
            _log_settle_failure(job, "ack" if exc is None and error is None else "nack", err)

    def close(self) -> None:
        if self._keeper is not None:
            self._keeper.close()


def _check_lease(lease_ms: int) -> None:
    """The worker loops extend and settle leases: a job needs one of 1 ms or more."""
    if lease_ms <= 0:
        raise LarderError(
            f"lease_ms: the worker loop needs a lease of 1 ms or more, not {lease_ms}"
        )


def run_jobs(
    api: Any,
    queues: str | Sequence[str],
    lease_ms: int,
    wait_ms: int,
    extend: bool,
    timeout: float | None,
) -> Iterator[LeasedJob]:
    """The blocking worker loop (``Queue.jobs``); see this module's docstring."""
    _check_lease(lease_ms)
    worker = Worker(api, lease_ms, extend)
    pause = 0.05
    try:
        while True:
            try:
                got = api.dequeue(
                    queues, max_jobs=1, lease_ms=lease_ms, wait_ms=wait_ms, timeout=timeout
                )
            except grpc.RpcError as err:
                if status_code(err) not in _UNREACHABLE:
                    raise
                log.warning("dequeue failed, trying again in %.2f s: %s", pause, describe(err))
                time.sleep(pause)
                pause = min(pause * 2, MAX_DEQUEUE_PAUSE)
                continue
            pause = 0.05
            for job in got:
                leased = _leased(job, worker)
                worker.start(leased)
                yield leased
                worker.settle(leased, None)
    finally:
        if worker.current is not None:
            worker.settle(worker.current, None, error=LOOP_LEFT)
        worker.close()


class AsyncWorker:
    """The asyncio worker loop's state: the job being worked on and the task extending its
    lease."""

    def __init__(self, api: Any, lease_ms: int, extend: bool) -> None:
        self._api = api
        self._lease_ms = lease_ms
        self._extend = extend
        self._keeper: asyncio.Task[None] | None = None
        self.current: LeasedJob | None = None

    @staticmethod
    def check_sync() -> None:
        raise TypeError("a job of the asyncio client's queue.jobs is used with `async with job:`")

    @staticmethod
    def check_async() -> None:
        pass

    def start(self, job: LeasedJob) -> None:
        self.current = job
        if self._extend:
            self._keeper = asyncio.get_running_loop().create_task(self._keep(job))

    async def _keep(self, job: LeasedJob) -> None:
        interval = self._lease_ms / 3 / 1000
        while True:
            await asyncio.sleep(interval)
            try:
                await self._api.extend(job.lease, self._lease_ms)
            except grpc.RpcError as err:
                lost = status_code(err) == grpc.StatusCode.FAILED_PRECONDITION
                _log_extend_failure(job, err, lost)
                if lost:
                    return

    async def _stop_keeper(self) -> None:
        keeper, self._keeper = self._keeper, None
        if keeper is None:
            return
        keeper.cancel()
        # asyncio.wait, not ``await keeper``: the keeper's CancelledError must not be taken
        # for a cancellation of this task, nor this task's swallowed as the keeper's.
        await asyncio.wait([keeper])
        if not keeper.cancelled() and keeper.exception() is not None:
            log.error("the lease keeper failed", exc_info=keeper.exception())

    async def settle(
        self, job: LeasedJob, exc: BaseException | None, error: str | None = None
    ) -> None:
        """``Worker.settle``, awaited."""
        if self.current is not job:
            return
        self.current = None
        await self._stop_keeper()
        _log_outcome(job, exc)
        try:
            if exc is None and error is None:
                await self._api.ack(job.lease)
            else:
                text = error if error is not None else describe_exception(exc)  # type: ignore[arg-type]
                await self._api.nack(job.lease, error=error_text(text))
        except grpc.RpcError as err:
            _log_settle_failure(job, "ack" if exc is None and error is None else "nack", err)

    async def close(self) -> None:
        await self._stop_keeper()


async def arun_jobs(
    api: Any,
    queues: str | Sequence[str],
    lease_ms: int,
    wait_ms: int,
    extend: bool,
    timeout: float | None,
) -> AsyncIterator[LeasedJob]:
    """The asyncio worker loop (``aio`` ``Queue.jobs``); see this module's docstring."""
    _check_lease(lease_ms)
    worker = AsyncWorker(api, lease_ms, extend)
    pause = 0.05
    try:
        while True:
            try:
                got = await api.dequeue(
                    queues, max_jobs=1, lease_ms=lease_ms, wait_ms=wait_ms, timeout=timeout
                )
            except grpc.RpcError as err:
                if status_code(err) not in _UNREACHABLE:
                    raise
                log.warning("dequeue failed, trying again in %.2f s: %s", pause, describe(err))
                await asyncio.sleep(pause)
                pause = min(pause * 2, MAX_DEQUEUE_PAUSE)
                continue
            pause = 0.05
            for job in got:
                leased = _leased(job, worker)
                worker.start(leased)
                yield leased
                await worker.settle(leased, None)
    finally:
        if worker.current is not None:
            await worker.settle(worker.current, None, error=LOOP_LEFT)
        await worker.close()
