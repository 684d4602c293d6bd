"""The reads of a PostgreSQL batch's users, made once for all of them.

The engine asks for one user's scheduled sends (``pending_for_user``) and last delivery of a
rule (``last_delivered_at``) per event: a round trip each. The transaction holds the locks of
the batch's users (``lock_users``) before any of its events is decided, so no other worker
claims, cancels or inserts a locked user's sends meanwhile, and one statement can read every
locked user at the first such read. This transaction's own writes keep the copy true: an
insert or cancel forgets its user, and any other statement on sends forgets them all.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from datetime import datetime

from trigmail.ledger.semantics import DELIVERED_SQL
from trigmail.sends import SendRecord

SCHEDULED_OF = "SELECT * FROM sends WHERE user_id = ANY(%s) AND state = 'scheduled'"
DELIVERED_OF = (
    "SELECT rule_id, user_id, MAX(claimed_at) AS at FROM sends"
    " WHERE user_id = ANY(%s) AND state IN {delivered} GROUP BY rule_id, user_id"
).replace("{delivered}", DELIVERED_SQL)


class UserReads:
    """What :data:`SCHEDULED_OF` and :data:`DELIVERED_OF` returned, by user, while true."""

    def __init__(self) -> None:
        self._scheduled: dict[str, list[SendRecord]] = {}
        self._delivered: dict[tuple[str, str], datetime] = {}
        self._pending_known: set[str] = set()
        self._delivered_known: set[str] = set()
        self._owner: dict[str, str] = {}  # key of a scheduled send read -> its user

    def read(
        self,
        users: Iterable[str],
        scheduled: Iterable[SendRecord],
        delivered: Iterable[tuple[str, str, datetime]],
    ) -> None:
        """Keep what was read of ``users``."""
        users = set(users)
        for user in users:
            self._scheduled[user] = []
        for send in scheduled:
            self._scheduled[send.user_id].append(send)
            self._owner[send.key] = send.user_id
        for rule_id, user_id, at in delivered:
            self._delivered[(rule_id, user_id)] = at
        self._pending_known |= users
        self._delivered_known |= users

    def known(self, user_id: str) -> bool:
        return user_id in self._pending_known or user_id in self._delivered_known

    def pending(self, user_id: str, rule_ids: Collection[str]) -> list[SendRecord] | None:
        """The user's scheduled sends of ``rule_ids``, as the statement orders them, or
        ``None`` when not known."""
        if user_id not in self._pending_known:
            return None
        sends = [s for s in self._scheduled[user_id] if s.rule_id in rule_ids]
        return sorted(sends, key=_due_then_key)

    def last_delivered(self, rule_id: str, user_id: str) -> tuple[bool, datetime | None]:
        """Whether the user is known, and the rule's last delivery to them."""
        if user_id not in self._delivered_known:
            return False, None
        return True, self._delivered.get((rule_id, user_id))

    def forget_user(self, user_id: str) -> None:
        """The user's scheduled sends changed (an insert): read them again when asked."""
        self._pending_known.discard(user_id)

    def forget_keys(self, keys: Iterable[str]) -> None:
        """Those sends may have left ``scheduled`` (a cancel)."""
        for key in keys:
            user = self._owner.get(key)
            if user is not None:
                self._pending_known.discard(user)

    def forget(self) -> None:
        """Any other write to sends: nothing read is known true any more."""
        self._pending_known.clear()
        self._delivered_known.clear()


def _due_then_key(send: SendRecord) -> tuple[datetime, str]:
    return (send.due_at, send.key)
