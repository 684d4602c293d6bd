"""New sends of one SQL transaction, written together rather than one statement each.

A send the engine has just found absent (``send_exists``) is kept here when inserted, and the
kept sends go in with one ``executemany`` before the first statement that could read them (the
transaction's :meth:`~trigmail.ledger.sql.txn.SqlTxn._before`), or at the commit. Reads of one
user's sends write that user's first; ``send_exists`` answers kept keys itself, and a claim of a
kept send (SQLite) changes the kept row: it is written once, already claimed.

On SQLite, claims of sends written before the transaction are held back too: ``expect_claims``
reads the rows of the sends about to fall due, a claim among them is decided from the row, and
the claims are written with one statement where the kept sends are (a read of the user's sends,
a statement over sends in general, the commit). A row read stays as the database would return
it: a statement that could change it forgets it (or, a cancellation, notes it no longer
scheduled); a key not read is claimed by its own statement, as ever.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from trigmail.ledger.semantics import as_utc
from trigmail.ledger.sql.dialect import Statements
from trigmail.sends import SendRecord, SendState, claimed


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
        # Rows read by expect_claims or written from ``kept``, as stored now: the record while
        # it is scheduled, ``None`` once it is not (claimed here, cancelled). Never a kept key.
        self.rows: dict[str, SendRecord | None] = {}
        # Claimed from those rows and not written yet, by key; their users are in ``users``.
        self.claims: dict[str, SendRecord] = {}
        self.dirty = False  # some sends are kept or claimed

    def keep(self, record: SendRecord, params: list[Any]) -> None:
        self.kept[record.key] = (record, params)
        self.users.add(record.user_id)
        self.absent.discard(record.key)
        self.dirty = True

    def take(self) -> tuple[list[tuple[SendRecord, list[Any]]], list[SendRecord]]:
        """Return the kept sends, in the order they were kept, and the claims held back, and
        forget them."""
        kept = list(self.kept.values())
        self.present.update(self.kept)
        self.kept = {}
        # Written as kept: a later claim of one is decided from the row as well.
        self.read([record for record, _ in kept])
        claims = list(self.claims.values())
        self.claims = {}
        self.users.clear()
        self.dirty = False
        return kept, claims

    def read(self, records: list[SendRecord]) -> None:
        """Note the rows expect_claims read."""
        rows = self.rows
        for record in records:
            rows[record.key] = record if record.state is SendState.SCHEDULED else None

    def unread(self, keys: list[str]) -> list[str]:
        """Those of ``keys`` whose row a read may return as stored: none held back here."""
        known = (self.rows, self.kept, self.claims)
        return [key for key in dict.fromkeys(keys) if not any(key in each for each in known)]

    def claim_read(self, wanted: list[str], at: datetime) -> list[SendRecord]:
        """Claim, in memory, the sends among ``wanted`` whose rows were read and are still
        scheduled; the rows are written claimed at the flush."""
        rows = self.rows
        moved = []
        for key in wanted:
            stored = rows.get(key)
            if stored is not None:
                record = claimed(stored, at)
                rows[key] = None  # sending now: a second claim finds nothing
                self.claims[key] = record
                self.users.add(record.user_id)
                moved.append(record)
        if moved:
            self.dirty = True
        return moved

    def known(self, key: str) -> bool:
        """Whether a claim of ``key`` is decided here, without a statement."""
        return key in self.kept or key in self.rows


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
            sql.scheduled_of,
            sql.delivered_of,
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
            sql.get_meta,  # a replayed event's allowance, the rules version
            sql.set_meta,
            # Reads only keys nothing holds back; writes only the claims held back.
            sql.sends_of,
            sql.write_claims,
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
