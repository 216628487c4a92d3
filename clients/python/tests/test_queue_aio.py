"""``larder_client.aio``'s ``queue`` against a real daemon: the same calls as the blocking
client, awaited, and the ``async for`` worker loop with ``async with job:``.

CI runs this module once per core. Waits are bounded; no test asserts a duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from conftest import Daemon

from larder_client import Enqueued, Job, LarderError, Nacked, NewJob, QueueStats, aio
from larder_client._queue import LOOP_LEFT


def fresh(prefix: str = "q") -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


@pytest.fixture(params=["tcp", "unix"])
async def larder(request: pytest.FixtureRequest, daemon: Daemon) -> AsyncIterator[aio.Larder]:
    target = daemon.addr if request.param == "tcp" else daemon.unix_target
    async with aio.Larder(target, timeout=5.0) as client:
        yield client


async def test_enqueue_dequeue_ack_nack_and_dead_letters(larder: aio.Larder) -> None:
    queue = fresh()
    added = await larder.queue.enqueue(queue, b"payload", priority=2, max_attempts=2)
    assert isinstance(added, Enqueued) and not added.duplicate
    assert (await larder.queue.enqueue(queue, b"x", dedup_key="")).duplicate is False
    many = await larder.queue.enqueue_many([NewJob(queue, b"m1"), NewJob(queue, b"m2")])
    assert len(many) == 2
    (job,) = await larder.queue.dequeue(queue, lease_ms=60_000)
    assert isinstance(job, Job) and (job.id, job.attempt, job.priority) == (added.id, 1, 2)
    assert await larder.queue.extend(job.lease, 120_000) >= job.lease_expires_at_ms
    nacked = await larder.queue.nack(job.lease, retry_after_ms=0, error="boom")
    assert isinstance(nacked, Nacked) and not nacked.dead
    (again,) = await larder.queue.dequeue(queue, wait_ms=5_000)
    assert (again.id, again.attempt, again.last_error) == (added.id, 2, "boom")
    assert await larder.queue.nack(again.lease, error="boom again") == Nacked(True, 0)
    dead = [j async for j in larder.queue.list_dead(queue)]
    assert [(j.id, j.last_error) for j in dead] == [(added.id, "boom again")]
    assert await larder.queue.retry_dead(queue, []) == 0
    assert await larder.queue.retry_dead(queue, [added.id]) == 1
    waiting = [j.payload async for j in larder.queue.list_jobs(queue, page_size=1)]
    assert waiting == [b"payload", b"x", b"m1", b"m2"]
    stats = await larder.queue.stats(queue)
    assert (stats.ready, stats.delayed, stats.leased, stats.dead) == (4, 0, 0, 0)
    assert await larder.queue.purge(queue) == 4
    assert await larder.queue.purge_dead(queue) == 0
    with pytest.raises(grpc.RpcError) as refused:
        await larder.queue.ack(again.lease)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_waiting_dequeue_is_woken_and_its_deadline_covers_the_wait(
    daemon: Daemon,
) -> None:
    queue = fresh()
    async with aio.Larder(daemon.addr, timeout=0.3) as short:
        assert await short.queue.dequeue(fresh(), wait_ms=1_500) == []  # no DEADLINE_EXCEEDED
        waiter = asyncio.ensure_future(short.queue.dequeue(queue, wait_ms=30_000, auto_ack=True))
        await asyncio.sleep(0.2)
        await short.queue.enqueue(queue, b"wake")
        jobs = await asyncio.wait_for(waiter, 30)
    assert [j.payload for j in jobs] == [b"wake"]


async def test_bad_input_is_a_larder_error_naming_the_field(larder: aio.Larder) -> None:
    with pytest.raises(LarderError, match="queue"):
        await larder.queue.enqueue("", b"x")
    with pytest.raises(LarderError, match="lease"):
        await larder.queue.ack("not a lease")
    with pytest.raises(LarderError, match="lease_ms"):
        await larder.queue.extend("whatever", -1)


async def test_the_loop_acks_a_block_that_ended_and_nacks_one_that_raised(
    larder: aio.Larder, caplog: pytest.LogCaptureFixture
) -> None:
    queue = fresh()
    ok = await larder.queue.enqueue(queue, b"ok")
    bad = await larder.queue.enqueue(queue, b"bad")
    seen: list[int] = []
    async with contextlib.aclosing(larder.queue.jobs(queue, wait_ms=1_000)) as jobs:
        async for job in jobs:
            async with job:
                seen.append(job.id)
                if job.payload == b"bad":
                    raise ValueError("bad address")
            if len(seen) == 2:
                break
    assert seen == [ok.id, bad.id]
    (back,) = [j async for j in larder.queue.list_jobs(queue)]
    assert back.id == bad.id and back.last_error == "ValueError: bad address"
    assert "bad address" in caplog.text
    stats = await larder.queue.stats(queue)
    assert stats.leased == 0 and stats.dead == 0


async def test_leaving_the_loop_nacks_the_unfinished_job(larder: aio.Larder) -> None:
    queue = fresh()
    added = await larder.queue.enqueue(queue, b"x")
    with pytest.raises(KeyError):
        async with contextlib.aclosing(larder.queue.jobs(queue, wait_ms=1_000)) as jobs:
            async for _job in jobs:
                raise KeyError("gone")
    (back,) = [j async for j in larder.queue.list_jobs(queue)]
    assert back.id == added.id and back.last_error == LOOP_LEFT


async def test_the_loop_extends_the_lease_while_the_body_runs(larder: aio.Larder) -> None:
    queue = fresh()
    await larder.queue.enqueue(queue, b"long")
    stolen: list[Job] = []
    async with contextlib.aclosing(larder.queue.jobs(queue, lease_ms=1_500, wait_ms=1_000)) as jobs:
        async for job in jobs:
            async with job:
                deadline = time.monotonic() + 4.0
                while time.monotonic() < deadline:
                    stolen += await larder.queue.dequeue(queue, wait_ms=500, auto_ack=True)
            break
    assert stolen == []
    assert await larder.queue.stats(queue) == QueueStats(0, 0, 0, 0, 0)


async def test_a_lost_lease_is_logged_and_the_loop_goes_on(
    larder: aio.Larder, caplog: pytest.LogCaptureFixture
) -> None:
    queue = fresh()
    first = await larder.queue.enqueue(queue, b"slow")
    caplog.set_level(logging.WARNING, logger="larder_client.queue")
    taken: list[Job] = []
    seen: list[int] = []
    loop = larder.queue.jobs(queue, lease_ms=200, wait_ms=1_000, extend=False)
    async with contextlib.aclosing(loop):
        async for job in loop:
            seen.append(job.id)
            if job.id == first.id and not taken:
                async with job:
                    taken += await larder.queue.dequeue(queue, lease_ms=60_000, wait_ms=10_000)
                await larder.queue.enqueue(queue, b"next")
                continue
            break
    assert [j.id for j in taken] == [first.id]
    assert len(seen) == 2 and seen[1] != first.id
    assert "lease was lost" in caplog.text
    await larder.queue.ack(taken[0].lease)


async def test_a_job_of_the_asyncio_loop_refuses_a_plain_with(larder: aio.Larder) -> None:
    queue = fresh()
    await larder.queue.enqueue(queue, b"x")
    async with contextlib.aclosing(larder.queue.jobs(queue, wait_ms=1_000)) as jobs:
        async for job in jobs:
            with pytest.raises(TypeError, match="async with"), job:
                pass
            async with job:
                pass
            break
    assert (await larder.queue.stats(queue)).leased == 0
