"""Where an event stands among one user's events when several workers read the source.

The workers of a Redis group decide its entries in whatever order their reads and crashes
allow; what counts is the order the events entered the stream (docs/reliability.md, *Event
order*). A producer's redelivery is a second entry of the same event, later. When the worker
holding the first copy is killed, another decides the later copy first, at the later copy's
place: the first copy, decided last as a duplicate, then moves the event back to where it
entered. The event-order gate holds every send due after the first copy entered until that
copy is decided, so the move comes before any of them fires.

Pure, like the engine: the ingest applies what these return.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Final, Protocol

from trigmail.decisions import Cancel, LogEntry, Outcome, Reason
from trigmail.engine import ORDER_KEY, LedgerView, cancelled_by_marks, mark_cancels
from trigmail.events import Event
from trigmail.ledger.base import SendRecord
from trigmail.records import record
from trigmail.rules.model import RuleSet
from trigmail.sends import evolve


def event_order(order: str | None, entered_at: datetime | None, ts: datetime) -> str | None:
    """Where an event stands among one user's events read by several workers.

    That is where its item entered the source (``order``, ``entered_at``), or when the event
    says it happened (``ts``) if that is earlier: a producer's redelivery enters the stream
    again, later, with the first copy's ``ts``. A producer whose clock runs behind the
    source's by ``d`` makes its events count up to ``d`` earlier (docs/reliability.md).
    ``None`` for one reader, which decides items in the order they entered.
    """
    if order is None or entered_at is None:
        return order
    at = min(entered_at, ts)
    return f"{round(at.timestamp() * 1000):020d}:{order}"


class CopiesView(LedgerView, Protocol):
    """The reads a first copy decides from: the engine's, and a user's cancelled sends."""

    def cancelled_for_user(self, user_id: str, rule_ids: Collection[str]) -> list[SendRecord]: ...


@record
class FirstCopy:
    """What an event's first copy changes when a later copy of it was decided first.

    As a trigger:

    Attributes:
        moved: the sends the later copy scheduled, still waiting, as they now stand: at the
            first copy's place, so that a cancel decided later and entered between the two
            copies cancels them.
        cancels: those of them cancelled by a cancel already decided that entered between the
            two copies (its mark): in the order events happened, the cancel came second.

    As a ``cancel_on`` event:

    Attributes:
        restored: the sends the later copy cancelled (itself or by its mark) whose trigger
            entered between the two copies, and which no other cancel cancels: in the order
            events happened, they came after the cancel.
        mark_moved: whether the later copy's mark moves back to ``order``.
    """

    moved: tuple[SendRecord, ...] = ()
    cancels: tuple[Cancel, ...] = ()
    restored: tuple[SendRecord, ...] = ()
    mark_moved: bool = False


NOTHING: Final = FirstCopy()


def first_copy(event: Event, rules: RuleSet, view: CopiesView, order: str) -> FirstCopy:
    """Decide a copy of ``event`` found already decided, which entered the source at ``order``.

    A copy that entered after the one decided changes nothing: only what stands later than
    ``order`` moves.
    """
    moved, cancels = _as_trigger(event, rules, view, order)
    restored, mark_moved = _as_cancel(event, rules, view, order)
    if not (moved or restored or mark_moved):
        return NOTHING
    return FirstCopy(moved, cancels, restored, mark_moved)


def _as_trigger(
    event: Event, rules: RuleSet, view: CopiesView, order: str
) -> tuple[tuple[SendRecord, ...], tuple[Cancel, ...]]:
    cancelled = [rule for rule in rules.triggered_by(event.name) if rule.cancels]
    if not cancelled:
        return (), ()
    pending = view.pending_for_user(event.user_id, {rule.id for rule in cancelled})
    later = [
        send
        for send in pending
        if send.event_id == event.id
        and isinstance(at := send.cancel_match.get(ORDER_KEY), str)
        and at > order
    ]
    if not later:
        return (), ()
    moved = tuple(
        _moved(send, order) for send in sorted(later, key=lambda each: (each.rule_id, each.key))
    )
    cancels: list[Cancel] = []
    for rule in cancelled:
        sends = [send for send in moved if send.rule_id == rule.id]
        if sends:
            cancels.extend(cancelled_by_marks(rule, sends, view, event.user_id, order))
    return moved, tuple(cancels)


def _as_cancel(
    event: Event, rules: RuleSet, view: CopiesView, order: str
) -> tuple[tuple[SendRecord, ...], bool]:
    cancellers = rules.cancelled_by(event.name)
    if not cancellers:
        return (), False
    marks = view.cancel_marks_after(event.user_id, order)
    own = [mark for mark in marks if mark.event_id == event.id]
    if not own:
        return (), False  # the copy decided first entered before this one
    until = max(mark.order for mark in own)
    others = [mark for mark in marks if mark.event_id != event.id]
    candidates = view.cancelled_for_user(event.user_id, {rule.id for rule, _ in cancellers})
    restored = []
    for send in candidates:
        at = send.cancel_match.get(ORDER_KEY)
        rule = rules.get(send.rule_id)
        if (
            rule is None
            or send.reason != Reason.CANCEL_ON.value
            or not isinstance(at, str)
            or not order < at < until
        ):
            continue
        # Cancelled by this event, by no other: every cancel decided among several readers
        # leaves a mark, so another that stands after the trigger would be among ``others``.
        if any(mark_cancels(rule, send, mark) for mark in own) and not any(
            mark.order > at and mark_cancels(rule, send, mark) for mark in others
        ):
            restored.append(send)
    return tuple(restored), True


def _moved(send: SendRecord, order: str) -> SendRecord:
    return evolve(send, cancel_match={**send.cancel_match, ORDER_KEY: order})


def restored_entry(event: Event, send: SendRecord, now: datetime) -> LogEntry:
    """The log's line for a send whose cancel the first copy of ``event`` undid."""
    return LogEntry(
        now,
        event.id,
        send.user_id,
        send.rule_id,
        send.step,
        send.key,
        Outcome.SCHEDULED,
        Reason.FIRST_COPY,
        send.due_at,
        f"{event.name} entered the source after its trigger: a later copy, decided first, "
        "had cancelled it",
        send.payload.variant,
    )
