"""The ledger contract for a send inserted after ``send_exists`` found its key absent, as the
engine inserts every send: the SQL ledgers keep such sends and write them together, so every
read of the same transaction must still see them, as it sees a send inserted alone."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from tests.ledger_helpers import make_send, state_of
from trigmail.errors import LedgerError
from trigmail.ledger import PostgresLedger
from trigmail.ledger.base import Ledger, LedgerTxn, SendState


def _insert_checked(txn: LedgerTxn, key: str, due_at: datetime, user: str = "u1") -> bool:
    """Insert as the engine does: after finding the key absent."""
    assert not txn.send_exists(key)
    return txn.insert_send(make_send(key, due_at, user=user))


def test_a_kept_send_is_found_by_key_and_not_inserted_twice(ledger: Ledger, t0: datetime) -> None:
    with ledger.transaction() as txn:
        assert _insert_checked(txn, "k1", t0)
        assert txn.send_exists("k1")
        assert not txn.insert_send(make_send("k1", t0 + timedelta(days=1), user="u2"))
    stored = ledger.get_send("k1")
    assert stored is not None
    assert (stored.user_id, stored.due_at) == ("u1", t0)


def test_kept_sends_are_read_by_the_same_transaction(ledger: Ledger, t0: datetime) -> None:
    with ledger.transaction() as txn:
        assert _insert_checked(txn, "k1", t0)
        assert _insert_checked(txn, "k2", t0 + timedelta(hours=1), user="u2")
        assert [s.key for s in txn.pending_for_user("u1", {"cart"})] == ["k1"]
        assert [s.key for s in txn.due_sends(t0 + timedelta(hours=2), 10)] == ["k1", "k2"]
        assert txn.next_due_at() == t0
    assert [state_of(ledger, key) for key in ("k1", "k2")] == [SendState.SCHEDULED] * 2


def test_kept_sends_can_be_cancelled_and_claimed_in_their_transaction(
    ledger: Ledger, t0: datetime
) -> None:
    with ledger.transaction() as txn:
        for key in ("a", "b", "c"):
            assert _insert_checked(txn, key, t0, user=f"u-{key}")
        assert txn.cancel_sends(["a"], "order", t0) == ["a"]
        claimed = txn.claim(["b"], t0)
        assert [s.key for s in claimed] == ["b"]
        assert txn.last_delivered_at("cart", "u-b") == t0
        # The claimed send's categories count for the cap at once.
        assert txn.delivered_count_since("u-b", ["promo"], t0) == 1
        assert txn.delivered_count_since("u-c", ["promo"], t0) == 0
    states = [state_of(ledger, key) for key in ("a", "b", "c")]
    assert states == [SendState.CANCELLED, SendState.SENDING, SendState.SCHEDULED]
    # The claimed record is the one stored, field for field.
    assert claimed == [ledger.get_send("b")]
    assert claimed[0].attempts == 1


def test_kept_sends_are_gone_when_the_transaction_fails(ledger: Ledger, t0: datetime) -> None:
    with pytest.raises(RuntimeError), ledger.transaction() as txn:
        assert _insert_checked(txn, "k1", t0)
        raise RuntimeError("the batch fails before its commit")
    assert ledger.get_send("k1") is None


def test_kept_sends_claimed_with_stored_ones_come_back_in_the_order_asked(
    ledger: Ledger, t0: datetime
) -> None:
    with ledger.transaction() as txn:
        assert _insert_checked(txn, "old", t0, user="u-old")
    with ledger.transaction() as txn:
        assert _insert_checked(txn, "new", t0, user="u-new")
        assert [s.key for s in txn.claim(["new", "old", "gone"], t0)] == ["new", "old"]
        assert txn.claim(["new"], t0) == []  # claimed already
    assert [state_of(ledger, key) for key in ("new", "old")] == [SendState.SENDING] * 2


def test_kept_and_lone_inserts_mix_in_one_transaction(ledger: Ledger, t0: datetime) -> None:
    with ledger.transaction() as txn:
        assert _insert_checked(txn, "k1", t0)
        assert txn.insert_send(make_send("k2", t0))  # not looked up first: written at once
        assert _insert_checked(txn, "k3", t0)
        assert not txn.insert_send(make_send("k1", t0))
        assert not txn.insert_send(make_send("k2", t0))
        assert [s.key for s in txn.pending_for_user("u1", {"cart"})] == ["k1", "k2", "k3"]
    assert ledger.status().counts[SendState.SCHEDULED] == 3


def test_keys_expected_together_are_found_as_one_by_one(ledger: Ledger, t0: datetime) -> None:
    with ledger.transaction() as txn:
        assert _insert_checked(txn, "old", t0)
    with ledger.transaction() as txn:
        txn.expect_sends(["old", "new", "lone", "new"])
        assert txn.send_exists("old")
        assert not txn.insert_send(make_send("old", t0))
        assert _insert_checked(txn, "new", t0)
        assert txn.send_exists("new")
        assert txn.insert_send(make_send("lone", t0, user="u2"))
        assert txn.send_exists("lone")
        # The kept sends are written before a read of their user's sends.
        assert [s.key for s in txn.pending_for_user("u1", {"cart"})] == ["new", "old"]
        assert txn.send_exists("new")
        txn.expect_sends(["new", "lone", "late"])
        assert (txn.send_exists("new"), txn.send_exists("lone")) == (True, True)
        assert _insert_checked(txn, "late", t0)
        assert not txn.insert_send(make_send("new", t0))
    assert ledger.status().counts[SendState.SCHEDULED] == 4


def test_expected_keys_answer_what_the_database_holds(ledger: Ledger, t0: datetime) -> None:
    with ledger.transaction() as txn:
        assert _insert_checked(txn, "gone", t0)
        assert _insert_checked(txn, "old", t0, user="u2")
    with ledger.transaction() as txn:
        assert txn.cancel_sends(["gone"], "order", t0) == ["gone"]
    with ledger.transaction() as txn:
        # Any iterable, read once, a key given twice read once.
        txn.expect_sends(key for key in ("gone", "old", "new", "old"))
        # A cancelled send's key is still taken: the same rule never sends it again.
        assert [txn.send_exists(key) for key in ("gone", "old", "new")] == [True, True, False]
        assert not txn.insert_send(make_send("gone", t0))
        assert txn.insert_send(make_send("new", t0))
        assert txn.send_exists("new")
    assert [state_of(ledger, key) for key in ("gone", "new")] == [
        SendState.CANCELLED,
        SendState.SCHEDULED,
    ]


@pytest.mark.postgres
@pytest.mark.parametrize("expected", [True, False], ids=["read-for-the-batch", "read-alone"])
def test_a_key_found_absent_then_committed_by_another_worker_fails_the_batch(
    postgres_dsn: str, t0: datetime, expected: bool
) -> None:
    # Another user's send with the same key: no user lock orders the two. The key is found
    # absent by the batch's read of its keys before the other commits, or by its own check
    # and kept (held, unwritten) when the other commits.
    first = PostgresLedger(postgres_dsn, worker_id="w1")
    second = PostgresLedger(postgres_dsn, worker_id="w2")

    def other_worker_commits() -> None:
        with second.transaction() as other:
            assert other.insert_send(make_send("k1", t0, user="u2"))

    try:
        with pytest.raises(LedgerError, match="decided again"), first.transaction() as txn:
            if expected:
                txn.expect_sends(["k1"])
                other_worker_commits()
                assert _insert_checked(txn, "k1", t0)
            else:
                assert _insert_checked(txn, "k1", t0)
                other_worker_commits()
        stored = first.get_send("k1")
        assert stored is not None and stored.user_id == "u2"
    finally:
        first.close()
        second.close()


def test_rematch_gives_a_waiting_send_new_trigger_values_kept_or_stored(
    ledger: Ledger, t0: datetime
) -> None:
    with ledger.transaction() as txn:
        assert _insert_checked(txn, "stored", t0)
        assert _insert_checked(txn, "done", t0)
        assert txn.cancel_sends(["done"], "order", t0) == ["done"]
    with ledger.transaction() as txn:
        assert _insert_checked(txn, "kept", t0)
        assert txn.rematch("kept", {"@order": "0001"})
        assert txn.rematch("stored", {"@order": "0002", "properties.cart_id": "c1"})
        assert not txn.rematch("done", {"@order": "0003"})  # cancelled: left as it is
        assert not txn.rematch("absent", {"@order": "0004"})
        # The same transaction reads the new values.
        pending = {s.key: dict(s.cancel_match) for s in txn.pending_for_user("u1", {"cart"})}
        assert pending == {
            "kept": {"@order": "0001"},
            "stored": {"@order": "0002", "properties.cart_id": "c1"},
        }
    matches = {key: ledger.get_send(key) for key in ("kept", "stored", "done")}
    assert {key: dict(s.cancel_match) if s else None for key, s in matches.items()} == {
        "kept": {"@order": "0001"},
        "stored": {"@order": "0002", "properties.cart_id": "c1"},
        "done": {"properties.cart_id": "c9"},  # as make_send made it
    }
