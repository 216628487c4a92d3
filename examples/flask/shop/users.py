"""The shop's users: a small SQLite table of names and password hashes (werkzeug's scrypt)."""

from __future__ import annotations

import sqlite3
from contextlib import closing

from werkzeug.security import check_password_hash, generate_password_hash

SCHEMA = "CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, password_hash TEXT NOT NULL)"


def init_db(path: str) -> None:
    with closing(sqlite3.connect(path, timeout=10)) as db, db:
        db.execute(SCHEMA)


def add_user(path: str, name: str, password: str) -> None:
    """Adds ``name``, or gives an existing user the new password."""
    init_db(path)
    with closing(sqlite3.connect(path, timeout=10)) as db, db:
        db.execute(
            "INSERT INTO users (name, password_hash) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET password_hash = excluded.password_hash",
            (name, generate_password_hash(password)),
        )


def authenticate(path: str, name: str, password: str) -> bool:
    """Whether ``password`` is ``name``'s (False for an unknown user)."""
    with closing(sqlite3.connect(path, timeout=10)) as db:
        row = db.execute("SELECT password_hash FROM users WHERE name = ?", (name,)).fetchone()
    return row is not None and check_password_hash(row[0], password)
