"""A SQL ledger's own one-transaction reads and pruning, and how a transaction ends.

The transaction itself is :class:`~trigmail.ledger.sql.txn.SqlTxn`; this is what a backend's
ledger object does around it.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from typing import ClassVar, TypeVar

from trigmail.decisions import LogEntry
from trigmail.evidence import DeliveryEvent, EvidenceState
from trigmail.ledger.base import DeadLetter, LedgerStatus
from trigmail.ledger.sql.dialect import Dialect
from trigmail.ledger.sql.txn import SqlTxn
from trigmail.sends import SendRecord, SendState

logger = logging.getLogger(__name__)

_Txn = TypeVar("_Txn", bound=SqlTxn)


@contextmanager
def committed(
    txn: _Txn, commit: Callable[[], object], rollback: Callable[[], object]
) -> Iterator[_Txn]:
    """Yield ``txn``: commit on normal exit, roll back on any exception; close it either way."""
    try:
        yield txn
        commit()
    except BaseException:
        rollback()
        raise
    finally:
        txn.close()


class SqlLedger(ABC):
    """What a SQL ledger does through one transaction of its own: the reads and the pruning.

    A backend opens transactions (:meth:`_begun`, given its dialect's ``BEGIN``).
    """

    dialect: ClassVar[Dialect]

    @abstractmethod
    def _begun(self, begin: str) -> AbstractContextManager[SqlTxn]:
        """Open a transaction with ``begin``: committed on normal exit, else rolled back."""

    @abstractmethod
    def _label(self) -> str:
        """The ledger as logs name it (never with a secret)."""

    def transaction(self) -> AbstractContextManager[SqlTxn]:
        return self._begun(self.dialect.begin_write)

    def status(self, limit: int = 10) -> LedgerStatus:
        with self._begun(self.dialect.begin_read) as txn:
            return txn.status(limit)

    def count_sends(self, states: Collection[SendState]) -> dict[SendState, int]:
        with self._begun(self.dialect.begin_read) as txn:
            return txn.count_sends(states)

    def get_send(self, key: str) -> SendRecord | None:
        with self._begun(self.dialect.begin_read) as txn:
            return txn.get_send(key)

    def get_meta(self, name: str) -> str | None:
        with self._begun(self.dialect.begin_read) as txn:
            return txn.get_meta(name)

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        with self._begun(self.dialect.begin_read) as txn:
            return txn.dead_letters(limit)

    def decision_log(self, event_id: str | None = None, limit: int = 100) -> list[LogEntry]:
        with self._begun(self.dialect.begin_read) as txn:
            return txn.decision_log(event_id, limit)

    def delivery_events(self, key: str) -> list[DeliveryEvent]:
        with self._begun(self.dialect.begin_read) as txn:
            return txn.delivery_events(key)

    def delivery_counts(self) -> dict[str, dict[str, int]]:
        with self._begun(self.dialect.begin_read) as txn:
            return txn.delivery_counts()

    def doubt_resent(self, keys: Collection[str]) -> set[str]:
        with self._begun(self.dialect.begin_read) as txn:
            return txn.doubt_resent(keys)

    def in_doubt_by_evidence(self) -> dict[EvidenceState, int]:
        with self._begun(self.dialect.begin_read) as txn:
            return txn.in_doubt_by_evidence()

    def prune(self, before: datetime) -> int:
        with self._begun(self.dialect.begin_write) as txn:
            removed = txn.prune(before)
        logger.info("ledger %s: pruned %d rows older than %s", self._label(), removed, before)
        return removed
