"""The memory ledger's delivery evidence: webhook events and what they settle (docs/webhook.md).

Kept apart from :mod:`trigmail.ledger.memory` as :mod:`trigmail.ledger.sql.evidence` is from
the SQL transactions; :class:`MemoryEvidenceTxn` is mixed into
:class:`~trigmail.ledger.memory.MemoryTxn` and writes its store through the same undo log.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import replace
from datetime import datetime

from trigmail.evidence import (
    DeliveryEvent,
    first_evidence,
    resent_for_verify,
    settled_by_evidence,
)
from trigmail.ledger.mem_store import MemoryStore, UndoLog
from trigmail.ledger.semantics import as_utc
from trigmail.rules.model import OnDoubt
from trigmail.sends import SendRecord, SendState


class MemoryEvidenceTxn:
    """Evidence reads and writes of one memory transaction (see ``LedgerTxn``)."""

    # Provided by MemoryTxn.
    _store: MemoryStore
    _undo: UndoLog

    def _put(self, record: SendRecord) -> None:
        raise NotImplementedError

    def add_delivery_events(self, events: Sequence[DeliveryEvent]) -> list[DeliveryEvent]:
        store = self._store
        added = []
        for given in events:
            if given.sg_event_id in store.events:
                continue
            event = replace(given, at=as_utc(given.at), received_at=as_utc(given.received_at))
            store.add_event(event)
            self._undo.append((store.drop_event, (event,)))
            added.append(event)
        return added

    def settle_by_evidence(
        self, at: datetime, keys: Collection[str] | None = None, limit: int = 1000
    ) -> list[SendRecord]:
        store = self._store
        wanted = sorted(store.events_by_key if keys is None else set(keys))
        found = [
            r for r in store.in_state(wanted, SendState.IN_DOUBT) if r.key in store.events_by_key
        ]
        if keys is None:
            found = found[: max(limit, 0)]
        settled = []
        for record in found:
            done = settled_by_evidence(
                record, first_evidence(store.events_by_key[record.key]), as_utc(at)
            )
            self._put(done)
            settled.append(done)
        return settled

    def resend_unverified(
        self, in_doubt_before: datetime, at: datetime, limit: int = 1000
    ) -> list[SendRecord]:
        store = self._store
        before = as_utc(in_doubt_before)
        found = sorted(
            (
                r
                for r in store.sends.values()
                if r.state == SendState.IN_DOUBT
                and r.on_doubt == OnDoubt.VERIFY
                and r.updated_at is not None
                and r.updated_at <= before
                and r.key not in store.events_by_key
                and r.key not in store.resent
            ),
            key=lambda r: (r.updated_at, r.key),
        )[: max(limit, 0)]
        again = [resent_for_verify(record, as_utc(at)) for record in found]
        for record in again:
            self._put(record)
            store.resent[record.key] = as_utc(at)
            self._undo.append((store.resent.pop, (record.key,)))
        return again

    def delivery_events(self, key: str) -> list[DeliveryEvent]:
        return self._store.events_of(key)
