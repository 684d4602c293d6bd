"""The data of a memory ledger: its sends and their indexes, and the scans over them.

Owned by one :class:`~trigmail.ledger.memory.MemoryLedger`. A transaction writes it in place
and logs how to undo each write (:data:`UndoLog`); nothing here knows about transactions, locks
or the clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from trigmail.decisions import LogEntry
from trigmail.evidence import DeliveryEvent, EvidenceState
from trigmail.ledger.base import CancelMark, DeadLetter
from trigmail.ledger.semantics import as_utc
from trigmail.rules.model import OnDoubt
from trigmail.sends import FINISHED_STATES, SendRecord, SendState

# (function, arguments) pairs rather than closures: one is logged per write, undone newest first.
UndoLog = list[tuple[Callable[..., object], tuple[Any, ...]]]


def event_order(event: DeliveryEvent) -> tuple[datetime, str]:
    """The order a send's delivery events are listed in: by time, then SendGrid's id."""
    return event.at, event.sg_event_id


class MemoryStore:
    """The data of one memory ledger and its indexes; no transaction of its own."""

    def __init__(self) -> None:
        self.sends: dict[str, SendRecord] = {}
        self.by_user: dict[str, set[str]] = {}
        self.by_rule_user: dict[tuple[str, str], set[str]] = {}
        self.seen: dict[str, datetime] = {}
        self.positions: dict[str, str] = {}
        self.meta: dict[str, str] = {}
        self.log: list[LogEntry] = []
        self.dead: list[DeadLetter] = []
        self.marks: dict[str, dict[str, CancelMark]] = {}  # user id -> order -> mark
        self.events: dict[str, DeliveryEvent] = {}  # sg_event_id -> event
        self.events_by_key: dict[str, list[DeliveryEvent]] = {}
        self.resent: dict[str, datetime] = {}  # key -> when on_doubt: verify sent it again

    def put(self, record: SendRecord) -> SendRecord | None:
        """Store ``record`` and index it; return the record it replaced."""
        old = self.sends.get(record.key)
        self.sends[record.key] = record
        if old is None:
            self.by_user.setdefault(record.user_id, set()).add(record.key)
            self.by_rule_user.setdefault((record.rule_id, record.user_id), set()).add(record.key)
        return old

    def restore(self, key: str, old: SendRecord | None) -> None:
        """Undo a :meth:`put`: bring back ``old``, or forget ``key`` when it was new."""
        if old is not None:
            self.put(old)
            return
        record = self.sends.pop(key)
        self.by_user[record.user_id].discard(key)
        self.by_rule_user[(record.rule_id, record.user_id)].discard(key)

    def forget(self, keys: Iterable[str]) -> None:
        """Delete finished sends for good (prune)."""
        for key in keys:
            self.restore(key, None)

    def prune(self, before: datetime) -> int:
        """Delete what is older than ``before``; return how many rows the SQL ledgers would."""
        old = [
            key
            for key, record in self.sends.items()
            if record.state in FINISHED_STATES and (record.updated_at or before) < before
        ]
        self.forget(old)
        seen = [event_id for event_id, at in self.seen.items() if at < before]
        for event_id in seen:
            del self.seen[event_id]
        removed = len(old) + len(seen) + len(self.log) + len(self.dead)
        self.log = [entry for entry in self.log if as_utc(entry.at) >= before]
        self.dead = [letter for letter in self.dead if letter.at >= before]
        removed -= len(self.log) + len(self.dead)
        for user_id, marks in list(self.marks.items()):
            kept = {order: mark for order, mark in marks.items() if as_utc(mark.at) >= before}
            removed += len(marks) - len(kept)
            self.marks[user_id] = kept
            if not kept:
                del self.marks[user_id]
        return removed + self.prune_evidence(before)

    def prune_evidence(self, before: datetime) -> int:
        old = [e for e in self.events.values() if e.received_at < before]
        for event in old:
            self.drop_event(event)
        resent = [key for key, at in self.resent.items() if at < before]
        for key in resent:
            del self.resent[key]
        return len(old) + len(resent)

    def add_event(self, event: DeliveryEvent) -> None:
        self.events[event.sg_event_id] = event
        self.events_by_key.setdefault(event.key, []).append(event)

    def drop_event(self, event: DeliveryEvent) -> None:
        del self.events[event.sg_event_id]
        of_key = self.events_by_key[event.key]
        of_key.remove(event)
        if not of_key:
            del self.events_by_key[event.key]

    def user_sends(self, user_id: str) -> list[SendRecord]:
        sends = self.sends
        return [sends[key] for key in self.by_user.get(user_id, ())]

    def in_state(self, keys: Iterable[str], state: SendState) -> list[SendRecord]:
        """Return the sends of ``keys`` (each once, in order) that are in ``state``."""
        sends = self.sends
        return [
            record
            for key in dict.fromkeys(keys)
            if (record := sends.get(key)) is not None and record.state == state
        ]

    def events_of(self, key: str) -> list[DeliveryEvent]:
        return sorted(self.events_by_key.get(key, ()), key=event_order)

    def delivery_counts(self) -> dict[str, dict[str, int]]:
        """Return the number of delivery events by rule and event type."""
        counts: dict[str, dict[str, int]] = {}
        for event in self.events.values():
            of_rule = counts.setdefault(event.rule_id, {})
            of_rule[event.event.value] = of_rule.get(event.event.value, 0) + 1
        return counts

    def in_doubt_by_evidence(self) -> dict[EvidenceState, int]:
        """Return the number of in-doubt sends in each evidence state."""
        counts = dict.fromkeys(EvidenceState, 0)
        for record in self.sends.values():
            if record.state == SendState.IN_DOUBT:
                counts[self._evidence_state(record)] += 1
        return counts

    def _evidence_state(self, record: SendRecord) -> EvidenceState:
        if record.key in self.events_by_key:
            return EvidenceState.EVIDENCE_RECEIVED
        if record.on_doubt != OnDoubt.VERIFY:
            return EvidenceState.AWAITING_EVIDENCE
        if record.key in self.resent:
            return EvidenceState.RESENT_NO_EVIDENCE
        return EvidenceState.AWAITING_VERIFY
