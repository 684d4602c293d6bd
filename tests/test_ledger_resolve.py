"""The ledger contract of ``resolve``: an operator settles an in-doubt send.

The ``ledger`` fixture is the contract suite's: every case runs on memory, SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from tests.ledger_helpers import make_send, put_in_state
from trigmail.ledger.base import Ledger, SendRecord, SendState
from trigmail.ledger.semantics import RESOLVED_NOT_SENT, RESOLVED_SENT
from trigmail.rules.model import OnDoubt

IN_DOUBT_ERROR = "InDoubtDeliveryError: read timeout"


def in_doubt(
    ledger: Ledger, key: str, at: datetime, *, user: str = "u1", on_doubt: OnDoubt = OnDoubt.SKIP
) -> SendRecord:
    """Insert a send due at ``at``, claim it and finish it in doubt, as a read timeout does."""
    send = make_send(key, at, user=user, on_doubt=on_doubt)
    put_in_state(ledger, send, SendState.SCHEDULED, at)
    with ledger.transaction() as txn:
        assert txn.claim([key], at)
        txn.finish([key], SendState.IN_DOUBT, at, error=IN_DOUBT_ERROR)
    stored = ledger.get_send(key)
    assert stored is not None and stored.state is SendState.IN_DOUBT
    return stored


def resolve(ledger: Ledger, key: str, sent: bool, at: datetime) -> SendRecord | None:
    with ledger.transaction() as txn:
        return txn.resolve(key, sent, at)


def test_resolve_sent_marks_it_sent_and_keeps_the_claim(ledger: Ledger, t0: datetime) -> None:
    before = in_doubt(ledger, "k1", t0)
    later = t0 + timedelta(hours=2)
    resolved = resolve(ledger, "k1", True, later)
    assert resolved is not None
    assert resolved.state is SendState.SENT
    assert resolved.last_error == f"{RESOLVED_SENT} (was: {IN_DOUBT_ERROR})"
    # It went out: it keeps its claim time (cooldowns count from it) and its due time.
    assert (resolved.claimed_at, resolved.due_at) == (before.claimed_at, before.due_at)
    assert resolved.updated_at == later
    assert ledger.get_send("k1") == resolved


def test_resolve_not_sent_schedules_it_again_due_now(ledger: Ledger, t0: datetime) -> None:
    before = in_doubt(ledger, "k1", t0)
    later = t0 + timedelta(hours=2)
    resolved = resolve(ledger, "k1", False, later)
    assert resolved is not None
    assert resolved.state is SendState.SCHEDULED
    assert resolved.due_at == later
    assert resolved.claimed_at is None
    assert resolved.attempts == before.attempts
    assert resolved.last_error == f"{RESOLVED_NOT_SENT} (was: {IN_DOUBT_ERROR})"
    assert ledger.get_send("k1") == resolved
    # The daemon finds it through the due-time index, and it can be claimed again.
    with ledger.transaction() as txn:
        assert [s.key for s in txn.due_sends(later, 10)] == ["k1"]
        assert [s.attempts for s in txn.claim(["k1"], later)] == [before.attempts + 1]


def test_resolve_not_sent_stops_holding_the_cooldown_back(ledger: Ledger, t0: datetime) -> None:
    in_doubt(ledger, "k1", t0)
    with ledger.transaction() as txn:
        assert txn.last_delivered_at("cart", "u1") == t0
    resolve(ledger, "k1", False, t0 + timedelta(hours=1))
    with ledger.transaction() as txn:
        assert txn.last_delivered_at("cart", "u1") is None


def test_resolve_takes_a_time_in_any_zone(ledger: Ledger, t0: datetime) -> None:
    in_doubt(ledger, "k1", t0)
    lisbon_summer = timezone(timedelta(hours=1))
    resolved = resolve(ledger, "k1", False, t0.astimezone(lisbon_summer))
    assert resolved is not None and resolved.due_at == t0
    stored = ledger.get_send("k1")
    assert stored is not None and stored.due_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize("sent", [True, False])
@pytest.mark.parametrize(
    "state",
    [
        SendState.SCHEDULED,  # not sent yet: nothing to settle
        SendState.SENDING,  # in flight: the daemon settles it
        SendState.SENT,  # already settled
        SendState.FAILED,  # refused by the provider: known not sent
        SendState.CANCELLED,  # never meant to go
    ],
)
def test_resolve_leaves_a_send_not_in_doubt_alone(
    ledger: Ledger, t0: datetime, state: SendState, sent: bool
) -> None:
    put_in_state(ledger, make_send("k1", t0), state, t0)
    before = ledger.get_send("k1")
    assert resolve(ledger, "k1", sent, t0 + timedelta(hours=1)) is None
    assert ledger.get_send("k1") == before


def test_resolve_of_an_unknown_key_is_none(ledger: Ledger, t0: datetime) -> None:
    assert resolve(ledger, "nope", True, t0) is None
    assert ledger.get_send("nope") is None


def test_resolve_twice_settles_once(ledger: Ledger, t0: datetime) -> None:
    in_doubt(ledger, "k1", t0)
    assert resolve(ledger, "k1", True, t0) is not None
    # The second operator finds it settled: no flip from sent back to scheduled.
    assert resolve(ledger, "k1", False, t0) is None
    stored = ledger.get_send("k1")
    assert stored is not None and stored.state is SendState.SENT


def test_resolve_rolls_back_with_its_transaction(ledger: Ledger, t0: datetime) -> None:
    before = in_doubt(ledger, "k1", t0)
    with pytest.raises(RuntimeError), ledger.transaction() as txn:
        assert txn.resolve("k1", False, t0) is not None
        raise RuntimeError("abort")
    assert ledger.get_send("k1") == before
    with ledger.transaction() as txn:
        assert txn.due_sends(t0 + timedelta(days=1), 10) == []


def test_resolve_applies_to_on_doubt_resend_sends_too(ledger: Ledger, t0: datetime) -> None:
    # A resend rule that gave up after max_attempts ends in doubt like any other.
    in_doubt(ledger, "k1", t0, on_doubt=OnDoubt.RESEND)
    resolved = resolve(ledger, "k1", True, t0)
    assert resolved is not None and resolved.state is SendState.SENT


def test_status_no_longer_lists_a_resolved_send(ledger: Ledger, t0: datetime) -> None:
    in_doubt(ledger, "k1", t0)
    in_doubt(ledger, "k2", t0, user="u2")
    resolve(ledger, "k1", True, t0)
    status = ledger.status()
    assert [s.key for s in status.in_doubt] == ["k2"]
    assert (status.counts[SendState.IN_DOUBT], status.counts[SendState.SENT]) == (1, 1)
