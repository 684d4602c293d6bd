"""The ledger contract for a batch's users read at once (``expect_reads``, and on PostgreSQL
``lock_users``): a SQL ledger answers ``pending_for_user`` and ``last_delivered_at`` from a copy
it keeps true through the transaction's own inserts, claims, cancels and drops
(trigmail/ledger/sql/users.py), so every answer must be the memory ledger's, step for step."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import pytest

from tests.ledger_helpers import FakeClock, insert, make_send, put_in_state
from trigmail.ledger import MemoryLedger
from trigmail.ledger.base import Ledger, LedgerTxn, SendState

_USERS = ("u1", "u2", "u3")
_RULES = frozenset({"cart", "other"})


def _expect(
    ledger: Ledger, txn: LedgerTxn, pending: list[str], delivered: list[str] | None = None
) -> None:
    if ledger.shared:
        # As the pipeline does: PostgreSQL reads its locked users. Every user, as a batch
        # that writes only to its own users (an unlocked user's insert pipelines its lock).
        txn.lock_users(_USERS)
    txn.expect_reads(pending, pending if delivered is None else delivered)


def _pending(
    txn: LedgerTxn, user: str, rules: frozenset[str] = _RULES
) -> list[tuple[str, SendState, datetime]]:
    return [(s.key, s.state, s.due_at) for s in txn.pending_for_user(user, rules)]


def _committed(ledger: Ledger, t0: datetime) -> None:
    insert(ledger, make_send("a", t0 + timedelta(hours=2)), make_send("b", t0, rule="other"))
    put_in_state(ledger, make_send("sent", t0, user="u2"), SendState.SENT, t0)
    put_in_state(ledger, make_send("doubt", t0, user="u3", rule="other"), SendState.IN_DOUBT, t0)


def test_the_transactions_own_writes_are_read_back(ledger: Ledger, t0: datetime) -> None:
    _committed(ledger, t0)
    later = t0 + timedelta(minutes=5)
    with ledger.transaction() as txn:
        _expect(ledger, txn, list(_USERS))
        assert [key for key, _, _ in _pending(txn, "u1")] == ["b", "a"]
        assert txn.last_delivered_at("cart", "u2") == t0
        assert not txn.send_exists("kept")
        assert txn.insert_send(make_send("kept", t0 + timedelta(hours=1)))  # kept on SQL
        assert txn.insert_send(make_send("lone", t0 + timedelta(hours=3), user="u2"))
        assert [key for key, _, _ in _pending(txn, "u1")] == ["b", "kept", "a"]
        assert txn.cancel_sends(["kept", "a", "sent"], "order", t0) == ["kept", "a"]
        assert [key for key, _, _ in _pending(txn, "u1")] == ["b"]
        assert txn.drop("lone", "paused", t0)
        assert _pending(txn, "u2") == []
        assert [record.key for record in txn.claim(["b"], later)] == ["b"]
        assert _pending(txn, "u1") == []
        assert txn.last_delivered_at("other", "u1") == later
        assert txn.last_delivered_at("cart", "u1") is None
    assert ledger.get_send("kept") is not None
    assert ledger.get_send("kept").state is SendState.CANCELLED  # type: ignore[union-attr]


def test_a_claimed_kept_send_is_a_delivery(ledger: Ledger, t0: datetime) -> None:
    later = t0 + timedelta(minutes=1)
    with ledger.transaction() as txn:
        _expect(ledger, txn, ["u1"])
        assert _pending(txn, "u1") == []
        assert not txn.send_exists("k")
        assert txn.insert_send(make_send("k", t0))
        assert [record.key for record in txn.claim(["k"], later)] == ["k"]
        assert txn.cancel_sends(["k"], "order", t0) == []  # sending: past any cancel
        assert _pending(txn, "u1") == []
        assert txn.last_delivered_at("cart", "u1") == later


def test_users_expected_for_one_kind_of_read_answer_the_other_too(
    ledger: Ledger, t0: datetime
) -> None:
    _committed(ledger, t0)
    later = t0 + timedelta(minutes=5)
    with ledger.transaction() as txn:
        _expect(ledger, txn, ["u1"], ["u2"])
        assert txn.last_delivered_at("cart", "u2") == t0  # u2's deliveries read at once
        assert [key for key, _, _ in _pending(txn, "u2")] == []
        assert [key for key, _, _ in _pending(txn, "u1")] == ["b", "a"]
        assert txn.last_delivered_at("cart", "u1") is None
        assert txn.insert_send(make_send("new", t0, user="u2"))
        assert [key for key, _, _ in _pending(txn, "u2")] == ["new"]
        assert [record.key for record in txn.claim(["a"], later)] == ["a"]
        assert [key for key, _, _ in _pending(txn, "u1")] == ["b"]
        assert txn.last_delivered_at("cart", "u1") == later
        assert txn.last_delivered_at("cart", "u2") == t0


def _insert_new(txn: LedgerTxn, ref: LedgerTxn, rnd: random.Random, key: str, t0: datetime) -> str:
    new = make_send(
        key,
        t0 + timedelta(minutes=rnd.randint(0, 5)),
        user=rnd.choice(_USERS),
        rule=rnd.choice(sorted(_RULES)),
    )
    if rnd.random() < 0.7:  # found absent first: kept, on SQL, until a statement needs it
        assert txn.send_exists(key) == ref.send_exists(key)
    assert txn.insert_send(new) == ref.insert_send(new)
    return key


def _random_steps(ledger: Ledger, reference: Ledger, t0: datetime, seed: int) -> None:
    """Run one seeded sequence of writes and reads in one transaction of each ledger; every
    answer must be the reference's."""
    rnd = random.Random(seed)
    keys = ["a", "b", "sent", "doubt"]
    with ledger.transaction() as txn, reference.transaction() as ref:
        # Each kind of read its own users, as a batch whose events cancel or meet a cooldown.
        pending = rnd.sample(_USERS, rnd.randint(0, 3))
        delivered = rnd.sample(_USERS, rnd.randint(0, 3))
        _expect(ledger, txn, pending, delivered)
        ref.expect_reads(pending, delivered)
        for step in range(40):
            at = t0 + timedelta(seconds=step)
            roll = rnd.random()
            some = rnd.sample(keys, min(len(keys), rnd.randint(1, 3)))
            key = rnd.choice(keys)
            if roll < 0.2:
                keys.append(_insert_new(txn, ref, rnd, f"n{step}", t0))
            elif roll < 0.3:
                claimed = txn.claim(some, at)
                assert [(r.key, r.claimed_at) for r in claimed] == [
                    (r.key, r.claimed_at) for r in ref.claim(some, at)
                ]
            elif roll < 0.4:
                assert txn.cancel_sends(some, "order", at) == ref.cancel_sends(some, "order", at)
            elif roll < 0.47:
                assert txn.drop(key, "paused", at) == ref.drop(key, "paused", at)
            elif roll < 0.5:
                due = t0 + timedelta(minutes=rnd.randint(0, 9))
                assert txn.defer(key, due) == ref.defer(key, due)
            elif roll < 0.53:
                # Failed is no delivery: the user's last delivery of the rule goes back.
                state = rnd.choice((SendState.SENT, SendState.FAILED))
                txn.finish(some, state, at)
                ref.finish(some, state, at)
            elif roll < 0.55:
                due = t0 + timedelta(minutes=rnd.randint(0, 9))
                txn.retry_later(some, due, "timeout")
                ref.retry_later(some, due, "timeout")
            elif roll < 0.58:
                txn.expect_claims(some)
            else:
                user = rnd.choice(_USERS)
                rule = rnd.choice(sorted(_RULES))
                # One rule, as the engine asks, or both: a row read is decoded once asked for.
                asked = frozenset(rnd.choice(([rule], sorted(_RULES))))
                assert _pending(txn, user, asked) == _pending(ref, user, asked), (seed, step)
                assert txn.last_delivered_at(rule, user) == ref.last_delivered_at(rule, user)


@pytest.mark.parametrize("seed", range(12))
def test_random_sequences_answer_as_the_memory_ledger(
    ledger: Ledger, t0: datetime, seed: int
) -> None:
    reference = MemoryLedger(clock=FakeClock(t0))
    for each in (ledger, reference):
        _committed(each, t0)
    _random_steps(ledger, reference, t0, seed)
    for user in _USERS:  # and what was committed, read in a transaction of its own
        with ledger.transaction() as txn, reference.transaction() as ref:
            assert _pending(txn, user) == _pending(ref, user)
