"""New sends of one SQL transaction, written together rather than one statement each.

A send the engine has just found absent (``send_exists``) is kept here when inserted, and the
kept sends go in with one ``executemany`` before the first statement that could read them (the
transaction's :meth:`~trigmail.ledger.sql.txn.SqlTxn._before`), or at the commit. Reads of one
user's sends write that user's first; ``send_exists`` answers kept keys itself, and a claim of a
kept send (SQLite) changes the kept row: it is written once, already claimed.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from trigmail.ledger.semantics import as_utc
from trigmail.ledger.sql.dialect import Statements
from trigmail.sends import SendRecord


class SendBuffer:
    """The kept sends (by key: the record as stored, and its row's parameters), their users,
    and the keys found absent."""

    def __init__(self) -> None:
        self.kept: dict[str, tuple[SendRecord, list[Any]]] = {}
        self.users: set[str] = set()
        # Found absent by send_exists in this transaction and not inserted since: an insert of
        # one of these can wait (on PostgreSQL, a key another worker commits meanwhile is found
        # when the kept sends are written, and the transaction fails and is decided again).
        self.absent: set[str] = set()
        # Found by expect_sends, or written from here: a key stays taken until the commit.
        self.present: set[str] = set()
        self.dirty = False  # some sends are kept

    def keep(self, record: SendRecord, params: list[Any]) -> None:
        self.kept[record.key] = (record, params)
        self.users.add(record.user_id)
        self.absent.discard(record.key)
        self.dirty = True

    def take(self) -> list[tuple[SendRecord, list[Any]]]:
        """Return the kept sends, in the order they were kept, and forget them."""
        kept = list(self.kept.values())
        self.present.update(self.kept)
        self.kept = {}
        self.users.clear()
        self.dirty = False
        return kept


def quiet_statements(sql: Statements, *more: str) -> frozenset[str]:
    """The statements of :attr:`SqlTxn.quiet`, and a backend's own (``more``)."""
    return frozenset(
        (
            sql.seen_event,
            sql.mark_seen,
            sql.send_exists,
            sql.sends_among,
            sql.last_delivered,
            sql.pending_for_user,
            sql.delivered_count,
            sql.cancel_sends,
            sql.cancel_marks_after,
            sql.add_cancel_mark,
            sql.insert_send,
            sql.insert_sends,
            sql.insert_log,
            sql.add_dead_letter,
            sql.get_position,
            sql.set_position,
            *more,
        )
    )


def as_stored(send: SendRecord, created_at: datetime) -> SendRecord:
    """``send`` as a read of its row returns it (times in UTC, both stamps set)."""
    created_at = as_utc(created_at)
    due_at = as_utc(send.due_at)
    updated_at = created_at if send.updated_at is None else as_utc(send.updated_at)
    if due_at is send.due_at and created_at is send.created_at and updated_at is send.updated_at:
        return send  # already so (ingest's sends): a copy costs more than the row's params
    return replace(send, due_at=due_at, created_at=created_at, updated_at=updated_at)
