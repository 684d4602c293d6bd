"""The reads of a batch's users, made once for all of them, and kept true while the batch runs.

The engine asks for one user's scheduled sends (``pending_for_user``) and last delivery of a
rule (``last_delivered_at``) per event: a statement each. A transaction told the batch's users
reads all of them with one statement each (``scheduled_of``, ``delivered_of``: see
:mod:`trigmail.ledger.sql.dialect`) at the first such read, and answers the later ones from the
copy, which only this transaction's own writes can make untrue:

- PostgreSQL reads the users it holds the locks of (``lock_users``): no other worker claims,
  cancels or inserts a locked user's sends meanwhile. Its own insert or cancel forgets the
  user, any other statement on sends forgets them all (:class:`UserReads` with
  ``follows=False``).
- SQLite reads the users of ``expect_reads``: its transactions are serialised whole, so only
  its own writes change those rows, and it applies them to the copy in memory (``follows=True``):
  an insert, kept or written, adds the send; a claim moves it to the user's deliveries; a cancel
  or a drop removes it. A write the copy cannot follow exactly forgets the user, or everyone,
  and the reads go to the database again, as one statement each.

A scheduled row read is decoded into its send only once a read asks for its rule: the engine
asks for the rules that a user's event cancels (a cart reminder), and most of a user's
scheduled sends are of other rules (a receipt, a sequence's later steps).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from datetime import datetime

from trigmail.ledger.rows import Row
from trigmail.sends import SendRecord, SendState


class UserReads:
    """What ``scheduled_of`` and ``delivered_of`` returned, by user, while true.

    Args:
        follows: apply this transaction's inserts, claims, cancels and drops to the copy
            (SQLite); otherwise forget the users they touch (PostgreSQL).
        decode: a row of ``scheduled_of`` to its send.
    """

    def __init__(self, follows: bool, decode: Callable[[Row], SendRecord]) -> None:
        self._follows = follows
        self._decode = decode
        self._scheduled: dict[str, dict[str, SendRecord]] = {}  # user -> key -> send
        self._undecoded: dict[str, dict[str, Row]] = {}  # user -> key -> row, not yet a send
        self._delivered: dict[tuple[str, str], datetime] = {}
        self._pending_known: set[str] = set()
        self._delivered_known: set[str] = set()
        self._owner: dict[str, str] = {}  # key of a scheduled send in the copy -> its user

    def read(
        self,
        pending: Iterable[str],
        scheduled: Iterable[Row],
        delivered: Iterable[str],
        latest: Iterable[tuple[str, str, datetime]],
    ) -> None:
        """Keep what was read: the ``scheduled`` sends of the users ``pending``, and the
        ``latest`` delivery of each rule to the users ``delivered``."""
        pending = set(pending)
        delivered = set(delivered)
        for user in pending:
            self._scheduled[user] = {}
            self._undecoded[user] = {}
        for row in scheduled:
            user, key = row["user_id"], row["key"]
            self._undecoded[user][key] = row
            self._owner[key] = user
        for rule_id, user_id, at in latest:
            self._delivered[(rule_id, user_id)] = at
        self._pending_known |= pending
        self._delivered_known |= delivered

    def pending(self, user_id: str, rule_ids: Collection[str]) -> list[SendRecord] | None:
        """The user's scheduled sends of ``rule_ids``, as the statement orders them, or
        ``None`` when not known."""
        if user_id not in self._pending_known:
            return None
        scheduled = self._scheduled[user_id]
        rows = self._undecoded[user_id]
        if rows:
            for key in [key for key, row in rows.items() if row["rule_id"] in rule_ids]:
                scheduled[key] = self._decode(rows.pop(key))
        sends = [s for s in scheduled.values() if s.rule_id in rule_ids]
        return sorted(sends, key=_due_then_key)

    def last_delivered(self, rule_id: str, user_id: str) -> tuple[bool, datetime | None]:
        """Whether the user is known, and the rule's last delivery to them."""
        if user_id not in self._delivered_known:
            return False, None
        return True, self._delivered.get((rule_id, user_id))

    def inserted(self, send: SendRecord) -> None:
        """``send`` was inserted, scheduled, as a read would now return it."""
        user = send.user_id
        if not self._follows or send.state is not SendState.SCHEDULED:
            self._pending_known.discard(user)
        elif user in self._pending_known:
            self._scheduled[user][send.key] = send
            self._owner[send.key] = user

    def cancelled(self, keys: Iterable[str]) -> None:
        """Those sends left ``scheduled`` for ``cancelled`` (a cancel, a drop), or may have
        (``follows=False``)."""
        for key in keys:
            user = self._owner.pop(key, None)
            if user is None:
                continue
            if self._follows:
                self._remove(user, key)
            else:
                self._pending_known.discard(user)

    def claimed(self, sends: Iterable[SendRecord]) -> None:
        """Those sends moved from ``scheduled`` to ``sending``, claimed at ``claimed_at``."""
        for send in sends:
            user = send.user_id
            at = send.claimed_at
            if not self._follows or send.state is not SendState.SENDING or at is None:
                self._forget_user(user)
                continue
            self._owner.pop(send.key, None)
            self._remove(user, send.key)
            if user in self._delivered_known:
                latest = self._delivered.get((send.rule_id, user))
                if latest is None or at > latest:
                    self._delivered[(send.rule_id, user)] = at

    def _remove(self, user_id: str, key: str) -> None:
        self._scheduled.get(user_id, {}).pop(key, None)
        self._undecoded.get(user_id, {}).pop(key, None)

    def forget_keys(self, keys: Iterable[str]) -> None:
        """Those sends changed in a way the copy does not follow: read their users again."""
        for key in keys:
            user = self._owner.get(key)
            if user is not None:
                self._forget_user(user)

    def _forget_user(self, user_id: str) -> None:
        self._pending_known.discard(user_id)
        self._delivered_known.discard(user_id)

    def forget(self) -> None:
        """Any other write to sends: nothing read is known true any more."""
        self._pending_known.clear()
        self._delivered_known.clear()


class ExpectedUsers:
    """The users a transaction was told it reads the scheduled sends of (``pending``), and
    the last deliveries of (``delivered``), and which of them it has read at once."""

    def __init__(self) -> None:
        self._pending: set[str] = set()
        self._delivered: set[str] = set()
        self._pending_read: set[str] = set()
        self._delivered_read: set[str] = set()

    def expect(self, pending: Iterable[str], delivered: Iterable[str]) -> None:
        self._pending.update(pending)
        self._delivered.update(delivered)

    def first(self, user_id: str, *, pending: bool) -> bool:
        """Whether this read of the user's scheduled sends (``pending``) or last deliveries
        is the first of an expected user: the time to read them all."""
        if pending:
            return user_id in self._pending and user_id not in self._pending_read
        return user_id in self._delivered and user_id not in self._delivered_read

    def take(self) -> tuple[list[str], list[str]]:
        """The expected users not read yet, of each kind, now counted as read."""
        pending = sorted(self._pending - self._pending_read)
        delivered = sorted(self._delivered - self._delivered_read)
        self._pending_read.update(pending)
        self._delivered_read.update(delivered)
        return pending, delivered


def _due_then_key(send: SendRecord) -> tuple[datetime, str]:
    return (send.due_at, send.key)
