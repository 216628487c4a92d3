"""``manage.py larder_sessions``: list or end a user's Larder sessions (never shows tokens).

    manage.py larder_sessions list USER_ID
    manage.py larder_sessions revoke USER_ID [--except SESSION_ID]
    manage.py larder_sessions revoke --session SESSION_ID

USER_ID is the id as stored in ``_auth_user_id`` (the user's primary key as text). It uses the
session engine's settings (``LARDER_SESSIONS``); needs ``larder_client.django`` in
``INSTALLED_APPS``.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from .... import Larder, LarderError, Session
from ..._connect import sync_client
from ...sessions import SETTING, config

_COLUMNS = ("SESSION_ID", "CREATED", "LAST_SEEN", "IDLE_EXPIRES", "EXPIRES", "IP", "DEVICE")


def _time(ms: int) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _printable(text: str) -> str:
    """Free text a client sent (its User-Agent), safe to print on a terminal."""
    return "".join(c if c.isprintable() else "?" for c in text) or "-"


def _row(s: Session) -> tuple[str, ...]:
    return (
        s.session_id,
        _time(s.created_at_ms),
        _time(s.last_seen_at_ms),
        _time(s.idle_expires_at_ms),
        _time(s.absolute_expires_at_ms),
        _printable(s.ip),
        _printable(s.device_info),
    )


class Command(BaseCommand):
    help = "Lists or ends a user's Larder sessions (the larder_client.django.sessions engine)."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="{list,revoke}")
        listing = actions.add_parser(
            "list",
            help="a user's live sessions, newest first: id, times (UTC), ip, device",
        )
        listing.add_argument("user_id", metavar="USER_ID")
        revoke = actions.add_parser(
            "revoke",
            help="end every session of USER_ID (but --except), or one session (--session)",
        )
        revoke.add_argument("user_id", metavar="USER_ID", nargs="?")
        revoke.add_argument(
            "--except",
            dest="except_session_id",
            metavar="SESSION_ID",
            default="",
            help="keep this session of the user",
        )
        revoke.add_argument(
            "--session",
            dest="session_id",
            metavar="SESSION_ID",
            help="end only this session",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        cfg = config()
        larder = sync_client(cfg.location, cfg.options, SETTING)
        try:
            if options["action"] == "list":
                self._list(larder, options["user_id"])
            else:
                self._revoke(
                    larder,
                    options["user_id"],
                    options["except_session_id"],
                    options["session_id"],
                )
        except LarderError as err:  # INVALID_ARGUMENT: a malformed id, an empty user id
            raise CommandError(str(err)) from err

    def _list(self, larder: Larder, user_id: str) -> None:
        listed = larder.sessions.list(user_id)
        if not listed.sessions:
            self.stdout.write(f"No live sessions of user {user_id!r}.")
            return
        rows = [_COLUMNS, *(_row(s) for s in listed.sessions)]
        widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS) - 1)]
        for r in rows:
            cells = [c.ljust(w) for c, w in zip(r, widths)] + [r[-1]]
            self.stdout.write("  ".join(cells))
        if listed.truncated:
            self.stdout.write(
                "(more sessions than the daemon lists at once; the oldest are left out)"
            )

    def _revoke(
        self, larder: Larder, user_id: str | None, except_id: str, session_id: str | None
    ) -> None:
        if (user_id is None) == (session_id is None):
            raise CommandError("revoke takes a USER_ID or --session SESSION_ID (one of the two)")
        if session_id is not None:
            if except_id:
                raise CommandError("--except goes with a USER_ID, not with --session")
            if larder.sessions.revoke(session_id=session_id):
                self.stdout.write(f"Revoked session {session_id}.")
            else:
                self.stdout.write(
                    f"Session {session_id} was not live (unknown, expired or revoked)."
                )
            return
        assert user_id is not None
        count = larder.sessions.revoke_user(user_id, except_id)
        kept = f", kept {except_id}" if except_id else ""
        self.stdout.write(f"Revoked {count} session(s) of user {user_id!r}{kept}.")
