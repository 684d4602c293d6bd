"""Rows of the PostgreSQL ledger to records and back, and its errors to trigmail's.

psycopg returns ``timestamptz`` in the session's time zone; every time is brought back to UTC so
a record read from PostgreSQL equals one read from the memory or SQLite ledger.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
import psycopg.errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb
from psycopg_pool import PoolClosed, PoolTimeout

from trigmail.decisions import LogEntry
from trigmail.errors import LedgerError, LedgerUnavailableError
from trigmail.ledger.base import DeadLetter, SendRecord
from trigmail.ledger.memory import as_utc
from trigmail.ledger.rows import RowReader
from trigmail.secrets import REDACTED, redact_url

# Failures that pass once the server, the network or the competing transaction is gone: a lost
# connection, a full pool, a serialization failure or deadlock (SQLSTATE class 40).
_UNAVAILABLE = (psycopg.OperationalError, psycopg.errors.TransactionRollback, PoolTimeout)


class ErrorScrubber:
    """Turns psycopg errors into trigmail's, without the DSN's password in any message.

    Args:
        dsn: the connection string; its password is what must never be shown.

    Raises:
        LedgerError: when ``dsn`` is not a valid connection string.
    """

    def __init__(self, dsn: str) -> None:
        self.redacted_dsn = redact_url(dsn)
        try:
            password = conninfo_to_dict(dsn).get("password")
        except psycopg.ProgrammingError:
            # libpq's parse errors quote the string around the fault: the password included.
            raise LedgerError(f"ledger {self.redacted_dsn}: not a valid DSN") from None
        self._password = str(password) if password else None

    def scrub(self, text: str) -> str:
        """Return ``text`` with the password, and any URL password in it, redacted."""
        if self._password:
            text = text.replace(self._password, REDACTED)
        return redact_url(text)

    def error(self, exc: Exception) -> LedgerError:
        """Return the trigmail error for a psycopg or pool one: unavailable (retry later) or not."""
        message = self.scrub(str(exc).strip())
        if isinstance(exc, PoolClosed):
            return LedgerError("the ledger is closed")
        if isinstance(exc, _UNAVAILABLE):
            return LedgerUnavailableError(f"ledger {self.redacted_dsn} unavailable: {message}")
        return LedgerError(f"ledger {self.redacted_dsn}: {message}")

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Translate psycopg errors raised inside the block."""
        try:
            yield
        except (psycopg.Error, PoolTimeout) as exc:
            translated = self.error(exc)
            # Chaining keeps the original for debugging unless its text held the secret.
            if self.scrub(str(exc)) != str(exc):
                raise translated from None
            raise translated from exc


def utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


def text(value: str) -> str:
    """Return ``value`` storable in a ``text`` column, which refuses NUL characters.

    Only diagnostic text (raw lines, details) goes through here: a binary line in a spool must
    become a dead letter, not a poison pill that fails every commit.
    """
    return value.replace("\x00", "\ufffd")


def send_params(send: SendRecord, created_at: datetime) -> dict[str, Any]:
    """Return the named parameters of ``INSERT INTO sends``."""
    return {
        "key": send.key,
        "rule_id": send.rule_id,
        "step": send.step,
        "user_id": send.user_id,
        "email": send.email,
        "event_id": send.event_id,
        "due_at": as_utc(send.due_at),
        "payload": Jsonb(send.payload.to_json()),
        "categories": list(dict.fromkeys(send.payload.categories)),
        "on_doubt": str(send.on_doubt),
        "rules_version": send.rules_version,
        "state": str(send.state),
        "cancel_match": Jsonb(dict(send.cancel_match)),
        "attempts": send.attempts,
        "message_id": send.message_id,
        "last_error": send.last_error,
        "reason": send.reason,
        "created_at": as_utc(created_at),
        "updated_at": as_utc(send.updated_at or created_at),
        "claimed_at": None if send.claimed_at is None else as_utc(send.claimed_at),
    }


def log_params(entry: LogEntry) -> tuple[Any, ...]:
    return (
        as_utc(entry.at),
        entry.event_id,
        entry.user_id,
        entry.rule,
        entry.step,
        entry.key,
        entry.outcome.value,
        entry.reason.value,
        None if entry.due_at is None else as_utc(entry.due_at),
        text(entry.detail),
    )


def dead_params(letter: DeadLetter) -> tuple[Any, ...]:
    return (
        as_utc(letter.at),
        text(letter.source),
        text(letter.position),
        text(letter.raw),
        letter.reason,
        text(letter.detail),
    )


def _json_as_is(value: Any) -> Any:
    return value  # psycopg decodes jsonb already


ROWS = RowReader(time=utc, json=_json_as_is)
