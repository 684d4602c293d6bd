"""The rules every ledger applies, whatever stores its rows (docs/design.md).

Memory, SQLite and PostgreSQL settle a send after a crash, resolve an in-doubt send and count
sends for ``status`` through these functions, and the SQL ledgers spell a set of states in a
query only through :func:`sql_states`: the state machine of :mod:`trigmail.sends` is written
once, in Python.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from datetime import UTC, datetime
from typing import Final

from trigmail.ledger.base import LedgerStatus
from trigmail.rules.model import OnDoubt
from trigmail.sends import (
    DELIVERED_STATES,
    FINISHED_STATES,
    SendRecord,
    SendState,
    check_finish_state,
    check_new,
    evolve,
)

__all__ = [
    "DELIVERED_SQL",
    "FINISHED_SQL",
    "LEASE_EXPIRED_ERROR",
    "RECOVERED_ERROR",
    "RESOLVED_NOT_SENT",
    "RESOLVED_SENT",
    "Clock",
    "as_utc",
    "check_finish_state",
    "check_new",
    "count_states",
    "due_order",
    "recovered",
    "resolution_note",
    "resolved",
    "sql_states",
    "status_of",
    "utc_now",
]

Clock = Callable[[], datetime]

RECOVERED_ERROR: Final = "interrupted while sending: the provider may or may not have it"
# Why an expired lease's send is in doubt: its worker died between claiming and recording.
LEASE_EXPIRED_ERROR: Final = "the worker sending it stopped answering (lease expired)"
RESOLVED_SENT: Final = "resolved as sent by operator"
RESOLVED_NOT_SENT: Final = "resolved as not sent by operator: scheduled again"


def utc_now() -> datetime:
    """Return the wall-clock time; the default clock of every ledger."""
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """Return ``moment`` in UTC; a naive datetime is refused, its zone would be a guess."""
    if moment.tzinfo is UTC:
        return moment
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}: the ledger needs timezone-aware times")
    return moment.astimezone(UTC)


def sql_states(states: Collection[SendState]) -> str:
    """Return ``states`` as the parenthesised list of an SQL ``IN``, in a stable order."""
    return "(" + ", ".join(f"'{state.value}'" for state in sorted(states)) + ")"


DELIVERED_SQL: Final = sql_states(DELIVERED_STATES)
FINISHED_SQL: Final = sql_states(FINISHED_STATES)


def recovered(record: SendRecord, at: datetime, error: str = RECOVERED_ERROR) -> SendRecord:
    """Return a ``sending`` send as it is after a crash, by its rule's ``on_doubt``.

    Args:
        record: the send, in ``sending``.
        at: when it is settled (UTC).
        error: why, as its ``last_error``: the process stopped, or its lease expired.
    """
    resend = record.on_doubt == OnDoubt.RESEND
    return evolve(
        record,
        state=SendState.SCHEDULED if resend else SendState.IN_DOUBT,
        claimed_at=None if resend else record.claimed_at,
        last_error=error,
        updated_at=at,
    )


def resolution_note(sent: bool, previous: str | None) -> str:
    """Return the ``last_error`` of a resolved send: the operator's word, then the old error."""
    note = RESOLVED_SENT if sent else RESOLVED_NOT_SENT
    return note if previous is None else f"{note} (was: {previous})"


def resolved(record: SendRecord, sent: bool, at: datetime) -> SendRecord:
    """Return an ``in_doubt`` send as an operator settled it (see ``LedgerTxn.resolve``)."""
    note = resolution_note(sent, record.last_error)
    if sent:
        return evolve(record, state=SendState.SENT, last_error=note, updated_at=at)
    return evolve(
        record,
        state=SendState.SCHEDULED,
        due_at=at,
        claimed_at=None,
        last_error=note,
        updated_at=at,
    )


def due_order(record: SendRecord) -> tuple[datetime, str]:
    """The order sends fall due in: by due time, then key."""
    return record.due_at, record.key


def count_states(
    groups: Iterable[tuple[str, SendState, int]],
) -> tuple[dict[SendState, int], dict[str, dict[SendState, int]]]:
    """Return the counts of ``status``, overall and by rule, from ``(rule, state, count)``."""
    counts = dict.fromkeys(SendState, 0)
    by_rule: dict[str, dict[SendState, int]] = {}
    for rule_id, state, count in groups:
        counts[state] += count
        by_rule.setdefault(rule_id, dict.fromkeys(SendState, 0))[state] += count
    return counts, by_rule


def count_variants(
    groups: Iterable[tuple[str, str, SendState, int]],
) -> dict[str, dict[str, dict[SendState, int]]]:
    """Return the counts of ``status`` by rule and A/B variant, from ``(rule, variant, state,
    count)``."""
    by_variant: dict[str, dict[str, dict[SendState, int]]] = {}
    for rule_id, variant, state, count in groups:
        counts = by_variant.setdefault(rule_id, {}).setdefault(variant, dict.fromkeys(SendState, 0))
        counts[state] += count
    return by_variant


def status_of(
    sends: Collection[SendRecord], dead_letters: int, rules_version: str | None, limit: int
) -> LedgerStatus:
    """Build a :class:`LedgerStatus` from every send (the memory ledger's status)."""
    counts, by_rule = count_states((r.rule_id, r.state, 1) for r in sends)
    newest = sorted(sorted(sends, key=lambda r: r.key), key=_updated, reverse=True)
    scheduled = (r for r in sends if r.state == SendState.SCHEDULED)
    return LedgerStatus(
        counts=counts,
        by_rule=by_rule,
        by_variant=count_variants(
            (r.rule_id, r.payload.variant, r.state, 1) for r in sends if r.payload.variant
        ),
        next_due=sorted(scheduled, key=due_order)[:limit],
        in_doubt=[r for r in newest if r.state == SendState.IN_DOUBT][:limit],
        failed=[r for r in newest if r.state == SendState.FAILED][:limit],
        recent=newest[:limit],
        dead_letters=dead_letters,
        rules_version=rules_version,
    )


def _updated(record: SendRecord) -> datetime:
    assert record.updated_at is not None  # every stored send has one
    return record.updated_at
