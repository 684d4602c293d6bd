"""The outcomes of accepted provider requests, committed together (a group commit).

Each delivery slot recorded its request's outcome in a transaction of its own: a commit (an
fsync under ``synchronous=FULL``) under the ledger's one lock, which the serve loop then waited
for. Requests answered together, as a backlog's are, now share one: a slot that finds outcomes
waiting commits all of them, and one whose outcome another slot committed meanwhile returns.
Each caller still returns only once its own outcome is committed, and raises if that commit
failed, so what a crash leaves ``sending`` is what it left before.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from trigmail.decisions import LogEntry
from trigmail.errors import LedgerError
from trigmail.ledger.base import Ledger, SendState


@dataclass
class _Sent:
    """One accepted request's outcome, waiting for a commit."""

    keys: list[str]
    at: datetime
    message_id: str | None
    entries: Sequence[LogEntry]
    error: BaseException | None = None


class Outcomes:
    """Records accepted requests' sends as ``sent``, several requests per transaction."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._waiting: list[_Sent] = []
        self._waiting_lock = threading.Lock()
        self._commit_lock = threading.Lock()  # one committing slot at a time

    def sent(
        self, keys: list[str], at: datetime, message_id: str | None, entries: Sequence[LogEntry]
    ) -> None:
        """Record ``keys`` sent at ``at`` with their decision log ``entries``; return once
        committed, by this thread or another.

        Raises:
            LedgerError: the transaction that carried this outcome failed (and was rolled back).
        """
        mine = _Sent(keys, at, message_id, entries)
        with self._waiting_lock:
            self._waiting.append(mine)
        with self._commit_lock:
            with self._waiting_lock:
                group, self._waiting = self._waiting, []
            if group:  # else another slot committed this outcome while this one waited
                self._commit(group)
        if mine.error is not None:
            raise LedgerError(f"the outcome was not recorded: {mine.error}") from mine.error

    def _commit(self, group: list[_Sent]) -> None:
        try:
            with self._ledger.transaction() as txn:
                for each in group:
                    txn.finish(each.keys, SendState.SENT, each.at, message_id=each.message_id)
                txn.log([entry for each in group for entry in each.entries])
        except BaseException as exc:  # every slot of the group raises it, not only this one
            for each in group:
                each.error = exc
            if not isinstance(exc, Exception):
                raise  # an interrupt goes on up here; the others still learn of the rollback
