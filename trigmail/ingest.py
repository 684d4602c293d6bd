"""From raw source items to committed decisions: the event half of the pipeline.

A :class:`BatchWriter` decides each item of one batch with the engine and applies the decisions
to the ledger transaction the batch commits in (with the source position).

Each item is isolated: whatever parsing or deciding one event raises (a bug, a limit, a value
nobody foresaw) sets that event aside as ``internal_error`` and the batch goes on. An event's
decisions are all made and checked before the first of them is written, so one that fails
half-way leaves nothing of itself in the transaction but its seen id and its dead letter. Only
the ledger's own failures stop the batch: it is then decided again, whole (docs/security.md).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Protocol

from trigmail.copies import event_order, first_copy, restored_entry
from trigmail.decisions import (
    Cancel,
    Decision,
    LogEntry,
    Outcome,
    Payload,
    Reason,
    Schedule,
    SetAside,
    Skip,
)
from trigmail.engine import decide_new, duplicate_event, send_keys, user_reads
from trigmail.errors import BadEventError, LedgerError
from trigmail.events import (
    MAX_EVENT_DEPTH,
    MISSING,
    Event,
    format_ts,
    json_depth_exceeds,
    parse_event,
)
from trigmail.ledger.base import CancelMark, DeadLetter, LedgerTxn, SendRecord, SendState
from trigmail.records import record
from trigmail.replays import take_replay
from trigmail.rules.model import RuleSet
from trigmail.watched import WatchedView

log = logging.getLogger(__name__)

MAX_PAYLOAD_BYTES: Final = 256 * 1024
"""The largest email data (the JSON of one send's template data and attributes). A receipt's
data is a few kilobytes; SendGrid takes 30 MB per request, which may carry up to 1,000 emails;
a larger payload is a rule or an event gone wrong, set aside as ``payload_too_large``."""

MAX_PAYLOAD_DEPTH: Final = 2 * MAX_EVENT_DEPTH
"""How deeply an email's data may nest: room for a template to wrap an event's deepest values,
still far from the recursion limit of whatever encodes or decodes it later."""

# How much of an unexpected exception's text a dead letter and the log line keep.
_ERROR_TEXT_MAX_CHARS = 300


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

    @property
    def entered_at(self) -> datetime | None: ...


@record
class RawItem:
    """A plain :class:`Item`, for callers without a source (``simulate``, tests)."""

    data: bytes
    ref: str
    position: str = ""
    order: str | None = None
    entered_at: datetime | None = None


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
    claimed: list[SendRecord] = field(default_factory=list)  # fired in the batch, to deliver


@dataclass
class BatchWriter:
    """Applies the decisions of one batch of items inside its ledger transaction."""

    txn: LedgerTxn
    rules: RuleSet
    now: datetime
    source: str
    result: Ingested
    # One for the batch: a failed read fails the whole batch, which is then decided again.
    _view: WatchedView = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._view = WatchedView(self.txn)

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
        # A replayed dead letter is decided once more (trigmail/replays.py); keys stay unique.
        order = event_order(item.order, item.entered_at, event.ts)
        if self.txn.mark_seen(event.id, self.now) or take_replay(self.txn, event.id):
            decisions = self._decide(item, event, order)
            if decisions is None:
                return
            if order is not None:
                self._mark_cancel(event, order)
        else:
            decisions = [duplicate_event(event)]
            if order is not None:
                decisions.extend(self._first_copy(event, order))
        set_aside: list[SetAside] = []
        for decision in decisions:
            self._apply(event, decision)
            if isinstance(decision, SetAside):
                set_aside.append(decision)
        if set_aside:
            detail = "; ".join(f"{d.rule_id}: {d.detail}" for d in set_aside)
            self._reject(item, set_aside[0].reason.value, detail)

    def _decide(self, item: Item, event: Event, order: str | None) -> list[Decision] | None:
        """The event's checked decisions, or ``None`` when deciding failed (it is set aside)."""
        view = self._view
        try:
            decided = decide_new(event, self.rules, view, self.now, order)
            # In place (the list is the engine's new one), and only where a payload is.
            for index, decision in enumerate(decided):
                if isinstance(decision, Schedule):
                    decided[index] = checked(decision)
            return decided
        except Exception as exc:
            if view.failed or isinstance(exc, LedgerError):
                raise  # the ledger's failure, not the event's: the batch is decided again
            detail = _error_text(exc)
            log.error("event %s (%s): set aside: internal error: %s", event.id, item.ref, detail)
            self._reject(item, Reason.INTERNAL_ERROR.value, detail)
            self.result.entries.append(_failed_event_entry(event, detail, self.now))
            return None

    def _first_copy(self, event: Event, order: str) -> tuple[Cancel, ...]:
        """Move what a later copy decided first did back to where this copy entered."""
        found = first_copy(event, self.rules, self._view, order)
        txn = self.txn
        for send in found.moved:
            txn.rematch(send.key, send.cancel_match)
        if found.mark_moved:
            txn.move_cancel_mark(event.user_id, event.id, order)
        for send in found.restored:
            if (restored := txn.restore(send.key, self.now)) is not None:
                self.result.scheduled.append(restored)
                self.result.entries.append(restored_entry(event, restored, self.now))
        return found.cancels

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
        data = item.data
        # A source's bug (not bytes) must not turn one bad item into a failed batch.
        raw = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else repr(data)
        self.txn.add_dead_letter(DeadLetter(self.now, self.source, item.ref, raw, reason, detail))
        self.result.rejected.append(Rejected(item, reason, detail))

    def _apply(self, event: Event, decision: Decision) -> None:
        entries, now = self.result.entries, self.now
        # Each entry built positionally, in LogEntry's field order (at ... variant).
        if isinstance(decision, Schedule):
            send = record_for(decision, self.rules.version, now)
            if self.txn.insert_send(send):
                self.result.scheduled.append(send)
                outcome, reason = Outcome.SCHEDULED, decision.reason
            else:
                outcome, reason = Outcome.SKIPPED, Reason.DUPLICATE_KEY
            entry = LogEntry(
                now,
                event.id,
                event.user_id,
                decision.rule_id,
                decision.step,
                decision.key,
                outcome,
                reason,
                decision.due_at,
                decision.detail,
                decision.payload.variant,
            )
        elif isinstance(decision, Skip):
            entry = LogEntry(
                now,
                event.id,
                event.user_id,
                decision.rule_id,
                decision.step,
                decision.key,
                Outcome.SKIPPED,
                decision.reason,
                None,
                _skip_detail(decision),
            )
        elif isinstance(decision, Cancel):
            for key in self.txn.cancel_sends(decision.keys, decision.reason.value, now):
                entries.append(_cancel_entry(event, decision, key, now))
            return
        else:
            entry = LogEntry(
                now,
                event.id,
                event.user_id,
                decision.rule_id,
                decision.step,
                None,
                Outcome.DEAD_LETTER,
                decision.reason,
                None,
                decision.detail,
            )
        entries.append(entry)


def expect_batch(txn: LedgerTxn, rules: RuleSet, events: Sequence[Event], now: datetime) -> None:
    """Tell the transaction what deciding ``events`` reads: their ids, the keys of the sends
    they may schedule, and the users whose sends or deliveries they may read, which a SQL
    ledger then reads in one statement each."""
    txn.expect_seen([event.id for event in events], now)
    pending: set[str] = set()
    delivered: set[str] = set()
    # Asked once per name (it depends on nothing else): a batch has only a few names.
    by_name: dict[str, tuple[bool, bool]] = {}
    for event in events:
        reads = by_name.get(event.name)
        if reads is None:
            reads = by_name[event.name] = user_reads(event, rules)
        cancels, cools = reads
        if cancels:
            pending.add(event.user_id)
        if cools:
            delivered.add(event.user_id)
    txn.expect_reads(pending, delivered)
    txn.expect_sends(key for event in events for key in _send_keys(event, rules))


def _send_keys(event: Event, rules: RuleSet) -> list[str]:
    try:
        return list(send_keys(event, rules))
    except Exception:  # deciding the event meets it again, and sets that event alone aside
        return []


def parse_item(item: Item, read_at: datetime) -> Event | BadEventError:
    """Parse an item's event, returning (not raising) why it is bad.

    Any exception, not only a :class:`BadEventError`, is returned as one: an unforeseen
    failure is ``internal_error``, for this item alone.
    """
    # Refused by the source itself: set aside like a bad event, so the ledger has the letter.
    refused = getattr(item, "refused", None)
    if refused is not None:
        return BadEventError(*refused)
    try:
        return parse_event(item.data, read_at)
    except BadEventError as exc:
        return exc
    except Exception as exc:
        detail = _error_text(exc)
        log.error("event %s: set aside: internal error: %s", item.ref, detail)
        return BadEventError(Reason.INTERNAL_ERROR.value, detail)


def checked(decision: Decision) -> Decision:
    """Return ``decision``, or a :class:`SetAside` when it schedules a payload that does not
    encode as JSON or nests deeper than :data:`MAX_PAYLOAD_DEPTH` (``template_error``), or is
    over :data:`MAX_PAYLOAD_BYTES` (``payload_too_large``): such a send could be neither
    stored nor sent."""
    if not isinstance(decision, Schedule):
        return decision
    problem = _payload_problem(decision.payload)
    if problem is None:
        return decision
    reason, detail = problem
    return SetAside(decision.rule_id, reason, detail, step=decision.step)


def _payload_problem(payload: Payload) -> tuple[Reason, str] | None:
    try:
        text = payload.json_text()
        # ASCII (nearly every payload) is a byte a character: no copy encoded to measure it.
        size = len(text) if text.isascii() else len(text.encode())
    except (TypeError, ValueError, RecursionError) as exc:  # UnicodeEncodeError: a ValueError
        return (
            Reason.TEMPLATE_ERROR,
            f"the email's data does not encode as JSON: {_error_text(exc)}",
        )
    if size > MAX_PAYLOAD_BYTES:
        return (
            Reason.PAYLOAD_TOO_LARGE,
            f"the email's data is {size} bytes of JSON, over {MAX_PAYLOAD_BYTES}",
        )
    # As for events: few brackets, no depth to walk (nearly every payload).
    if text.count("{") + text.count("[") > MAX_PAYLOAD_DEPTH and json_depth_exceeds(
        payload.data, MAX_PAYLOAD_DEPTH
    ):
        return (
            Reason.TEMPLATE_ERROR,
            f"the email's data nests more than {MAX_PAYLOAD_DEPTH} levels deep",
        )
    return None


def _error_text(exc: BaseException) -> str:
    """One line naming an unexpected exception, clipped: it may quote an event's values."""
    try:
        text = f"{type(exc).__name__}: {exc}"
    except Exception:  # a str() that fails too: the type is still worth keeping
        text = type(exc).__name__
    text = " ".join(text.split())
    if len(text) > _ERROR_TEXT_MAX_CHARS:
        text = text[: _ERROR_TEXT_MAX_CHARS - 1] + "…"
    return text


def _known_reason(reason: str) -> Reason:
    try:
        return Reason(reason)
    except ValueError:  # a reason word this version has no member for must not stop a batch
        return Reason.INTERNAL_ERROR


def _bad_event_entry(item: Item, exc: BadEventError, now: datetime) -> LogEntry:
    return LogEntry(
        at=now,
        event_id=None,
        user_id=None,
        rule=None,
        step=None,
        key=None,
        outcome=Outcome.DEAD_LETTER,
        reason=_known_reason(exc.reason),
        detail=f"{item.ref}: {exc.detail}",
    )


def _failed_event_entry(event: Event, detail: str, now: datetime) -> LogEntry:
    return LogEntry(
        at=now,
        event_id=event.id,
        user_id=event.user_id,
        rule=None,
        step=None,
        key=None,
        outcome=Outcome.DEAD_LETTER,
        reason=Reason.INTERNAL_ERROR,
        detail=detail,
    )


def _cancel_entry(event: Event, decision: Cancel, key: str, now: datetime) -> LogEntry:
    return LogEntry(
        at=now,
        # The cancel's: a trigger's own decision may find it cancelled by a cancel_on event
        # decided before it (its mark).
        event_id=decision.event_id,
        user_id=event.user_id,
        rule=decision.rule_id,
        step=decision.steps.get(key),
        key=key,
        outcome=Outcome.CANCELLED,
        reason=decision.reason,
        variant=decision.variants.get(key),
        # The event's name: the log keeps only its id, and `explain` says "by order_completed".
        detail=f"by {decision.event}",
    )


def record_for(decision: Schedule, rules_version: str, now: datetime) -> SendRecord:
    """Return the ``scheduled`` send a :class:`Schedule` decision stands for."""
    # Positional, in SendRecord's field order (key ... claimed_at): once per send, and
    # cheaper than keywords.
    return SendRecord(
        decision.key,
        decision.rule_id,
        decision.step,
        decision.user_id,
        decision.email,
        decision.event_id,
        decision.due_at,
        decision.payload,
        decision.on_doubt,
        rules_version,
        SendState.SCHEDULED,
        decision.cancel_match,
        0,
        None,
        None,
        None,
        now,
        now,
    )


def _skip_detail(decision: Skip) -> str:
    if decision.until is not None:
        # Ends with the time, as a cooldown drop's detail does: `explain` reads it back.
        return f"{decision.detail}: until {format_ts(decision.until)}"
    return decision.detail
