"""The reads of a SQL ledger's transaction that the engine decides from.

A batch's users are read at once, one statement for the scheduled sends of those whose events
may cancel and one for the last deliveries of those whose events may meet a cooldown, at the
first read of one of them; the copy answers the rest of the batch
(:mod:`trigmail.ledger.sql.users`). A read of a user some of whose new sends are still kept for
the commit writes them first (:meth:`SqlTxn._for_user`).
"""

from __future__ import annotations

from collections.abc import Collection
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, ClassVar

from trigmail.ledger.base import CancelMark
from trigmail.ledger.rows import Row
from trigmail.ledger.sql.buffer import SendBuffer
from trigmail.ledger.sql.dialect import Dialect, Statements
from trigmail.ledger.sql.reads import ToolReads
from trigmail.ledger.sql.users import ExpectedUsers, UserReads
from trigmail.sends import SendRecord


class EngineReads(ToolReads):
    """Seen ids, keys, a user's scheduled sends and deliveries, cancel marks."""

    dialect: ClassVar[Dialect]
    sql: ClassVar[Statements]
    # Set by SqlTxn.
    _buffer: SendBuffer
    _users: UserReads
    _expected_users: ExpectedUsers  # read at once at the first read of one (expect_reads)

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
        self._read_users(user_id, pending=False)
        known, at = self._users.last_delivered(rule_id, user_id)
        if known:
            return at
        self._for_user(user_id)
        with self._as_user(user_id):
            latest = self._scalar(self.sql.last_delivered, (rule_id, user_id))
        return self.dialect.rows.maybe_time(latest)

    def pending_for_user(self, user_id: str, rule_ids: Collection[str]) -> list[SendRecord]:
        self._read_users(user_id, pending=True)
        known = self._users.pending(user_id, rule_ids)
        if known is not None:
            return known
        return self._user_sends(self.sql.pending_for_user, user_id, rule_ids)

    def cancelled_for_user(self, user_id: str, rule_ids: Collection[str]) -> list[SendRecord]:
        return self._user_sends(self.sql.cancelled_for_user, user_id, rule_ids)

    def _user_sends(self, sql: str, user_id: str, rule_ids: Collection[str]) -> list[SendRecord]:
        """Run a read of one user's sends of these rules, after writing the user's kept ones."""
        rules = self.dialect.keys(sorted(rule_ids))
        self._for_user(user_id)
        with self._as_user(user_id):
            return self._sends(sql, (user_id, rules))

    def expect_reads(self, pending: Collection[str], delivered: Collection[str]) -> None:
        self._expected_users.expect(pending, delivered)

    def _read_users(self, user_id: str, *, pending: bool) -> None:
        """At the first read of an expected user, read every expected user not read yet, of
        both kinds (see :mod:`trigmail.ledger.sql.users`)."""
        if not self._expected_users.first(user_id, pending=pending):
            return
        fresh_pending, fresh_delivered = self._expected_users.take()
        users = self._buffer.users
        if not (users.isdisjoint(fresh_pending) and users.isdisjoint(fresh_delivered)):
            self._flush_sends()  # the copy starts from the rows as written
        scheduled, latest = self._read_at_once(fresh_pending, fresh_delivered)
        self._users.read(fresh_pending, scheduled, fresh_delivered, latest)

    def _read_at_once(
        self, pending: list[str], delivered: list[str]
    ) -> tuple[list[Row], list[tuple[str, str, datetime]]]:
        """The rows of the scheduled sends of the users ``pending``, and the last delivery of
        each rule to the users ``delivered``: a statement for each list not empty."""
        d = self.dialect
        scheduled = self._rows(self.sql.scheduled_of, (d.keys(pending),)) if pending else []
        if not delivered:
            return scheduled, []
        time = d.rows.time
        rows = self._rows(self.sql.delivered_of, (d.keys(delivered),))
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
