"""``larder.queue`` against a real daemon: enqueue and dequeue, leases, retries, dead letters,
listing, and the ``jobs`` worker loop (acks, nacks, lease extension, a lost lease).

CI runs this module once per core (LARDER_CLIENT_CORE=grpc, then =native). Waits are
bounded by generous deadlines; no test asserts how long anything took.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Iterator

import grpc
import pytest
from conftest import Daemon

from larder_client import Enqueued, Job, Larder, LarderError, LeasedJob, Nacked, NewJob, QueueStats
from larder_client._queue import LOOP_LEFT


def fresh(prefix: str = "q") -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture(params=["tcp", "unix"])
def larder(request: pytest.FixtureRequest, daemon: Daemon) -> Iterator[Larder]:
    target = daemon.addr if request.param == "tcp" else daemon.unix_target
    with Larder(target, timeout=5.0) as client:
        yield client


def code_of(excinfo: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    return excinfo.value.code()


def one(larder: Larder, queue: str, **kwargs: object) -> Job:
    jobs = larder.queue.dequeue(queue, **kwargs)  # type: ignore[arg-type]
    assert len(jobs) == 1, jobs
    return jobs[0]


def test_an_enqueued_job_is_leased_with_its_fields_and_acked_once(larder: Larder) -> None:
    queue = fresh()
    before = now_ms()
    added = larder.queue.enqueue(queue, b"\x00payload\xff", priority=3, max_attempts=7)
    assert isinstance(added, Enqueued) and added.id > 0 and added.duplicate is False
    job = one(larder, queue, lease_ms=60_000)
    assert isinstance(job, Job)
    assert (job.id, job.queue, job.payload) == (added.id, queue, b"\x00payload\xff")
    assert (job.attempt, job.max_attempts, job.priority) == (1, 7, 3)
    assert job.lease and job.last_error == ""
    assert before - 1000 <= job.enqueued_at_ms <= job.ready_at_ms <= now_ms() + 1000
    assert job.lease_expires_at_ms >= job.enqueued_at_ms + 59_000
    assert larder.queue.stats(queue) == QueueStats(0, 0, 1, 0, 0)
    assert larder.queue.dequeue(queue) == []
    larder.queue.ack(job.lease)
    assert larder.queue.stats(queue) == QueueStats(0, 0, 0, 0, 0)
    with pytest.raises(grpc.RpcError) as again:
        larder.queue.ack(job.lease)
    assert code_of(again) == grpc.StatusCode.FAILED_PRECONDITION


def test_the_default_attempts_are_the_servers(larder: Larder) -> None:
    queue = fresh()
    larder.queue.enqueue(queue, b"x")
    job = one(larder, queue)
    assert job.max_attempts == 5
    larder.queue.ack(job.lease)


def test_ready_jobs_go_by_priority_then_in_order_across_queues(larder: Larder) -> None:
    a, b = fresh("a"), fresh("b")
    larder.queue.enqueue(a, b"a-low-1")
    larder.queue.enqueue(b, b"b-high", priority=5)
    larder.queue.enqueue(a, b"a-low-2")
    larder.queue.enqueue(a, b"a-high", priority=5)
    jobs = larder.queue.dequeue([a, b], max_jobs=10, auto_ack=True)
    assert [j.payload for j in jobs] == [b"b-high", b"a-high", b"a-low-1", b"a-low-2"]
    assert all(j.lease == "" and j.attempt == 1 for j in jobs)
    assert larder.queue.stats(a) == QueueStats(0, 0, 0, 0, 0)


def test_max_jobs_bounds_one_dequeue(larder: Larder) -> None:
    queue = fresh()
    larder.queue.enqueue_many(NewJob(queue, str(i).encode()) for i in range(5))
    first = larder.queue.dequeue(queue, max_jobs=3)
    assert [j.payload for j in first] == [b"0", b"1", b"2"]
    rest = larder.queue.dequeue(queue, max_jobs=3)
    assert [j.payload for j in rest] == [b"3", b"4"]
    for job in first + rest:
        larder.queue.ack(job.lease)


def test_a_dedup_key_answers_the_first_jobs_id_while_it_exists(larder: Larder) -> None:
    queue = fresh()
    first = larder.queue.enqueue(queue, b"one", dedup_key="welcome:42")
    again = larder.queue.enqueue(queue, b"two", dedup_key="welcome:42")
    assert again == Enqueued(first.id, True)
    other = larder.queue.enqueue(fresh(), b"one", dedup_key="welcome:42")  # another queue
    assert other.duplicate is False and other.id != first.id
    job = one(larder, queue)
    assert job.payload == b"one"
    larder.queue.ack(job.lease)
    after = larder.queue.enqueue(queue, b"three", dedup_key="welcome:42")
    assert after.duplicate is False and after.id != first.id


def test_enqueue_many_answers_in_order_and_is_all_or_none(larder: Larder) -> None:
    a, b = fresh("a"), fresh("b")
    answers = larder.queue.enqueue_many(
        [NewJob(a, b"1"), NewJob(b, b"2", priority=1), NewJob(a, b"3", dedup_key="k")]
    )
    assert [type(x) for x in answers] == [Enqueued] * 3
    assert len({x.id for x in answers}) == 3
    assert larder.queue.stats(a).ready == 2 and larder.queue.stats(b).ready == 1
    c = fresh("c")
    with pytest.raises(LarderError, match="queue"):
        larder.queue.enqueue_many([NewJob(c, b"fine"), NewJob("", b"no queue name")])
    assert larder.queue.stats(c) == QueueStats(0, 0, 0, 0, 0)


def test_a_delayed_job_waits_and_due_by_takes_it_early(larder: Larder) -> None:
    queue = fresh()
    larder.queue.enqueue(queue, b"later", delay_ms=3_600_000)
    stats = larder.queue.stats(queue)
    assert (stats.ready, stats.delayed) == (0, 1)
    assert larder.queue.dequeue(queue) == []
    job = one(larder, queue, due_by_ms=now_ms() + 7_200_000)
    assert job.payload == b"later" and job.ready_at_ms > now_ms() + 3_000_000
    larder.queue.ack(job.lease)
    run_at = now_ms() - 60_000  # in the past: ready at once
    larder.queue.enqueue(queue, b"past", run_at_ms=run_at)
    assert one(larder, queue, auto_ack=True).ready_at_ms == run_at


def test_a_nacked_job_comes_back_and_dies_after_its_attempts(larder: Larder) -> None:
    queue = fresh()
    added = larder.queue.enqueue(queue, b"flaky", max_attempts=2)
    first = one(larder, queue)
    nacked = larder.queue.nack(first.lease, retry_after_ms=0, error="smtp timeout")
    assert isinstance(nacked, Nacked) and nacked.dead is False and nacked.ready_at_ms > 0
    second = one(larder, queue, wait_ms=5_000)
    assert (second.id, second.attempt, second.last_error) == (added.id, 2, "smtp timeout")
    assert second.lease != first.lease
    assert larder.queue.nack(second.lease, error="smtp refused") == Nacked(True, 0)
    assert larder.queue.stats(queue).dead == 1
    (dead,) = list(larder.queue.list_dead(queue))
    assert (dead.id, dead.payload, dead.last_error, dead.lease) == (
        added.id,
        b"flaky",
        "smtp refused",
        "",
    )
    assert larder.queue.retry_dead(queue, []) == 0  # names none (on the wire, [] is "all")
    assert larder.queue.retry_dead(queue, [added.id]) == 1
    again = one(larder, queue)
    assert (again.id, again.attempt) == (added.id, 1)
    assert larder.queue.nack(again.lease, retry_after_ms=3_600_000).dead is False
    assert larder.queue.stats(queue).delayed == 1


def test_nack_without_retry_after_follows_the_backoff(larder: Larder) -> None:
    queue = fresh()
    larder.queue.enqueue(queue, b"x")
    job = one(larder, queue)
    nacked = larder.queue.nack(job.lease, error="later")
    assert nacked.dead is False and nacked.ready_at_ms >= now_ms() - 1000
    stats = larder.queue.stats(queue)
    assert stats.ready + stats.delayed == 1


def test_purge_dead_and_retry_dead_of_every_job(larder: Larder) -> None:
    queue = fresh()
    for i in range(3):
        larder.queue.enqueue(queue, str(i).encode(), max_attempts=1)
    for job in larder.queue.dequeue(queue, max_jobs=3):
        assert larder.queue.nack(job.lease, error="no").dead
    assert larder.queue.stats(queue).dead == 3
    assert larder.queue.purge_dead(queue, []) == 0
    first = next(iter(larder.queue.list_dead(queue)))
    assert larder.queue.purge_dead(queue, [first.id]) == 1
    assert larder.queue.retry_dead(queue) == 2
    assert larder.queue.stats(queue).ready == 2
    for job in larder.queue.dequeue(queue, max_jobs=3):
        larder.queue.nack(job.lease)
    assert larder.queue.purge_dead(queue) == 2
    assert larder.queue.stats(queue) == QueueStats(0, 0, 0, 0, 0)


def test_extend_moves_the_expiry_and_a_lost_lease_is_refused(larder: Larder) -> None:
    queue = fresh()
    larder.queue.enqueue(queue, b"x")
    job = one(larder, queue, lease_ms=60_000)
    expiry = larder.queue.extend(job.lease, 600_000)
    assert expiry >= job.lease_expires_at_ms + 500_000
    larder.queue.ack(job.lease)
    for call in (
        lambda: larder.queue.extend(job.lease, 1_000),
        lambda: larder.queue.nack(job.lease, error="late"),
    ):
        with pytest.raises(grpc.RpcError) as refused:
            call()
        assert code_of(refused) == grpc.StatusCode.FAILED_PRECONDITION


def test_an_expired_lease_makes_the_job_ready_again_and_refuses_the_old_lease(
    larder: Larder,
) -> None:
    queue = fresh()
    added = larder.queue.enqueue(queue, b"slow")
    first = one(larder, queue, lease_ms=200)
    # The job comes back once the lease has run out (the wait is bounded, not asserted).
    second = one(larder, queue, lease_ms=60_000, wait_ms=10_000)
    assert (second.id, second.attempt, second.last_error) == (added.id, 2, "lease expired")
    with pytest.raises(grpc.RpcError) as refused:
        larder.queue.ack(first.lease)
    assert code_of(refused) == grpc.StatusCode.FAILED_PRECONDITION
    assert larder.queue.stats(queue).leased == 1  # the refused ack removed nothing
    larder.queue.ack(second.lease)


def test_a_waiting_dequeue_is_woken_by_an_enqueue(larder: Larder) -> None:
    queue = fresh()
    got: list[Job] = []
    waiter = threading.Thread(
        target=lambda: got.extend(larder.queue.dequeue(queue, wait_ms=30_000, auto_ack=True)),
        daemon=True,
    )
    waiter.start()
    time.sleep(0.2)  # most likely waiting by now; if not, it finds the job at once
    larder.queue.enqueue(queue, b"wake")
    waiter.join(timeout=30)
    assert not waiter.is_alive()
    assert [j.payload for j in got] == [b"wake"]


def test_the_deadline_of_a_dequeue_covers_its_wait(daemon: Daemon) -> None:
    # A 0.3 s client timeout and a 1.5 s wait: the call must not end in DEADLINE_EXCEEDED.
    with Larder(daemon.addr, timeout=0.3) as short:
        assert short.queue.dequeue(fresh(), wait_ms=1_500) == []


def test_list_jobs_follows_the_pages_in_dequeue_order(larder: Larder) -> None:
    queue = fresh()
    larder.queue.enqueue_many(NewJob(queue, str(i).encode()) for i in range(7))
    larder.queue.enqueue(queue, b"first", priority=9)
    listed = list(larder.queue.list_jobs(queue, page_size=3))
    assert [j.payload for j in listed] == [b"first", *(str(i).encode() for i in range(7))]
    assert all(j.lease == "" and j.queue == queue for j in listed)
    assert larder.queue.stats(queue).ready == 8  # listing leased nothing


def test_stats_and_purge(larder: Larder) -> None:
    queue = fresh()
    larder.queue.enqueue_many([NewJob(queue, b"a"), NewJob(queue, b"b")])
    larder.queue.enqueue(queue, b"later", delay_ms=3_600_000)
    leased = one(larder, queue)
    stats = larder.queue.stats(queue)
    assert (stats.ready, stats.delayed, stats.leased, stats.dead) == (1, 1, 1, 0)
    assert larder.queue.purge(queue) == 2
    assert larder.queue.stats(queue) == QueueStats(0, 0, 1, 0, 0)
    larder.queue.ack(leased.lease)


def test_bad_input_is_a_larder_error_naming_the_field(larder: Larder) -> None:
    with pytest.raises(LarderError, match="queue"):
        larder.queue.enqueue("", b"x")
    with pytest.raises(LarderError, match="queue"):
        larder.queue.enqueue("q" * 129, b"x")
    with pytest.raises(LarderError, match="delay_ms"):
        larder.queue.enqueue(fresh(), b"x", delay_ms=-1)
    with pytest.raises(LarderError, match="jobs\\[1\\].max_attempts"):
        larder.queue.enqueue_many([NewJob(fresh(), b"x"), NewJob(fresh(), b"x", max_attempts=-1)])
    with pytest.raises(LarderError, match="lease"):
        larder.queue.ack("not a lease")
    with pytest.raises(LarderError, match="retry_after_ms"):
        larder.queue.nack("whatever", retry_after_ms=-5)
    with pytest.raises(LarderError, match="wait_ms"):
        larder.queue.dequeue(fresh(), wait_ms=60_000)
    with pytest.raises(LarderError, match="queues"):
        larder.queue.dequeue([])


# --- the worker loop ------------------------------------------------------------------------


def test_the_loop_acks_a_job_whose_block_ended_and_nacks_one_that_raised(
    larder: Larder, caplog: pytest.LogCaptureFixture
) -> None:
    queue = fresh()
    ok = larder.queue.enqueue(queue, b"ok")
    bad = larder.queue.enqueue(queue, b"bad")
    seen: list[LeasedJob] = []
    with contextlib.closing(larder.queue.jobs(queue, lease_ms=30_000, wait_ms=1_000)) as jobs:
        for job in jobs:
            with job:
                seen.append(job)
                if job.payload == b"bad":
                    raise RuntimeError("smtp said no")
            if len(seen) == 2:
                break
    assert [j.id for j in seen] == [ok.id, bad.id]
    stats = larder.queue.stats(queue)
    assert (stats.ready + stats.delayed, stats.leased, stats.dead) == (1, 0, 0)  # bad, retried
    (waiting,) = list(larder.queue.list_jobs(queue))
    assert waiting.id == bad.id and waiting.last_error == "RuntimeError: smtp said no"
    assert "smtp said no" in caplog.text  # logged with its traceback, and the loop went on


def test_without_with_the_next_iteration_acks_and_leaving_nacks(larder: Larder) -> None:
    queue = fresh()
    first = larder.queue.enqueue(queue, b"1")
    second = larder.queue.enqueue(queue, b"2")
    for job in larder.queue.jobs(queue, wait_ms=1_000):
        if job.id == second.id:
            break  # left unfinished: the loop cannot know it is done, so it is given back
    stats = larder.queue.stats(queue)
    assert stats.leased == 0 and stats.ready + stats.delayed == 1
    (back,) = list(larder.queue.list_jobs(queue))
    assert back.id == second.id and back.last_error == LOOP_LEFT
    assert first.id != second.id


def test_an_exception_out_of_the_loop_nacks_the_unfinished_job(larder: Larder) -> None:
    queue = fresh()
    added = larder.queue.enqueue(queue, b"x")
    with pytest.raises(KeyError):
        for _job in larder.queue.jobs(queue, wait_ms=1_000):
            raise KeyError("no such user")
    (back,) = list(larder.queue.list_jobs(queue))
    assert back.id == added.id and back.last_error == LOOP_LEFT


def test_the_loop_extends_the_lease_of_a_job_longer_than_it(larder: Larder) -> None:
    queue = fresh()
    added = larder.queue.enqueue(queue, b"long")
    stolen: list[Job] = []
    with contextlib.closing(larder.queue.jobs(queue, lease_ms=1_500, wait_ms=1_000)) as jobs:
        for job in jobs:
            with job:
                # Well past the 1.5 s lease, another consumer still finds nothing to take.
                deadline = time.monotonic() + 4.0
                while time.monotonic() < deadline:
                    stolen += larder.queue.dequeue(queue, wait_ms=500, auto_ack=True)
            break
    assert stolen == []
    assert job.id == added.id
    assert larder.queue.stats(queue) == QueueStats(0, 0, 0, 0, 0)  # acked


def test_a_lost_lease_is_logged_and_the_loop_goes_on(
    larder: Larder, caplog: pytest.LogCaptureFixture
) -> None:
    queue = fresh()
    first = larder.queue.enqueue(queue, b"slow")
    caplog.set_level(logging.WARNING, logger="larder_client.queue")
    taken: list[Job] = []
    seen: list[int] = []
    loop = larder.queue.jobs(queue, lease_ms=200, wait_ms=1_000, extend=False)
    with contextlib.closing(loop):
        for job in loop:
            seen.append(job.id)
            if job.id == first.id and not taken:
                with job:
                    # The lease runs out and another worker takes the job.
                    taken += larder.queue.dequeue(queue, lease_ms=60_000, wait_ms=10_000)
                larder.queue.enqueue(queue, b"next")
                continue
            break
    assert [j.id for j in taken] == [first.id]
    assert len(seen) == 2 and seen[1] != first.id  # the loop went on to the next job
    assert "lease was lost" in caplog.text
    larder.queue.ack(taken[0].lease)  # the other worker's ack is the one that counts


def test_the_loop_rides_through_a_daemon_restart() -> None:
    daemon = Daemon()
    try:
        with Larder(daemon.unix_target, timeout=5.0) as larder:
            queue = fresh()
            larder.queue.enqueue(queue, b"before")
            got: list[bytes] = []
            ready = threading.Event()

            def work() -> None:
                with contextlib.closing(larder.queue.jobs(queue, wait_ms=500)) as jobs:
                    for job in jobs:
                        with job:
                            got.append(job.payload)
                        ready.set()
                        if len(got) == 2:
                            return

            worker = threading.Thread(target=work, daemon=True)
            worker.start()
            assert ready.wait(timeout=30)
            assert daemon.restart() == 0  # on the same socket: the loop's dequeues fail, then
            larder.queue.enqueue(queue, b"after")  # work again
            worker.join(timeout=60)
            assert not worker.is_alive()
            assert got == [b"before", b"after"]
            assert larder.queue.stats(queue) == QueueStats(0, 0, 0, 0, 0)
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.cleanup()


def test_a_full_queue_answers_resource_exhausted_and_adds_nothing() -> None:
    daemon = Daemon(["--queue-max-jobs", "2"])
    try:
        with Larder(daemon.addr, timeout=5.0) as larder:
            queue = fresh()
            larder.queue.enqueue_many([NewJob(queue, b"1"), NewJob(queue, b"2")])
            with pytest.raises(grpc.RpcError) as full:
                larder.queue.enqueue(queue, b"3")
            assert code_of(full) == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert larder.queue.stats(queue).ready == 2
            assert larder.queue.enqueue(fresh(), b"another queue").duplicate is False
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.cleanup()


def test_a_base_exception_in_the_block_nacks_the_job_and_propagates(larder: Larder) -> None:
    queue = fresh()
    added = larder.queue.enqueue(queue, b"x")
    with pytest.raises(KeyboardInterrupt):
        for job in larder.queue.jobs(queue, wait_ms=1_000):
            with job:
                raise KeyboardInterrupt
    (back,) = list(larder.queue.list_jobs(queue))
    assert back.id == added.id and back.last_error == "KeyboardInterrupt"
    assert larder.queue.stats(queue).leased == 0
