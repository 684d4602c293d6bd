"""The ledger contract for delivery evidence (SendGrid's Event Webhook): every ledger passes
these same tests (the ``ledger`` fixture of tests/ledger_helpers.py runs each on all of them)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from trigmail.decisions import Payload
from trigmail.errors import LedgerError
from trigmail.evidence import VERIFY_RESENT, DeliveryEvent, DeliveryEventType, EvidenceState
from trigmail.ledger.base import Ledger, SendRecord, SendState
from trigmail.rules.model import Address, OnDoubt


def make_send(key: str, at: datetime, on_doubt: OnDoubt = OnDoubt.SKIP) -> SendRecord:
    payload = Payload(template="d-1", data={}, from_=Address("hello@example.com", "Shop"))
    return SendRecord(
        key=key,
        rule_id="cart",
        step=0,
        user_id="u1",
        email="u1@example.com",
        event_id=f"evt-{key}",
        due_at=at,
        payload=payload,
        on_doubt=on_doubt,
        rules_version="v1",
    )


def event(
    sg_event_id: str,
    key: str,
    at: datetime,
    kind: DeliveryEventType = DeliveryEventType.PROCESSED,
    message_id: str | None = "msg-1",
) -> DeliveryEvent:
    return DeliveryEvent(sg_event_id, key, "cart", kind, at, message_id, "", at)


def put(ledger: Ledger, send: SendRecord, state: SendState, at: datetime) -> None:
    """Insert ``send`` and walk it to ``state`` (scheduled, sending, or a finish state)."""
    with ledger.transaction() as txn:
        assert txn.insert_send(send)
    if state == SendState.SCHEDULED:
        return
    with ledger.transaction() as txn:
        assert txn.claim([send.key], at)
        if state != SendState.SENDING:
            txn.finish([send.key], state, at)


def state_of(ledger: Ledger, key: str) -> SendState:
    record = ledger.get_send(key)
    assert record is not None
    return record.state


def test_events_are_stored_once_by_sg_event_id(ledger: Ledger, t0: datetime) -> None:
    first = [event("e1", "k1", t0), event("e2", "k1", t0 + timedelta(seconds=1))]
    with ledger.transaction() as txn:
        assert txn.add_delivery_events(first) == first
    with ledger.transaction() as txn:
        # a redelivered batch, and one event twice in one batch
        again = [event("e2", "k1", t0), event("e3", "k2", t0), event("e3", "k2", t0)]
        assert [e.sg_event_id for e in txn.add_delivery_events(again)] == ["e3"]
    assert [e.sg_event_id for e in ledger.delivery_events("k1")] == ["e1", "e2"]
    assert ledger.delivery_events("k1")[0] == first[0]
    assert ledger.delivery_counts() == {"cart": {"processed": 3}}


def test_a_failed_transaction_stores_no_event(ledger: Ledger, t0: datetime) -> None:
    with pytest.raises(LedgerError), ledger.transaction() as txn:
        txn.add_delivery_events([event("e1", "k1", t0)])
        raise LedgerError("boom")
    assert ledger.delivery_events("k1") == []
    with ledger.transaction() as txn:
        assert len(txn.add_delivery_events([event("e1", "k1", t0)])) == 1


def test_evidence_settles_an_in_doubt_send_as_sent(ledger: Ledger, t0: datetime) -> None:
    put(ledger, make_send("k1", t0), SendState.IN_DOUBT, t0)
    later = t0 + timedelta(minutes=5)
    with ledger.transaction() as txn:
        txn.add_delivery_events(
            [
                event("e2", "k1", t0 + timedelta(seconds=9), DeliveryEventType.DELIVERED, "m-2"),
                event("e1", "k1", t0 + timedelta(seconds=1), DeliveryEventType.PROCESSED, "m-1"),
            ]
        )
        settled = txn.settle_by_evidence(later, ["k1"])
    assert [s.key for s in settled] == ["k1"]
    send = ledger.get_send("k1")
    assert send is not None
    assert send.state == SendState.SENT
    assert send.message_id == "m-1"  # the earliest event's
    assert send.reason == "evidence:processed"
    assert send.updated_at == later


@pytest.mark.parametrize(
    "state",
    # evidence moves only in_doubt sends: never one that is pending, in flight or finished
    [SendState.SCHEDULED, SendState.SENDING, SendState.SENT, SendState.FAILED],
)
def test_evidence_moves_only_in_doubt_sends(ledger: Ledger, t0: datetime, state: SendState) -> None:
    put(ledger, make_send("k1", t0), state, t0)
    with ledger.transaction() as txn:
        txn.add_delivery_events([event("e1", "k1", t0)])
        assert txn.settle_by_evidence(t0, ["k1"]) == []
        assert txn.settle_by_evidence(t0) == []
    assert state_of(ledger, "k1") == state


def test_evidence_moves_only_the_send_its_key_names(ledger: Ledger, t0: datetime) -> None:
    put(ledger, make_send("k1", t0), SendState.IN_DOUBT, t0)
    put(ledger, make_send("k2", t0), SendState.IN_DOUBT, t0)
    with ledger.transaction() as txn:
        txn.add_delivery_events([event("e1", "k2", t0)])
        assert [s.key for s in txn.settle_by_evidence(t0, ["k1", "k2"])] == ["k2"]
    assert state_of(ledger, "k1") == SendState.IN_DOUBT


def test_a_sweep_settles_sends_whose_evidence_came_first(ledger: Ledger, t0: datetime) -> None:
    # the event came while the send hung (sending); the send became in doubt afterwards
    put(ledger, make_send("k1", t0), SendState.SENDING, t0)
    with ledger.transaction() as txn:
        txn.add_delivery_events([event("e1", "k1", t0)])
        assert txn.settle_by_evidence(t0) == []
    with ledger.transaction() as txn:
        txn.finish(["k1"], SendState.IN_DOUBT, t0)
    with ledger.transaction() as txn:
        assert [s.key for s in txn.settle_by_evidence(t0)] == ["k1"]
    assert state_of(ledger, "k1") == SendState.SENT


def test_verify_resends_once_after_the_window(ledger: Ledger, t0: datetime) -> None:
    put(ledger, make_send("k1", t0, OnDoubt.VERIFY), SendState.IN_DOUBT, t0)
    put(ledger, make_send("k2", t0, OnDoubt.SKIP), SendState.IN_DOUBT, t0)
    put(ledger, make_send("k3", t0, OnDoubt.VERIFY), SendState.IN_DOUBT, t0)
    window = timedelta(hours=1)
    with ledger.transaction() as txn:
        txn.add_delivery_events([event("e3", "k3", t0)])  # k3 has evidence: not resent
        assert txn.resend_unverified(t0 - timedelta(seconds=1), t0) == []  # window not over
    later = t0 + window
    with ledger.transaction() as txn:
        again = txn.resend_unverified(later - window, later)
    assert [s.key for s in again] == ["k1"]
    send = ledger.get_send("k1")
    assert send is not None
    assert send.state == SendState.SCHEDULED
    assert send.due_at == later
    assert send.claimed_at is None
    assert send.last_error is not None and send.last_error.startswith(VERIFY_RESENT)
    assert ledger.doubt_resent(["k1", "k2", "k3"]) == {"k1"}
    # sent again and in doubt again: never a third time
    with ledger.transaction() as txn:
        assert txn.claim(["k1"], later)
        txn.finish(["k1"], SendState.IN_DOUBT, later)
    even_later = later + 2 * window
    with ledger.transaction() as txn:
        assert txn.resend_unverified(even_later, even_later) == []
    assert state_of(ledger, "k1") == SendState.IN_DOUBT
    assert state_of(ledger, "k2") == SendState.IN_DOUBT


def test_a_failed_transaction_resends_nothing(ledger: Ledger, t0: datetime) -> None:
    put(ledger, make_send("k1", t0, OnDoubt.VERIFY), SendState.IN_DOUBT, t0)
    with pytest.raises(LedgerError), ledger.transaction() as txn:
        assert txn.resend_unverified(t0, t0)
        raise LedgerError("boom")
    assert state_of(ledger, "k1") == SendState.IN_DOUBT
    assert ledger.doubt_resent(["k1"]) == set()


def test_events_are_pruned_with_the_retention(ledger: Ledger, t0: datetime) -> None:
    old = DeliveryEvent("e1", "k1", "cart", DeliveryEventType.OPEN, t0, None, "", t0)
    new_at = t0 + timedelta(days=2)
    new = DeliveryEvent("e2", "k1", "cart", DeliveryEventType.CLICK, new_at, None, "u", new_at)
    with ledger.transaction() as txn:
        txn.add_delivery_events([old, new])
    assert ledger.prune(t0 + timedelta(days=1)) >= 1
    assert [e.sg_event_id for e in ledger.delivery_events("k1")] == ["e2"]


def test_verify_is_stored_as_the_on_doubt_of_a_send(ledger: Ledger, t0: datetime) -> None:
    put(ledger, make_send("k1", t0, OnDoubt.VERIFY), SendState.SCHEDULED, t0)
    send = ledger.get_send("k1")
    assert send is not None
    assert send.on_doubt == OnDoubt.VERIFY


def test_a_large_batch_is_stored_whole_and_once(ledger: Ledger, t0: datetime) -> None:
    # SendGrid posts up to about a thousand events at once; some redelivered in the same batch
    batch = [event(f"e{i}", f"k{i % 300}", t0) for i in range(1100)]
    batch += [event("e7", "k7", t0), event("e1099", "k1", t0)]
    with ledger.transaction() as txn:
        added = txn.add_delivery_events(batch)
    assert [e.sg_event_id for e in added] == [f"e{i}" for i in range(1100)]
    assert ledger.delivery_counts() == {"cart": {"processed": 1100}}
    with ledger.transaction() as txn:
        assert txn.add_delivery_events(batch) == []


def test_an_event_without_a_message_id_settles_too(ledger: Ledger, t0: datetime) -> None:
    put(ledger, make_send("k1", t0), SendState.IN_DOUBT, t0)
    with ledger.transaction() as txn:
        txn.add_delivery_events([event("e1", "k1", t0, DeliveryEventType.DROPPED, None)])
        assert [s.key for s in txn.settle_by_evidence(t0)] == ["k1"]
    send = ledger.get_send("k1")
    assert send is not None
    assert (send.state, send.message_id, send.reason) == (SendState.SENT, None, "evidence:dropped")


def test_in_doubt_sends_are_counted_by_evidence_state(ledger: Ledger, t0: datetime) -> None:
    assert set(ledger.in_doubt_by_evidence().values()) == {0}
    put(ledger, make_send("skip", t0), SendState.IN_DOUBT, t0)
    put(ledger, make_send("seen", t0), SendState.IN_DOUBT, t0)
    put(ledger, make_send("waits", t0, OnDoubt.VERIFY), SendState.IN_DOUBT, t0)
    put(ledger, make_send("again", t0, OnDoubt.VERIFY), SendState.IN_DOUBT, t0 - timedelta(hours=2))
    put(ledger, make_send("done", t0), SendState.SENT, t0)
    with ledger.transaction() as txn:
        txn.add_delivery_events([event("e1", "seen", t0), event("e2", "done", t0)])
        assert [s.key for s in txn.resend_unverified(t0 - timedelta(hours=1), t0)] == ["again"]
        assert txn.claim(["again"], t0)
        txn.finish(["again"], SendState.IN_DOUBT, t0)
    assert ledger.in_doubt_by_evidence() == {
        EvidenceState.AWAITING_EVIDENCE: 1,
        EvidenceState.EVIDENCE_RECEIVED: 1,
        EvidenceState.AWAITING_VERIFY: 1,
        EvidenceState.RESENT_NO_EVIDENCE: 1,
    }
