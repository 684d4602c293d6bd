"""Rows of the SQL ledgers back into records: one reading, whatever the backend stores; and the
decision log's rows written.

SQLite keeps times as epoch microseconds and JSON as text; PostgreSQL as ``timestamptz`` and
``jsonb``. Each backend gives a :class:`RowReader` its two decoders; the columns are the same.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from trigmail.decisions import LogEntry, Outcome, Payload, Reason
from trigmail.ledger.base import CancelMark, DeadLetter
from trigmail.rules.model import OnDoubt
from trigmail.sends import SendRecord, SendState


class Row(Protocol):
    """A database row readable by column name (``sqlite3.Row``, a psycopg dict row)."""

    def __getitem__(self, column: str) -> Any: ...


@dataclass(frozen=True)
class RowReader:
    """Decodes ledger rows.

    Args:
        time: a stored time to an aware UTC datetime.
        json: a stored JSON value to Python (text parsed, or already decoded).
    """

    time: Callable[[Any], datetime]
    json: Callable[[Any], Any]

    def maybe_time(self, value: Any) -> datetime | None:
        return None if value is None else self.time(value)

    def send(self, row: Row) -> SendRecord:
        return SendRecord(
            key=row["key"],
            rule_id=row["rule_id"],
            step=row["step"],
            user_id=row["user_id"],
            email=row["email"],
            event_id=row["event_id"],
            due_at=self.time(row["due_at"]),
            payload=Payload.from_json(self.json(row["payload"])),
            on_doubt=OnDoubt(row["on_doubt"]),
            rules_version=row["rules_version"],
            state=SendState(row["state"]),
            cancel_match=self.json(row["cancel_match"]),
            attempts=row["attempts"],
            message_id=row["message_id"],
            last_error=row["last_error"],
            reason=row["reason"],
            created_at=self.time(row["created_at"]),
            updated_at=self.time(row["updated_at"]),
            claimed_at=self.maybe_time(row["claimed_at"]),
        )

    def log(self, row: Row) -> LogEntry:
        return LogEntry(
            at=self.time(row["at"]),
            event_id=row["event_id"],
            user_id=row["user_id"],
            rule=row["rule"],
            step=row["step"],
            key=row["key"],
            outcome=Outcome(row["outcome"]),
            reason=Reason(row["reason"]),
            due_at=self.maybe_time(row["due_at"]),
            detail=row["detail"],
        )

    def dead(self, row: Row) -> DeadLetter:
        return DeadLetter(
            at=self.time(row["at"]),
            source=row["source"],
            position=row["position"],
            raw=row["raw"],
            reason=row["reason"],
            detail=row["detail"],
        )

    def mark(self, row: Row) -> CancelMark:
        # ``vals`` is text in both databases: a mark is read back as it was given.
        return CancelMark(
            user_id=row["user_id"],
            order=row["ord"],
            event=row["event"],
            event_id=row["event_id"],
            values=json.loads(row["vals"]),
            at=self.time(row["at"]),
        )


def log_rows(
    entries: Sequence[LogEntry], time: Callable[[datetime], Any], text: Callable[[str], Any]
) -> list[tuple[Any, ...]]:
    """The decision log's rows of ``entries`` (the columns of ``insert_log``), with the
    backend's ``time`` and ``text`` encoders."""
    # A commit's entries share a few moments (a request's all have the one of its answer).
    stored: dict[datetime, Any] = {}
    rows: list[tuple[Any, ...]] = []
    for entry in entries:
        at = stored.get(entry.at)
        if at is None:
            at = stored[entry.at] = time(entry.at)
        rows.append(
            (
                at,
                entry.event_id,
                entry.user_id,
                entry.rule,
                entry.step,
                entry.key,
                entry.outcome._value_,  # the str: .value is a property run in Python
                entry.reason._value_,
                None if entry.due_at is None else time(entry.due_at),
                text(entry.detail),
            )
        )
    return rows
