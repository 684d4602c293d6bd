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

from datetime import datetime

from trigmail.decisions import Cancel
from trigmail.engine import ORDER_KEY, LedgerView, cancelled_by_marks
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


@record
class FirstCopy:
    """What an event's first copy changes when a later copy of it was decided first.

    Attributes:
        moved: the sends the later copy scheduled, still waiting, as they now stand: at the
            first copy's place, so that a cancel decided later and entered between the two
            copies cancels them.
        cancels: those of them cancelled by a cancel already decided that entered between the
            two copies (its mark): in the order events happened, the cancel came second.
    """

    moved: tuple[SendRecord, ...] = ()
    cancels: tuple[Cancel, ...] = ()


def first_copy(event: Event, rules: RuleSet, view: LedgerView, order: str) -> FirstCopy:
    """Decide a copy of ``event`` found already decided, which entered the source at ``order``.

    A copy that entered after the one decided changes nothing: only sends that stand later
    than ``order`` move.
    """
    cancelled = [rule for rule in rules.triggered_by(event.name) if rule.cancels]
    if not cancelled:
        return FirstCopy()
    pending = view.pending_for_user(event.user_id, {rule.id for rule in cancelled})
    later = [
        send
        for send in pending
        if send.event_id == event.id and send.cancel_match.get(ORDER_KEY, "") > order
    ]
    if not later:
        return FirstCopy()
    moved = tuple(
        _moved(send, order) for send in sorted(later, key=lambda each: (each.rule_id, each.key))
    )
    cancels: list[Cancel] = []
    for rule in cancelled:
        sends = [send for send in moved if send.rule_id == rule.id]
        if sends:
            cancels.extend(cancelled_by_marks(rule, sends, view, event.user_id, order))
    return FirstCopy(moved, tuple(cancels))


def _moved(send: SendRecord, order: str) -> SendRecord:
    return evolve(send, cancel_match={**send.cancel_match, ORDER_KEY: order})
