"""From raw source items to committed decisions: the event half of the pipeline.

A :class:`BatchWriter` decides each item of one batch with the engine and applies the decisions
to the ledger transaction the batch commits in (with the source position).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from trigmail.decisions import (
    Cancel,
    Decision,
    LogEntry,
    Outcome,
    Reason,
    Schedule,
    SetAside,
    Skip,
)
from trigmail.engine import decide_new, duplicate_event
from trigmail.errors import BadEventError
from trigmail.events import MISSING, Event, parse_event
from trigmail.ledger.base import CancelMark, DeadLetter, LedgerTxn, SendRecord
from trigmail.records import record
from trigmail.rules.model import RuleSet


class Item(Protocol):
    """One raw event as a source read it (``sources.base.SourceItem`` is one)."""

    @property
    def data(self) -> bytes: ...

    @property
    def ref(self) -> str: ...

    @property
    def position(self) -> str: ...

    @property
    def order(self) -> str | None: ...


@record
class RawItem:
    """A plain :class:`Item`, for callers without a source (``simulate``, tests)."""

    data: bytes
    ref: str
    position: str = ""
    order: str | None = None


@record
class Rejected:
    """A raw item set aside, for the source to put in its dead-letter place after the commit."""

    item: Item
    reason: str
    detail: str


@dataclass
class Ingested:
    """What one ingested batch decided."""

    entries: list[LogEntry] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    scheduled: list[SendRecord] = field(default_factory=list)
    consumed: int = 0  # how many of the batch's items were decided (the rest wait)


@dataclass
class BatchWriter:
    """Applies the decisions of one batch of items inside its ledger transaction."""

    txn: LedgerTxn
    rules: RuleSet
    now: datetime
    source: str
    result: Ingested

    def ingest(self, item: Item, event: Event | BadEventError) -> None:
        if isinstance(event, BadEventError):
            exc = event
            self._reject(item, exc.reason, exc.detail)
            self.result.entries.append(_bad_event_entry(item, exc, self.now))
            return
        # The id is recorded before deciding, not after: a worker deciding another copy of the
        # event at the same moment then waits on this row until this batch commits and finds it
        # taken. Checked by a read first, neither saw the other's uncommitted row and both
        # decided the event (no email twice, the keys are unique, but two decisions logged).
        if self.txn.mark_seen(event.id, self.now):
            decisions = decide_new(event, self.rules, self.txn, self.now, item.order)
            if item.order is not None:
                self._mark_cancel(event, item.order)
        else:
            decisions = [duplicate_event(event)]
        for decision in decisions:
            self._apply(event, decision)
        set_aside = [d for d in decisions if isinstance(d, SetAside)]
        if set_aside:
            detail = "; ".join(f"{d.rule_id}: {d.detail}" for d in set_aside)
            self._reject(item, set_aside[0].reason.value, detail)

    def _mark_cancel(self, event: Event, order: str) -> None:
        """Keep a ``cancel_on`` event read out of order, for triggers decided after it."""
        cancellers = self.rules.cancelled_by(event.name)
        if not cancellers:
            return
        paths = {cancel.match for _, cancel in cancellers if cancel.match is not None}
        values = {path: value for path in paths if (value := event.lookup(path)) is not MISSING}
        mark = CancelMark(event.user_id, order, event.name, event.id, values, self.now)
        self.txn.add_cancel_mark(mark)

    def _reject(self, item: Item, reason: str, detail: str) -> None:
        raw = item.data.decode("utf-8", errors="replace")
        self.txn.add_dead_letter(DeadLetter(self.now, self.source, item.ref, raw, reason, detail))
        self.result.rejected.append(Rejected(item, reason, detail))

    def _apply(self, event: Event, decision: Decision) -> None:
        entries = self.result.entries
        if isinstance(decision, Schedule):
            send = record_for(decision, self.rules.version, self.now)
            inserted = self.txn.insert_send(send)
            if inserted:
                self.result.scheduled.append(send)
            outcome = Outcome.SCHEDULED if inserted else Outcome.SKIPPED
            reason = decision.reason if inserted else Reason.DUPLICATE_KEY
            entries.append(_entry(event, decision, outcome, reason, self.now))
        elif isinstance(decision, Cancel):
            for key in self.txn.cancel_sends(decision.keys, decision.reason.value, self.now):
                entries.append(_cancel_entry(event, decision, key, self.now))
        elif isinstance(decision, Skip):
            entries.append(_entry(event, decision, Outcome.SKIPPED, decision.reason, self.now))
        else:
            entries.append(_entry(event, decision, Outcome.DEAD_LETTER, decision.reason, self.now))


def parse_item(item: Item, read_at: datetime) -> Event | BadEventError:
    """Parse an item's event, returning (not raising) why it is bad."""
    try:
        return parse_event(item.data, read_at)
    except BadEventError as exc:
        return exc


def _bad_event_entry(item: Item, exc: BadEventError, now: datetime) -> LogEntry:
    return LogEntry(
        at=now,
        event_id=None,
        user_id=None,
        rule=None,
        step=None,
        key=None,
        outcome=Outcome.DEAD_LETTER,
        reason=Reason(exc.reason),
        detail=f"{item.ref}: {exc.detail}",
    )


def _cancel_entry(event: Event, decision: Cancel, key: str, now: datetime) -> LogEntry:
    return LogEntry(
        at=now,
        event_id=event.id,
        user_id=event.user_id,
        rule=decision.rule_id,
        step=None,
        key=key,
        outcome=Outcome.CANCELLED,
        reason=decision.reason,
    )


def record_for(decision: Schedule, rules_version: str, now: datetime) -> SendRecord:
    """Return the ``scheduled`` send a :class:`Schedule` decision stands for."""
    return SendRecord(
        key=decision.key,
        rule_id=decision.rule_id,
        step=decision.step,
        user_id=decision.user_id,
        email=decision.email,
        event_id=decision.event_id,
        due_at=decision.due_at,
        payload=decision.payload,
        on_doubt=decision.on_doubt,
        rules_version=rules_version,
        cancel_match=decision.cancel_match,
        created_at=now,
        updated_at=now,
    )


def _entry(
    event: Event,
    decision: Schedule | Skip | SetAside,
    outcome: Outcome,
    reason: Reason,
    now: datetime,
) -> LogEntry:
    return LogEntry(
        at=now,
        event_id=event.id,
        user_id=event.user_id,
        rule=decision.rule_id,
        step=decision.step,
        key=None if isinstance(decision, SetAside) else decision.key,
        outcome=outcome,
        reason=reason,
        due_at=decision.due_at if isinstance(decision, Schedule) else None,
        detail="" if isinstance(decision, Schedule) else decision.detail,
    )
