"""A worker process: ``python -m mailer.worker`` sends the welcome emails, one at a time.

It runs Larder's worker loop, ``for job in larder.queue.jobs("email", lease_ms=...)``:
while an email is being sent, the loop extends the job's lease every third of
``MAILER_LEASE_MS``; when the ``with job:`` block ends the job is acked, and when it raises
it is nacked with the error, to be retried with backoff (and after 5 attempts kept in the
dead-letter list). A worker that dies mid-email (kill -9, a crash, a lost machine) stops
extending: its lease runs out and another worker sends the email.

Sending an email stands for the slow call to an SMTP server: it takes
``MAILER_SEND_SECONDS`` (default 0.2) and then writes ``<job id>.eml`` to the outbox,
through a temporary file and a rename, so a worker killed mid-send leaves no half email.
Named by the job's id, an email sent twice (delivery is at least once) is one file.

Settings (environment): ``MAILER_LEASE_MS`` (default 30000), ``MAILER_WAIT_MS`` (how long
one Dequeue waits for a job, default 20000), ``MAILER_SEND_SECONDS``, and the app's
``LARDER_LOCATION`` and ``MAILER_OUTBOX``. SIGTERM stops the worker: an email being sent is
given back at once (nacked), to be sent by another worker.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from types import FrameType

from larder_client import Job, Larder

from . import QUEUE, location, outbox

log = logging.getLogger("mailer.worker")


class Stop(BaseException):
    """SIGTERM: raised wherever the worker is, so that ``with job:`` nacks the job being
    sent (a BaseException, so the loop does not swallow it as a failed job)."""


def _stop(signum: int, frame: FrameType | None) -> None:
    raise Stop(f"stopped by signal {signum}")


def send_welcome_email(job: Job) -> None:
    message = json.loads(job.payload)
    time.sleep(float(os.environ.get("MAILER_SEND_SECONDS", "0.2")))  # the SMTP server
    box = outbox()
    box.mkdir(parents=True, exist_ok=True)
    text = (
        f"To: {message['to']}\n"
        f"Subject: Welcome, {message['name']}!\n"
        f"X-Job: {job.id}\n"
        f"X-Attempt: {job.attempt}\n"
        f"X-Sent-By: {os.getpid()}\n"
        "\n"
        f"Hello {message['name']}, and welcome.\n"
    )
    partial = box / f".{job.id}.{os.getpid()}.tmp"
    partial.write_text(text)
    os.replace(partial, box / f"{job.id}.eml")


def run() -> None:
    lease_ms = int(os.environ.get("MAILER_LEASE_MS", "30000"))
    wait_ms = int(os.environ.get("MAILER_WAIT_MS", "20000"))
    with Larder(location(), timeout=2.0) as larder:
        log.info("worker %d: waiting for jobs of %r", os.getpid(), QUEUE)
        for job in larder.queue.jobs(QUEUE, lease_ms=lease_ms, wait_ms=wait_ms):
            log.info("worker %d: took job %d (attempt %d)", os.getpid(), job.id, job.attempt)
            with job:  # acked when the email is sent; nacked with the error if it raised
                send_welcome_email(job)
            log.info("worker %d: sent job %d", os.getpid(), job.id)


def main() -> int:
    # On stderr, which is line-buffered even into a file: each line shows as it happens.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    signal.signal(signal.SIGTERM, _stop)
    try:
        run()
    except (Stop, KeyboardInterrupt) as stop:
        log.info("worker %d: %s", os.getpid(), stop or "interrupted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
