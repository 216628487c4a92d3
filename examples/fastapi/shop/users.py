"""The shop's users: a tiny SQLite table of names and PBKDF2 password hashes.

    SHOP_DB=shop.sqlite3 python -m shop.users add alice   # asks for the password
    SHOP_PASSWORD=... python -m shop.users add alice      # or takes it from the environment

Hashes are ``pbkdf2_sha256$iterations$salt$hash`` (salt and hash in base64, in the shape of
Django's), made by the standard library's ``hashlib.pbkdf2_hmac``; checking one costs 100 ms
or more of CPU, so the app runs it in a thread, off the event loop.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import os
import secrets
import sqlite3
import sys
from pathlib import Path

ITERATIONS = 600_000  # OWASP's figure for PBKDF2-HMAC-SHA256
DB = os.environ.get("SHOP_DB", str(Path(__file__).resolve().parent.parent / "shop.sqlite3"))
SCHEMA = """CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, password TEXT NOT NULL)"""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    salt = secrets.token_bytes(16) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"pbkdf2_sha256${iterations}${_b64(salt)}${_b64(digest)}"


def _matches(password: str, encoded: str) -> bool:
    algorithm, iterations, salt, _ = encoded.split("$")
    if algorithm != "pbkdf2_sha256":
        return False
    again = hash_password(password, base64.b64decode(salt), int(iterations))
    return hmac.compare_digest(again.encode(), encoded.encode())


# Checked for unknown names too, so that a wrong name costs as long as a wrong password.
_DUMMY = hash_password(secrets.token_urlsafe())


def connect(path: str = DB) -> sqlite3.Connection:
    db = sqlite3.connect(path)
    db.execute(SCHEMA)
    return db


def authenticate(name: str, password: str, path: str = DB) -> int | None:
    """The user's id when ``password`` is theirs, else None. Blocking: run it in a thread."""
    with connect(path) as db:
        row = db.execute("SELECT id, password FROM users WHERE name = ?", (name,)).fetchone()
    user_id, encoded = row if row else (None, _DUMMY)
    ok = _matches(password, encoded)
    return user_id if ok and user_id is not None else None


def add_user(name: str, password: str, path: str = DB) -> None:
    with connect(path) as db:
        db.execute(
            "INSERT INTO users (name, password) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET password = excluded.password",
            (name, hash_password(password)),
        )


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "add":
        print("usage: python -m shop.users add NAME  (password: $SHOP_PASSWORD or asked)")
        return 2
    password = os.environ.get("SHOP_PASSWORD") or getpass.getpass(f"password for {argv[1]}: ")
    add_user(argv[1], password)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
