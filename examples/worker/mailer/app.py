"""The web app: ``POST /signup`` enqueues a welcome email and answers at once (202); the
email is sent by a worker process (``mailer.worker``), not inside the request.

Run it under gunicorn (``gunicorn mailer.app:app --workers 2``); each gunicorn worker makes
its own Larder client on its first request, after the fork.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from functools import cache

from flask import Flask, jsonify, request
from larder_client import Larder

from . import QUEUE, location

app = Flask(__name__)


@cache
def larder() -> Larder:
    """This process's client (one per gunicorn worker, made after the fork)."""
    return Larder(location(), timeout=2.0)


@app.get("/")
def index() -> tuple[dict[str, object], int]:
    return {"worker": os.getpid()}, 200


@app.post("/signup")
def signup() -> tuple[object, int]:
    """Takes ``email`` and ``name`` (a form or JSON) and enqueues the welcome email.

    The dedup key makes a double-clicked signup enqueue one email: while the first job
    exists (waiting, being sent, or dead), a second enqueue answers its id.
    """
    data = request.get_json(silent=True) or request.form
    email, name = str(data.get("email", "")).strip(), str(data.get("name", "")).strip()
    if "@" not in email:
        return jsonify(error="email: an address is needed"), 400
    payload = json.dumps({"to": email, "name": name or email}).encode()
    added = larder().queue.enqueue(QUEUE, payload, dedup_key=f"welcome:{email}")
    return jsonify(job=added.id, duplicate=added.duplicate), 202


@app.get("/queue")
def queue_stats() -> tuple[object, int]:
    """The email queue's jobs by state: ready, delayed, leased (being sent) and dead."""
    return jsonify(asdict(larder().queue.stats(QUEUE))), 200
