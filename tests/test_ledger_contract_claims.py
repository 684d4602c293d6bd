"""The ledger contract for claims of sends read together first (``expect_claims``), as the
serve loop claims the sends that fall due inside a batch: SQLite decides such a claim from the
row it read and writes the claims later, so every statement of the same transaction must still
see each claim as if it had been written at once, and a failed transaction none of them."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from tests.ledger_helpers import insert, make_send, state_of
from trigmail.ledger.base import Ledger, LedgerTxn, SendState


def _stored(ledger: Ledger, due_at: datetime, *sends: tuple[str, str]) -> None:
    """Commit scheduled sends (key, user), each in a transaction of its own."""
    for key, user in sends:
        insert(ledger, make_send(key, due_at, user=user))


def _claimed_keys(txn: LedgerTxn, keys: list[str], at: datetime) -> list[str]:
    return [record.key for record in txn.claim(keys, at)]


def test_expected_claims_come_back_as_one_by_one(ledger: Ledger, t0: datetime) -> None:
    _stored(ledger, t0, ("a", "u-a"), ("b", "u-b"), ("c", "u-c"), ("d", "u-d"))
    at = t0 + timedelta(seconds=5)
    with ledger.transaction() as txn:
        txn.expect_claims(["a", "b", "c", "missing", "a"])
        assert txn.cancel_sends(["b"], "order", at) == ["b"]  # before its claim: cancelled
        claimed = txn.claim(["c", "b", "missing", "a", "d"], at)
        assert [record.key for record in claimed] == ["c", "a", "d"]
        assert txn.claim(["a", "c", "d"], at) == []  # claimed already
        assert txn.cancel_sends(["a", "c"], "order", at) == []  # after its claim: not cancelled
    states = [state_of(ledger, key) for key in ("a", "b", "c", "d")]
    assert states == [SendState.SENDING, SendState.CANCELLED, SendState.SENDING, SendState.SENDING]
    # Each claimed record is the one stored, field for field.
    assert claimed == [ledger.get_send(key) for key in ("c", "a", "d")]
    assert [(record.attempts, record.claimed_at) for record in claimed] == [(1, at)] * 3


def test_reads_in_the_transaction_see_an_expected_claim(ledger: Ledger, t0: datetime) -> None:
    _stored(ledger, t0, ("a", "u1"), ("b", "u2"))
    at = t0 + timedelta(seconds=5)
    with ledger.transaction() as txn:
        txn.expect_claims(["a", "b"])
        assert _claimed_keys(txn, ["a"], at) == ["a"]
        assert txn.pending_for_user("u1", {"cart"}) == []
        assert [s.key for s in txn.pending_for_user("u2", {"cart"})] == ["b"]
        assert txn.last_delivered_at("cart", "u1") == at
        assert txn.delivered_count_since("u1", ["promo"], t0) == 1
        assert [s.key for s in txn.due_sends(at, 10)] == ["b"]
        assert not txn.drop("a", "cooldown", at)  # sending: not dropped
        assert _claimed_keys(txn, ["a", "b"], at) == ["b"]
        assert txn.next_due_at() is None
    assert [state_of(ledger, key) for key in ("a", "b")] == [SendState.SENDING] * 2


def test_an_expected_claim_is_gone_when_the_transaction_fails(ledger: Ledger, t0: datetime) -> None:
    _stored(ledger, t0, ("a", "u1"), ("b", "u2"))
    with pytest.raises(RuntimeError), ledger.transaction() as txn:
        txn.expect_claims(["a", "b"])
        assert _claimed_keys(txn, ["a", "b"], t0) == ["a", "b"]
        raise RuntimeError("the batch fails before its commit")
    for key in ("a", "b"):
        stored = ledger.get_send(key)
        assert stored is not None
        assert (stored.state, stored.attempts, stored.claimed_at) == (SendState.SCHEDULED, 0, None)


def test_a_send_changed_after_it_was_read_is_claimed_as_it_now_is(
    ledger: Ledger, t0: datetime
) -> None:
    _stored(ledger, t0, ("a", "u1"), ("b", "u2"), ("c", "u3"))
    later = t0 + timedelta(minutes=10)
    with ledger.transaction() as txn:
        txn.expect_claims(["a", "b", "c"])
        assert txn.defer("a", later)
        assert txn.drop("b", "cooldown", t0)
        deferred = txn.claim(["a", "b"], later)
        assert _claimed_keys(txn, ["c"], t0) == ["c"]
        txn.expect_claims(["a", "c"])  # read again after their claims: still claimed
        assert txn.claim(["a", "c"], later) == []
        txn.retry_later(["c"], later, "503")  # the claim put back
        retried = txn.claim(["c"], later)
    assert [(r.key, r.due_at, r.attempts) for r in deferred + retried] == [
        ("a", later, 1),
        ("c", later, 2),
    ]
    assert deferred + retried == [ledger.get_send(key) for key in ("a", "c")]
    assert state_of(ledger, "b") == SendState.CANCELLED


def test_a_kept_send_written_before_its_claim_is_claimed_once(ledger: Ledger, t0: datetime) -> None:
    with ledger.transaction() as txn:
        assert not txn.send_exists("k1")
        assert txn.insert_send(make_send("k1", t0))
        # A read of the user's sends writes the kept send; the claim comes after.
        assert [s.key for s in txn.pending_for_user("u1", {"cart"})] == ["k1"]
        claimed = txn.claim(["k1"], t0)
        assert _claimed_keys(txn, ["k1"], t0) == []
        assert txn.pending_for_user("u1", {"cart"}) == []
    assert [record.key for record in claimed] == ["k1"]
    assert claimed == [ledger.get_send("k1")]


def test_a_kept_send_changed_in_its_transaction_is_claimed_as_it_now_is(
    ledger: Ledger, t0: datetime
) -> None:
    later = t0 + timedelta(minutes=10)
    with ledger.transaction() as txn:
        for key in ("k1", "k2", "k3"):
            assert not txn.send_exists(key)
            assert txn.insert_send(make_send(key, t0, user=f"u-{key}"))
        assert txn.defer("k1", later)  # the kept sends are written first
        assert txn.drop("k2", "cooldown", t0)
        deferred = txn.claim(["k1", "k2"], later)
    with ledger.transaction() as txn:
        assert not txn.send_exists("k4")
        assert txn.insert_send(make_send("k4", t0))
        assert _claimed_keys(txn, ["k4"], t0) == ["k4"]
        txn.retry_later(["k4"], later, "503")  # the kept send is written claimed, then put back
        retried = txn.claim(["k4"], later)
    assert [(r.key, r.due_at, r.attempts) for r in deferred + retried] == [
        ("k1", later, 1),
        ("k4", later, 2),
    ]
    assert deferred + retried == [ledger.get_send(key) for key in ("k1", "k4")]
    assert state_of(ledger, "k2") == SendState.CANCELLED
