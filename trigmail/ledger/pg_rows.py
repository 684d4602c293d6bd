"""The PostgreSQL ledger's dialect (how it stores times, JSON and lists), and its errors as
trigmail's.

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

from trigmail.errors import LedgerError, LedgerUnavailableError
from trigmail.ledger.rows import RowReader
from trigmail.ledger.semantics import as_utc
from trigmail.ledger.sql import Dialect
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


def _json_as_is(value: Any) -> Any:
    return value  # psycopg decodes jsonb already


def _encoded(text: str) -> Jsonb:
    # Sent as it is: psycopg's Jsonb would otherwise encode a dict (a payload) a second time.
    return Jsonb(text, dumps=_as_is)


def _as_is(text: str) -> str:
    return text


def _keys(values: list[str]) -> list[str]:
    return values


# Caps test the payload's categories, kept as an array column, with ``&&`` (overlap).
_DELIVERED_COUNT = """
SELECT count(*) FROM sends
WHERE user_id = ? AND claimed_at >= ? AND state IN {delivered} AND categories && ?::text[]
"""

POSTGRES = Dialect(
    placeholder="%s",
    time=as_utc,
    document=Jsonb,
    encoded=_encoded,
    keys=_keys,
    text=text,
    rows=RowReader(time=utc, json=_json_as_is),
    in_list="{column} = ANY(?)",
    begin_write="BEGIN ISOLATION LEVEL READ COMMITTED",
    # Status and the other reads see one consistent snapshot and can never write by mistake.
    begin_read="BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
    delivered_count=_DELIVERED_COUNT,
    categories_column=True,
    # A settled send is no longer vouched for by the worker that claimed it.
    end_lease=", lease_until = NULL",
    drop_lease=", lease_owner = NULL, lease_until = NULL",
    # The settled value is computed from the row read: nobody may change it in between.
    for_update=" FOR UPDATE",
    payload_variant="payload->>'variant'",
)
