"""The reads of a SQL ledger's transaction that the engine decides from.

A batch's users are read at once, one statement for their scheduled sends and one for their
last deliveries, at the first read of one of them; the copy answers the rest of the batch
(:mod:`trigmail.ledger.sql.users`). A read of a user some of whose new sends are still kept for
the commit writes them first (:meth:`SqlTxn._for_user`).
"""

from __future__ import annotations

from collections.abc import Collection
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, ClassVar

from trigmail.ledger.base import CancelMark
from trigmail.ledger.sql.buffer import SendBuffer
from trigmail.ledger.sql.dialect import Dialect, Statements
from trigmail.ledger.sql.reads import ToolReads
from trigmail.ledger.sql.users import UserReads
from trigmail.sends import SendRecord


class EngineReads(ToolReads):
    """Seen ids, keys, a user's scheduled sends and deliveries, cancel marks."""

    dialect: ClassVar[Dialect]
    sql: ClassVar[Statements]
    # Set by SqlTxn.
    _buffer: SendBuffer
    _users: UserReads
    _readable: set[str]  # users read at once at the first read of one (expect_reads)
    _users_read: set[str]  # of those, read (once)

    # Provided by SqlTxn.
    def _for_user(self, user_id: str) -> None:
        raise NotImplementedError

    def _flush_sends(self) -> None:
        raise NotImplementedError

    def _as_user(self, user_id: str) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def seen_event(self, event_id: str) -> bool:
        return bool(self._scalar(self.sql.seen_event, (event_id,)))

    def send_exists(self, key: str) -> bool:
        buffer = self._buffer
        if key in buffer.kept or key in buffer.present:
            return True
        if key in buffer.absent:
            return False
        exists = bool(self._scalar(self.sql.send_exists, (key,)))
        if not exists:
            self._buffer.absent.add(key)
        return exists

    def last_delivered_at(self, rule_id: str, user_id: str) -> datetime | None:
        self._read_users(user_id)
        known, at = self._users.last_delivered(rule_id, user_id)
        if known:
            return at
        self._for_user(user_id)
        with self._as_user(user_id):
            latest = self._scalar(self.sql.last_delivered, (rule_id, user_id))
        return self.dialect.rows.maybe_time(latest)

    def pending_for_user(self, user_id: str, rule_ids: Collection[str]) -> list[SendRecord]:
        self._read_users(user_id)
        known = self._users.pending(user_id, rule_ids)
        if known is not None:
            return known
        rules = self.dialect.keys(sorted(rule_ids))
        self._for_user(user_id)
        with self._as_user(user_id):
            return self._sends(self.sql.pending_for_user, (user_id, rules))

    def expect_reads(self, user_ids: Collection[str]) -> None:
        self._readable.update(user_ids)

    def _read_users(self, user_id: str) -> None:
        """At the first read of a user :attr:`_readable` holds, read every such user not read
        yet (see :mod:`trigmail.ledger.sql.users`)."""
        if user_id in self._users_read or user_id not in self._readable:
            return
        fresh = sorted(self._readable - self._users_read)
        if not self._buffer.users.isdisjoint(fresh):
            self._flush_sends()  # the copy starts from the rows as written
        scheduled, latest = self._read_at_once(fresh)
        self._users.read(fresh, scheduled, latest)
        self._users_read.update(fresh)

    def _read_at_once(
        self, user_ids: list[str]
    ) -> tuple[list[SendRecord], list[tuple[str, str, datetime]]]:
        """The scheduled sends of ``user_ids``, and their last delivery of each rule."""
        users = self.dialect.keys(user_ids)
        scheduled = self._sends(self.sql.scheduled_of, (users,))
        time = self.dialect.rows.time
        rows = self._rows(self.sql.delivered_of, (users,))
        return scheduled, [(row["rule_id"], row["user_id"], time(row["at"])) for row in rows]

    def delivered_count_since(
        self, user_id: str, categories: Collection[str], since: datetime
    ) -> int:
        d = self.dialect
        params = (user_id, d.time(since), d.keys(sorted(categories)))
        self._for_user(user_id)
        with self._as_user(user_id):
            count: int = self._scalar(self.sql.delivered_count, params)
        return count

    def cancel_marks_after(self, user_id: str, order: str) -> list[CancelMark]:
        mark = self.dialect.rows.mark
        return [mark(row) for row in self._rows(self.sql.cancel_marks_after, (user_id, order))]
