"""The ledger transaction as the engine reads it during ingest, watched for failed reads."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from trigmail.ledger.base import CancelMark, LedgerTxn, SendRecord


class WatchedView:
    """The transaction as the engine reads it, noting whether a read failed: a failed read
    is the ledger's trouble (a lost connection, a lock), never a reason to set an event aside.

    Each read is written out rather than passed through a shared wrapper as a lambda: a
    closure built and called per read cost more than the in-memory reads themselves.
    """

    __slots__ = ("_txn", "failed")

    def __init__(self, txn: LedgerTxn) -> None:
        self._txn = txn
        self.failed = False

    def seen_event(self, event_id: str) -> bool:
        try:
            return self._txn.seen_event(event_id)
        except BaseException:
            self.failed = True
            raise

    def send_exists(self, key: str) -> bool:
        try:
            return self._txn.send_exists(key)
        except BaseException:
            self.failed = True
            raise

    def last_delivered_at(self, rule_id: str, user_id: str) -> datetime | None:
        try:
            return self._txn.last_delivered_at(rule_id, user_id)
        except BaseException:
            self.failed = True
            raise

    def pending_for_user(self, user_id: str, rule_ids: Collection[str]) -> list[SendRecord]:
        try:
            return self._txn.pending_for_user(user_id, rule_ids)
        except BaseException:
            self.failed = True
            raise

    def delivered_count_since(
        self, user_id: str, categories: Collection[str], since: datetime
    ) -> int:
        try:
            return self._txn.delivered_count_since(user_id, categories, since)
        except BaseException:
            self.failed = True
            raise

    def cancel_marks_after(self, user_id: str, order: str) -> list[CancelMark]:
        try:
            return self._txn.cancel_marks_after(user_id, order)
        except BaseException:
            self.failed = True
            raise

    def cancelled_for_user(self, user_id: str, rule_ids: Collection[str]) -> list[SendRecord]:
        try:
            return self._txn.cancelled_for_user(user_id, rule_ids)
        except BaseException:
            self.failed = True
            raise
