"""The reads of a SQLite batch's users, made once for all of them before it is decided.

The engine reads, per event, the last delivery of a rule with a cooldown to the user
(``last_delivered_at``) and the user's scheduled sends for a cancel (``pending_for_user``): a
statement each. The batch says beforehand which it will read (``expect_delivered``,
``expect_pending``; :func:`trigmail.ingest.expect_batch`), and one statement each reads them
for the whole batch. This transaction's own writes keep the copy true, as on PostgreSQL
(:mod:`trigmail.ledger.pg_users`): an insert or cancel forgets its user's scheduled sends, a
claim forgets everything, and so does any other statement that may change a send.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import ClassVar

from trigmail.ledger.pg_users import UserReads
from trigmail.ledger.semantics import DELIVERED_SQL, Clock
from trigmail.ledger.sql import SqlTxn, json_text
from trigmail.sends import SendRecord

# The index hint as in SQLITE's user_index: not the walk of every send in a state.
DELIVERED_OF = (
    "SELECT rule_id, user_id, MAX(claimed_at) AS at FROM sends INDEXED BY sends_by_user_state"
    " WHERE user_id IN (SELECT value FROM json_each(?)) AND state IN {delivered}"
    " GROUP BY rule_id, user_id"
).replace("{delivered}", DELIVERED_SQL)
SCHEDULED_OF = (
    "SELECT * FROM sends INDEXED BY sends_by_user_state"
    " WHERE user_id IN (SELECT value FROM json_each(?)) AND state = 'scheduled'"
)


class BatchReadsTxn(SqlTxn):
    """A SQLite transaction's reads of its batch's users, kept while they hold."""

    # Statements that leave every delivered send as it was (a backend names them): the last
    # deliveries read at once stay true across them.
    keeps_delivered: ClassVar[frozenset[str]]

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self._delivered: dict[tuple[str, str], datetime | None] = {}
        self._users = UserReads()  # only their scheduled sends are read here

    def expect_delivered(self, pairs: Collection[tuple[str, str]]) -> None:
        wanted = [pair for pair in dict.fromkeys(pairs) if pair not in self._delivered]
        if not wanted:
            return
        users = list(dict.fromkeys(user for _, user in wanted))
        if not self._buffer.users.isdisjoint(users):
            self._flush_sends()  # a kept send may be claimed
        rows = self._rows(DELIVERED_OF, (json_text(users),))
        at = self.dialect.rows.maybe_time
        latest = {(row["rule_id"], row["user_id"]): at(row["at"]) for row in rows}
        self._delivered.update((pair, latest.get(pair)) for pair in wanted)

    def last_delivered_at(self, rule_id: str, user_id: str) -> datetime | None:
        pair = (rule_id, user_id)
        if pair in self._delivered:
            return self._delivered[pair]
        return super().last_delivered_at(rule_id, user_id)

    def expect_pending(self, user_ids: Collection[str]) -> None:
        fresh = [user for user in dict.fromkeys(user_ids) if not self._users.known(user)]
        if not fresh:
            return
        if not self._buffer.users.isdisjoint(fresh):
            self._flush_sends()
        sends = self._sends(SCHEDULED_OF, (json_text(fresh),))
        self._users.read(fresh, sends, ())

    def pending_for_user(self, user_id: str, rule_ids: Collection[str]) -> list[SendRecord]:
        known = self._users.pending(user_id, rule_ids)
        return super().pending_for_user(user_id, rule_ids) if known is None else known

    def insert_send(self, send: SendRecord) -> bool:
        self._users.forget_user(send.user_id)
        return super().insert_send(send)

    def cancel_sends(self, keys: Collection[str], reason: str, at: datetime) -> list[str]:
        self._users.forget_keys(keys)
        return super().cancel_sends(keys, reason, at)

    def claim(self, keys: Collection[str], at: datetime) -> list[SendRecord]:
        self._delivered.clear()
        self._users.forget()
        return super().claim(keys, at)

    def _before(self, sql: str) -> None:
        if sql not in self.quiet:
            self._users.forget()
        if self._delivered and sql not in self.keeps_delivered:
            self._delivered.clear()
        super()._before(sql)
